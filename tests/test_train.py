"""Training end to end: every experiment runs, artifacts land in the run dir, RMSE is honest."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from deepcf.models.contract import net_from_checkpoint
from deepcf.training.assembly import build_module
from deepcf.training.config import CONF_DIR, build
from deepcf.training.train import train
from tests.helpers import heldout_by_hand

EXPERIMENTS = sorted(p.stem for p in (Path(CONF_DIR) / "experiment").glob("*.yaml"))
STUDY = ["first_test_run", "RMSprop_test_tied", "better_init_tied", "scheduler_lr",
         "denoising_test"]
ROOT = Path(__file__).resolve().parents[1]


def test_the_five_study_experiments_exist():
    assert set(STUDY) <= set(EXPERIMENTS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_runs_under_fast_dev_run_with_onnx_parity(make_cfg, experiment):
    cfg = make_cfg(f"experiment={experiment}", "debug=fast_dev_run")
    m = train(cfg)
    if "test/rmse" in m:
        assert math.isfinite(m["test/rmse"]) and m["test/n_ratings"] > 0
    else:  # a ranking experiment: scores, not ratings
        assert math.isfinite(m["test/ndcg@10"]) and "test/n_ratings" not in m
    onnx = Path(m["onnx"])
    assert onnx.exists() and onnx.parent == Path(cfg.paths.output_dir)
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
    assert (inp.name, out.name) == ("ratings", "predictions")
    assert isinstance(inp.shape[0], str)  # a dynamic batch axis
    for n in (1, 5):
        assert sess.run(None, {"ratings": np.zeros((n, inp.shape[1]), np.float32)})[0].shape \
            == (n, inp.shape[1])


def test_study_experiments_compose_as_described(make_cfg):
    c = {e: make_cfg(f"experiment={e}").model for e in STUDY}
    assert c["first_test_run"].optimizer._target_ == "torch.optim.SGD"
    assert c["first_test_run"].init.scheme == "default" and not c["first_test_run"].net.tied
    assert c["RMSprop_test_tied"].optimizer._target_ == "torch.optim.RMSprop"
    assert c["RMSprop_test_tied"].net.tied
    assert c["better_init_tied"].init.scheme == "xavier_uniform"
    assert c["better_init_tied"].init.bias == 0.01 and c["better_init_tied"].net.tied
    assert c["scheduler_lr"].scheduler._target_ == "torch.optim.lr_scheduler.StepLR"
    assert (c["scheduler_lr"].scheduler.step_size, c["scheduler_lr"].scheduler.gamma) == (1, 0.1)
    assert c["scheduler_lr"].optimizer._target_ == "torch.optim.SGD" and c["scheduler_lr"].net.tied
    assert c["denoising_test"].noise.kind == "dropout"
    assert c["denoising_test"].scheduler.gamma == 0.1 and c["denoising_test"].net.tied
    for e in STUDY[:4]:
        assert c[e].noise.kind == "none"


def test_a_short_run_writes_every_artifact_and_tests_the_best_checkpoint(make_cfg, tmp_path):
    cfg = make_cfg("data=synthetic", "trainer.max_epochs=3", "model.net.hidden=[32,16]",
                   output_dir=tmp_path / "run")
    m = train(cfg)
    run = tmp_path / "run"
    for name in ("config_resolved.yaml", "metrics.json", "model.onnx", "loss_curve.png",
                 "checkpoints/last.ckpt", "csv/metrics.csv"):
        assert (run / name).exists(), name
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["test/rmse"] == pytest.approx(m["test/rmse"])
    assert Path(saved["best_checkpoint"]).parent == run / "checkpoints"
    assert m["val/rmse_best"] <= m["val/rmse"] + 1e-9
    # the tested weights are the best checkpoint's: rebuild its net through the model contract
    # and re-score the test split by hand (dense numpy, clip, fallback)
    ckpt = torch.load(saved["best_checkpoint"], map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"]["net"]["config"]["hidden"] == [32, 16]
    net = net_from_checkpoint(ckpt)
    dm = build(cfg.data, "data")
    dm.setup()
    train_m, _, test_m = dm.oriented(dm.split)
    rmse, _, n, n_cold = heldout_by_hand(net, train_m, test_m, *dm.rating_range, dm.train_mean)
    assert m["test/rmse"] == pytest.approx(rmse, rel=1e-5)
    assert (m["test/n_ratings"], m["test/n_fallback"]) == (n, n_cold)


def test_rmse_is_aggregated_over_the_split_like_numpy(make_cfg):
    """sqrt(sum sq err / n) over all held-out ratings, across uneven batches; clipping and the
    training-mean fallback included."""
    import pytorch_lightning as pl

    cfg = make_cfg("data=synthetic", "data.eval_batch_size=7", "model.net.hidden=[16]")
    dm = build(cfg.data, "data")
    dm.setup()
    lo, hi = dm.rating_range
    module = build_module(cfg, dm)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_checkpointing=False)
    got = trainer.validate(module, datamodule=dm, verbose=False)[0]

    train_m, val_m, _ = dm.oriented(dm.split)
    rmse, mae, n, n_cold, pred = heldout_by_hand(module.net, train_m, val_m, lo, hi,
                                                 dm.train_mean, with_pred=True)
    assert got["val/rmse"] == pytest.approx(rmse, rel=1e-5)
    assert got["val/mae"] == pytest.approx(mae, rel=1e-5)
    assert got["val/n_ratings"] == n and got["val/n_fallback"] == n_cold
    assert (pred == lo).any()  # an untrained net predicts ~0: the clip to 1 was exercised


def test_wandb_logger_runs_offline_without_a_key(make_cfg, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = make_cfg("data=synthetic", "logger=wandb", "debug=limit", "model.net.hidden=[8]",
                   "callbacks.onnx_export=null", output_dir=tmp_path / "run")
    m = train(cfg)
    assert math.isfinite(m["test/rmse"])
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*"))


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deepcf.train", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def test_cli_bad_ratings_file_is_one_line_and_leaves_the_data_alone(tmp_path, cache_dir):
    data = tmp_path / "data"
    data.mkdir()
    bad = data / "ratings.csv"
    bad.write_text("userId,movieId,rating,timestamp\n1,2,4,5\n1,3,nan,6\n")
    before = sorted(p.name for p in data.iterdir()), bad.read_bytes()
    r = _cli("data=ratings_csv", f"data.source.path={bad}", f"paths.cache_dir={cache_dir}",
             f"paths.log_dir={tmp_path / 'out'}", cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == \
        f"deepcf.train: error: {bad}:3: rating is missing or NaN"
    assert "Traceback" not in r.stderr
    assert (sorted(p.name for p in data.iterdir()), bad.read_bytes()) == before


def test_cli_multirun_of_experiments_prints_each_summary(tmp_path, cache_dir):
    r = _cli("-m", "experiment=first_test_run,denoising_test", "debug=fast_dev_run",
             "callbacks.onnx_export=null", f"paths.cache_dir={cache_dir}",
             f"paths.log_dir={tmp_path / 'out'}", "trainer.accelerator=cpu", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("test RMSE") == 2
    assert "deepcf: first_test_run on MovieLens-100K" in r.stdout
    assert "deepcf: denoising_test on MovieLens-100K" in r.stdout


@pytest.mark.parametrize(
    "args,message",
    [
        (["optimizer=adamw"], "Could not find 'optimizer/adamw'"),
        (["model.hiden=[4]"], "model.hiden is now model.net.hiden"),
        (["model.net.hiden=[4]"], "Could not override 'model.net.hiden'"),
        (["model.loss=multinomial"], "model.loss is gone: use objective=masked_mse or "),
        (["data.split_seed=3"], "data.split_seed is now data.protocol.seed"),
        (["data=ratings_csv"], "missing value for data.source.path"),
        (["-m", "optimizer=sgd,adamw"], "Could not find 'optimizer/adamw'"),
    ],
)
def test_cli_config_mistakes_are_one_line(tmp_path, args, message):
    r = _cli(*args, cwd=tmp_path)
    assert r.returncode == 2
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("deepcf.train: error: ") and message in line


@pytest.mark.parametrize("search", sorted(p.stem for p in (Path(CONF_DIR) / "hparams_search")
                                           .glob("*.yaml")))
def test_hparams_search_configs_compose_into_a_multirun(make_cfg, search):
    from hydra.types import RunMode

    spaces = Path(CONF_DIR) / "search_space" / search  # an Optuna search: the experiment's space
    on = "item_autorec" if not spaces.is_dir() or (spaces / "item_autorec.yaml").is_file() else \
        "mult_dae"
    cfg = make_cfg(f"experiment={on}", f"hparams_search={search}")
    assert cfg.hydra.mode == RunMode.MULTIRUN
    params = cfg.hydra.sweeper.params
    assert params and all(str(k).split(".")[0] in ("model", "data") for k in params)
    for key in params:  # every swept key exists in the composed config
        assert OmegaConf.select(cfg, str(key)) is not None, key


@pytest.mark.slow
def test_cli_sweep_over_every_experiment(tmp_path, cache_dir):
    r = _cli("-m", "experiment=glob(*)", "debug=fast_dev_run", "callbacks.onnx_export=null",
             f"paths.cache_dir={cache_dir}", f"paths.log_dir={tmp_path / 'out'}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    for e in EXPERIMENTS:  # each job's summary; ranking experiments score NDCG, not RMSE
        assert f"deepcf: {e} on" in r.stdout, e
    assert r.stdout.count("test RMSE") + r.stdout.count("no RMSE: a ranking model") == len(
        EXPERIMENTS)


def test_a_diverged_model_is_not_exported(tmp_path):
    import scipy.sparse as sp

    from deepcf.errors import DivergedModel
    from deepcf.models.autoencoder import AutoEncoder
    from deepcf.serving.export import export_checked
    from deepcf.serving.sidecar import ModelCard

    net = AutoEncoder.build(20, hidden=[4])
    with torch.no_grad():
        net.out_b[3] = float("nan")
    card = ModelCard(user_ids=np.arange(5), item_ids=np.arange(20), titles=None, rating_min=1,
                     rating_max=5, train_mean=3.0, orientation="user",
                     item_train_count=np.ones(20, np.int64))
    rows = sp.random(5, 20, density=0.3, format="csr", dtype=np.float32, random_state=0)
    with pytest.raises(DivergedModel, match="training diverged"):
        export_checked(net, tmp_path / "m.onnx", rows, card)
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("arg,message", [
    ("data.path=ratings.csv", "data.path is now data.source.path"),
    ("data.scale=movies_full", "data.scale is now data.source.scale"),
    ("+data.generator_seed=3", "data.generator_seed is now data.source.seed"),
    ("data.source=file", "data.source=file is no longer a name: choose the data with data="),
])
def test_renamed_keys_name_the_new_key(arg, message):
    from deepcf.errors import ConfigError
    from deepcf.training.config import check_overrides

    with pytest.raises(ConfigError, match=message):
        check_overrides([arg])
