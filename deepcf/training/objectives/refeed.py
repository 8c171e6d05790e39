"""Masked MSE with DeepRecommender's dense re-feeding (Kuchaiev & Ginsburg 2017).

After the masked step on the batch x (deepcf.training.objectives.masked_mse), a second optimizer
step feeds the dense output y = f(x) (computed after the first step, no gradient) back as input
with target y at every entry. The noise group corrupts y's input as it corrupts x (target y
stays whole: deepcf's denoising convention; DeepRecommender's masked loss on the dropped-out y
differs there). The refeed step is dense by nature (y has every entry), whatever `train_path`;
it steps the optimizer by hand (Lightning's manual optimisation), hence no scheduler and no
closure optimizer (L-BFGS), and dense gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deepcf.errors import ConfigError
from deepcf.models.contract import RatingNet, dense_rows
from deepcf.models.noise import corrupt
from deepcf.models.sparse_ops import Pattern, entry_rows
from deepcf.training.objectives import Setup
from deepcf.training.objectives.masked_mse import MaskedMSE


class Refeed(MaskedMSE):
    manual = True
    takes_scheduler = False

    def bind(self, net: RatingNet, setup: Setup) -> None:
        if "LBFGS" in str((setup.optimizer or {}).get("_target_", "")):
            raise ConfigError("objective=refeed does not combine with optimizer=lbfgs (its "
                              "closure steps): use another optimizer")
        super().bind(net, setup)

    def row_sparse(self, net: RatingNet, setup: Setup) -> tuple[bool, str]:
        can, why = super().row_sparse(net, setup)
        return (False, "the refeed step is dense") if can else (can, why)

    def refeed_loss(self, net: RatingNet, rows: Pattern, values: torch.Tensor) -> torch.Tensor:
        """The refeed step's objective: y = f(x) of the batch's rows x (no gradient), fed back
        (through the noise) with target y at every entry; plus the step's regularisers."""
        with torch.no_grad():
            y = net(dense_rows(net.width, rows, values))
        width, n = net.width, y.shape[0]
        flat_idx = torch.arange(width, device=y.device).repeat(n)
        flat_off = torch.arange(n, device=y.device) * width
        c_idx, c_val, c_off = corrupt(flat_idx, y.reshape(-1), flat_off, **self.setup.noise)
        y_in = y.new_zeros(n, width)
        y_in[entry_rows(c_off, len(c_idx)), c_idx] = c_val
        return F.mse_loss(net(y_in), y) + sum(self.regularisers(net).values())

    def step(self, module, batch: dict, batch_idx: int) -> None:
        """The masked step on x, then the refeed step, each an optimizer step."""
        loss = self.masked_loss(module, batch)
        rows = Pattern.from_offsets(batch["in_off"], batch["in_idx"], module.net.width)
        opt = module.optimizers()
        opt.zero_grad()
        module.manual_backward(loss)
        opt.step()
        opt.zero_grad()
        refeed = self.refeed_loss(module.net, rows, batch["in_val"])
        module.manual_backward(refeed)
        opt.step()
        module.log("train/refeed_loss", refeed, on_step=False, on_epoch=True,
                   batch_size=rows.n_rows * module.net.width)
        return None
