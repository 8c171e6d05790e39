"""Callbacks: ONNX export with an onnxruntime parity check, and the loss-curve plot."""

from __future__ import annotations

import logging
from pathlib import Path

import pytorch_lightning as pl
import torch

from deepcf.errors import DivergedModel
from deepcf.models.contract import net_from_checkpoint
from deepcf.serving.export import export_checked
from deepcf.serving.sidecar import card_from_datamodule

log = logging.getLogger(__name__)


class OnnxExport(pl.Callback):
    """At the end of fit, export the best checkpoint's weights (else the last) to ONNX.

    The file is reloaded with onnxruntime and compared with PyTorch on up to `n_rows` real rows
    of the training matrix; a difference above `atol` fails the run. The sidecar
    (`model.deepcf.npz`: id maps, titles, rating range, training mean, popularity) is written
    next to it, so the run's model is ready for `deepcf.evaluate` and `deepcf.recommend`.
    """

    def __init__(self, path: str, atol: float = 1e-4, n_rows: int = 256):
        self.path, self.atol, self.n_rows = Path(path), atol, n_rows
        self.exported: Path | None = None
        self.max_abs_diff: float | None = None

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        net = pl_module.net
        best = getattr(trainer.checkpoint_callback, "best_model_path", "")
        if best and Path(best).exists():
            net = net_from_checkpoint(torch.load(best, map_location="cpu", weights_only=True),
                                      best)
        dm = trainer.datamodule
        try:
            self.max_abs_diff = export_checked(net, self.path, dm.dataset("train").inputs,
                                               card_from_datamodule(dm), best or "last",
                                               self.atol, self.n_rows)
        except DivergedModel as e:
            log.warning("ONNX model %s", e)
            return
        self.exported = self.path
        log.info("ONNX model: %s (onnxruntime parity %.2g)", self.path, self.max_abs_diff)


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
        fig.savefig(self.path, dpi=100)
        plt.close(fig)
