"""A new training objective in one file: the Huber loss on the observed ratings.

Plugged in by config alone (`objective=huber` with conf/objective/huber.yaml on Hydra's search
path): no edit to deepcf's module, run or metrics.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deepcf.training.objectives.masked_mse import MaskedMSE


class MaskedHuber(MaskedMSE):
    """Huber(delta) of (prediction - rating) over the observed ratings; masked MSE's paths."""

    def __init__(self, delta: float = 1.0, **options):
        super().__init__(**options)
        self.delta = float(delta)

    def options(self) -> dict:
        return {**super().options(), "delta": self.delta}

    def step(self, module, batch: dict, batch_idx: int) -> torch.Tensor:
        pred, val, _ = self.predictions(module.net, batch)
        loss = F.huber_loss(pred, val, delta=self.delta)
        module.log("train/loss", loss, on_step=False, on_epoch=True, batch_size=len(val))
        return self.add_regularisers(module, loss, len(val))
