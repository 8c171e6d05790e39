"""Fault injection: special files, overwrites, full disks, truncated artifacts, huge ids,
interpolations and hostile checkpoints each end in one line (exit 2), and nothing of the user's
is lost or left half-written."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from deepcf.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    DeepCFError,
    OutputError,
    RunLocked,
    TargetNotAllowed,
)
from deepcf.files import MAX_LINE, atomic_open, check_output, write_text

BIG = 2**63  # one past int64's largest


def leftovers(folder: Path) -> list[str]:
    """Temporary files an atomic write would leave if it failed to clean up."""
    return [p.name for p in folder.iterdir() if p.name.startswith(".") and ".tmp" in p.name]


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


# --- special files ---------------------------------------------------------------------------

def test_devices_fifos_and_newline_less_files_are_refused_fast(tmp_path):
    from deepcf.data.readers import read_ratings, read_titles
    from deepcf.data.sources import RatingsFile

    with pytest.raises(DataError, match="/dev/zero: is a character device"):
        read_ratings("/dev/zero")
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)  # opening it for reading would block until a writer comes
    with pytest.raises(DataError, match="named pipe"):
        read_ratings(fifo)
    with pytest.raises(DataError, match="named pipe"):
        read_titles(fifo)
    with pytest.raises(DataError, match="named pipe"):  # what a run dir's config names, too
        RatingsFile(path=str(fifo)).cache_key()
    long = tmp_path / "one_line.csv"
    long.write_bytes(b"1" * (MAX_LINE + 10))
    with pytest.raises(DataError, match=r"one_line\.csv:1: a line longer than"):
        read_ratings(long)
    with pytest.raises(DataError, match="a line longer than"):
        read_titles(long)


def _special_inputs(tmp_path: Path) -> list[Path]:
    """/dev/zero, a FIFO and a file with no newline in its first MiB."""
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    long = tmp_path / "no_newline.csv"
    long.write_bytes(b"a" * (MAX_LINE + 10))
    return [Path("/dev/zero"), fifo, long]


def test_train_refuses_special_inputs_in_one_line_before_torch(tmp_path):
    from deepcf.data.sources import RatingsFile
    from deepcf.training.config import check_overrides

    for path in _special_inputs(tmp_path):
        with pytest.raises(DataError, match=f"^{path}"):
            check_overrides(["data=ratings_csv", f"data.source.path={path}"])
        with pytest.raises(DataError, match=f"^{path}"):  # what a run dir's config names
            RatingsFile(path=str(path)).cache_key()
        # the refusal comes from the composed config, before torch or Lightning load
        probe = ("import sys\nfrom deepcf.train import run\ncode = run()\n"
                 "assert 'torch' not in sys.modules and 'pytorch_lightning' not in sys.modules\n"
                 "sys.exit(code)")
        p = subprocess.run([sys.executable, "-c", probe, "data=ratings_csv",
                            f"data.source.path={path}", f"hydra.run.dir={tmp_path / 'run'}"],
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 2, p.stderr[-2000:]
        err = p.stderr.strip()
        assert len(err.splitlines()) == 1 and err.startswith(f"deepcf.train: error: {path}"), err
    gz = tmp_path / "r.csv.gz"  # a compressed file's own bytes have no lines: the reader's bound
    import gzip

    gz.write_bytes(gzip.compress(b"userId,movieId,rating\n1,2,3\n" + b"1,3,4\n" * 400000))
    check_overrides(["data=ratings_csv", f"data.source.path={gz}"])


@pytest.mark.parametrize("command", ["evaluate", "recommend"])
def test_a_run_dir_config_naming_special_inputs_is_one_line(tiny_run, tmp_path, capsys,
                                                            command):
    from omegaconf import OmegaConf

    from deepcf.evaluate import main as evaluate
    from deepcf.recommend import main as recommend
    from deepcf.serving.sidecar import read_sidecar

    uid = str(read_sidecar(tiny_run / "model.onnx").user_ids[0])
    for i, path in enumerate(_special_inputs(tmp_path)):
        run = tmp_path / f"run{i}"
        shutil.copytree(tiny_run, run)
        conf = run / "config_resolved.yaml"
        cfg = OmegaConf.load(conf)
        cfg.data.source = {"_target_": "deepcf.data.sources.RatingsFile", "path": str(path)}
        OmegaConf.save(cfg, conf)
        with pytest.raises(SystemExit) as e:
            if command == "evaluate":
                evaluate([str(run), "--cache-dir", str(tmp_path / "cache"),
                          "--out", str(tmp_path / f"e{i}.json")])
            else:
                recommend([str(run), "--user", uid])
        assert e.value.code == 2 and str(path) in one_line(capsys)


def test_a_run_dir_config_naming_a_fifo_is_one_line(tiny_run, tmp_path):
    from omegaconf import OmegaConf

    from deepcf.serving.runs import run_datamodule

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    fifo = tmp_path / "ratings.csv"
    os.mkfifo(fifo)
    conf = run / "config_resolved.yaml"
    cfg = OmegaConf.load(conf)
    cfg.data.source = {"_target_": "deepcf.data.sources.RatingsFile", "path": str(fifo)}
    OmegaConf.save(cfg, conf)
    with pytest.raises(DataError, match="named pipe"):
        run_datamodule(run, str(tmp_path / "cache"))


# --- overwrites ------------------------------------------------------------------------------

def test_check_output_refuses_existing_files_inputs_dirs_and_missing_folders(tmp_path):
    mine = tmp_path / "mine.csv"
    mine.write_text("keep me\n")
    with pytest.raises(OutputError, match="exists; refusing to overwrite .* .pass --force"):
        check_output(mine)
    assert check_output(mine, force=True) == mine
    with pytest.raises(OutputError, match="own input"):
        check_output(mine, force=True, inputs=[str(mine)])
    link = tmp_path / "link.csv"
    link.symlink_to(mine)
    with pytest.raises(OutputError, match="own input"):  # the same file by another name
        check_output(link, force=True, inputs=[mine])
    with pytest.raises(OutputError, match="is a directory"):
        check_output(tmp_path)
    with pytest.raises(OutputError, match="no such directory"):
        check_output(tmp_path / "nope" / "x.csv")
    assert mine.read_text() == "keep me\n"


def test_recommend_never_overwrites_without_force_nor_its_input(tiny_run, tmp_path, capsys):
    from deepcf.recommend import main
    from deepcf.serving.sidecar import read_sidecar

    card = read_sidecar(tiny_run / "model.onnx")
    uid = str(card.user_ids[0])
    out = tmp_path / "recs.csv"
    out.write_text("the user's own file\n")
    with pytest.raises(SystemExit) as e:
        main([str(tiny_run), "--user", uid, "--csv", str(out)])
    assert e.value.code == 2 and "--force" in one_line(capsys)
    assert out.read_text() == "the user's own file\n"
    ratings = tmp_path / "ratings.csv"
    ratings.write_text(f"userId,movieId,rating\n{uid},{card.item_ids[0]},4\n")
    with pytest.raises(SystemExit):
        main(["--model", str(tiny_run / "model.onnx"), "--ratings", str(ratings), "--user", uid,
              "--csv", str(ratings), "--force"])
    assert "own input" in one_line(capsys)
    assert ratings.read_text().startswith("userId,movieId,rating\n")
    with pytest.raises(SystemExit):
        main([str(tiny_run), "--user", uid, "--csv", str(tmp_path / "nope" / "r.csv")])
    assert "no such directory" in one_line(capsys)
    main([str(tiny_run), "--user", uid, "--csv", str(out), "--force"])
    assert out.read_text().startswith("user_id,") and not leftovers(tmp_path)


def test_evaluate_out_and_export_o_refuse_existing_files(tiny_run, tmp_path, capsys):
    from deepcf.evaluate import main as evaluate
    from deepcf.export import main as export

    out = tmp_path / "metrics.json"
    out.write_text("{}\n")
    with pytest.raises(SystemExit):
        evaluate([str(tiny_run), "--out", str(out)])
    assert "--force" in one_line(capsys) and out.read_text() == "{}\n"
    model = tmp_path / "m.onnx"
    model.write_bytes(b"the user's own model")
    with pytest.raises(SystemExit):
        export([str(tiny_run), "-o", str(model)])
    assert "--force" in one_line(capsys) and model.read_bytes() == b"the user's own model"
    model.unlink()
    side = tmp_path / "m.deepcf.npz"
    side.write_bytes(b"a file export did not create")
    with pytest.raises(SystemExit):
        export([str(tiny_run), "-o", str(model)])
    assert "sidecar" in one_line(capsys) and side.read_bytes() == b"a file export did not create"
    ckpt = next((tiny_run / "checkpoints").glob("*.ckpt"))
    with pytest.raises(SystemExit):
        export([str(ckpt), "-o", str(ckpt), "--force"])
    assert "own input" in one_line(capsys)


def test_report_refuses_existing_outputs(tiny_run, tmp_path, capsys):
    from deepcf.report import main

    (tmp_path / "report.md").write_text("notes\n")
    with pytest.raises(SystemExit):
        main([str(tiny_run), "--out", str(tmp_path)])
    assert "--force" in one_line(capsys) and (tmp_path / "report.md").read_text() == "notes\n"


def test_a_run_dir_holding_a_run_is_refused_for_a_new_run(tiny_run, tmp_path, capsys):
    from deepcf.train import check_run_dir
    from deepcf.training.rundir import refuse_finished

    with pytest.raises(ConfigError, match=f"holds a finished run .metrics.json.*ckpt_path="
                                          f"{tiny_run}"):
        refuse_finished(tiny_run)
    with pytest.raises(ConfigError, match="hydra.run.dir"):
        check_run_dir([f"hydra.run.dir={tiny_run}"], {"ckpt_path": None})
    check_run_dir([f"hydra.run.dir={tiny_run}"], {"ckpt_path": str(tiny_run)})  # a resume
    killed = tmp_path / "killed"
    (killed / "checkpoints").mkdir(parents=True)
    (killed / "checkpoints" / "last.ckpt").write_bytes(b"x")
    with pytest.raises(ConfigError, match="holds a run .checkpoints/last.ckpt"):
        refuse_finished(killed)
    refuse_finished(tmp_path / "fresh")  # a new dir is fine


def test_training_into_a_finished_run_dir_changes_nothing(tiny_run, make_cfg):
    from deepcf.training.train import train

    def stamps():  # the lock file is the lock's, taken and given back
        return {p: p.stat().st_mtime_ns for p in tiny_run.rglob("*")
                if p.is_file() and p.name != ".lock"}

    before = stamps()
    with pytest.raises(ConfigError, match="holds a finished run"):
        train(make_cfg("data=synthetic", "data.source.scale=tiny", output_dir=tiny_run))
    assert stamps() == before


# --- atomic writes and full disks ------------------------------------------------------------

def test_atomic_writes_get_the_mode_open_would_give(tmp_path):
    umask = os.umask(0o022)
    try:
        new = write_text(tmp_path / "new.json", "{}")
        assert new.stat().st_mode & 0o777 == 0o644
        old = tmp_path / "old.json"
        old.write_text("x")
        old.chmod(0o640)
        write_text(old, "{}")
        assert old.stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(umask)


def test_a_full_disk_leaves_the_old_file_and_one_line(tmp_path):
    f = tmp_path / "metrics.json"
    f.write_text('{"old": 1}\n')
    with pytest.raises(OutputError, match=r"metrics\.json: cannot write it \(no space left"):
        with atomic_open(f) as out:
            out.write('{"new": ')
            raise OSError(errno.ENOSPC, "No space left on device")
    assert f.read_text() == '{"old": 1}\n' and not leftovers(tmp_path)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):  # root writes anywhere
            pytest.skip("running as root: a read-only folder is writable")
        with pytest.raises(OutputError, match="permission denied"):
            write_text(ro / "x.json", "{}")
    finally:
        ro.chmod(0o700)


def test_a_full_disk_during_a_checkpoint_keeps_the_last_one(tmp_path, monkeypatch):
    import torch

    from deepcf.training.callbacks import AtomicCheckpointIO

    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(2)}}, path)
    real_save = torch.save

    def full(obj, f, *a, **k):
        f.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OutputError, match="last.ckpt: cannot write it .no space left"):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(2)}}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.equal(torch.load(path, weights_only=True)["state_dict"]["w"], torch.ones(2))
    assert not leftovers(path.parent)


def test_a_full_disk_during_export_leaves_no_partial_model(tiny_run, tmp_path, monkeypatch):
    import deepcf.serving.export as ex

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "model.onnx").unlink()
    (run / "model.deepcf.npz").unlink()

    def full(net, path, example, metadata=None):
        Path(path).write_bytes(b"half a model")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ex, "export_onnx", full)
    with pytest.raises(OutputError, match="model.onnx: cannot write it .no space left"):
        ex.export_run(run, cache_dir=str(tmp_path / "cache"))
    assert not (run / "model.onnx").exists() and not (run / "model.deepcf.npz").exists()
    assert not leftovers(run)


# --- truncated or foreign artifacts ----------------------------------------------------------

def test_truncated_artifacts_of_a_run_dir_are_one_line(tiny_run, tmp_path, capsys):
    from deepcf.evaluate import main as evaluate
    from deepcf.export import main as export
    from deepcf.serving.runs import load_model

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    m = run / "metrics.json"
    m.write_text(m.read_text()[:40])
    for cmd in (lambda: evaluate([str(run), "--out", str(tmp_path / "e.json")]),
                lambda: export([str(run), "-o", str(tmp_path / "x.onnx")])):
        with pytest.raises(SystemExit) as e:
            cmd()
        assert e.value.code == 2 and "metrics.json: not a readable" in one_line(capsys)
    side = run / "model.deepcf.npz"
    side.write_bytes(side.read_bytes()[:100])
    with pytest.raises(DeepCFError, match="truncated or corrupt"):
        load_model(run / "model.onnx")
    ckpt = run / "checkpoints" / "last.ckpt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    from deepcf.files import safe_load

    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        safe_load(ckpt)


def test_a_sidecar_of_another_model_is_refused(tiny_run, tmp_path):
    import onnx

    from deepcf.serving.runs import load_model

    model = tmp_path / "model.onnx"
    shutil.copy(tiny_run / "model.onnx", model)
    shutil.copy(tiny_run / "model.deepcf.npz", tmp_path / "model.deepcf.npz")
    load_model(model)  # the pair as exported
    proto = onnx.load(str(model))
    onnx.helper.set_model_props(proto, {"deepcf.checkpoint": "another run"})
    onnx.save(proto, str(model))  # same width, another file
    with pytest.raises(DeepCFError, match="belongs to another model"):
        load_model(model)


# --- ids, values, interpolations, hostile checkpoints ----------------------------------------

@pytest.mark.parametrize("uid", [str(BIG), str(2**64 + 5), "1e30"])
def test_ids_beyond_int64_are_refused_with_their_line(tmp_path, uid):
    from deepcf.data.readers import read_ratings

    f = tmp_path / "r.csv"
    f.write_text(f"userId,movieId,rating\n1,2,3\n{uid},2,4\n")
    with pytest.raises(DataError, match=r"r\.csv:3: user id .* beyond the 64-bit id range"):
        read_ratings(f)


def test_a_user_id_beyond_int64_on_the_command_line(tiny_run, capsys):
    from deepcf.recommend import main
    from deepcf.serving.recommend import parse_ids

    with pytest.raises(DeepCFError, match="beyond"):
        parse_ids([str(BIG)])
    with pytest.raises(SystemExit) as e:
        main([str(tiny_run), "--user", str(BIG)])
    assert e.value.code == 2 and "beyond" in one_line(capsys)


@pytest.mark.parametrize("override,key", [
    ("trainer.max_epochs=abc", "trainer.max_epochs"),
    ("trainer.max_epochs=0", "trainer.max_epochs"),
    ("model.optimizer.lr=-1", "model.optimizer.lr"),
    ("model.optimizer.lr=abc", "model.optimizer.lr"),
    ("data.batch_size=0", "data.batch_size"),
    ("data.protocol.test_fraction=1.5", "data.protocol.test_fraction"),
])
def test_config_values_of_the_wrong_type_or_range(override, key):
    from deepcf.training.config import check_overrides

    with pytest.raises(ConfigError, match=f"^{key}=.*: must be"):
        check_overrides([override])


def test_a_path_split_by_the_shell_gets_a_hint_to_quote_it():
    from deepcf.training.config import check_overrides

    with pytest.raises(ConfigError, match="quote the whole override: 'data.source.path=/my "
                                          "dir/r.csv'"):
        check_overrides(["data=ratings_csv", "data.source.path=/my", "dir/r.csv"])


def test_run_dir_interpolations_are_refused_unresolved(tiny_run, tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from deepcf.serving.runs import run_datamodule

    monkeypatch.setenv("DEEPCF_TEST_SECRET", "s3cr3t")
    calls = []
    OmegaConf.register_new_resolver("deepcf_test_probe", lambda: calls.append(1) or "x",
                                    replace=True)
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    conf = run / "config_resolved.yaml"
    for value in ("${oc.env:DEEPCF_TEST_SECRET}", "${deepcf_test_probe:}"):
        cfg = OmegaConf.load(conf)
        cfg.data.eval_batch_size = value
        OmegaConf.save(cfg, conf)
        with pytest.raises(TargetNotAllowed, match="eval_batch_size=.*an interpolation") as e:
            run_datamodule(run)
        assert "s3cr3t" not in str(e.value)
    assert calls == []


def test_a_hostile_net_target_is_refused_before_import(tmp_path, monkeypatch):
    from deepcf.models.contract import build_net, net_from_checkpoint

    marker = tmp_path / "imported"
    (tmp_path / "evilnet.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n"
                                         f"class Net: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    state = {"hyper_parameters": {"net": {"target": "evilnet.Net", "config": {}}},
             "state_dict": {}}
    with pytest.raises(TargetNotAllowed, match="ckpt: model.net._target_='evilnet.Net' is not"):
        net_from_checkpoint(state, "ckpt")
    with pytest.raises(TargetNotAllowed):
        build_net({"target": "os.system", "config": {}})
    with pytest.raises(TargetNotAllowed):  # a prefix allows at a dot only
        build_net({"target": "evilnet.Net", "config": {}}, allow=("evil",))
    assert not marker.exists() and "evilnet" not in sys.modules


def test_npz_ratings_are_range_checked(tiny_run, tmp_path):
    from deepcf.serving.runs import read_ratings_source
    from deepcf.serving.sidecar import read_sidecar

    card = read_sidecar(tiny_run / "model.onnx")
    X = sp.csr_matrix(([3.0, 99.0], ([0, 1], [0, 1])), shape=(2, len(card.item_ids)))
    f = tmp_path / "x.npz"
    sp.save_npz(f, X)
    with pytest.raises(DataError, match="row 1, column 1: rating 99 is outside"):
        read_ratings_source(f, card)


# --- the smaller defects ---------------------------------------------------------------------

def test_titles_encoding_line_and_byte(tmp_path):
    from deepcf.data.readers import read_titles

    f = tmp_path / "titles.txt"  # MovieLens u.item is latin-1, whatever its name
    f.write_bytes("1|Toy Story (1995)|x\n2|Caf\xe9 (1996)|y\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"titles\.txt:2: not utf-8 text \(byte 0xe9 at byte 26 "
                                        r"of the file, byte 6 of the line\).*titles_encoding"):
        read_titles(f)
    assert read_titles(f, encoding="latin-1") == {1: "Toy Story (1995)", 2: "Caf\xe9 (1996)"}
    g = tmp_path / "movies.csv"
    g.write_text("movieId,title,genres\n1,Toy Story,Comedy\n2 Jumanji\n")
    with pytest.raises(DataError, match=r"movies\.csv:3: movie id '2 Jumanji' is not"):
        read_titles(g)


def test_line_numbers_count_blank_lines(tmp_path):
    from deepcf.data.readers import read_ratings

    f = tmp_path / "r.csv"
    f.write_text("userId,movieId,rating\n1,2,3\n\n2,2,3\n2,3,x\n")
    with pytest.raises(DataError, match=r"r\.csv:5: rating 'x'"):
        read_ratings(f)


def test_the_lock_message_names_the_holder(tmp_path):
    from deepcf.training.rundir import LOCK_NAME, lock_run_dir

    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(run / LOCK_NAME)!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('locked', flush=True)\ntime.sleep(60)\n")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        (run / LOCK_NAME).write_text("pid 1 on elsewhere\n")  # a stale writer's line
        with pytest.raises(RunLocked, match=f"pid {holder.pid}\\b"):
            lock_run_dir(run)
    finally:
        holder.kill()
        holder.wait()


def test_metrics_json_is_written_whole(tiny_run):
    # every artifact of a run is complete JSON / a loadable file (atomic writes)
    assert json.loads((tiny_run / "metrics.json").read_text())["status"] == "ok"
    assert not leftovers(tiny_run) and not leftovers(tiny_run / "checkpoints")
    assert np.load(tiny_run / "model.deepcf.npz")["model_sha256"].size == 1
