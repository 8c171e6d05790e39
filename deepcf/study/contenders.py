"""The autoencoder contenders of `make accuracy`, trained through deepcf's own training code.

A contender is a train config (`conf/`, e.g. `experiment=i_autorec`) plus overrides. Its fit on
a protocol's ratings composes that config and builds data and module with deepcf.train's own
run assembly (deepcf.training.assembly: net, objective, l2, noise, optimizer, the bias
residual's fitted biases) over a RatingsDataModule made from the protocol's matrices, and fits
it with the config's Trainer:

- with a validation carve: early stopping on the module's monitor (val RMSE for a rating model,
  val NDCG@10 for a ranking model; the config's patience, up to its max_epochs), the best
  epoch's weights kept; that epoch count is reported (`info["epochs"]`)
  and is what the refit on all of the training part trains for (deepcf.study.selection);
- without one (the refit): exactly `epochs` epochs, nothing held out.

Predictions at (user, movie) positions use the net's `predict_at` with the training rows it was
fitted on as inputs (the held-out protocol of deepcf.data.heldout).
"""

from __future__ import annotations

import copy
import logging
import math
import warnings

import numpy as np
import scipy.sparse as sp
import torch
from omegaconf import open_dict

from deepcf.data.matrix import RatingMatrix
from deepcf.data.split import Split, implicit_matrix
from deepcf.errors import ConfigError, DivergedModel
from deepcf.serving.scoring import TorchScorer, UserScores
from deepcf.training.assembly import assemble, build_trainer, resolve_monitors
from deepcf.training.config import build, compose
from deepcf.training.train import quiet_lightning

CHUNK = 512  # rows per predict_at call


def _best_state_callback(monitor: str = "val/rmse", mode: str = "min"):
    import pytorch_lightning as pl

    sign = 1.0 if mode == "min" else -1.0

    class BestState(pl.Callback):
        """Keeps the weights and epoch count of the best `monitor` value, in memory."""

        def __init__(self):
            self.best, self.state, self.epochs = math.inf, None, 0

        def on_validation_epoch_end(self, trainer, module):
            if trainer.sanity_checking:
                return
            v = sign * float(trainer.callback_metrics.get(monitor, math.nan))
            if math.isfinite(v) and v < self.best:
                self.best, self.epochs = v, trainer.current_epoch + 1
                self.state = copy.deepcopy(module.net.state_dict())

    return BestState()


def _empty(shape) -> sp.csr_matrix:
    return sp.csr_matrix(shape, dtype=np.float32)


def fit_contender(overrides: list[str], train: sp.csr_matrix, val: sp.csr_matrix | None,
                  rating_range: tuple[float, float], seed: int, epochs: int | None = None):
    """(trained net, orientation, info) of the config `overrides` on users x movies `train`;
    early-stopped on `val` when given, else trained for `epochs` (default: max_epochs)."""
    net, cfg, info = fit_run(overrides, train, val, rating_range, seed, epochs)
    return net, cfg.data.orientation, info


def fit_ranker(overrides: list[str], train: sp.csr_matrix, val: sp.csr_matrix | None,
               seed: int, epochs: int | None = None):
    """(score, info) of a ranking config (rows are users) fitted as `fit_contender` does:
    `score(users) -> (len(users), movies)` is the net's dense forward of the users' training
    rows (as interactions when the config's data.implicit says so), higher is better."""
    net, cfg, info = fit_run(overrides, train, val, (0.0, 1.0), seed, epochs)
    if cfg.data.orientation != "user":
        raise ConfigError(f"{' '.join(overrides)}: a ranking contender's rows must be users")
    X = implicit_matrix(sp.csr_matrix(train, dtype=np.float32), cfg.data.get("implicit"))
    scores = UserScores(TorchScorer(net), X, "user")
    return (lambda users: scores.block(np.asarray(users))), info


def fit_run(overrides: list[str], train: sp.csr_matrix, val: sp.csr_matrix | None,
         rating_range: tuple[float, float], seed: int, epochs: int | None = None):
    """(trained net, composed config, info): see fit_contender. The run is `deepcf.train`'s:
    the same config, the same assembly and Trainer (deepcf.training.assembly); only its
    callbacks differ: early stopping on the module's monitor (the config's patience) and the
    best epoch's weights kept in memory instead of checkpoints, no logger."""
    import pytorch_lightning as pl

    quiet_lightning()
    for name in ("deepcf.training.objectives.masked_mse", "deepcf.data.datamodule",
                 "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    cfg = compose([*overrides, f"seed={seed}", "logger=none", "trainer=cpu",
                   "trainer.default_root_dir=null", "trainer.enable_progress_bar=false",
                   "+trainer.enable_checkpointing=false", "+trainer.num_sanity_val_steps=0"])
    lo, hi = rating_range
    train = sp.csr_matrix(train, dtype=np.float32)
    matrix = RatingMatrix(train, np.arange(train.shape[0]), np.arange(train.shape[1]),
                          rating_min=lo, rating_max=hi, source="protocol split")
    split = Split(train, sp.csr_matrix(val, dtype=np.float32) if val is not None
                  else _empty(train.shape), _empty(train.shape))
    pl.seed_everything(seed, workers=True, verbose=False)
    dm, model = assemble(cfg, matrix, split)
    resolve_monitors(cfg, model)
    monitor, mode = cfg.callbacks.early_stopping.monitor, cfg.callbacks.early_stopping.mode
    callbacks, overrides_ = [], {}
    if val is not None:
        best = _best_state_callback(monitor, mode)
        callbacks = [best, build(cfg.callbacks.early_stopping, "callbacks.early_stopping")]
    else:
        overrides_ = {"max_epochs": int(epochs or cfg.trainer.max_epochs),
                      "limit_val_batches": 0}
    with open_dict(cfg):
        cfg.trainer.update(overrides_)
    trainer = build_trainer(cfg, callbacks)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, datamodule=dm)
    net = model.net
    if val is not None:
        if best.state is None:
            raise DivergedModel(f"{' '.join(overrides)}: no finite {monitor} (diverged)")
        net.load_state_dict(best.state)
        info = {"epochs": best.epochs}
    else:
        info = {"epochs": int(cfg.trainer.max_epochs)}
    return net.eval(), cfg, info


@torch.no_grad()
def predict_rows(net, orientation: str, train: sp.csr_matrix, rows: np.ndarray,
                 cols: np.ndarray) -> np.ndarray:
    """The net's predictions at users `rows`, movies `cols`, each net row fed its training row
    of `train` (users x movies), as the held-out protocol does."""
    X = sp.csr_matrix(train, dtype=np.float32)
    r, c = (rows, cols) if orientation == "user" else (cols, rows)
    if orientation != "user":
        X = X.T.tocsr()
    out = np.empty(len(r), dtype=np.float64)
    order = np.argsort(r, kind="stable")
    uniq = np.unique(r)
    for start in range(0, len(uniq), CHUNK):
        block = uniq[start:start + CHUNK]
        sel = order[np.searchsorted(r[order], block[0], "left"):
                    np.searchsorted(r[order], block[-1], "right")]
        sub = X[block]
        off = torch.from_numpy(sub.indptr[:-1].astype(np.int64))
        pred = net.predict_at(torch.from_numpy(sub.indices.astype(np.int64)),
                              torch.from_numpy(sub.data.astype(np.float32)), off,
                              torch.from_numpy(np.searchsorted(block, r[sel]).astype(np.int64)),
                              torch.from_numpy(c[sel].astype(np.int64)))
        out[sel] = pred.double().numpy()
    return out
