"""Masked MSE on the observed ratings: the study's objective, and the sparse path.

The loss is the mean of (prediction - rating)^2 over the observed ratings of the batch only. The
net's training predictions are taken at the observed entries (deepcf.models.contract:
`predict_observed`), so the mask is the set of entries itself: unrated movies never count as
zeros. Its epoch value, averaged with the number of ratings as weight, is
sum of squared errors / number of ratings.

Options (`model.objective.*`):
- `train_path`: `sparse` asks the net for its predictions at the observed entries (the
  autoencoder computes on the U movies a batch touches only); `dense` builds the (batch, width)
  rows and reads the full-width forward at the observed entries, the textbook masked-MSE
  computation (`contract.dense_observed`). Same numbers; `make bench` compares their cost.
  `columns` is the sparse path with the batch walked column by column by native CPU kernels
  (deepcf.kernels, `column_*`): each row of a width-indexed weight is read once and its dense
  gradient written once. The path of full-batch training on item rows (experiment=i_autorec),
  where every column is touched by every step and the width-indexed weights are the big
  operand; same numbers again (tests/test_columns.py). Elsewhere (a GPU, tied weights) it
  computes as `sparse` does.
- `sparse_grad` (auto | true | false): row-sparse gradients of the width-indexed weights when the
  net supports them and the optimizer can take them (`deepcf.training.optim.takes_sparse_grads`:
  LazyAdam, plain SGD), so that the update also costs O(rows touched); dense otherwise (RMSprop,
  Adam, SGD with momentum), automatically with `auto`, and a ConfigError with `true`. `model.l2`
  and the dense path mean dense gradients.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from deepcf.errors import ConfigError
from deepcf.models.contract import RatingNet, dense_observed
from deepcf.training.objectives import Objective, Setup
from deepcf.training.optim import takes_sparse_grads

log = logging.getLogger(__name__)

TRAIN_PATHS = ("sparse", "columns", "dense")


def masked_mse(pred_at_observed: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """Mean of (prediction - rating)^2 over the observed ratings of the batch."""
    return F.mse_loss(pred_at_observed, observed)


class MaskedMSE(Objective):
    def __init__(self, train_path: str = "sparse", sparse_grad="auto"):
        super().__init__()
        if train_path not in TRAIN_PATHS:
            hint = " (auto was sparse: use sparse)" if train_path == "auto" else ""
            raise ConfigError(f"model.objective.train_path={train_path!r} is not one of "
                              f"{', '.join(TRAIN_PATHS)}{hint}")
        if sparse_grad not in ("auto", True, False):
            raise ConfigError(f"model.objective.sparse_grad={sparse_grad!r} must be auto, "
                              f"true or false")
        self.train_path, self.sparse_grad_option = train_path, sparse_grad
        self.sparse_grad = False

    def options(self) -> dict:
        return {"train_path": self.train_path, "sparse_grad": self.sparse_grad_option}

    def row_sparse(self, net: RatingNet, setup: Setup) -> tuple[bool, str]:
        """(can the step's width-indexed gradients be row-sparse, why)."""
        can, why = takes_sparse_grads(setup.optimizer)
        if can and not net.supports_sparse_grad:
            can, why = False, f"{type(net).__name__} computes dense gradients"
        if can and setup.l2 > 0:
            can, why = False, "model.l2 penalises every weight: its gradient is dense"
        return can, why

    def bind(self, net: RatingNet, setup: Setup) -> None:
        super().bind(net, setup)
        can, why = self.row_sparse(net, setup)
        if self.sparse_grad_option is True and not can:
            raise ConfigError(f"model.objective.sparse_grad=true needs a net and an optimizer "
                              f"that take row-sparse gradients ({why}); use optimizer="
                              f"lazy_adam, or sgd without momentum/weight decay, or "
                              f"model.objective.sparse_grad=auto")
        dense_path = self.train_path == "dense"
        columns = self.train_path == "columns"
        if columns and self.sparse_grad_option is True:
            raise ConfigError("model.objective.sparse_grad=true does not go with model.objective."
                              "train_path=columns (its gradients are dense by design); use "
                              "train_path=sparse or sparse_grad=auto")
        self.sparse_grad = (can and self.sparse_grad_option is not False and not dense_path
                            and not columns)
        log.info("training path: %s, width-indexed gradients %s (%s)",
                 {"dense": "dense masked", "columns": "sparse, column by column"}.get(
                     self.train_path, "sparse"),
                 "row-sparse" if self.sparse_grad else "dense",
                 "dense path" if dense_path else "columns path" if columns else why)

    def wants_sparse_grads(self, net: RatingNet) -> bool:
        return self.sparse_grad

    def predictions(self, net: RatingNet, batch: dict):
        """(predictions at the batch's observed entries, their ratings, the targets) of the
        batch, its inputs corrupted by the noise group."""
        targets, inputs, c_val = self.corrupted(batch, net.width)
        if self.train_path == "dense":
            pred = dense_observed(net, inputs, c_val, targets)
        else:
            inputs.by_columns = targets.by_columns = self.train_path == "columns"
            pred = net.predict_observed(inputs, c_val, targets, self.sparse_grad)
        return pred, batch["in_val"], targets

    def masked_loss(self, module, batch: dict) -> torch.Tensor:
        """The masked MSE of the batch (logged as train/loss) plus the regularisers."""
        pred, val, _ = self.predictions(module.net, batch)
        loss = masked_mse(pred, val)
        n = len(val)
        module.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True,
                   batch_size=n)  # epoch value = sum sq err / number of ratings
        return self.add_regularisers(module, loss, n)

    def step(self, module, batch: dict, batch_idx: int) -> torch.Tensor:
        return self.masked_loss(module, batch)
