"""make accuracy's user runs: deepcf.train on the split files against the study rows."""

from __future__ import annotations

import math

import pytest

from deepcf.study import accuracy as acc
from deepcf.study import render as rnd
from deepcf.study import selection as sel
from deepcf.study.parity import PARITY_TOLERANCE, ParityResult, UserRun, parity_rows, run_parity


def _row_result(name: str, protocol: str, key: str, values, error=None) -> sel.RowResult:
    row = sel.Row(name, protocol, lambda *a: None)
    return sel.RowResult(row, metrics=[{key: v} for v in values], error=error)


def test_parity_rows_compare_split_by_split_within_the_tolerance():
    run = UserRun("i_autorec_target", "rating", "I-AutoRec", "rmse")
    rows = [_row_result("I-AutoRec", "rating", "rmse", [0.88, 0.89])]
    near = ParityResult(run, user=[0.88 + PARITY_TOLERANCE / 2, 0.89 - PARITY_TOLERANCE / 2])
    far = ParityResult(run, user=[0.88, 0.89 + 2 * PARITY_TOLERANCE])
    ok, bad = parity_rows([near, far], [], rows)
    assert ok["ok"] and not bad["ok"] and ok["error"] is None
    assert bad["diffs"] == pytest.approx([0.0, 2 * PARITY_TOLERANCE])
    failed_row = parity_rows([near], [], [_row_result("I-AutoRec", "rating", "rmse", [],
                                                      error="boom")])[0]
    assert not failed_row["ok"] and "failed or did not run" in failed_row["error"]
    failed_run = parity_rows([ParityResult(run, error="split 0: exit 1: x")], [], rows)[0]
    assert not failed_run["ok"] and failed_run["error"].startswith("split 0")
    # the targets and ACCURACY.md's section say the same
    t = sel.targets([], [], [ok, bad])
    assert [x["met"] for x in t[:2]] == [True, False] and "split by split" in t[0]["target"]
    text = rnd.parity_section([ok, bad], [0, 1])
    assert "## As a user trains them" in text and "**outside**" in text
    assert f"within {PARITY_TOLERANCE}" in text and "0.8815 / 0.8800 (+0.0015)" in text


def test_run_parity_trains_with_deepcf_train_on_the_split_files(cache_dir):
    """One process per split, as the README's command: a figure from its metrics.json; an
    experiment that does not exist is a failed run with the command's last line, not a crash."""
    data = acc.load_data("synthetic:tiny", str(cache_dir))
    good = UserRun("edlae", "topn", "EDLAE", "ndcg@10")
    bad = UserRun("no_such_experiment", "topn", "EDLAE", "ndcg@10")
    res_good, res_bad = run_parity(data, [0], [good, bad], log=lambda _: None)
    assert res_good.error is None and len(res_good.user) == 1
    assert 0.0 < res_good.user[0] <= 1.0 and math.isfinite(res_good.seconds[0])
    assert res_bad.error.startswith("split 0: exit ") and "no_such_experiment" in res_bad.error
