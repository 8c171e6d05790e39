"""Runs you can trust: unique run dirs, exact resume, Ctrl-C, exit statuses for
diverged runs and sweeps, strict metrics.json, DDP on CPU with rank-0-only outputs."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import deepcf.training.module as module_mod
from deepcf.errors import TrainingInterrupted
from deepcf.training.train import train

FAST = ("data=synthetic", "model.net.hidden=[16]", "callbacks.onnx_export=null")


def _cli(*args: str, cwd: Path, cache_dir: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "deepcf.train", *args,
                             f"paths.cache_dir={cache_dir}", "trainer.accelerator=cpu"],
                            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _done(p: subprocess.Popen) -> tuple[int, str, str]:
    out, err = p.communicate(timeout=600)
    return p.returncode, out, err


def test_two_runs_started_together_get_their_own_run_dirs(tmp_path, cache_dir):
    procs = [_cli(*FAST, "trainer.max_epochs=1", "logger=csv", f"seed={s}", cwd=tmp_path,
                  cache_dir=cache_dir) for s in (1, 2)]
    results = [_done(p) for p in procs]
    assert [r[0] for r in results] == [0, 0], [r[2][-1500:] for r in results]
    runs = sorted((tmp_path / "outputs" / "train" / "runs").iterdir())
    assert len(runs) == 2
    seeds = sorted(json.loads((r / "metrics.json").read_text())["seed"] for r in runs)
    assert seeds == [1, 2]
    for r in runs:
        m = json.loads((r / "metrics.json").read_text())
        assert m["run_dir"] == str(r.resolve()) or Path(m["run_dir"]).resolve() == r.resolve()
        assert (r / "csv" / "metrics.csv").read_text().count("\n") >= 3


def _epochs_of(csv: Path) -> list[int]:
    import csv as csvlib

    with open(csv) as f:
        return [int(row["epoch"]) for row in csvlib.DictReader(f) if row.get("val/rmse")]


def test_resume_is_exact_and_continues_in_the_run_dir(make_cfg, tmp_path):
    """Stopping after epoch 2 (the state last.ckpt holds when a run is killed during epoch 3)
    and resuming to epoch 5 gives bitwise the metrics of an uninterrupted 5-epoch run (CPU),
    in the same run dir, with the best checkpoint and val/rmse_best carried over."""
    base = (*FAST, "logger=csv", "seed=7", "noise=dropout", "scheduler=steplr")
    full = train(make_cfg(*base, "trainer.max_epochs=5", output_dir=tmp_path / "full"))
    run = tmp_path / "run"
    first = train(make_cfg(*base, "trainer.max_epochs=2", output_dir=run))
    resumed = train(make_cfg(*base, "trainer.max_epochs=5", f"ckpt_path={run}",
                             output_dir=tmp_path / "elsewhere"))
    assert resumed["run_dir"] == str(run) and not (tmp_path / "elsewhere").exists()
    for key in ("test/rmse", "test/mae", "val/rmse", "val/rmse_best", "train/loss"):
        assert resumed[key] == full[key], key  # bitwise
    assert resumed["epochs"] == full["epochs"] == 5
    assert Path(resumed["best_checkpoint"]).name == Path(full["best_checkpoint"]).name
    assert resumed["val/rmse_best"] <= first["val/rmse_best"]
    assert resumed["resumed_from"] == str(run / "checkpoints" / "last.ckpt")
    # one metrics.csv with every epoch, the original config kept
    assert _epochs_of(run / "csv" / "metrics.csv") == [0, 1, 2, 3, 4]
    assert json.loads((run / "metrics.json").read_text())["status"] == "ok"


def test_resume_restores_val_rmse_best_from_before_the_interruption(make_cfg, tmp_path):
    """A resumed epoch that is worse than an earlier one reports the earlier best."""
    run = tmp_path / "run"
    base = (*FAST, "logger=none", "seed=3")
    train(make_cfg(*base, "trainer.max_epochs=1", output_dir=run))
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    ckpt["deepcf_resume"]["val_rmse_best"] = 0.125  # pretend epoch 1 was excellent
    torch.save(ckpt, run / "checkpoints" / "last.ckpt")
    m = train(make_cfg(*base, "trainer.max_epochs=2", f"ckpt_path={run}"))
    assert m["val/rmse_best"] == 0.125


def test_a_resume_after_the_last_epoch_keeps_the_fits_metrics(make_cfg, tmp_path):
    """A run killed after its last epoch (in the test or the ONNX export) trains no epoch when
    resumed; its metrics.json still has every key and value of the uninterrupted run's (the
    wall time and the paths naming the run dir or the resume aside)."""
    import shutil

    base = ("data=synthetic", "model.net.hidden=[16]", "logger=csv", "seed=7", "noise=dropout",
            "trainer.max_epochs=2")
    done = tmp_path / "done"
    full = train(make_cfg(*base, output_dir=done))
    run = tmp_path / "run"  # a fresh dir holding the finished fit, as a kill leaves it
    shutil.copytree(done, run)
    for name in ("metrics.json", "model.onnx", "model.deepcf.npz"):
        (run / name).unlink()
    resumed = train(make_cfg(*base, f"ckpt_path={run}", output_dir=tmp_path / "elsewhere"))
    assert [k for k in full if k.startswith(("val/", "train/"))]
    assert {k for k in resumed if k.startswith(("val/", "train/"))} == \
        {k for k in full if k.startswith(("val/", "train/"))}
    written = json.loads((run / "metrics.json").read_text())
    for key in set(full) - {"fit/seconds", "resumed_from"}:
        want = full[key]
        if isinstance(want, str) and str(done) in want:
            want = want.replace(str(done), str(run))
        assert resumed[key] == want and written[key] == want, key  # bitwise
    assert resumed["resumed_from"] == str(run / "checkpoints" / "last.ckpt")


def test_resume_with_other_data_is_one_line(make_cfg, tmp_path):
    from deepcf.errors import ConfigError

    run = tmp_path / "run"
    train(make_cfg(*FAST, "logger=none", "trainer.max_epochs=1", output_dir=run))
    with pytest.raises(ConfigError, match=r"data.protocol.seed is 5 here but 42 in the run being "
                                          r"resumed"):
        train(make_cfg(*FAST, "logger=none", "seed=5", f"ckpt_path={run}"))


def test_ctrl_c_keeps_the_checkpoint_and_says_how_to_resume(make_cfg, tmp_path, monkeypatch):
    run = tmp_path / "run"
    real = module_mod.RatingsModule.training_step

    def step(self, batch, batch_idx):
        if self.current_epoch == 1:
            raise KeyboardInterrupt
        return real(self, batch, batch_idx)

    monkeypatch.setattr(module_mod.RatingsModule, "training_step", step)
    with pytest.raises(TrainingInterrupted, match=r"last.ckpt is kept; resume with: python -m "
                                                  r"deepcf.train .*ckpt_path=" + str(run)):
        train(make_cfg(*FAST, "logger=none", "trainer.max_epochs=3", output_dir=run))
    assert (run / "checkpoints" / "last.ckpt").is_file()
    monkeypatch.setattr(module_mod.RatingsModule, "training_step", real)
    m = train(make_cfg(*FAST, "logger=none", "trainer.max_epochs=3", f"ckpt_path={run}"))
    assert m["epochs"] == 3 and m["status"] == "ok"


def test_ckpt_path_last_is_the_newest_run_of_the_task(tmp_path):
    from deepcf.training.rundir import resolve_resume

    runs = tmp_path / "logs" / "t" / "runs"
    for name in ("2026-01-01_10-00-00_1-aa", "2026-01-02_09-00-00_2-bb", "2026-01-03_00-00-00"):
        (runs / name / "checkpoints").mkdir(parents=True)
    for name in ("2026-01-01_10-00-00_1-aa", "2026-01-02_09-00-00_2-bb"):
        (runs / name / "checkpoints" / "last.ckpt").write_bytes(b"")
    ckpt, run = resolve_resume("last", tmp_path / "logs", "t")
    assert run.name == "2026-01-02_09-00-00_2-bb" and ckpt.name == "last.ckpt"


def test_metrics_json_is_strict_with_a_status():
    from deepcf.training.train import run_status, strict_json

    s = {"status": run_status({"test/rmse": float("nan")}), "test/rmse": float("nan"),
         "val/rmse_best": float("inf"), "test/mae": 0.5}
    text = strict_json(s)
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"status": "diverged", "test/rmse": None, "val/rmse_best": None,
                                "test/mae": 0.5}
    assert run_status({"test/rmse": 0.9}) == "ok"


def test_experiments_table_reads_null_as_diverged():
    from deepcf.study.experiments import table

    runs = {"x": [{"test/rmse": 1.0, "test/mae": 0.8, "val/rmse_best": 1.1, "epochs": 3},
                  {"test/rmse": None, "test/mae": None, "val/rmse_best": None, "epochs": 1,
                   "status": "diverged"}]}
    line = table(runs, {}, ["x"]).splitlines()[-1]
    assert "1.0000 (1/2 diverged)" in line and "3/1" in line


def test_cli_sweep_with_a_diverged_job_runs_on_and_exits_3(tmp_path, cache_dir):
    p = _cli("-m", *FAST, "trainer.max_epochs=1", "logger=none",
             "model.optimizer.lr=1e-3,1e12", cwd=tmp_path, cache_dir=cache_dir)
    rc, out, err = _done(p)
    assert rc == 3, err[-2000:]
    assert out.count("test RMSE") == 2 and out.count("training diverged") == 1
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("deepcf.train: 1 run(s) diverged")
    (sweep,) = (tmp_path / "outputs" / "train" / "multiruns").iterdir()
    status = [json.loads((sweep / j / "metrics.json").read_text())["status"] for j in "01"]
    assert status == ["ok", "diverged"]


def _last_epoch(runs: Path) -> int:
    (ckpt,) = runs.glob("*/checkpoints/last.ckpt")
    return torch.load(ckpt, weights_only=True)["epoch"]


@pytest.mark.slow
def test_cli_sigint_exits_130_sigkill_resumes_and_the_lock_refuses(tmp_path, cache_dir):
    import signal

    args = (*FAST, "logger=none")
    runs = tmp_path / "outputs" / "train" / "runs"

    def wait_for_new_last(p, since: float) -> None:
        while p.poll() is None and not any(f.stat().st_mtime > since for f in
                                           runs.glob("*/checkpoints/last.ckpt")):
            time.sleep(0.2)

    p = _cli(*args, "trainer.max_epochs=100000", cwd=tmp_path, cache_dir=cache_dir)
    wait_for_new_last(p, 0)
    p.send_signal(signal.SIGINT)
    rc, out, err = _done(p)
    assert rc == 130, err[-2000:]
    line = err.strip().splitlines()[-1]
    assert line.startswith("deepcf.train: interrupted: ") and "ckpt_path=" in line

    p = _cli(*args, "trainer.max_epochs=100000", "ckpt_path=last", cwd=tmp_path,
             cache_dir=cache_dir)
    wait_for_new_last(p, time.time())
    q = _cli(*args, "trainer.max_epochs=100000", "ckpt_path=last", cwd=tmp_path,
             cache_dir=cache_dir)
    rc_q, _, err_q = _done(q)
    p.send_signal(signal.SIGKILL)
    p.communicate()
    assert rc_q == 2 and "in use by another deepcf process" in err_q.strip().splitlines()[-1]

    epoch = _last_epoch(runs)
    p = _cli(*args, f"trainer.max_epochs={epoch + 2}", "ckpt_path=last", cwd=tmp_path,
             cache_dir=cache_dir)
    rc, out, err = _done(p)
    assert rc == 0, err[-2000:]
    assert f"{epoch + 2} epochs" in out and len(list(runs.iterdir())) == 1


def test_ddp_on_cpu_rank_zero_writes_and_the_score_is_aggregated(tmp_path, cache_dir):
    """2-process gloo DDP: one summary, one metrics.json, the ONNX export; the test RMSE the two
    ranks computed together equals the 1-process score of the same best checkpoint."""
    import pytorch_lightning as pl
    from omegaconf import OmegaConf

    from deepcf.serving.runs import run_datamodule
    from deepcf.training.assembly import build_module

    p = _cli("data=synthetic", "model.net.hidden=[16]", "logger=none", "trainer=ddp_cpu",
             "trainer.devices=2", "trainer.max_epochs=2", "data.eval_batch_size=50",
             cwd=tmp_path, cache_dir=cache_dir)
    rc, out, err = _done(p)
    assert rc == 0, err[-3000:]
    assert out.count("test RMSE") == 1 and "not exported" not in out
    (run,) = (tmp_path / "outputs" / "train" / "runs").iterdir()
    m = json.loads((run / "metrics.json").read_text())
    assert (run / "model.onnx").is_file()

    cfg = OmegaConf.load(run / "config_resolved.yaml")
    dm = run_datamodule(run, cache_dir=str(cache_dir))
    lo, hi = dm.rating_range
    model = build_module(cfg, dm)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_checkpointing=False)
    one = trainer.test(model, datamodule=dm, ckpt_path=m["best_checkpoint"], verbose=False,
                       weights_only=True)[0]
    assert m["test/n_ratings"] == one["test/n_ratings"] == dm.split.test.nnz  # none twice
    assert m["test/rmse"] == pytest.approx(one["test/rmse"], rel=1e-6, abs=1e-6)
    assert m["test/mae"] == pytest.approx(one["test/mae"], rel=1e-6, abs=1e-6)


def test_a_moved_run_dir_resumes_where_it_is_now(make_cfg, tmp_path):
    import shutil

    base = (*FAST, "logger=none", "seed=4")
    train(make_cfg(*base, "trainer.max_epochs=2", output_dir=tmp_path / "there"))
    shutil.move(tmp_path / "there", tmp_path / "here")
    run = tmp_path / "here"
    m = train(make_cfg(*base, "trainer.max_epochs=3", f"ckpt_path={run}"))
    assert m["epochs"] == 3 and Path(m["best_checkpoint"]).parent == run / "checkpoints"
    assert not (tmp_path / "there").exists()
    assert not list((run / "checkpoints").glob(".moved-*"))


@pytest.mark.parametrize("extra", [(), ("model.net.max_items=30",)])
def test_ddp_on_cpu_closed_form_sums_every_ranks_rows(tmp_path, cache_dir, extra):
    """2-process DDP of the closed-form objective: each rank adds the Gram matrix of its own
    rows, the sum is reduced over the ranks before the solve, so the fitted weights are the
    single-process closed form over every training row; with a pruned catalogue every rank
    models the same movies (the most popular of all the training rows)."""
    from deepcf.models.edlae import EDLAE
    from deepcf.serving.runs import load_net, run_datamodule

    p = _cli("experiment=edlae", "data=synthetic", "logger=none", "trainer=ddp_cpu",
             "trainer.devices=2", "data.batch_size=16", *extra, cwd=tmp_path,
             cache_dir=cache_dir)
    rc, out, err = _done(p)
    assert rc == 0, err[-3000:]
    assert out.count("no RMSE") == 1 and "not exported" not in out
    (run,) = (tmp_path / "outputs" / "edlae" / "runs").iterdir()
    m = json.loads((run / "metrics.json").read_text())
    # experiment=edlae refits: its model is the DDP refit on train + carve, which is what
    # run_datamodule gives a refit run's training rows as
    net = load_net(Path(m["refit/checkpoint"]))
    dm = run_datamodule(run, cache_dir=str(cache_dir))
    assert dm.train_rows.nnz == m["refit/n_train"]
    want = EDLAE.build(dm.width, **{k: v for k, v in net.config.__dict__.items()
                                    if k != "width"})
    want.fit_data(dm.train_rows)
    want.fit_closed_form(dm.train_rows)
    assert len(net.items) == (30 if extra else dm.width)
    torch.testing.assert_close(net.items, want.items)
    torch.testing.assert_close(net.weight, want.weight, atol=1e-6, rtol=1e-5)
    assert m["epochs"] == 1 and 0 < m["test/ndcg@10"] <= 1
