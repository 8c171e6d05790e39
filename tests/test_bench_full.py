"""`make bench-full`'s runner (deepcf.bench.full): its rows compose, its parsing reads the train
command's own lines, its page has the section the docs link, a missing CSV is one line."""

from __future__ import annotations

import subprocess
import sys

from deepcf.bench.full import WHOLE_RUNS, _train_facts, render, timed

TRAIN_OUT = """epoch 1/300  train/loss 0.8000  val/rmse 0.9500  (10.5 s)
epoch 2/300  train/loss 0.7000  val/rmse 0.9400  (9.5 s)
[..][deepcf.training.callbacks][INFO] - ONNX model: x/model.onnx (onnxruntime parity 1.2e-06)
deepcf: i_autorec_target on x.csv (3 users x 2 movies, rows=items), 2 epochs
  test RMSE 0.9300  MAE 0.7000  (10 ratings, 0 scored by the training-mean fallback)
  best val RMSE 0.9400
"""


def test_every_row_composes(make_cfg):
    for row in WHOLE_RUNS:
        make_cfg(*row.train)
        if row.dense is not None:
            make_cfg(*row.train, *row.dense)


def test_train_facts_and_the_page():
    facts = _train_facts(TRAIN_OUT)
    assert facts["epochs"] == 2 and facts["epoch_s"] == 10.0
    assert facts["test_rmse"] == "0.9300" and facts["parity"] == "1.2e-06"
    step = {"wall_s": 60.0, "peak_rss_gb": 1.5, "rc": 0, "cpu_s": 100.0, "cmd": "-m x"}
    res = [{"row": WHOLE_RUNS[0].name,
            "steps": {"train": {**step, **facts}, "evaluate": step, "recommend": step},
            "scoring": {"onnx_users_per_s": 10.0, "codes_users_per_s": 1000.0}}]
    meta = {"command": "c", "date": "d", "machine": "m", "load_before": "1", "load_after": "1",
            "csv": "x.csv", "csv_mb": 1.0}
    page = render(res, meta)
    assert "## Whole runs at movies_full" in page and "180 s (3.0 min), 1.50 GB" in page


RANK_OUT = """epoch 1/4  train/loss 0.5000  val/ndcg@10 0.1900  (40.0 s)
deepcf: elsa on x.csv (3 users x 2 movies, rows=users), 1 epochs
  no RMSE: a ranking model's outputs are scores, not ratings
  test recall@10 0.2600  ndcg@10 0.2868  recall@20 0.2400  best val ndcg@10 0.1930 (each row's \
unseen movies ranked)
"""


def test_a_ranking_rows_test_ndcg_is_the_tests_not_the_best_vals():
    facts = _train_facts(RANK_OUT)
    assert facts["test_ndcg"] == "0.2868" and facts["test_rmse"] is None
    step = {"wall_s": 60.0, "peak_rss_gb": 1.5, "rc": 0, "cpu_s": 100.0, "cmd": "-m x --all"}
    res = [{"row": "ranking", "steps": {"train": {**step, **facts}, "evaluate": step,
                                        "recommend": step},
            "scoring": {"n_users": 600, "rows": "users", "onnx_users_per_s": 10.0}}]
    meta = {"command": "c", "date": "d", "machine": "m", "load_before": "1", "load_after": "1",
            "csv": "x.csv", "csv_mb": 1.0}
    page = render(res, meta)
    assert "NDCG@10 0.2868" in page
    assert "| ranking | users | 10 | n/a (no cache: the graph) | 10 |" in page


def test_timed_reads_the_childs_peak_rss(tmp_path):
    out = timed([sys.executable, "-c", "x = bytearray(300 << 20)"], tmp_path / "log")
    assert out["rc"] == 0 and out["peak_rss_gb"] > 0.25


def test_a_missing_csv_is_one_line(tmp_path):
    p = subprocess.run([sys.executable, "-m", "deepcf.bench.full", "--csv",
                        str(tmp_path / "none.csv")], capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "no such file" in p.stderr


def test_the_edlae_row_is_the_at_scale_tables_setting(make_cfg):
    """bench-full's EDLAE run trains what ACCURACY.md's at-scale EDLAE row fits."""
    from deepcf.bench.full import EDLAE_AT_SCALE
    from deepcf.study.rows import EDLAE_SCALE

    net = make_cfg("experiment=edlae", *EDLAE_AT_SCALE).model.net
    assert {k: net[k] for k in EDLAE_SCALE} == EDLAE_SCALE


def test_a_run_with_only_keeps_the_other_rows_with_their_own_command():
    from deepcf.bench.full import carry

    step = {"wall_s": 60.0, "peak_rss_gb": 1.5, "rc": 0, "cpu_s": 100.0, "cmd": "-m x"}
    meta = {"command": "new cmd", "date": "d2", "machine": "m", "load_before": "1",
            "load_after": "1", "csv": "x.csv", "csv_mb": 1.0}
    old_meta = {**meta, "command": "old cmd", "date": "d1"}

    def result(name, m):
        return {"row": name, "steps": {"train": {**step, "epochs": 1, "epoch_s": 5.0},
                                       "evaluate": step, "recommend": step},
                "scoring": {}, "meta": m}

    old = [result(WHOLE_RUNS[2].name, old_meta), result(WHOLE_RUNS[1].name, old_meta),
           result("a row no longer run", old_meta)]
    out = carry([result(WHOLE_RUNS[1].name, meta)], old)
    assert [r["row"] for r in out] == [WHOLE_RUNS[1].name, WHOLE_RUNS[2].name]
    assert out[0]["meta"]["command"] == "new cmd" and out[1]["meta"]["command"] == "old cmd"
    page = render(out, meta)
    assert "`old cmd` on d1" in page and "`new cmd` on d2" in page
    assert page.index(WHOLE_RUNS[2].name, page.index("`old cmd`")) < page.index("## Whole")


REFIT_OUT = """epoch 1/1  val/ndcg@10 0.1961  (137.7 s)
[..][deepcf.data.datamodule][INFO] - data: x.csv, 3 users x 2 movies; ratings train 9 / val 0
epoch 1/1  (45.3 s)
deepcf: edlae on x.csv (3 users x 2 movies, rows=users), 1 epochs
  no RMSE: a ranking model's outputs are scores, not ratings
  test ndcg@10 0.2278  best val ndcg@10 0.1961 (each row's unseen movies ranked)
  refit on all 9 training ratings (train + the carve) for the carve's 1 epochs: 46.7 s (the \
carve's fit: 141.9 s); the carve's model: test ndcg@10 0.1958
"""


def test_a_refit_is_not_an_epoch_to_the_early_stop():
    facts = _train_facts(REFIT_OUT)
    assert facts["epochs"] == 1 and facts["epoch_s"] == 137.7 and facts["refit_s"] == 46.7
    assert facts["test_ndcg"] == "0.2278"
