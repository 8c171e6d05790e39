"""The LightningModule: the autoencoder, its masked MSE, and honest held-out metrics.

- Training loss: masked MSE, mean squared error over the observed ratings of the batch only.
- Training path (`model.train_path`): `sparse` computes on the U movies a batch touches
  (`AutoEncoder.forward_rows`: sparse first layer, decoder at the observed ratings only);
  `dense` builds the (batch, n_items) rows and the mask, the textbook masked-MSE computation;
  `auto` takes dense when n_items <= DENSE_MAX_ITEMS, sparse otherwise; the bench found sparse
  no slower even at ML-100K's 1,682 movies, so the threshold is 0 (see BENCHMARKS.md).
- Gradients of the movie-indexed weights (`model.sparse_grad`): row-sparse when the optimizer
  can take them (`deepcf.training.optim.takes_sparse_grads`: LazyAdam, plain SGD), so that the
  update also costs O(rows touched); dense otherwise (RMSprop, Adam, SGD with momentum),
  automatically with `auto`, and a ConfigError with `true`.
- val/test: the input is each row's training ratings, the targets its held-out ratings.
  Predictions are clipped to the rating range; a held-out rating whose row or column has no
  training rating gets the declared fallback (the training mean) and is counted
  (`*/n_fallback`). RMSE = sqrt(sum of squared errors / number of ratings) over the whole split,
  accumulated across batches and devices (not a mean of batch RMSEs).
"""

from __future__ import annotations

import logging
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from torchmetrics import MeanAbsoluteError, MeanSquaredError, MinMetric, SumMetric

from deepcf.data.heldout import clip_or_fallback
from deepcf.errors import ConfigError
from deepcf.models.autoencoder import AutoEncoder, init_weights
from deepcf.models.noise import check_noise, corrupt
from deepcf.models.sparse_ops import Pattern, entry_rows
from deepcf.training.optim import takes_sparse_grads

log = logging.getLogger(__name__)

TRAIN_PATHS = ("auto", "sparse", "dense")
# `train_path=auto` trains dense up to this many columns. `make bench` measures both: at
# ML-100K's 1,682 movies the sparse step is already as fast as tuned dense rows (BENCHMARKS.md),
# at 45k movies many times faster, so auto means sparse; `train_path=dense` stays selectable.
DENSE_MAX_ITEMS = 0


def _plain(conf: Any) -> Any:
    """DictConfig/ListConfig -> plain Python containers; anything else as it is."""
    if isinstance(conf, (DictConfig, ListConfig)):
        return OmegaConf.to_container(conf, resolve=True)
    return conf


class AutoRecModule(pl.LightningModule):
    def __init__(
        self,
        n_items: int,
        hidden: list[int] = (512, 256, 128),
        activation: str = "selu",
        tied: bool = False,
        dropout: float = 0.0,
        linear_last: bool = True,
        init: dict | None = None,
        noise: dict | None = None,
        optimizer: Any = None,
        scheduler: Any = None,
        rating_min: float = 1.0,
        rating_max: float = 5.0,
        train_mean: float = 3.5,
        train_path: str = "auto",
        sparse_grad: Any = "auto",
    ):
        super().__init__()
        init, noise = _plain(init) or {}, _plain(noise) or {"kind": "none"}
        check_noise(**noise)
        if train_path not in TRAIN_PATHS:
            raise ConfigError(f"model.train_path={train_path!r} is not one of "
                              f"{', '.join(TRAIN_PATHS)}")
        if sparse_grad not in ("auto", True, False):
            raise ConfigError(f"model.sparse_grad={sparse_grad!r} must be auto, true or false")
        # plain containers only: checkpoints then load with torch.load(weights_only=True)
        self.save_hyperparameters(
            dict(n_items=n_items, hidden=list(hidden), activation=activation, tied=tied,
                 dropout=dropout, linear_last=linear_last, init=init, noise=noise,
                 optimizer=_plain(optimizer), scheduler=_plain(scheduler),
                 rating_min=float(rating_min), rating_max=float(rating_max),
                 train_mean=float(train_mean), train_path=train_path,
                 sparse_grad=sparse_grad),
            logger=False,
        )
        self.dense_train = train_path == "dense" or (train_path == "auto"
                                                     and n_items <= DENSE_MAX_ITEMS)
        can, why = takes_sparse_grads(_plain(optimizer))
        if sparse_grad is True and not can:
            raise ConfigError(f"model.sparse_grad=true needs an optimizer that takes row-sparse "
                              f"gradients ({why}); use optimizer=lazy_adam, or sgd without "
                              f"momentum/weight decay, or model.sparse_grad=auto")
        self.sparse_grad = bool(can and sparse_grad is not False and not self.dense_train)
        log.info("training path: %s, movie-indexed gradients %s (%s)",
                 "dense masked" if self.dense_train else "sparse",
                 "row-sparse" if self.sparse_grad else "dense",
                 "dense path" if self.dense_train else why)
        self.net = AutoEncoder(n_items, hidden, activation, tied, dropout, linear_last)
        init_weights(self.net, **init)
        self.noise = noise
        for split in ("val", "test"):
            setattr(self, f"{split}_rmse", MeanSquaredError(squared=False))
            setattr(self, f"{split}_mae", MeanAbsoluteError())
            setattr(self, f"{split}_n", SumMetric())
            setattr(self, f"{split}_fallback", SumMetric())
        self.val_rmse_best = MinMetric()

    # -- training ---------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        idx, val, off = batch["in_idx"], batch["in_val"], batch["in_off"]
        if self.dense_train:
            pred = self.dense_masked_outputs(idx, val, off, entry_rows(off, len(idx)))
        else:
            targets = Pattern.from_offsets(off, idx, self.net.n_items)
            c_idx, c_val, c_off = corrupt(idx, val, off, **self.noise)
            inputs = targets if c_idx is idx else Pattern.from_offsets(c_off, c_idx,
                                                                       self.net.n_items)
            pred = self.net.forward_rows(inputs, c_val, targets, self.sparse_grad)
        loss = F.mse_loss(pred, val)  # masked MSE: only observed ratings are targets
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True,
                 batch_size=len(idx))  # epoch value = sum sq err / number of ratings
        return loss

    def dense_masked_outputs(self, idx, val, off, row) -> torch.Tensor:
        """The textbook computation: dense (batch, n_items) input rows, full-width outputs,
        read at the observed entries (the masked MSE then counts those only)."""
        c_idx, c_val, c_off = corrupt(idx, val, off, row, **self.noise)
        c_row = entry_rows(c_off, len(c_idx))
        x = val.new_zeros(len(off), self.net.n_items)
        x[c_row, c_idx] = c_val
        return self.net(x)[row, idx]

    # -- held-out scoring -------------------------------------------------------------------
    def predict_targets(self, batch: dict) -> torch.Tensor:
        """Clipped predictions at the batch's held-out positions, fallback where cold."""
        pred = self.net.forward_sparse(batch["in_idx"], batch["in_val"], batch["in_off"],
                                       batch["tgt_row"], batch["tgt_idx"])
        hp = self.hparams
        return clip_or_fallback(pred, batch["tgt_cold"], hp.rating_min, hp.rating_max,
                                hp.train_mean)

    def _eval_step(self, split: str, batch: dict) -> None:
        pred, target = self.predict_targets(batch), batch["tgt_val"]
        getattr(self, f"{split}_rmse").update(pred, target)
        getattr(self, f"{split}_mae").update(pred, target)
        getattr(self, f"{split}_n").update(target.new_tensor(float(len(target))))
        getattr(self, f"{split}_fallback").update(batch["tgt_cold"].sum().float())

    def _eval_log(self, split: str) -> torch.Tensor:
        rmse = getattr(self, f"{split}_rmse").compute()
        self.log(f"{split}/rmse", rmse, prog_bar=True)
        self.log(f"{split}/mae", getattr(self, f"{split}_mae").compute())
        self.log(f"{split}/n_ratings", getattr(self, f"{split}_n").compute())
        self.log(f"{split}/n_fallback", getattr(self, f"{split}_fallback").compute())
        for name in ("rmse", "mae", "n", "fallback"):
            getattr(self, f"{split}_{name}").reset()
        return rmse

    def on_train_start(self) -> None:
        self.val_rmse_best.reset()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step("val", batch)

    def on_validation_epoch_end(self) -> None:
        # the sanity-check value is dropped by the reset in on_train_start
        self.val_rmse_best.update(self._eval_log("val"))
        self.log("val/rmse_best", self.val_rmse_best.compute(), prog_bar=True)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step("test", batch)

    def on_test_epoch_end(self) -> None:
        self._eval_log("test")

    # -- optimisation -----------------------------------------------------------------------
    def configure_optimizers(self):
        opt_cfg = self.hparams.optimizer or {"_target_": "torch.optim.Adam", "lr": 1e-3}
        optimizer = instantiate({**opt_cfg, "_partial_": False}, params=self.parameters())
        if not self.hparams.scheduler:
            return optimizer
        scheduler = instantiate({**self.hparams.scheduler, "_partial_": False},
                                optimizer=optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler,
                             "interval": "epoch", "frequency": 1, "monitor": "val/rmse"},
        }
