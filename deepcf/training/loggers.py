"""Logger factories that keep runs from failing or hanging for want of a network."""

from __future__ import annotations

import json
import logging
import math
import netrc
import os
import re
from pathlib import Path

log = logging.getLogger(__name__)


def wandb_api_key_present() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_reachable(timeout: float = 3.0) -> str | None:
    """None when W&B's server (WANDB_BASE_URL, default https://api.wandb.ai) accepts a TCP
    connection within `timeout` seconds, else why not (one short phrase)."""
    import socket
    import threading
    from urllib.parse import urlparse

    url = os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai"
    u = urlparse(url)
    port = u.port or (443 if u.scheme == "https" else 80)
    result: list[str | None] = []

    def probe() -> None:
        try:
            with socket.create_connection((u.hostname or "", port), timeout=timeout):
                result.append(None)
        except (OSError, ValueError) as e:
            result.append(f"cannot reach {url} ({getattr(e, 'strerror', None) or e})")

    # in a thread: a name lookup without network can block longer than the socket timeout
    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    return result[0] if result else f"cannot reach {url} (no answer in {timeout:g} s)"


def wandb_mode(mode: str = "auto") -> str:
    """The W&B mode to run in: "auto" is online only with an API key, else offline; WANDB_MODE
    in the environment wins; online without a key or without a network is offline (a warning)."""
    env_mode = os.environ.get("WANDB_MODE")
    if env_mode:
        mode = env_mode
    elif mode == "auto":
        mode = "online" if wandb_api_key_present() else "offline"
    if mode == "online" and not wandb_api_key_present():
        log.warning("wandb: no API key found; running offline")
        mode = "offline"
    if mode == "online":  # a key but no network: offline now, not a 30 s hang and a traceback
        why = wandb_reachable()
        if why:
            log.warning("wandb: %s; running offline (upload later with `wandb sync "
                        "RUN_DIR/wandb/offline-run-*`)", why)
            mode = "offline"
    os.environ["WANDB_MODE"] = mode
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_INIT_TIMEOUT", "30")
    return mode


def wandb_logger(mode: str = "auto", log_model_artifact: bool = False, **kwargs):
    """A WandbLogger that runs offline unless an API key is set and mode allows online.

    mode: "auto" (online only with an API key, else offline), "online", "offline", "disabled".
    WANDB_MODE in the environment wins over the config. Offline runs land in the run dir and
    can be uploaded later with `wandb sync <run dir>/wandb/offline-run-*`.
    log_model_artifact: when the run ends, log model.onnx and its sidecar as a versioned W&B
    artifact (see publish_to_wandb).
    """
    from pytorch_lightning.loggers import WandbLogger

    mode = wandb_mode(mode)
    offline = mode in ("offline", "disabled")
    logger = WandbLogger(offline=offline, mode=mode, **kwargs)
    logger.deepcf_model_artifact = bool(log_model_artifact)
    return logger


def mode_now() -> str | None:
    """The mode W&B runs in (it calls offline "dryrun" in WANDB_MODE)."""
    mode = os.environ.get("WANDB_MODE")
    return "offline" if mode == "dryrun" else mode


def sweep_group() -> str | None:
    """`${deepcf.wandb_group:}`: the W&B group of a run: DEEPCF_WANDB_GROUP if set (the experiment
    tables set it), else in a multirun the sweep dir's name (the same for every job of the sweep,
    whichever process or SLURM node runs it), else none."""
    if os.environ.get("DEEPCF_WANDB_GROUP"):
        return os.environ["DEEPCF_WANDB_GROUP"]
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        if hc.mode == RunMode.MULTIRUN:
            return os.path.basename(os.path.normpath(str(hc.sweep.dir)))
    except Exception:  # no Hydra (a config composed by hand): no group
        pass
    return None


def run_name(task_name: str) -> str:
    """`${deepcf.wandb_name:${task_name}}`: the W&B run name: the task, and in a multirun the
    job's number and overrides (its runs are told apart in the group)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        if hc.mode == RunMode.MULTIRUN:
            return f"{task_name}-{hc.job.num} {hc.job.override_dirname}".strip()[:128]
    except Exception:
        pass
    return task_name


def artifact_name(experiment: str) -> str:
    """One artifact name per experiment, so that its runs are versions v0, v1, ... of it."""
    return "deepcf-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", experiment or "custom")


SUMMARY_KEYS = ("experiment", "status", "epochs", "seed", "data", "run_dir")
RUN_INFO = "wandb.json"  # the run dir's record of its W&B run, for deepcf.evaluate --wandb


def publish_to_wandb(loggers: list, summary: dict, out_dir: Path) -> None:
    """What the dashboard shows of a finished run, from rank 0: the final metrics in the run's
    summary (test/*, val/rmse_best, status), the loss-curve image, the ONNX model and its sidecar
    as a versioned artifact (with log_model_artifact), and RUN/wandb.json naming the W&B run."""
    import wandb

    for lg in loggers:
        if type(lg).__name__ != "WandbLogger":
            continue
        run = lg.experiment
        run.summary.update({
            key: None if isinstance(value, float) and not math.isfinite(value) else value
            for key, value in summary.items()
            if key in SUMMARY_KEYS or ("/" in key and isinstance(value, (int, float)))})
        png = out_dir / "loss_curve.png"
        if png.is_file():
            run.log({"loss_curve": wandb.Image(str(png))})
        onnx = summary.get("onnx")
        if getattr(lg, "deepcf_model_artifact", False) and onnx:
            art = wandb.Artifact(artifact_name(summary.get("experiment")), type="model",
                                 metadata={k: summary.get(k) for k in (
                                     "experiment", "status", "seed", "data", "test/rmse",
                                     "test/mae", "val/rmse_best", "run_dir")})
            art.add_file(onnx, name="model.onnx")
            sidecar = Path(onnx).with_suffix(".deepcf.npz")
            if sidecar.is_file():
                art.add_file(str(sidecar), name="model.deepcf.npz")
            run.log_artifact(art)
        (out_dir / RUN_INFO).write_text(json.dumps({
            "id": run.id, "name": run.name, "project": run.project, "group": run.group or None,
            "mode": mode_now()}, indent=2) + "\n")


def log_eval_run(run_dir: Path, result: dict, mode: str = "auto") -> str:
    """`deepcf.evaluate RUN --wandb`: the evaluation as a W&B run of its own, linked to the
    training run (its group, job type eval, the training run's id in the config); returns the
    eval run's id."""
    import wandb

    info_file = Path(run_dir) / RUN_INFO
    info = json.loads(info_file.read_text()) if info_file.is_file() else {}
    if not info:
        log.warning("wandb: %s has no %s (trained without W&B): the eval run is not grouped "
                    "with a training run", run_dir, RUN_INFO)
    mode = wandb_mode(mode)
    run = wandb.init(project=info.get("project") or "deepcf", group=info.get("group"),
                     job_type="eval", name=f"{info.get('name') or Path(run_dir).name}-eval",
                     dir=str(run_dir), mode=mode, config={
                         "train_run_id": info.get("id"), "train_run_dir": str(run_dir),
                         "model": result.get("model"), "data": result.get("data"),
                         "ks": result.get("ks"), "threshold": result.get("threshold"),
                         "excluded": result.get("excluded")})
    try:
        run.summary.update({f"test/{key}": value for part in ("rating", "ranking", "topn")
                            for key, value in (result.get(part) or {}).items()})
        return run.id
    finally:
        run.finish()
