"""Plain helpers shared by tests (fixtures live in conftest.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

# the overrides of the session's tiny training run (conftest.py's tiny_run)
TINY_RUN = ["data=synthetic", "data.source.scale=tiny", "trainer.max_epochs=3", "logger=csv",
            "model.hidden=[32,16]", "data.batch_size=64"]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def heldout_by_hand(net, train: sp.csr_matrix, target: sp.csr_matrix, lo: float, hi: float,
                    fallback: float, with_pred: bool = False):
    """The held-out protocol in plain numpy: the dense forward of each training row read at the
    target ratings, clipped to [lo, hi], `fallback` where the row or column has no training
    rating. Returns (rmse, mae, n ratings, n fallback[, predictions])."""
    with torch.no_grad():
        dense = net.eval()(torch.from_numpy(train.toarray()).float()).numpy()
    rows, cols = target.nonzero()
    pred = np.clip(dense[rows, cols], lo, hi)
    cold = (np.bincount(train.indices, minlength=train.shape[1]) == 0)[cols] | \
        (np.diff(train.indptr) == 0)[rows]
    pred[cold] = fallback
    err = pred - np.asarray(target[rows, cols]).ravel()
    out = (float(np.sqrt(np.mean(err**2))), float(np.mean(np.abs(err))), len(err),
           int(cold.sum()))
    return (*out, pred) if with_pred else out
