"""The held-out protocol, shared by training's val/test metrics and deepcf.evaluate.

- Each row's input is its training ratings only; held-out ratings are targets, never inputs.
- A held-out rating whose row or column has no training rating is *cold*: the model has nothing
  to go on there, so it is scored with the declared fallback (the training mean) and counted.
- Predictions are clipped to the rating range.
- RMSE = sqrt(sum of squared errors / number of ratings) over the whole split (not a mean of
  batch RMSEs).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from deepcf.data.batches import RowBatches


def heldout_set(train: sp.csr_matrix, target: sp.csr_matrix) -> RowBatches:
    """The rows of `target` that have held-out ratings, with the training rows as inputs; a
    column with no training rating is cold."""
    cold = np.bincount(train.indices, minlength=train.shape[1]) == 0
    return RowBatches(train, np.flatnonzero(np.diff(target.indptr) > 0), target, cold)


def clip_or_fallback(pred: torch.Tensor, cold: torch.Tensor, rating_min: float,
                     rating_max: float, fallback: float) -> torch.Tensor:
    """Clip to the rating range; the declared fallback where cold."""
    pred = pred.clamp(rating_min, rating_max)
    return torch.where(cold, pred.new_tensor(fallback), pred)
