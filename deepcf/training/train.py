"""Fit and test one run from a composed config (`python -m deepcf.train` is its command line).

Seeds, instantiates data, model, callbacks, loggers and trainer from the Hydra config, fits,
tests the best checkpoint, writes the resolved config, metrics.json, checkpoints, the ONNX model
and a loss-curve PNG into the run dir, prints a short summary, and returns the metrics (the
command returns `optimized_metric`, `val/rmse_best`, so that `-m` sweeps and sweeper plugins
work).

`refit=true`: the fit on the split's training part, scored on its validation carve, selects
(the epochs early stopping chose, by the best checkpoint; a closed form's one pass); then the
same config is fitted again from scratch (same seed, same optimizer and scheduler, the same run
assembly) on all of the training ratings (train + the carve) for the chosen number of epochs,
with nothing held out, and that model is the run's: it is tested (`test/...`), saved as
checkpoints/refit.ckpt and exported to ONNX. The carve's model stays in the run dir
(checkpoints/best.ckpt's epoch file, `best_checkpoint`) with its best validation score
(`val/..._best`, the optimized metric) and its own test score (`carve/test/...`); metrics.json
says what the refit cost (`refit/seconds`, `refit/epochs`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import warnings
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from deepcf.errors import ConfigError, TrainingInterrupted
from deepcf.files import safe_load, write_text
from deepcf.training.assembly import (
    assemble,
    build_module,
    build_trainer,
    refit_datamodule,
    resolve_monitors,
)
from deepcf.training.callbacks import OnnxExport, ResumeState, checked_best
from deepcf.training.config import build_all
from deepcf.training.loggers import publish_to_wandb
from deepcf.training.rundir import (
    check_checkpoint,
    is_rank_zero,
    lock_run_dir,
    refuse_finished,
    resolve_resume,
    unlock_run_dir,
)

log = logging.getLogger("deepcf.train")


def quiet_lightning() -> None:
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero",
                 "pytorch_lightning.accelerators.cuda", "lightning_fabric.utilities.seed"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*is smaller than the logging interval.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")
    # held-out metrics are torchmetrics objects, synced across DDP ranks by compute()
    warnings.filterwarnings("ignore", ".*when logging on epoch level in distributed.*")
    # run dirs are unique, so a non-empty one is a resume: its checkpoints are wanted, and its
    # csv/metrics.csv is kept and appended to (keep_csv_history), not deleted as this warns
    warnings.filterwarnings("ignore", ".*Checkpoint directory .* exists and is not empty.*")
    warnings.filterwarnings("ignore", ".*Previous log files in this directory will be deleted.*")


def experiment_name() -> str:
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get().runtime.choices.get("experiment") or "custom"
    except Exception:
        return "custom"


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit and test from a composed config; returns the final metrics as floats.

    `ckpt_path` (last, a run dir, or RUN/checkpoints/NAME.ckpt) resumes that run in its own run
    dir. The run dir is locked while this process writes it (rank 0 of a DDP job holds the lock
    and alone writes metrics.json, exports and prints). Raises TrainingInterrupted on Ctrl-C.
    """
    quiet_lightning()
    rank0 = is_rank_zero()
    resume = None
    if cfg.get("ckpt_path"):
        resume, run_dir = resolve_resume(cfg.ckpt_path, cfg.paths.log_dir, cfg.task_name)
        with open_dict(cfg):  # a resume continues in the run's own dir
            cfg.paths.output_dir = str(run_dir)
    out_dir = Path(cfg.paths.output_dir)
    if rank0:
        lock_run_dir(out_dir)
        if resume is None:
            try:
                refuse_finished(out_dir, "paths.output_dir")
            except ConfigError:
                unlock_run_dir(out_dir)
                raise
    try:
        return _train(cfg, out_dir, resume, rank0)
    finally:
        if rank0:
            unlock_run_dir(out_dir)


def _train(cfg: DictConfig, out_dir: Path, resume: Path | None, rank0: bool) -> dict:
    import pytorch_lightning as pl


    out_dir.mkdir(parents=True, exist_ok=True)
    resolved = OmegaConf.to_container(
        OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)
    moved = None
    if resume is not None:
        ckpt, was_moved = check_checkpoint(resume, out_dir)
        epoch = ckpt.get("epoch", 0)
        moved = ckpt if was_moved else None  # resumed from a copy naming today's paths
        del ckpt
        check_same_run(resolved, out_dir, cfg.ckpt_path)
        max_epochs = cfg.trainer.get("max_epochs")
        if max_epochs not in (None, -1) and epoch >= max_epochs:
            raise ConfigError(f"ckpt_path={cfg.ckpt_path}: {resume} is at epoch {epoch + 1}, "
                              f"past trainer.max_epochs={max_epochs}: set trainer.max_epochs "
                              f"to more than {epoch + 1} to train on")
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True, verbose=False)

    dm, model = assemble(cfg)
    resolve_monitors(cfg, model)
    callbacks = build_all(cfg.get("callbacks"), "callbacks") + [ResumeState()]
    loggers = build_all(cfg.get("logger"), "logger")
    refits = refit_on(cfg)
    # a refit run exports the refit model: the carve's trainer leaves the export to the refit's
    carve_callbacks = [c for c in callbacks if not (refits and isinstance(c, OnnxExport))]
    trainer = build_trainer(cfg, carve_callbacks, loggers)

    if rank0 and resume is None:  # a resume keeps the run's own config
        write_text(out_dir / "config_resolved.yaml", OmegaConf.to_yaml(resolved))
    if rank0 and resume is not None:
        keep_csv_history(loggers)
    for lg in loggers:
        lg.log_hyperparams(resolved)

    metrics: dict[str, float] = {}
    wandb_on = any(type(lg).__name__ == "WandbLogger" for lg in loggers)
    try:
        moved_box, moved = [moved], None  # _fit_test drops the copy before fitting (memory)
        summary = _fit_test(cfg, trainer, model, dm, callbacks, resume, moved_box, out_dir,
                            metrics)
        if rank0 and wandb_on:
            publish_to_wandb(loggers, summary, out_dir)
    finally:
        if wandb_on:
            import wandb

            wandb.finish()
    if rank0:
        write_text(out_dir / "metrics.json", strict_json(summary))
        _print_summary(summary)
    return summary


def _fit_test(cfg, trainer, model, dm, callbacks, resume, moved_box: list, out_dir: Path,
              metrics: dict) -> dict:
    """Fit (from `resume` if set), test the best checkpoint; the run's summary. `moved_box`
    holds the checkpoint of a moved run dir (or None), taken out before fitting."""
    moved = moved_box.pop()
    with interrupt_as(trainer, cfg, out_dir):
        if cfg.get("train", True):
            lightning_ckpt = resume
            if moved is not None:  # the run dir was moved since that checkpoint
                import torch

                lightning_ckpt = out_dir / "checkpoints" / f".moved-{os.getpid()}.ckpt"
                torch.save(moved, lightning_ckpt)
                del moved
            start = time.monotonic()
            try:
                trainer.fit(model, datamodule=dm, weights_only=True,
                            ckpt_path=str(lightning_ckpt) if resume else None)
            finally:
                if lightning_ckpt != resume:
                    lightning_ckpt.unlink(missing_ok=True)
            metrics["fit/seconds"] = round(time.monotonic() - start - sum(
                getattr(c, "seconds", 0.0) for c in callbacks if isinstance(c, OnnxExport)
                and c in trainer.callbacks), 2)
            metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
            # a resume after the last epoch trains nothing: the finished fit's metrics
            metrics.update(next(c for c in callbacks if isinstance(c, ResumeState)).fit_metrics)
        if cfg.get("test", True):
            best = getattr(trainer.checkpoint_callback, "best_model_path", "")
            if best:
                checked_best(trainer, best)
            trainer.test(model, datamodule=dm, ckpt_path="best" if best else None,
                         verbose=False, weights_only=True)
            metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
            metrics["best_checkpoint"] = best or None
        carve_epochs = trainer.current_epoch
        if refit_on(cfg):
            model, dm = refit(cfg, trainer, model, dm, callbacks, out_dir, metrics)

    onnx = next((c.exported for c in callbacks if hasattr(c, "exported")), None)
    return {
        "experiment": experiment_name(),
        "status": run_status({**metrics, "metrics": model.metric_keys}),
        "data": dm.matrix.source,
        "orientation": dm.orientation,
        "scores": model.output_kind,
        "metrics": list(model.metric_keys),
        "monitor": model.monitor[0],
        "optimized_metric": cfg.optimized_metric,
        "shape": list(dm.matrix.shape),
        "seed": cfg.get("seed"),
        "epochs": carve_epochs,
        "onnx": str(onnx) if onnx else None,
        "run_dir": str(out_dir),
        "resumed_from": str(resume) if resume else None,
        **metrics,
    }


def refit_on(cfg: DictConfig) -> bool:
    """`refit` (a top-level key, default false) for a run that trains."""
    value = cfg.get("refit", False)
    if not isinstance(value, bool):
        raise ConfigError(f"refit={value!r} must be true or false")
    return value and bool(cfg.get("train", True))


def chosen_epochs(trainer) -> int:
    """The epochs of the carve's selected model: those of the best checkpoint (early stopping's
    choice; a closed form's one pass), else every epoch the carve's fit ran."""
    best = getattr(trainer.checkpoint_callback, "best_model_path", "")
    if best:
        return int(safe_load(checked_best(trainer, best)).get("epoch", 0)) + 1
    return max(int(trainer.current_epoch), 1)


def refit(cfg: DictConfig, trainer, carve_model, carve_dm, callbacks: list, out_dir: Path,
          metrics: dict):
    """Fit the run's config again on train + carve for the carve's chosen epochs, test it,
    save checkpoints/refit.ckpt and export it (the module doc); (refit module, its data)."""
    import pytorch_lightning as pl

    epochs = chosen_epochs(trainer)
    for key in [k for k in metrics if k.startswith("test/")]:
        metrics[f"carve/{key}"] = metrics.pop(key)
    start = time.monotonic()
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
    dm = refit_datamodule(cfg, carve_dm)
    # a net that chose some of its own options on the carve (e.g. a regularisation grid of a
    # closed form) names them in `chosen_options()`: the refit takes them as given
    chosen = getattr(carve_model.net, "chosen_options", None)
    chosen = dict(chosen()) if callable(chosen) else {}
    # the carve's model has been tested and its numbers are in `metrics`: its optimizer state,
    # gradients and weights go before the refit's are made (for a full-batch I-AutoRec at the
    # Movies Dataset's scale they are 3.5 GB, which the refit would otherwise train beside)
    for opt in trainer.optimizers:  # its param groups hold the weights too
        opt.state.clear()
        opt.param_groups.clear()
    carve_model.zero_grad(set_to_none=True)
    carve_model.to("meta")
    refit_cfg = cfg
    if chosen:
        refit_cfg = cfg.copy()
        with open_dict(refit_cfg):
            refit_cfg.model.net.update(chosen)
        metrics["refit/options"] = chosen
    model = build_module(refit_cfg, dm)
    # the export, the progress lines and the resume state; no checkpoint, early stopping,
    # loss curve or validation: nothing is held out
    keep = [c for c in callbacks if isinstance(c, (OnnxExport, ResumeState))
            or type(c).__name__ in ("EpochLines", "RichProgressBar")]
    refit_trainer = build_trainer(cfg, keep, None, max_epochs=epochs, min_epochs=epochs,
                                  limit_val_batches=0, num_sanity_val_steps=0,
                                  enable_checkpointing=False)
    refit_trainer.fit(model, datamodule=dm, weights_only=True)
    export = sum(getattr(c, "seconds", 0.0) for c in keep if isinstance(c, OnnxExport))
    seconds = time.monotonic() - start - export
    path = out_dir / "checkpoints" / "refit.ckpt"
    refit_trainer.save_checkpoint(path, weights_only=True)
    metrics.update({"refit": True, "refit/epochs": epochs, "refit/seconds": round(seconds, 2),
                    "refit/n_train": int(dm.split.train.nnz), "refit/checkpoint": str(path)})
    if cfg.get("test", True):
        refit_trainer.test(model, datamodule=dm, verbose=False)
        metrics.update({k: float(v) for k, v in refit_trainer.callback_metrics.items()
                        if k.startswith("test/")})
    return model, dm


def run_status(metrics: dict) -> str:
    """"diverged" when the final score (test RMSE, else best val RMSE, else the first ranking
    metric, tested or best on val) is not finite."""
    ranked = list(metrics.get("metrics") or [])
    keys = ["test/rmse", "val/rmse_best", *(f"test/{m}" for m in ranked[:1]),
            *(f"val/{m}_best" for m in ranked[:1])]
    key = next((k for k in keys if k in metrics), "test/rmse")
    value = metrics.get(key)
    return "diverged" if value is not None and not math.isfinite(value) else "ok"


def strict_json(summary: dict) -> str:
    """JSON that every parser reads: a non-finite number is null (the status says why)."""
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
             for k, v in summary.items()}
    return json.dumps(clean, indent=2, allow_nan=False) + "\n"


_DATA_KEYS_FREE = ("cache_dir", "cache", "loader", "eval_batch_size")


def _flat(node, prefix: str = "") -> dict:
    """{dotted key: leaf value} of nested dicts."""
    if not isinstance(node, dict) or not node:
        return {prefix.rstrip("."): node}
    out = {}
    for k, v in node.items():
        out.update(_flat(v, f"{prefix}{k}."))
    return out


def check_same_run(resolved: dict, run_dir: Path, ckpt_path) -> None:
    """A resume must train the same model on the same data (split included) as the run."""
    conf = run_dir / "config_resolved.yaml"
    old = OmegaConf.to_container(OmegaConf.load(conf), resolve=False)
    for section in ("data", "model"):
        a, b = dict(old.get(section) or {}), dict(resolved.get(section) or {})
        if section == "data":
            for k in _DATA_KEYS_FREE:
                a.pop(k, None), b.pop(k, None)
        a, b = _flat(a, f"{section}."), _flat(b, f"{section}.")
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                overrides = _run_overrides(run_dir)
                raise ConfigError(
                    f"ckpt_path={ckpt_path}: {key} is {b.get(key)!r} here but "
                    f"{a.get(key)!r} in the run being resumed ({conf}); resume with the run's "
                    f"own overrides" + (f": {' '.join(overrides)}" if overrides else ""))


def _run_overrides(run_dir: Path) -> list[str]:
    try:
        found = OmegaConf.load(run_dir / ".hydra" / "overrides.yaml")
        return [str(o) for o in found if not str(o).startswith("ckpt_path=")]
    except Exception:
        return []


def keep_csv_history(loggers: list) -> None:
    """Lightning's CSV writer deletes an existing metrics.csv; a resume appends to it."""
    for lg in loggers:
        if type(lg).__name__ != "CSVLogger":
            continue
        f = Path(lg.log_dir) / "metrics.csv"
        old = f.read_text() if f.is_file() else ""
        writer = lg.experiment  # creates the writer, which removes the file
        if old:
            f.write_text(old)
            writer.metrics_keys = old.splitlines()[0].split(",")


class interrupt_as:
    """Ctrl-C inside fit/test: Lightning stops gracefully and exits 1; this turns it into
    TrainingInterrupted with the command that resumes the run."""

    def __init__(self, trainer, cfg: DictConfig, out_dir: Path):
        self.trainer, self.cfg, self.out_dir = trainer, cfg, out_dir

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb) -> bool:
        interrupted = kind is KeyboardInterrupt or (
            kind is SystemExit and getattr(self.trainer, "interrupted", False))
        if not interrupted:
            return False
        import signal

        signal.signal(signal.SIGINT, signal.default_int_handler)  # Lightning ignores it now
        last = self.out_dir / "checkpoints" / "last.ckpt"
        if not last.is_file():
            raise TrainingInterrupted(f"before the first epoch ended; no checkpoint in "
                                      f"{self.out_dir} to resume from") from None
        args = " ".join([*_task_overrides(), f"ckpt_path={self.out_dir}"])
        raise TrainingInterrupted(f"{last} is kept; resume with: python -m deepcf.train {args}"
                                  ) from None


def _task_overrides() -> list[str]:
    try:
        from hydra.core.hydra_config import HydraConfig

        return [o for o in HydraConfig.get().overrides.task if not o.startswith("ckpt_path=")
                and not o.startswith("hydra.")]
    except Exception:
        return []


def _fmt(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def _print_summary(s: dict) -> None:
    rates = s.get("scores", "ratings") == "ratings"
    ranked = list(s.get("metrics") or [])
    tested = any(k.startswith("test/") for k in s)  # test=false (a search) scores no test
    best = f"val/{ranked[0]}_best" if ranked else None
    lines = [
        f"deepcf: {s['experiment']} on {s['data']} ({s['shape'][0]} users x {s['shape'][1]} "
        f"movies, rows={s['orientation']}s), {s['epochs']} epochs",
        *([f"  test RMSE {_fmt(s.get('test/rmse'))}  MAE {_fmt(s.get('test/mae'))}  "
           f"({int(s.get('test/n_ratings', 0))} ratings, {int(s.get('test/n_fallback', 0))} "
           f"scored by the training-mean fallback)"] if rates and tested else []),
        *([f"  best val RMSE {_fmt(s.get('val/rmse_best'))}"] if rates else
          ["  no RMSE: a ranking model's outputs are scores, not ratings"]),
        *([("  test " + "  ".join(f"{m} {_fmt(s.get(f'test/{m}'))}" for m in ranked) + "  "
            if tested else "  ") + f"best val {ranked[0]} {_fmt(s.get(best))} (each row's "
           "unseen movies ranked)"] if ranked else []),
        *([] if tested else ["  test split not scored (test=false)"]),
        *([f"  refit on all {int(s['refit/n_train'])} training ratings (train + the carve) for "
           f"the carve's {int(s['refit/epochs'])} epochs: {s['refit/seconds']:.1f} s (the "
           f"carve's fit: {s.get('fit/seconds', 0):.1f} s); the "
           f"carve's model: " + (f"test RMSE {_fmt(s.get('carve/test/rmse'))}" if rates else
                                 f"test {ranked[0]} {_fmt(s.get(f'carve/test/{ranked[0]}'))}")]
          if s.get("refit") else []),
        *([f"  rank with python -m deepcf.evaluate {s['run_dir']} --protocol topn"]
          if not rates and "run_dir" in s else []),
        *(["  training diverged (loss became NaN or inf): try a lower model.optimizer.lr"]
          if run_status(s) == "diverged" else []),
        f"  run dir: {s['run_dir']}",
        f"  ONNX:    {s['onnx'] or 'not exported'}",
    ]
    print("\n".join(lines), flush=True)
