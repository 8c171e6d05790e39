"""`accuracy --scale`: each row fitted and scored in a spawned child process (ELSA's torch
training too) gives what the same fit gives in-process; its section of ACCURACY.md is replaced
on its own, the rest kept."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest

from deepcf.data.matrix import build_matrix
from deepcf.data.synthetic import generate_ratings
from deepcf.study import render
from deepcf.study.accuracy import main
from deepcf.study.protocols import topn_split
from deepcf.study.rows import SCALE_ROWS
from deepcf.study.scale import fit_and_score, in_child, run_scale, sample_users
from deepcf.study.selection import Task


@pytest.fixture(scope="module")
def small():
    m = build_matrix(generate_ratings(300, 120, 5000, seed=1, mode="taste"), rating_min=1,
                     rating_max=5)
    m.source = "small taste set"
    return m


def _rows():
    return [replace(r, grid=[{**r.grid[0], "max_items": 60}]) if "max_items" in r.grid[0]
            else r for r in SCALE_ROWS]


@pytest.mark.slow  # every at-scale row in a spawned child of its own (about a minute)
def test_rows_in_children_give_the_in_process_figures(small):
    report = run_scale(small, _rows(), eval_users=100, log=lambda s: None)
    assert [r["row"].name for r in report["results"]] == [r.name for r in SCALE_ROWS]
    split = topn_split(small, 0)
    test = sample_users(split.test, 100)
    assert (test.getnnz(axis=1) > 0).sum() == 100
    task = Task(1.0, 5.0, 0)
    for res in report["results"]:
        assert "ok" in res, res.get("error")
        assert res["seconds"] > 0 and res["peak_rss_gb"] > 0
        if res["row"].protocol == "topn":
            direct = fit_and_score(res["row"], split.train, test, task)
            assert res["ok"]["ndcg@10"] == pytest.approx(direct["ndcg@10"], abs=1e-12)
    mf, bias = (r["ok"]["rmse"] for r in report["results"][1::-1])
    assert mf < bias * 1.05


def boom():
    raise ValueError("no")


def one():
    return {"x": 1}


def die():
    os._exit(3)


def test_a_failing_row_is_reported_not_raised():
    # the functions are sent to a spawned process: module-level, so they pickle
    assert in_child(boom)["error"] == "ValueError: no"
    res = in_child(one)
    assert res["ok"] == {"x": 1} and res["peak_rss_gb"] > 0 and res["seconds"] > 0
    assert in_child(die)["error"] == "the row's process died (exit code 3)"


def test_the_scale_section_is_spliced_into_accuracy_md(tmp_path, cache_dir, monkeypatch):
    # the splicing, on a baseline row of each protocol (every row in its child: the slow test
    # above)
    from deepcf.study import accuracy

    monkeypatch.setattr(accuracy, "SCALE_ROWS", [r for r in SCALE_ROWS
                                                 if r.name in ("user+item bias", "popularity")])
    out = tmp_path / "ACCURACY.md"
    out.write_text("# Accuracy\n\nthe main tables\n")
    main(["--scale", "--data", "synthetic:tiny", "--eval-users", "50", "--out", str(out),
          "--cache-dir", str(cache_dir)])
    text = out.read_text()
    assert text.startswith("# Accuracy\n\nthe main tables\n")
    assert text.count(render.SCALE_BEGIN) == 1 and "`popularity` mode" in text
    assert "| user+item bias |" in text and "peak RSS" in text
    again = render.with_scale_section(text, render.SCALE_BEGIN + "\nnew\n" + render.SCALE_END
                                      + "\n")
    assert again.startswith("# Accuracy\n\nthe main tables\n") and "\nnew\n" in again
    assert "user+item bias" not in again
    assert render.with_scale_section("plain\n", None) == "plain\n"
    assert render.scale_section(text).startswith(render.SCALE_BEGIN)
