"""The normalised MSE over every column (ELSA, Vancura et al. 2022).

Each row's output f(x) and its target t (the row's own entries, 0 elsewhere) are scaled to unit
length and compared over every column:

    || t/|t| - f(x)/|f(x)| ||^2 = 2 - 2 <f(x), t> / (|f(x)| |t|)

averaged over the rows of the batch (rows without entries are not served). Only the direction of
a row's output counts, which is what ranking its movies needs. The loss needs <f(x), t> and
|f(x)|^2 per row only (`RatingNet.output_norms`): a net whose outputs are low-rank gives them
without a dense row (ELSA: O(ratings x rank) a batch), any other net from its dense logits. The
outputs of a net trained this way are ranking scores, not ratings: the run logs and monitors NDCG
(model.metrics), no RMSE. Input noise (the noise group) corrupts the inputs, never the targets.
"""

from __future__ import annotations

import torch

from deepcf.models.sparse_ops import Pattern, entry_rows
from deepcf.training.objectives import Objective

EPS = 1e-12  # a zero output row has no direction: its loss is 2, its gradient 0


def normalized_mse(dot: torch.Tensor, out_sq: torch.Tensor, targets: Pattern,
                   target_values: torch.Tensor) -> torch.Tensor:
    """The mean over rows of 2 - 2 <f, t> / (|f| |t|), from per-row `dot` = <f, t> and
    `out_sq` = |f|^2, the targets' norms from their entries."""
    rows = entry_rows(targets.off, len(targets.idx))
    t_sq = dot.new_zeros(targets.n_rows).index_add(0, rows, target_values.to(dot.dtype) ** 2)
    cos = dot / (out_sq.clamp_min(0.0).sqrt() * t_sq.sqrt()).clamp_min(EPS)
    return (2.0 - 2.0 * cos).sum() / max(targets.n_rows, 1)


class NormalizedMSE(Objective):
    outputs = "ranking"

    def step(self, module, batch: dict, batch_idx: int) -> torch.Tensor:
        targets, inputs, c_val = self.corrupted(batch, module.net.width)
        t_val = batch["in_val"]
        dot, out_sq = module.net.output_norms(inputs, c_val, targets, t_val)
        loss = normalized_mse(dot, out_sq, targets, t_val)
        module.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True,
                   batch_size=targets.n_rows)  # epoch value: mean over rows
        return self.add_regularisers(module, loss, len(batch["in_idx"]))
