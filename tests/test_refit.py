"""refit=true: selection on the carve, then the same config fitted on train + carve and tested,
saved, exported; the run dir keeps both; evaluate scores the refit model on the run's split."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from deepcf.models.contract import net_from_checkpoint
from deepcf.serving.evaluate import evaluate_run
from deepcf.training.config import build
from deepcf.training.train import train

RATING = ["data=synthetic", "trainer.max_epochs=4", "model.net.hidden=[16]", "refit=true"]


def _onnx(path: Path, X: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"ratings": X})[0]


def test_refit_trains_on_every_training_rating_and_is_what_is_exported(make_cfg, tmp_path):
    cfg = make_cfg(*RATING, output_dir=tmp_path / "run")
    m = train(cfg)
    run = tmp_path / "run"
    saved = json.loads((run / "metrics.json").read_text())
    # both models are kept: the carve's best checkpoint and its val score, and the refit
    refit_ckpt, best_ckpt = Path(saved["refit/checkpoint"]), Path(saved["best_checkpoint"])
    assert refit_ckpt == run / "checkpoints" / "refit.ckpt" and refit_ckpt.is_file()
    assert best_ckpt.is_file() and best_ckpt.parent == refit_ckpt.parent
    assert saved["refit"] is True and saved["optimized_metric"] == "val/rmse_best"
    assert np.isfinite(saved["val/rmse_best"]) and np.isfinite(saved["carve/test/rmse"])
    assert saved["test/rmse"] == pytest.approx(m["test/rmse"])
    best = torch.load(best_ckpt, map_location="cpu", weights_only=True)
    assert saved["refit/epochs"] == best["epoch"] + 1  # the carve's chosen epochs, replayed
    assert saved["refit/seconds"] >= 0
    # trained on all training ratings: the carve's train + val
    dm = build(cfg.data, "data")
    dm.setup()
    assert saved["refit/n_train"] == dm.split.train.nnz + dm.split.val.nnz
    carve = net_from_checkpoint(best)
    refit = net_from_checkpoint(torch.load(refit_ckpt, map_location="cpu", weights_only=True))
    a, b = carve.state_dict(), refit.state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)  # a different model
    # the ONNX model is the refit's
    merged = dm.merged()
    X = merged.dataset("train").inputs[:8].toarray().astype(np.float32)
    with torch.no_grad():
        want = refit(torch.from_numpy(X)).numpy()
        other = carve(torch.from_numpy(X)).numpy()
    got = _onnx(run / "model.onnx", X)
    assert np.abs(got - want).max() < 1e-4 and np.abs(got - other).max() > 1e-4
    # evaluate re-creates the refit's inputs (carve merged) and gets the training test RMSE
    r = evaluate_run(run, cache_dir=cfg.paths.cache_dir)
    assert r["rating"]["rmse"] == pytest.approx(saved["test/rmse"], abs=1e-4)


def test_refit_replays_the_same_run_from_scratch(make_cfg, tmp_path):
    """The refit is seeded like the carve's fit: refitting twice gives the same model."""
    runs = [train(make_cfg(*RATING, output_dir=tmp_path / f"r{i}")) for i in range(2)]
    assert runs[0]["test/rmse"] == runs[1]["test/rmse"]
    assert runs[0]["refit/epochs"] == runs[1]["refit/epochs"]


def test_the_refit_trains_without_the_carve_models_weights_alive(make_cfg, tmp_path,
                                                                 monkeypatch):
    """The carve's model is tested before the refit starts: its weights, gradients and optimizer
    state (3.5 GB for I-AutoRec at the Movies Dataset's scale) are gone before the refit's are
    made, the optimizer's param groups, which hold the weights too, included."""
    import gc

    import deepcf.training.train as tt

    alive, build = [], tt.build_module

    def refit_module(cfg, dm):
        gc.collect()
        alive.extend(o for o in gc.get_objects() if isinstance(o, torch.nn.Parameter)
                     and o.device.type == "cpu" and o.dim() == 2 and o.shape[1] == 13)
        return build(cfg, dm)

    monkeypatch.setattr(tt, "build_module", refit_module)
    m = train(make_cfg("data=synthetic", "trainer.max_epochs=2", "experiment=i_autorec_target",
                       "model.net.hidden=[13]", "callbacks.onnx_export=null",
                       output_dir=tmp_path / "run"))
    assert m["refit"]
    # no (users x 13) weight of the carve's model is left (13: a size no other test's net has)
    assert alive == []


def test_refit_off_keeps_the_carve_model(make_cfg, tmp_path):
    m = train(make_cfg(*RATING[:-1], output_dir=tmp_path / "run"))
    assert "refit" not in m and "carve/test/rmse" not in m
    assert not (tmp_path / "run" / "checkpoints" / "refit.ckpt").exists()


def test_refit_of_a_closed_form_on_the_per_user_protocol_and_evaluate_topn(make_cfg, tmp_path):
    cfg = make_cfg("experiment=edlae", "data=synthetic", "data/protocol=per_user",
                   "data.protocol.seed=1", output_dir=tmp_path / "run")
    assert cfg.refit is True  # on by default for the shipped ranking experiment
    m = train(cfg)
    assert m["refit/epochs"] == 1 and m["epochs"] == 1
    r = evaluate_run(tmp_path / "run", cache_dir=cfg.paths.cache_dir, protocol="topn")
    assert r["topn"]["ndcg@10"] == pytest.approx(m["test/ndcg@10"], abs=1e-4)
    # the closed form refit on train + carve is EDLAE fitted on the per-user holdout's train
    from deepcf.study.protocols import topn_split

    dm = build(cfg.data, "data")
    dm.setup()
    split = topn_split(dm.matrix, 1)
    assert (dm.merged().split.train != split.train).nnz == 0


def test_resume_then_refit(make_cfg, tmp_path):
    run = tmp_path / "run"
    first = train(make_cfg(*RATING[:2], "trainer.max_epochs=2", *RATING[2:], output_dir=run))
    again = train(make_cfg(*RATING[:2], "trainer.max_epochs=4", *RATING[2:],
                           f"ckpt_path={run}", output_dir=run))
    assert first["refit"] and again["refit"] and again["resumed_from"]
    assert (run / "checkpoints" / "refit.ckpt").is_file()


def test_cli_refit_and_protocol(tmp_path, cache_dir):
    r = subprocess.run(
        [sys.executable, "-m", "deepcf.train", "experiment=edlae", "data=synthetic",
         "data/protocol=leave_last", f"paths.cache_dir={cache_dir}",
         f"paths.log_dir={tmp_path / 'out'}", "trainer.accelerator=cpu"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "refit on all " in r.stdout and "the carve's model: test ndcg@10" in r.stdout
    r = subprocess.run(
        [sys.executable, "-m", "deepcf.train", "data=synthetic", "refit=maybe",
         f"paths.cache_dir={cache_dir}", f"paths.log_dir={tmp_path / 'out'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == \
        "deepcf.train: error: refit='maybe' must be true or false"


def test_write_splits_and_train_on_them(tmp_path, cache_dir):
    from deepcf.study.accuracy import main

    main(["--data", "synthetic:tiny", "--quick", "--write-splits", str(tmp_path / "s"),
          "--cache-dir", str(cache_dir)])
    files = sorted(p.relative_to(tmp_path / "s").as_posix() for p in (tmp_path / "s").rglob("*"))
    assert files == ["rating", "rating/split0", "rating/split0/test.csv",
                     "rating/split0/train.csv", "topn", "topn/split0", "topn/split0/test.csv",
                     "topn/split0/train.csv"]
    from deepcf.data.matrix import load_matrix
    from deepcf.data.sources import RatingsFile, Synthetic
    from deepcf.study.protocols import rating_split

    m = load_matrix(Synthetic(scale="tiny"), cache_dir)
    s = rating_split(m, 0)
    f = load_matrix(RatingsFile(str(tmp_path / "s/rating/split0/train.csv"), rating_min=1,
                                test_path=str(tmp_path / "s/rating/split0/test.csv")),
                    cache_dir)
    assert f.shape == m.shape and (f.user_ids == m.user_ids).all()
    assert (f.ratings != s.train).nnz == 0 and (f.test_ratings != s.test).nnz == 0
    with pytest.raises(SystemExit) as e:  # a file already there is never overwritten
        main(["--data", "synthetic:tiny", "--quick", "--write-splits", str(tmp_path / "s"),
              "--cache-dir", str(cache_dir)])
    assert e.value.code == 2


def test_options_a_net_chose_on_the_carve_are_given_to_the_refit(make_cfg, tmp_path):
    # experiment=edlae leaves lam, dropout, emphasis and pop_beta to the carve; the refit (no
    # carve) takes the chosen values as given
    m = train(make_cfg("experiment=edlae", "data=synthetic", output_dir=tmp_path / "run"))
    chosen = m["refit/options"]
    assert set(chosen) == {"lam", "lam_unit", "dropout", "emphasis", "pop_beta"}
    assert chosen["lam_unit"] == "mean_diag"
    ckpt = torch.load(m["refit/checkpoint"], map_location="cpu", weights_only=True)
    config = ckpt["hyper_parameters"]["net"]["config"]
    assert {k: config[k] for k in chosen} == chosen
