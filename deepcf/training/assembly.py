"""One run assembly: config -> DataModule + module + trainer, for training, the study and the bench.

- `build_datamodule(cfg)`: the `data` node's RatingsDataModule, set up (read, split, oriented);
  or, given a matrix and its split (the study's protocols), one over those, nothing read.
- `build_module(cfg, dm)`: the RatingsModule of the `model` node for that data.
- `resolve_monitors(cfg, module)`: the callbacks' `monitor: auto` / `mode: auto` and
  `optimized_metric: auto` filled in from the module's output kind; a callback monitoring a
  metric the run does not log is one line.
- `build_trainer(cfg, callbacks, loggers)`: the `trainer` node's Trainer.
- `refit_datamodule(cfg, dm)`: the same data with the validation carve merged back into
  training (train + val, nothing held out for validation, the same test part): what a refit at
  the carve's chosen settings trains on.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, open_dict

from deepcf.compat import MODULE_KEYS, check_moved
from deepcf.data.datamodule import RatingsDataModule
from deepcf.errors import ConfigError
from deepcf.training.callbacks import AtomicCheckpointIO
from deepcf.training.config import build
from deepcf.training.module import RatingsModule, plain

AUTO = "auto"


def build_datamodule(cfg: DictConfig, matrix=None, split=None) -> RatingsDataModule:
    """The run's data, set up for fitting. With `matrix` and `split` (a RatingMatrix and a
    deepcf.data.split.Split) the data node's orientation, batch sizes and implicit setting are
    used over those matrices instead of reading its source."""
    if matrix is None:
        dm = build(cfg.data, "data")
    else:
        d = cfg.data
        dm = RatingsDataModule(matrix, orientation=d.orientation, split=split,
                               batch_size=int(d.batch_size),
                               eval_batch_size=int(d.eval_batch_size),
                               implicit=d.get("implicit"), protocol=plain(d.get("protocol")))
    dm.setup("fit")
    return dm


def refit_datamodule(cfg: DictConfig, dm: RatingsDataModule) -> RatingsDataModule:
    """`dm`'s data with its validation carve merged into training (see the module doc)."""
    return dm.merged()


def build_module(cfg: DictConfig, dm: RatingsDataModule) -> RatingsModule:
    """The run's module: the `model` node (net, objective, l2, metrics and the optimizer /
    scheduler / init / noise groups) for the data's facts."""
    model = plain(cfg.model)
    for key in sorted(set(model) - set(MODULE_KEYS)):
        check_moved(f"model.{key}", model[key])
        raise ConfigError(f"model.{key} is not an option of the module (its options: "
                          f"{', '.join(MODULE_KEYS)})")
    return RatingsModule(dm.facts(), **model)


def assemble(cfg: DictConfig, matrix=None, split=None) -> tuple[RatingsDataModule,
                                                                 RatingsModule]:
    dm = build_datamodule(cfg, matrix, split)
    return dm, build_module(cfg, dm)


def _mode_of(monitor: str) -> str:
    return "min" if monitor.rsplit("/", 1)[-1].startswith(("rmse", "mae")) else "max"


def resolve_monitors(cfg: DictConfig, module: RatingsModule) -> str:
    """Fill the callbacks' `monitor`/`mode: auto` from the module's monitor; check that every
    `val/` monitor is a metric the module logs. Returns the optimized metric's name."""
    logged = module.logged_val_metrics()
    monitor, mode = module.monitor
    with open_dict(cfg):
        for name, conf in (cfg.get("callbacks") or {}).items():
            if not isinstance(conf, DictConfig) or "monitor" not in conf:
                continue
            if conf.monitor == AUTO:
                conf.monitor = monitor
            if conf.get("mode") == AUTO:
                conf.mode = mode if conf.monitor == monitor else _mode_of(conf.monitor)
            if str(conf.monitor).startswith("val/") and conf.monitor not in logged:
                raise ConfigError(
                    f"callbacks.{name}.monitor={conf.monitor} is not logged by this run (a "
                    f"{module.output_kind} model logging {', '.join(sorted(logged))}): use "
                    f"monitor=auto, or add the metric to model.metrics")
        optimized = cfg.get("optimized_metric") or AUTO
        if optimized == AUTO:
            optimized = f"{monitor}_best"
        cfg.optimized_metric = optimized
    return optimized


def build_trainer(cfg: DictConfig, callbacks: list, loggers: list | None = None,
                  **overrides: Any):
    """The `trainer` node's Trainer. The DataModule shards rows per rank itself (no padded
    duplicates in val/test), so Lightning's distributed sampler is off."""
    overrides.setdefault("plugins", [AtomicCheckpointIO()])  # no partial checkpoint, ever
    return build(cfg.trainer, "trainer", callbacks=callbacks, logger=loggers or False,
                 use_distributed_sampler=False, **overrides)
