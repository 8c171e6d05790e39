"""The multinomial likelihood over every movie (Liang et al. 2018, Mult-DAE / Mult-VAE).

Each row's entries x are the counts of a multinomial over every column, with probabilities
softmax(f(x)) over the row's dense logits; the loss is -sum_j x_j log softmax(f(x))_j, averaged
over the rows of the batch, plus the net's own penalty (Mult-VAE's annealed KL) and the step's
regularisers. The softmax needs every column's logit, so the logits are dense per batch
(rows x width; the net computes them from the sparse input, `RatingNet.train_logits`) and the
gradients are dense. The outputs of a net trained this way are ranking scores, not ratings:
no RMSE/MAE is logged for it, and its runs monitor NDCG.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deepcf.models.sparse_ops import Pattern, entry_rows
from deepcf.training.objectives import Objective


def multinomial_nll(logits: torch.Tensor, targets: Pattern, values: torch.Tensor
                    ) -> torch.Tensor:
    """-sum_j x_j log softmax(logits)_j per row, the mean over rows; x is the rows' entries
    (`targets` with `values`), `logits` dense (rows, width)."""
    logp = F.log_softmax(logits, dim=1)
    rows = entry_rows(targets.off, len(targets.idx))
    return -(logp[rows, targets.idx] * values).sum() / max(targets.n_rows, 1)


class Multinomial(Objective):
    outputs = "ranking"

    def step(self, module, batch: dict, batch_idx: int) -> torch.Tensor:
        targets, inputs, c_val = self.corrupted(batch, module.net.width)
        logits, penalty = module.net.train_logits(inputs, c_val, module.global_step)
        loss = multinomial_nll(logits, targets, batch["in_val"])
        rows = targets.n_rows
        module.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True,
                   batch_size=rows)  # epoch value: mean over rows
        if penalty is not None:
            module.log("train/penalty", penalty, on_step=False, on_epoch=True, batch_size=rows)
            loss = loss + penalty
        return self.add_regularisers(module, loss, len(batch["in_idx"]))
