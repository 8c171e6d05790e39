"""Train an autoencoder: `python -m deepcf.train experiment=scheduler_lr`.

Seeds, instantiates data, model, callbacks, loggers and trainer from the Hydra config, fits,
tests the best checkpoint, writes the resolved config, metrics.json, checkpoints, the ONNX model
and a loss-curve PNG into the run dir, prints a short summary, and returns the optimized metric
(`val/rmse_best`) so that `-m` sweeps and sweeper plugins work.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import warnings
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

import deepcf  # noqa: F401  (registers config resolvers)
from deepcf.errors import ConfigError, DeepCFError, one_line_errors

log = logging.getLogger("deepcf.train")
CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def _quiet_lightning() -> None:
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero",
                 "pytorch_lightning.accelerators.cuda", "lightning_fabric.utilities.seed"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*is smaller than the logging interval.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")


def build(conf: DictConfig, key: str, **kwargs):
    """hydra.utils.instantiate, with failures reported as one line naming the config key."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate
    from omegaconf.errors import OmegaConfBaseException

    try:
        return instantiate(conf, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, DeepCFError):
            raise cause from None
        raise ConfigError(f"{key}: {cause if cause is not None else e}") from None
    except OmegaConfBaseException as e:
        raise ConfigError(f"{key}: {str(e).splitlines()[0]}") from None


def _build_all(group: DictConfig | None, key: str) -> list:
    out = []
    for name, conf in (group or {}).items():
        if isinstance(conf, DictConfig) and "_target_" in conf:
            out.append(build(conf, f"{key}.{name}"))
        elif conf is not None:
            raise ConfigError(f"{key}.{name}: expected a config with _target_, got {conf!r}")
    return out


def experiment_name(cfg: DictConfig) -> str:
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
    model = build(cfg.model, "model", n_items=dm.n_cols, rating_min=lo, rating_max=hi,
                  train_mean=dm.train_mean)
    callbacks = _build_all(cfg.get("callbacks"), "callbacks")
    loggers = _build_all(cfg.get("logger"), "logger")
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
        "experiment": experiment_name(cfg),
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


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    with one_line_errors("deepcf.train"):
        metrics = train(cfg)
        value = metrics.get(cfg.get("optimized_metric") or "")
        return None if value is None else float(value)


_HYDRA_FLAGS = ("-h", "--help", "--hydra-help", "-c", "--cfg", "-i", "--info", "--version",
                "-p", "--package", "--shell-completion", "-sc", "--config-path", "-cp",
                "--config-name", "-cn", "--config-dir", "-cd", "--experimental-rerun")


def _missing_keys(node, prefix: str = "") -> list[str]:
    """Keys left at ??? (without resolving interpolations, which need a running Hydra)."""
    out = []
    for key in node.keys() if isinstance(node, DictConfig) else []:
        full = f"{prefix}{key}"
        if OmegaConf.is_missing(node, key):
            out.append(full)
        else:
            child = node._get_node(key)
            if isinstance(child, DictConfig):
                out += _missing_keys(child, f"{full}.")
    return out


def check_overrides(args: list[str]) -> None:
    """Compose the config up front so that a wrong key, an unknown choice or a missing
    mandatory value is one line naming it, not Hydra's multi-line report. Each value of a swept
    override is checked with the first value of the others."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if any(a.split("=")[0] in _HYDRA_FLAGS for a in args):
        return  # Hydra's own modes (help, --cfg, ...) report for themselves
    try:
        parsed, values = [], []
        for o in OverridesParser.create().parse_overrides(
                [a for a in args if not a.startswith("-")]):
            if o.key_or_group.startswith("hydra"):
                continue
            try:
                v = list(o.sweep_string_iterator()) if o.is_sweep_override() else \
                    [o.get_value_element_as_str()]
            except Exception:  # glob() and interval() need Hydra's loader or a sweeper plugin
                continue
            parsed.append(o)
            values.append(v)
        base = [f"{o.get_key_element()}={v[0]}" for o, v in zip(parsed, values)]
        variants = [base] + [base[:i] + [f"{o.get_key_element()}={x}"] + base[i + 1:]
                             for i, (o, v) in enumerate(zip(parsed, values)) for x in v[1:]]
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            for overrides in variants[:64]:
                cfg = compose(config_name="train", overrides=overrides)
                missing = _missing_keys(cfg)
                if missing:
                    raise ConfigError(f"missing value for {', '.join(missing)} "
                                      f"(set it on the command line: {missing[0]}=...)")
    except ConfigError:
        raise
    except Exception as e:  # Hydra raises several types; all mean "this override is wrong"
        raise ConfigError(str(e).split("Config search path")[0]) from None


if __name__ == "__main__":
    with one_line_errors("deepcf.train"):
        check_overrides(sys.argv[1:])
    sys.exit(main())
