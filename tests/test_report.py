"""`python -m deepcf.report`: curves of several runs in one PNG, test metrics with error bars over
seeds, and the same numbers as a markdown table, grouped by what differs between runs."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from deepcf.report import main
from deepcf.study.experiments import mean_std
from deepcf.study.report import find_runs

BASE = ["data=synthetic", "data.source.scale=tiny", "trainer.max_epochs=2", "logger=csv",
        "callbacks.onnx_export=null"]


@pytest.fixture(scope="module")
def sweep(train_run, tmp_path_factory):
    """A sweep dir of 3 runs: hidden [16] with seeds 1 and 2, hidden [8] with seed 1."""
    root = tmp_path_factory.mktemp("sweep")
    for i, (hidden, seed) in enumerate([("[16]", 1), ("[16]", 2), ("[8]", 1)]):
        ov = [*BASE, f"model.net.hidden={hidden}", f"seed={seed}"]
        run = train_run(root / str(i), ov)
        (run / ".hydra").mkdir()
        OmegaConf.save(OmegaConf.create(ov), run / ".hydra" / "overrides.yaml")
    return root


def test_report_of_a_sweep(sweep, tmp_path, capsys):
    files = main([str(sweep), "--out", str(tmp_path / "rep")])
    for key in ("curves", "bars"):
        assert files[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = files["table"].read_text()
    assert text == (tmp_path / "rep" / "report.md").read_text()
    rows = [x for x in text.splitlines() if x.startswith("| `")]
    assert [r.split("|")[1].strip() for r in rows] == ["`custom model.net.hidden=[16]`",
                                                       "`custom model.net.hidden=[8]`"]
    ms = [json.loads((sweep / i / "metrics.json").read_text()) for i in ("0", "1")]
    assert mean_std([m["test/rmse"] for m in ms]) in rows[0]  # mean ± std over the 2 seeds
    assert rows[0].rstrip().endswith("| 1/2 |")
    assert rows[0] in capsys.readouterr().out


def test_curves_come_from_each_runs_csv_log(sweep):
    runs = find_runs([sweep / "0", sweep])  # a run named twice counts once
    assert len(runs) == 3
    for r in runs:
        assert [e for e, _ in r.curves["val/rmse"]] == [0, 1]
        assert [e for e, _ in r.curves["train/loss"]] == [0, 1]
        assert r.metrics["val/rmse_best"] == pytest.approx(
            min(v for _, v in r.curves["val/rmse"]))


def test_no_runs_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("deepcf.report: error: ") and "no run in it" in err
    with pytest.raises(SystemExit):
        main([str(tmp_path / "nope")])
    assert "no such run or sweep dir" in capsys.readouterr().err


@pytest.fixture(scope="module")
def two_models(train_run, tmp_path_factory):
    """Two nets (hidden [32,16] and [4]) trained on the same data and split, with ONNX models."""
    from tests.helpers import TINY_RUN

    out = []
    for name, hidden in (("base", "[32,16]"), ("other", "[4]")):
        ov = [*TINY_RUN, f"model.net.hidden={hidden}"]
        run = train_run(tmp_path_factory.mktemp(name), ov)
        (run / ".hydra").mkdir(exist_ok=True)
        OmegaConf.save(OmegaConf.create(ov), run / ".hydra" / "overrides.yaml")
        out.append(run)
    return tuple(out)


def test_report_pairs_runs_against_a_baseline(two_models, tmp_path):
    from scipy import stats

    from deepcf.serving.paired import run_per_user

    base, other = two_models
    files = main([str(other), "--baseline", str(base), "--out", str(tmp_path / "rep")])
    text = files["table"].read_text()
    head = text.splitlines()[0]
    for col in ("Precision@10", "MAP@10", "MRR@10", "hit@10", "novelty@10", "NDCG@10"):
        assert f"| {col} |" in head
    assert "paired p |" in head
    a, b = run_per_user(other), run_per_user(base)
    assert a["fingerprint"] == b["fingerprint"] and a["rates"]
    p = stats.wilcoxon(a["per_user"]["se"], b["per_user"]["se"]).pvalue
    from deepcf.study.report import _p

    line = next(x for x in text.splitlines() if "hidden=[4]" in x)
    assert f"p = {_p(p)}" in line and "| baseline |" in text
    # the per-user squared errors are the run's own test RMSE, user-weighted back
    m = json.loads((other / "metrics.json").read_text())
    assert a["metrics"]["rmse"] == pytest.approx(m["test/rmse"], rel=1e-4)
    # the ranking columns the rating run did not log come from its model on the test split
    assert f"{a['metrics']['precision@10']:.4f}" in line


def test_a_baseline_that_is_not_a_run_is_one_line(tmp_path, tiny_run, capsys):
    with pytest.raises(SystemExit) as e:
        main([str(tiny_run), "--baseline", str(tmp_path), "--out", str(tmp_path / "rep")])
    assert e.value.code == 2
    assert "--baseline" in capsys.readouterr().err
