"""Callbacks: ONNX export with an onnxruntime parity check, and the loss-curve plot; and the
checkpoint writer (`AtomicCheckpointIO`: each checkpoint to a temporary file beside it, renamed
into place, so a kill or a full disk never leaves a partial checkpoint under its name)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from deepcf.errors import CheckpointError, DivergedModel
from deepcf.files import atomic_path, inside, safe_load, write_text
from deepcf.models.contract import net_from_checkpoint
from deepcf.serving.export import export_checked
from deepcf.serving.sidecar import card_from_datamodule, score_kind

log = logging.getLogger(__name__)


class OnnxExport(pl.Callback):
    """At the end of fit, export the best checkpoint's weights (else the last: a refit's
    trainer has no checkpoint callback, so a refit run exports the refit model) to ONNX.

    The file is reloaded with onnxruntime and compared with PyTorch on up to `n_rows` real rows
    of the training matrix; a difference above `atol` fails the run. The sidecar
    (`model.deepcf.npz`: id maps, titles, rating range, training mean, popularity) is written
    next to it, so the run's model is ready for `deepcf.evaluate` and `deepcf.recommend`.
    """

    def __init__(self, path: str, atol: float = 1e-4, n_rows: int = 256):
        self.path, self.atol, self.n_rows = Path(path), atol, n_rows
        self.exported: Path | None = None
        self.max_abs_diff: float | None = None
        self.seconds = 0.0  # what the export and its parity check took

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        import time

        start = time.monotonic()
        try:
            self._export(trainer, pl_module)
        finally:
            self.seconds = time.monotonic() - start

    def _export(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # fit is over: the optimizer state and the gradients (as large as the weights each, for
        # I-AutoRec at the Movies Dataset's scale) go before the best checkpoint is read
        for opt in trainer.optimizers:
            opt.state.clear()
        pl_module.zero_grad(set_to_none=True)
        net = pl_module.net
        best = getattr(trainer.checkpoint_callback, "best_model_path", "")
        if best and Path(best).exists():
            # the path comes from checkpoint state: only a file in this run's checkpoints dir,
            # and only tensors and plain data (weights_only) are read from it
            live = f"{type(net).__module__}.{type(net).__qualname__}"  # this run's own net
            net = net_from_checkpoint(safe_load(checked_best(trainer, best)), best, (live,))
        dm = trainer.datamodule
        try:
            card = card_from_datamodule(dm, score_kind(pl_module.output_kind, net))
            self.max_abs_diff = export_checked(net, self.path, dm.dataset("train").inputs, card,
                                               best or "last", self.atol, self.n_rows,
                                               l2=pl_module.hparams.get("l2") or 0.0)
        except DivergedModel as e:
            log.warning("ONNX model %s", e)
            return
        self.exported = self.path
        log.info("ONNX model: %s (onnxruntime parity %.2g)", self.path, self.max_abs_diff)


def checked_best(trainer: pl.Trainer, best: str) -> str:
    """`best_model_path` of the trainer's ModelCheckpoint, if it lies in that callback's dir."""
    folder = getattr(trainer.checkpoint_callback, "dirpath", None)
    if not folder or not inside(best, folder):
        raise CheckpointError(f"{best}: refused: the best checkpoint named by the checkpoint "
                              f"state is not in {folder}")
    return best


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save into a temporary file in the checkpoint's folder, then one rename: a kill, a
    crash or a full disk leaves the previous checkpoint (or none), never a part of one."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        import torch

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())


class LossCurve(pl.Callback):
    """Plot train/loss and val/rmse per epoch into a PNG when fit ends."""

    def __init__(self, path: str):
        self.path = Path(path)
        self.history: dict[str, list[tuple[int, float]]] = {"train/loss": [], "val/rmse": []}

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # the epoch's validation has run by now (callbacks' on_validation_epoch_end runs before
        # the module logs val/rmse, so reading it there would lag by one epoch)
        for key in self.history:
            value = trainer.callback_metrics.get(key)
            if value is not None:
                self.history[key].append((trainer.current_epoch, float(value)))

    def state_dict(self) -> dict:
        # kept in checkpoints, so that the curve of a resumed run starts at epoch 1
        return {k: [list(p) for p in v] for k, v in self.history.items()}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = {k: [(int(e), float(x)) for e, x in state_dict.get(k, [])]
                        for k in self.history}

    def on_fit_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero or not any(self.history.values()):
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for key, style in (("train/loss", "o-"), ("val/rmse", "s-")):
            pts = self.history[key]
            if pts:
                ax.plot([e + 1 for e, _ in pts], [v for _, v in pts], style, label=key)
        ax.set_xlabel("epoch")
        ax.set_ylabel("train MSE / val RMSE")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.path) as tmp:
            fig.savefig(tmp, dpi=100, format=self.path.suffix.lstrip(".") or "png")
        plt.close(fig)


class ResumeState(pl.Callback):
    """What an exact resume needs that Lightning's checkpoint leaves out (always added by
    deepcf.training.train, not a config choice):

    - the random number generators (torch, numpy, python) as they are when the checkpoint is
      written: the next epoch's shuffling (RandomSampler), noise and dropout draw from them, so a
      resumed epoch draws what the uninterrupted run drew;
    - `val/rmse_best` (and the first ranking metric's best): the module's Min/MaxMetric is not
      in its state_dict and restarts at fit start, so the best value before the interruption is put
      back at the first resumed epoch;
    - the fit's final logged metrics (val/..., train/...): written at the end of training to
      checkpoints/FIT_METRICS with the step they belong to, before the fit-end export, so that a
      resume of a run killed after its last epoch (in the export or the test), whose fit runs no
      epoch and logs nothing, reports what the finished fit logged (`fit_metrics`). A kill
      between the last epoch's checkpoint and the end of training leaves no such file: that
      resume reports only what its own fit logs.
    """

    KEY = "deepcf_resume"
    BESTS = ("val_rmse_best", "val_rank_best")  # the module's Min/MaxMetric (rmse, ranking)
    FIT_METRICS = "fit_metrics.json"

    def __init__(self):
        self._best: dict = {}
        self._trained = False
        self.fit_metrics: dict[str, float] = {}  # a resume that trained nothing: the fit's

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        import random

        import numpy as np

        kind, keys, pos, has_gauss, cached = np.random.get_state()
        bests = {name: getattr(pl_module, name, None) for name in self.BESTS}
        checkpoint[self.KEY] = {
            "torch": torch.get_rng_state(),
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss),
                      float(cached)],
            "python": random.getstate(),
            # the local state, not compute(): no collective call inside a checkpoint save
            **{name: None if best is None or not best.update_called
               else float(getattr(best, best.state_name)) for name, best in bests.items()},
        }

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        import random

        import numpy as np
        from pytorch_lightning.trainer.states import TrainerFn

        state = checkpoint.get(self.KEY)
        if not state or trainer.state.fn != TrainerFn.FITTING:
            return  # testing a checkpoint leaves the generators alone
        torch.set_rng_state(state["torch"])
        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        random.setstate(state["python"])
        self._best = {name: state.get(name) for name in self.BESTS}

    def on_fit_start(self, trainer, pl_module) -> None:
        self._trained, self.fit_metrics = False, {}

    def on_train_start(self, trainer, pl_module) -> None:
        self._trained = True  # Lightning skips the training loop of a fit that is done

    def _fit_metrics_path(self, trainer) -> Path | None:
        folder = getattr(trainer.checkpoint_callback, "dirpath", None)
        return Path(folder) / self.FIT_METRICS if folder else None  # None: a refit's trainer

    def on_train_end(self, trainer, pl_module) -> None:
        path = self._fit_metrics_path(trainer)
        # no checkpoints dir: nothing was saved to resume from (fast_dev_run)
        if path is not None and path.parent.is_dir() and trainer.is_global_zero:
            logged = {k: float(v) for k, v in trainer.callback_metrics.items()}
            write_text(path, json.dumps({"global_step": trainer.global_step, "metrics": logged},
                                        indent=1) + "\n")

    def on_fit_end(self, trainer, pl_module) -> None:
        path = self._fit_metrics_path(trainer)
        if self._trained or path is None:
            return
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError):
            return
        if isinstance(saved, dict) and saved.get("global_step") == trainer.global_step:
            self.fit_metrics = {k: float(v) for k, v in (saved.get("metrics") or {}).items()}

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        # after the module's on_train_start, which restarts its Min/MaxMetric
        for name, value in self._best.items():
            if value is not None and hasattr(pl_module, name):
                getattr(pl_module, name).update(torch.tensor(value))
        self._best = {}


def progress(enabled: bool = False, refresh_rate: int = 1):
    """The progress display: Rich's progress bar when the trainer shows one (by default, when
    stdout is a terminal: `trainer.enable_progress_bar: ${deepcf.isatty:}`), else EpochLines, one
    line per epoch for logs (CI, SLURM)."""
    if enabled:
        from pytorch_lightning.callbacks import RichProgressBar

        return RichProgressBar(refresh_rate=refresh_rate)
    return EpochLines()


class EpochLines(pl.Callback):
    """One line per training epoch on stdout, from rank 0 only, for logs that are not a terminal:

        epoch 3/20  train/loss L  val/rmse R  (S s)

    (and the module's ranking metrics, e.g. val/ndcg@10, after them)
    """

    def __init__(self):
        self._start = 0.0
        self._validated = -1  # the last epoch whose validation ran

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        import time

        self._start = time.monotonic()

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._validated = trainer.current_epoch

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        import time

        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        keys = ["train/loss"]
        if self._validated == trainer.current_epoch:  # else the val/ values are an older epoch's
            keys += ["val/rmse", *(f"val/{k}" for k in getattr(pl_module, "metric_keys", ()))]
        print(epoch_line(trainer.current_epoch, trainer.max_epochs, trainer.callback_metrics,
                         time.monotonic() - self._start, keys), flush=True)


def epoch_line(epoch: int, max_epochs: int | None, metrics, seconds: float,
               keys=("train/loss", "val/rmse")) -> str:
    total = f"/{max_epochs}" if max_epochs not in (None, -1) else ""
    parts = [f"epoch {epoch + 1}{total}"]
    for key in keys:
        value = metrics.get(key)
        if value is not None:
            parts.append(f"{key} {float(value):.4f}")
    return "  ".join(parts) + f"  ({seconds:.1f} s)"
