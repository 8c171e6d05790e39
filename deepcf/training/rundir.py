"""Run dirs you can trust: a lock while a run writes one, resume targets, safe checkpoints.

- `lock_run_dir`: an exclusive `flock` on `RUN/.lock`, held by the process that trains into (or
  resumes) the run dir; a second process is refused with one line. The kernel drops the lock when
  the process ends, however it ends (SIGKILL included), so a killed run can be resumed at once.
- `resolve_resume`: `ckpt_path=last` (the newest run dir of the task with checkpoints/last.ckpt),
  `ckpt_path=RUN_DIR` (its last.ckpt) or `ckpt_path=RUN/checkpoints/NAME.ckpt` -> (file, run dir).
- `refuse_finished`: a new run into a run dir that already holds a run is one line saying what
  to do (resume it with ckpt_path=, or choose another dir);
- `check_checkpoint`: the file loads with `torch.load(weights_only=True)` (a pickle that would run
  code is refused before Lightning sees it) and every path in its ModelCheckpoint state lies in
  RUN/checkpoints (Lightning reloads `best_model_path` from the state, loads the best checkpoint
  for testing, and deletes files of `best_k_models` when better ones arrive).
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

from deepcf.errors import CheckpointError, ConfigError, RunLocked
from deepcf.files import inside, safe_load

LOCK_NAME = ".lock"
_HELD: dict[str, int] = {}


def is_rank_zero() -> bool:
    """True in the process that owns the run dir (rank 0 of a DDP job, or no DDP at all)."""
    from lightning_fabric.utilities.rank_zero import _get_rank

    return (_get_rank() or 0) == 0


def lock_run_dir(run_dir: str | Path) -> Path:
    """Take the run dir's lock for this process (a no-op if it already holds it)."""
    run_dir = Path(run_dir)
    key = str(run_dir.resolve())
    if key in _HELD:
        return run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = lock_holder(fd)
        owner = (f"pid {holder}" if holder is not None
                 else os.read(fd, 200).decode(errors="replace").strip())
        os.close(fd)
        raise RunLocked(f"{run_dir}: in use by another deepcf process ({owner or 'unknown'}); "
                        f"wait until it ends (a run dir takes one run or resume at a time)"
                        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
    _HELD[key] = fd
    remove_stale_temporaries(run_dir)
    return run_dir


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """The temporary files of atomic writes a killed process left (`.NAME.XXXX.tmp*`, never
    under a final name); only the lock holder calls this, so none is being written."""
    gone = []
    for folder in (run_dir, run_dir / "checkpoints"):
        for p in folder.glob(".*.tmp*") if folder.is_dir() else []:
            if p.is_file():
                p.unlink(missing_ok=True)
                gone.append(p)
    return gone


def lock_holder(fd: int) -> int | None:
    """The pid of the process holding the flock on `fd`'s file (Linux /proc/locks), else None.
    The lock file's text names the last process that took the lock, which need not be the one
    holding it now."""
    try:
        st = os.fstat(fd)
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    want = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in lines:
        parts = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF" ("->" marks a blocked waiter)
        if "->" in parts or len(parts) < 6 or parts[1] != "FLOCK":
            continue
        if parts[5] == want or parts[5].endswith(f":{st.st_ino}"):
            try:
                pid = int(parts[4])
            except ValueError:
                continue
            if pid != os.getpid():
                return pid
    return None


def unlock_run_dir(run_dir: str | Path) -> None:
    fd = _HELD.pop(str(Path(run_dir).resolve()), None)
    if fd is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


RESUME_FORMS = "ckpt_path takes last, a run dir, or RUN/checkpoints/NAME.ckpt"


def run_in(run_dir: str | Path) -> str | None:
    """What shows that `run_dir` holds a run already (its config, metrics or a checkpoint),
    or None for a fresh dir (Hydra's own .hydra/ and train.log do not count)."""
    run_dir = Path(run_dir)
    for name in ("metrics.json", "config_resolved.yaml", "model.onnx"):
        if (run_dir / name).exists():
            return name
    ckpts = sorted((run_dir / "checkpoints").glob("*.ckpt")) if run_dir.is_dir() else []
    return f"checkpoints/{ckpts[0].name}" if ckpts else None


def refuse_finished(run_dir: str | Path, key: str = "hydra.run.dir") -> None:
    """A new run into a dir that holds a run would mix two runs' checkpoints and replace its
    metrics, model and config: one line saying what to do instead."""
    found = run_in(run_dir)
    if found is None:
        return
    what = "finished run" if found in ("metrics.json", "model.onnx") else "run"
    raise ConfigError(f"{key}={run_dir}: holds a {what} ({found}); a new run is refused there: "
                      f"resume it with ckpt_path={run_dir}, or give a new dir (or none: each "
                      f"run gets its own)")


def resolve_resume(ckpt_path: str, log_dir: str | Path, task_name: str) -> tuple[Path, Path]:
    """(checkpoint file, run dir) of a `ckpt_path=` value; one line if there is none."""
    if str(ckpt_path) == "last":
        runs_dir = Path(log_dir) / task_name / "runs"
        runs = sorted(p.parent.parent for p in runs_dir.glob("*/checkpoints/last.ckpt"))
        if not runs:
            raise CheckpointError(f"ckpt_path=last: no run under {runs_dir} has "
                                  f"checkpoints/last.ckpt (nothing to resume)")
        return runs[-1] / "checkpoints" / "last.ckpt", runs[-1]
    p = Path(str(ckpt_path)).expanduser()
    if p.is_dir():
        last = p / "checkpoints" / "last.ckpt"
        if not last.is_file():
            raise CheckpointError(f"ckpt_path={p}: this dir has no checkpoints/last.ckpt "
                                  f"(nothing to resume; {RESUME_FORMS})")
        return last, p
    if p.is_file():
        run = p.parent.parent
        if p.parent.name != "checkpoints" or not (run / "config_resolved.yaml").is_file():
            raise CheckpointError(f"ckpt_path={p}: not inside a deepcf run dir "
                                  f"(RUN/checkpoints/NAME.ckpt); {RESUME_FORMS}")
        return p, run
    raise CheckpointError(f"ckpt_path={p}: no such checkpoint or run dir ({RESUME_FORMS})")


def check_checkpoint(path: str | Path, run_dir: str | Path) -> tuple[dict, bool]:
    """A checkpoint safe to resume into `run_dir`: weights-only loadable, and every file its
    ModelCheckpoint state names lies in RUN/checkpoints. A run dir that was moved (its state
    names the checkpoints dir it was trained in) has those paths mapped to where it is now.
    Returns (checkpoint, whether paths were mapped: then resume from a rewritten copy)."""
    ckpt = safe_load(path)
    if "loops" not in ckpt:
        raise CheckpointError(f"{path}: holds weights only, no training state to resume from")
    folder = os.path.realpath(Path(run_dir) / "checkpoints")
    moved = False
    for name, state in (ckpt.get("callbacks") or {}).items():
        if not str(name).startswith("ModelCheckpoint") or not isinstance(state, dict):
            continue
        old = state.get("dirpath")
        if old and os.path.realpath(old) != folder:
            old = os.path.realpath(old)

            def mapped(p, old=old):
                rp = os.path.realpath(p)
                return os.path.join(folder, os.path.relpath(rp, old)) if inside(rp, old) else p

            for k in ("best_model_path", "kth_best_model_path", "last_model_path"):
                if state.get(k):
                    state[k] = mapped(state[k])
            state["best_k_models"] = {mapped(k): v for k, v in
                                      (state.get("best_k_models") or {}).items()}
            state["dirpath"] = folder
            moved = True
        paths = [state.get(k) for k in ("best_model_path", "kth_best_model_path",
                                        "last_model_path")]
        paths += list((state.get("best_k_models") or {}).keys())
        for p in paths:
            if p and not inside(p, folder):
                raise CheckpointError(f"{path}: refused: its ModelCheckpoint state names {p}, "
                                      f"outside {folder}")
        best = state.get("best_model_path")
        if best and Path(best).is_file() and Path(best).resolve() != Path(path).resolve():
            safe_load(best)  # the best checkpoint is loaded for testing: weights only, too
    return ckpt, moved
