"""Training losses.

`masked_mse`: the mean squared error over the observed ratings of a batch only. The net's
training predictions are taken at the observed entries (deepcf.models.contract:
`predict_observed`), so the mask is the set of entries itself: unrated movies never count as
zeros. Its epoch value, averaged with the number of ratings as weight, is
sum of squared errors / number of ratings.

`multinomial_nll` (Liang et al. 2018, Mult-DAE/Mult-VAE): each row's entries x are the counts
of a multinomial over every column, with probabilities softmax(f(x)) over the row's dense
logits; the loss is -sum_j x_j log softmax(f(x))_j, averaged over the rows of the batch. The
softmax needs every column's logit, so the logits are dense per batch (rows x width); the sum
only reads them at the row's entries.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deepcf.errors import ConfigError
from deepcf.models.sparse_ops import Pattern, entry_rows

LOSSES = ("mse", "multinomial")


def check_loss(loss) -> str:
    """`model.loss`, or one line naming the choices."""
    if loss not in LOSSES:
        raise ConfigError(f"model.loss={loss!r} is not one of {', '.join(LOSSES)} "
                          f"(the loss config group: loss=mse or loss=multinomial)")
    return loss


def masked_mse(pred_at_observed: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """Mean of (prediction - rating)^2 over the observed ratings of the batch."""
    return F.mse_loss(pred_at_observed, observed)


def multinomial_nll(logits: torch.Tensor, targets: Pattern, values: torch.Tensor
                    ) -> torch.Tensor:
    """-sum_j x_j log softmax(logits)_j per row, the mean over rows; x is the rows' entries
    (`targets` with `values`), `logits` dense (rows, width)."""
    logp = F.log_softmax(logits, dim=1)
    rows = entry_rows(targets.off, len(targets.idx))
    return -(logp[rows, targets.idx] * values).sum() / max(targets.n_rows, 1)
