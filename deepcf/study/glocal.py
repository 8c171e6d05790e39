"""GLocal-K's second stage: global-kernel fine-tuning (Han et al., CIKM 2021).

The first stage is the local kernel net (deepcf.models.kernel.KernelNet, `experiment=glocal_k`),
trained by deepcf's own run. The second:

1. x_local = the pretrained net's predictions of the whole training matrix R (rows = movies in
   id order, columns = users), clipped to the rating range, fixed from then on;
2. the global kernel K = delta + (mean over users of x_local) @ C (deepcf.models.kernel.
   GlobalKernel), and the net's input becomes ReLU(conv2d(R, K)), a 3 x 3 'same' convolution of
   the rating matrix as an image;
3. every parameter of the net and C fine-tuned on the pretraining's objective (the squared error
   at the observed ratings, model.l2's lambda/2 ||W||^2 and the net's own penalty, over the
   number of ratings), full-batch Rprop from a small first step, early-stopped on the carve's
   RMSE, or for a given number of epochs (the refit).

The convolution mixes neighbouring rows and columns by id, so this stage needs the full dense
matrix: it is a study stage (ML-100K's 1,682 x 943), not a `RatingNet` that deepcf.train, ONNX
and serving handle row by row. Choices, on split 0's carve of the rating protocol (local net
lambda 100, val RMSE 0.8919 before the stage): a first Rprop step of 1e-2 (pretraining's) threw
the net off (0.918 at best), 1e-4 reached 0.8950, 1e-5 0.8875; GLocal-K's own start (C ~ N(0,
0.1^2), no delta) 0.9110 with a first step of 1e-2.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import scipy.sparse as sp
import torch

from deepcf.errors import ConfigError
from deepcf.models.kernel import GlobalKernel
from deepcf.training.objectives import l2_penalty
from deepcf.training.optim import Rprop

FT_LR = 1e-5  # the fine-tuning's first Rprop step
FT_PATIENCE = 10
FT_MAX_EPOCHS = 100
MAX_DENSE = 50_000_000  # entries of the dense rating matrix the stage agrees to build


def _dense(X: sp.csr_matrix) -> torch.Tensor:
    if X.shape[0] * X.shape[1] > MAX_DENSE:
        raise ConfigError(f"the global kernel convolves the dense {X.shape[0]} x {X.shape[1]} "
                          f"rating matrix: more than {MAX_DENSE:,} entries")
    return torch.from_numpy(X.toarray().astype(np.float32))


def fine_tune(net, train: sp.csr_matrix, val: sp.csr_matrix | None,
              rating_range: tuple[float, float], l2: float, epochs: int | None = None,
              lr: float = FT_LR, start: str = "identity", size: int = 3,
              patience: int | None = None, max_epochs: int | None = None
              ) -> tuple[np.ndarray, dict]:
    """(dense predictions (rows, width) of the fine-tuned model from `train`, {"ft_epochs": n})
    of a pretrained net whose rows are `train`'s (rows x width, rows in id order); early-stopped
    on `val` (the same shape) when given, else trained `epochs` epochs (0: the pretrained net)."""
    if getattr(net, "residual", None):
        raise ConfigError("the global kernel feeds the net a convolved matrix: it needs a net "
                          "without a bias residual (model.net.residual=none)")
    if val is None and epochs is None:
        raise ConfigError("the global-kernel fine-tuning needs a validation carve or an epoch "
                          "count")
    patience = FT_PATIENCE if patience is None else int(patience)
    max_epochs = FT_MAX_EPOCHS if max_epochs is None else int(max_epochs)
    lo, hi = rating_range
    R = _dense(sp.csr_matrix(train, dtype=np.float32))
    mask = R != 0
    n = max(int(mask.sum()), 1)
    gk = GlobalKernel(R.shape[0], size=size, start=start)
    net.eval()  # no dropout: the local kernel net is deterministic
    with torch.no_grad():
        gk.set_pool(net(R).clamp(lo, hi))
    if val is not None:
        V = sp.coo_matrix(val)
        vr, vc = torch.from_numpy(V.row.astype(np.int64)), torch.from_numpy(V.col.astype(np.int64))
        vv = torch.from_numpy(V.data.astype(np.float32))

    def predict() -> torch.Tensor:
        return net(gk(R))

    def val_rmse() -> float:
        with torch.no_grad():
            p = predict()[vr, vc].clamp(lo, hi)
        return math.sqrt(float(((p - vv) ** 2).mean())) if len(vv) else math.nan

    params = [*net.parameters(), gk.conv_kernel]
    opt = Rprop(params, lr=lr)
    budget = max_epochs if val is not None else int(epochs)
    if val is not None:  # epoch 0, the pretrained net, is the first candidate
        best, best_epoch = val_rmse(), 0
        best_state = copy.deepcopy((net.state_dict(), gk.state_dict()))
    for epoch in range(1, budget + 1):
        opt.zero_grad(set_to_none=True)
        err = ((predict() - R)[mask] ** 2).sum()
        loss = err + (l2_penalty(net, l2) if l2 > 0 else 0.0)
        own = net.penalty()
        if own is not None:
            loss = loss + own
        (loss / n).backward()
        opt.step()
        if val is None:
            continue
        v = val_rmse()
        if math.isfinite(v) and v < best:
            best, best_epoch = v, epoch
            best_state = copy.deepcopy((net.state_dict(), gk.state_dict()))
        elif epoch - best_epoch >= patience:
            break
    if val is not None:
        net.load_state_dict(best_state[0])
        gk.load_state_dict(best_state[1])
    else:
        best_epoch = int(epochs)
    with torch.no_grad():
        out = predict().numpy()
    return out, {"ft_epochs": best_epoch}
