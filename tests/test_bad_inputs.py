"""Bad inputs, one case each: one line naming the file (or key) and the fix, exit status 2 at
the command line, no code run from a file, nothing of the user's changed.

Covers ratings separated by `;` or spaces, gzip/zip files, an unreadable file, 1-5 star data
under the 0.5..5 default, one user, identical ratings, a truncated sidecar, `ckpt_path=`
missing / truncated / pickle / pointing its best checkpoint outside the run, a run dir's config
naming a foreign `_target_`, W&B with a key but no network, a locked run dir.
"""

from __future__ import annotations

import gzip
import logging
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from deepcf.data.readers import read_ratings
from deepcf.errors import CheckpointError, DataError, DeepCFError, RunLocked, TargetNotAllowed
from deepcf.training.train import train

ROOT = Path(__file__).resolve().parents[1]
CSV = "userId,movieId,rating,timestamp\n1,10,4.0,100\n1,11,3.5,101\n2,10,5.0,102\n3,12,1.0,103\n"


class Payload:
    """Pickles to a call that creates `marker` when unpickled without weights_only."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _cli(module: str, *args: str, cwd: Path, env: dict | None = None):
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600, env={**os.environ, **(env or {})})


def _one_line(r: subprocess.CompletedProcess, prog: str) -> str:
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith(f"{prog}: error: ")
    return line


# -- ratings files (points 5 and 6) ------------------------------------------------------------
@pytest.mark.parametrize("sep", [";", " ", "  ", "\t", "|"])
def test_other_separators_are_detected(tmp_path, sep):
    f = tmp_path / "ratings.txt"
    f.write_text(CSV.replace(",", sep))
    t = read_ratings(f, 0.5, 5)
    assert t.user.tolist() == [1, 1, 2, 3] and t.rating.tolist() == [4.0, 3.5, 5.0, 1.0]
    assert t.timestamp.tolist() == [100, 101, 102, 103]


def test_headerless_space_separated_file(tmp_path):
    f = tmp_path / "u.txt"
    f.write_text("1 10 4 100\n2 10 5 101\n")
    assert read_ratings(f, 1, 5).item.tolist() == [10, 10]


@pytest.mark.parametrize("kind", ["gzip", "zip"])
def test_gzip_and_zip_are_read_transparently(tmp_path, kind):
    if kind == "gzip":
        f = tmp_path / "ratings.csv.gz"
        f.write_bytes(gzip.compress(CSV.encode()))
    else:
        f = tmp_path / "ratings.zip"
        with zipfile.ZipFile(f, "w") as z:
            z.writestr("ratings.csv", CSV)
    t = read_ratings(f, 0.5, 5)
    assert t.user.tolist() == [1, 1, 2, 3] and t.item.tolist() == [10, 11, 10, 12]


def test_truncated_gzip_is_one_line(tmp_path):
    f = tmp_path / "ratings.csv.gz"
    f.write_bytes(gzip.compress((CSV * 50).encode())[:60])
    with pytest.raises(DataError, match=r"ratings.csv.gz: a truncated or corrupt gzip file"):
        read_ratings(f, 0.5, 5)


def test_unreadable_file_is_one_line(tmp_path, monkeypatch):
    """Tests run as root, where chmod 000 does not stop reads: the PermissionError that a user
    gets is raised by a stand-in for `os.open` (what deepcf.files.open_input calls) instead."""
    import os

    import deepcf.files as files

    f = tmp_path / "ratings.csv"
    f.write_text(CSV)
    real_open = os.open

    def denied(path, *a, **k):
        if str(path) == str(f):
            raise PermissionError(13, "Permission denied", str(f))
        return real_open(path, *a, **k)

    monkeypatch.setattr(files.os, "open", denied)
    with pytest.raises(DataError, match=r"ratings.csv: permission denied: cannot read it "
                                        r"\(check the file's permissions"):
        read_ratings(f, 0.5, 5)


def _dm(make_cfg, path: Path, *extra: str):
    from deepcf.training.config import build

    cfg = make_cfg("data=ratings_csv", f"data.source.path={path}", "data.cache=false", *extra)
    return build(cfg.data, "data")


def test_one_to_five_stars_under_the_half_star_default_warns(make_cfg, tmp_path, caplog):
    rng = np.random.default_rng(0)
    rows = [f"{u},{m},{rng.integers(1, 6)},0" for u in range(1, 30) for m in range(1, 20)]
    f = tmp_path / "stars.csv"
    f.write_text("userId,movieId,rating,timestamp\n" + "\n".join(rows) + "\n")
    with caplog.at_level(logging.WARNING, logger="deepcf"):
        _dm(make_cfg, f).setup()
    (line,) = [r.getMessage() for r in caplog.records if "declared range" in r.getMessage()]
    assert f"{f}: ratings span 1..5 but the declared range is 0.5..5" in line
    assert "set data.source.rating_min=1" in line
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="deepcf"):
        _dm(make_cfg, f, "data.source.rating_min=1").setup()
    assert not [r for r in caplog.records if "declared range" in r.getMessage()]


@pytest.mark.parametrize("case", ["one_user", "identical"])
def test_one_user_or_identical_ratings_warn(make_cfg, tmp_path, caplog, case):
    if case == "one_user":
        rows = [f"7,{m},{1 + m % 5},0" for m in range(1, 40)]
        expect = "only one user"
    else:
        rows = [f"{u},{m},4,0" for u in range(1, 20) for m in range(1, 10)]
        expect = "every rating is 4: there is nothing to learn"
    f = tmp_path / "r.csv"
    f.write_text("userId,movieId,rating,timestamp\n" + "\n".join(rows) + "\n")
    with caplog.at_level(logging.WARNING, logger="deepcf"):
        try:
            _dm(make_cfg, f, "data.source.rating_min=1").setup()
        except DeepCFError:
            pass  # a one-user split may also be refused; the warning came first
    assert any(expect in r.getMessage() and str(f) in r.getMessage() for r in caplog.records)


# -- a trained run shared by the checkpoint and run-dir cases ------------------------------------
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, train_run):
    return train_run(tmp_path_factory.mktemp("trained") / "run",
                     ["data=synthetic", "trainer.max_epochs=2", "model.net.hidden=[16]",
                      "logger=none"])


def test_truncated_sidecar_is_one_line(run_dir, tmp_path):
    from deepcf.serving.sidecar import read_sidecar

    model = tmp_path / "model.onnx"
    model.write_bytes((run_dir / "model.onnx").read_bytes())
    side = (run_dir / "model.deepcf.npz").read_bytes()
    (tmp_path / "model.deepcf.npz").write_bytes(side[: len(side) // 2])
    with pytest.raises(DeepCFError, match=r"model.deepcf.npz: not a deepcf sidecar, truncated "
                                          r"or corrupt .*python -m deepcf.export RUN_DIR"):
        read_sidecar(model)


def _resume_cfg(make_cfg, ckpt_path) -> object:
    return make_cfg("data=synthetic", "trainer.max_epochs=3", "model.net.hidden=[16]",
                    "logger=none", f"ckpt_path={ckpt_path}")


def _copy_run(run_dir: Path, dest: Path) -> Path:
    """A copy of the shared run to spoil (a copied run dir resumes where it is now)."""
    import shutil

    shutil.copytree(run_dir, dest)
    return dest


@pytest.mark.parametrize("case", ["missing", "truncated", "empty", "pickle"])
def test_bad_ckpt_path_is_one_line_and_runs_no_code(make_cfg, run_dir, tmp_path, case):
    run = _copy_run(run_dir, tmp_path / "copy")
    marker = tmp_path / "payload-ran"
    ckpt = run / "checkpoints" / "last.ckpt"
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    if case == "missing":
        target, match = tmp_path / "nope.ckpt", r"nope.ckpt: no such checkpoint or run dir"
    else:
        data = ckpt.read_bytes()
        if case == "truncated":
            ckpt.write_bytes(data[: len(data) // 3])
            match = r"last.ckpt: not a readable checkpoint, truncated or corrupt"
        elif case == "empty":
            ckpt.write_bytes(b"")
            match = r"last.ckpt: not a readable checkpoint, truncated or corrupt"
        else:
            torch.save({"state_dict": {}, "loops": {}, "x": Payload(marker)}, ckpt)
            match = r"last.ckpt: refused: it holds Python objects other than tensors"
        target = run
    with pytest.raises(CheckpointError, match=match):
        train(_resume_cfg(make_cfg, target))
    assert not marker.exists()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before


@pytest.mark.parametrize("where", ["outside", "inside"])
def test_a_best_checkpoint_path_from_checkpoint_state_is_checked(make_cfg, run_dir, tmp_path,
                                                                 where):
    """Lightning reloads ModelCheckpoint's best_model_path from the checkpoint and loads that
    file for testing: a crafted path outside the run, or a pickle inside it, is refused."""
    run = _copy_run(run_dir, tmp_path / "copy")
    marker = tmp_path / "payload-ran"
    evil = (tmp_path if where == "outside" else run / "checkpoints") / "evil.ckpt"
    torch.save({"state_dict": {}, "x": Payload(marker)}, evil)
    ckpt = run / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, weights_only=True)
    for name, cb in state["callbacks"].items():
        if name.startswith("ModelCheckpoint"):
            cb["best_model_path"] = str(evil)
    torch.save(state, ckpt)
    match = "outside" if where == "outside" else "evil.ckpt: refused: it holds Python objects"
    with pytest.raises(CheckpointError, match=match):
        train(_resume_cfg(make_cfg, run))
    assert not marker.exists() and evil.exists()


def test_onnx_export_refuses_a_best_path_outside_the_checkpoints_dir(tmp_path):
    from types import SimpleNamespace

    from deepcf.training.callbacks import checked_best

    trainer = SimpleNamespace(checkpoint_callback=SimpleNamespace(dirpath=str(tmp_path / "c")))
    with pytest.raises(CheckpointError, match="is not in"):
        checked_best(trainer, str(tmp_path / "elsewhere.ckpt"))
    assert checked_best(trainer, str(tmp_path / "c" / "x.ckpt"))


# -- a run dir's config is data, not code (point 2) -------------------------------------------
def _foreign_run(run_dir: Path, tmp_path: Path, marker: Path) -> Path:
    run = _copy_run(run_dir, tmp_path / "foreign")
    from omegaconf import OmegaConf

    conf = run / "config_resolved.yaml"
    cfg = OmegaConf.load(conf)
    cfg.data = {"_target_": "shutil.copyfile", "src": str(conf), "dst": str(marker)}
    OmegaConf.save(cfg, conf)
    return run


def test_a_run_dir_config_cannot_name_a_foreign_target(run_dir, tmp_path, monkeypatch):
    from deepcf.serving.runs import ALLOW_ENV, check_targets, run_datamodule

    monkeypatch.setenv(ALLOW_ENV, "")
    marker = tmp_path / "copied"
    run = _foreign_run(run_dir, tmp_path, marker)
    with pytest.raises(TargetNotAllowed, match=r"config_resolved.yaml: data._target_=shutil."
                                               r"copyfile is not one of deepcf's data classes.*"
                                               r"--allow-target shutil.copyfile"):
        run_datamodule(run)
    assert not marker.exists()
    # nested targets and interpolations are refused too; deepcf's own classes pass
    with pytest.raises(TargetNotAllowed, match=r"data.source._target_=os.system"):
        check_targets({"_target_": "deepcf.data.datamodule.RatingsDataModule",
                       "source": {"_target_": "os.system"}}, Path("c.yaml"))
    with pytest.raises(TargetNotAllowed, match="interpolation"):
        check_targets({"source": "${oc.create:{}}"}, Path("c.yaml"))
    check_targets({"_target_": "deepcf.data.datamodule.RatingsDataModule",
                   "source": {"_target_": "deepcf.data.sources.Synthetic"}}, Path("c.yaml"))
    with pytest.raises(TargetNotAllowed):  # deepcf, but not a data class
        check_targets({"_target_": "deepcf.serving.sidecar.write_sidecar"}, Path("c.yaml"))
    # allowed explicitly: the user's own source class on their own runs
    monkeypatch.setenv(ALLOW_ENV, "mypkg.,shutil.copyfile")
    check_targets({"_target_": "mypkg.sources.MySource"}, Path("c.yaml"))
    check_targets({"_target_": "shutil.copyfile"}, Path("c.yaml"))


def test_cli_evaluate_refuses_a_foreign_target_in_one_line(run_dir, tmp_path):
    marker = tmp_path / "copied"
    run = _foreign_run(run_dir, tmp_path, marker)
    r = _cli("deepcf.evaluate", str(run), cwd=tmp_path, env={"DEEPCF_ALLOW_TARGETS": ""})
    line = _one_line(r, "deepcf.evaluate")
    assert "is not one of deepcf's data classes" in line and "--allow-target" in line
    assert not marker.exists()


# -- W&B with a key but no network (point 5) -----------------------------------------------------
def test_wandb_with_a_key_but_no_network_runs_offline(tmp_path, monkeypatch, caplog):
    from deepcf.training.loggers import wandb_logger, wandb_reachable

    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)  # a fake key
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # a closed local port
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert "cannot reach http://127.0.0.1:9" in wandb_reachable(timeout=2)
    with caplog.at_level(logging.WARNING, logger="deepcf"):
        lg = wandb_logger(mode="auto", project="deepcf", save_dir=str(tmp_path))
    assert os.environ["WANDB_MODE"] == "offline" and lg._offline
    assert any("cannot reach http://127.0.0.1:9" in r.getMessage() and "running offline"
               in r.getMessage() for r in caplog.records)


# -- a locked run dir (point 1) ------------------------------------------------------------------
def test_a_locked_run_dir_is_refused_in_one_line(tmp_path):
    import fcntl

    from deepcf.training.rundir import lock_run_dir, unlock_run_dir

    run = tmp_path / "run"
    run.mkdir()
    fd = os.open(run / ".lock", os.O_RDWR | os.O_CREAT)  # another process's lock
    os.write(fd, b"pid 12345 on elsewhere\n")
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        with pytest.raises(RunLocked, match=r"run: in use by another deepcf process \(pid "
                                            r"12345 on elsewhere\)"):
            lock_run_dir(run)
    finally:
        os.close(fd)
    lock_run_dir(run)  # free again once that process is gone
    unlock_run_dir(run)


def test_cli_ckpt_path_missing_is_one_line(tmp_path):
    r = _cli("deepcf.train", "data=synthetic", "ckpt_path=nope.ckpt", cwd=tmp_path)
    line = _one_line(r, "deepcf.train")
    assert "ckpt_path=nope.ckpt: no such checkpoint or run dir" in line
    assert not (tmp_path / "outputs").exists()


def test_too_few_ratings_for_a_validation_split_is_one_line(tmp_path, cache_dir):
    from deepcf.data.datamodule import RatingsDataModule
    from deepcf.data.sources import RatingsFile
    from deepcf.errors import DataError

    tiny = tmp_path / "three.csv"
    tiny.write_text("userId,movieId,rating\n1,2,4\n1,3,5\n2,2,3\n")
    dm = RatingsDataModule(RatingsFile(str(tiny)), cache_dir=str(cache_dir))
    with pytest.raises(DataError,
                       match="no val ratings: 3 rating.s. split by data.protocol "
                             "kind=random val_fraction=0.1"):
        dm.setup()
