"""Fit and test one run from a composed config (`python -m deepcf.train` is its command line).

Seeds, instantiates data, model, callbacks, loggers and trainer from the Hydra config, fits,
tests the best checkpoint, writes the resolved config, metrics.json, checkpoints, the ONNX model
and a loss-curve PNG into the run dir, prints a short summary, and returns the metrics (the
command returns `optimized_metric`, `val/rmse_best`, so that `-m` sweeps and sweeper plugins
work).
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from deepcf.training.config import build, build_all

log = logging.getLogger("deepcf.train")


def _quiet_lightning() -> None:
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero",
                 "pytorch_lightning.accelerators.cuda", "lightning_fabric.utilities.seed"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*is smaller than the logging interval.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")


def experiment_name() -> str:
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get().runtime.choices.get("experiment") or "custom"
    except Exception:
        return "custom"


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit and test from a composed config; returns the final metrics as floats."""
    import pytorch_lightning as pl

    _quiet_lightning()
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True, verbose=False)

    dm = build(cfg.data, "data")
    dm.setup("fit")
    lo, hi = dm.rating_range
    model = build(cfg.model, "model", width=dm.width, rating_min=lo, rating_max=hi,
                  train_mean=dm.train_mean)
    callbacks = build_all(cfg.get("callbacks"), "callbacks")
    loggers = build_all(cfg.get("logger"), "logger")
    trainer: pl.Trainer = build(cfg.trainer, "trainer", callbacks=callbacks,
                                logger=loggers or False)

    resolved = OmegaConf.to_container(
        OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)
    OmegaConf.save(resolved, out_dir / "config_resolved.yaml")
    for lg in loggers:
        lg.log_hyperparams(resolved)

    metrics: dict[str, float] = {}
    try:
        if cfg.get("train", True):
            trainer.fit(model, datamodule=dm, ckpt_path=cfg.get("ckpt_path"))
            metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
        if cfg.get("test", True):
            best = getattr(trainer.checkpoint_callback, "best_model_path", "")
            trainer.test(model, datamodule=dm, ckpt_path="best" if best else None,
                         verbose=False)
            metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
            metrics["best_checkpoint"] = best or None
    finally:
        if any(type(lg).__name__ == "WandbLogger" for lg in loggers):
            import wandb

            wandb.finish()

    onnx = next((c.exported for c in callbacks if hasattr(c, "exported")), None)
    summary = {
        "experiment": experiment_name(),
        "data": dm.matrix.source,
        "orientation": dm.orientation,
        "shape": list(dm.matrix.shape),
        "seed": cfg.get("seed"),
        "epochs": trainer.current_epoch,
        "onnx": str(onnx) if onnx else None,
        "run_dir": str(out_dir),
        **metrics,
    }
    (out_dir / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    _print_summary(summary)
    return summary


def _fmt(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def _print_summary(s: dict) -> None:
    lines = [
        f"deepcf: {s['experiment']} on {s['data']} ({s['shape'][0]} users x {s['shape'][1]} "
        f"movies, rows={s['orientation']}s), {s['epochs']} epochs",
        f"  test RMSE {_fmt(s.get('test/rmse'))}  MAE {_fmt(s.get('test/mae'))}  "
        f"({int(s.get('test/n_ratings', 0))} ratings, {int(s.get('test/n_fallback', 0))} "
        f"scored by the training-mean fallback)",
        f"  best val RMSE {_fmt(s.get('val/rmse_best'))}",
        *(["  training diverged (loss became NaN or inf): try a lower model.optimizer.lr"]
          if not math.isfinite(s.get("test/rmse", 0.0)) else []),
        f"  run dir: {s['run_dir']}",
        f"  ONNX:    {s['onnx'] or 'not exported'}",
    ]
    print("\n".join(lines), flush=True)


