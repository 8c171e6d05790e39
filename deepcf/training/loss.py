"""Training losses.

`masked_mse`: the mean squared error over the observed ratings of a batch only. The net's
training predictions are taken at the observed entries (deepcf.models.contract:
`predict_observed`), so the mask is the set of entries itself: unrated movies never count as
zeros. Its epoch value, averaged with the number of ratings as weight, is
sum of squared errors / number of ratings.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_mse(pred_at_observed: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """Mean of (prediction - rating)^2 over the observed ratings of the batch."""
    return F.mse_loss(pred_at_observed, observed)
