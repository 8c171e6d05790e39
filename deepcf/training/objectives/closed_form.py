"""A closed-form fit in one pass over the training rows (EDLAE, EASE; Steck 2019, 2020).

The net states its sufficient statistics of a batch of rows (`RatingNet.closed_form_stats`,
e.g. the binary Gram matrix X_b^T X_b) and how to solve for its weights from their sums
(`RatingNet.solve`). The epoch is that pass: every training batch adds its statistics, the last
batch sums them over the DDP ranks and solves, and training stops there; validation, the
checkpoint and the ONNX export then follow as for any run. There is no optimizer and nothing is
learned by gradient, so `model.l2` and the noise group are refused (the net's own options
regularise it, e.g. EDLAE's `model.net.lam` and `model.net.dropout`).
"""

from __future__ import annotations

import torch

from deepcf.errors import ConfigError
from deepcf.models.contract import RatingNet
from deepcf.models.sparse_ops import Pattern
from deepcf.training.objectives import Objective, Setup


class ClosedForm(Objective):
    by_gradient = False
    manual = True  # no optimizer steps: the step accumulates, the last one solves
    takes_noise = False
    takes_scheduler = False

    def __init__(self):
        super().__init__()
        self._stats: dict[str, torch.Tensor] = {}

    def bind(self, net: RatingNet, setup: Setup) -> None:
        if not net.fits_closed_form:
            raise ConfigError(f"objective=closed_form: {type(net).__name__} has no closed "
                              f"form; train it by gradient (objective=masked_mse)")
        super().bind(net, setup)

    def configure_optimizers(self, module):
        return []  # nothing to optimise

    def epoch_start(self, module) -> None:
        self._stats = {}

    def step(self, module, batch: dict, batch_idx: int) -> None:
        net = module.net
        rows = Pattern.from_offsets(batch["in_off"], batch["in_idx"], net.width)
        for name, value in net.closed_form_stats(rows, batch["in_val"]).items():
            self._stats[name] = value if name not in self._stats else self._stats[name] + value
        trainer = module._trainer  # None when stepped by hand (tests): solve at the end
        if trainer is not None and batch_idx + 1 >= trainer.num_training_batches:
            stats = {name: trainer.strategy.reduce(value, reduce_op="sum")
                     for name, value in self._stats.items()}
            net.solve(stats)
            self._stats = {}
            # the solve is the fit's one optimisation step: count it as Lightning counts a
            # manual optimizer step (the checkpoint callback skips a run that took none)
            progress = trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress
            progress.increment_ready()
            progress.increment_completed()
            trainer.should_stop = True  # the fit is complete after one pass
        return None
