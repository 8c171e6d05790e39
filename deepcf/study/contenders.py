"""The autoencoder contenders of `make accuracy`, trained through deepcf's own training code.

A contender is a train config (`conf/`, e.g. `experiment=i_autorec`) plus overrides. Its fit on
a protocol's ratings composes that config, builds the `RatingsModule` from `cfg.model` exactly
as `deepcf.train` does (net, loss, l2, noise, optimizer, the bias residual's fitted biases), and
fits it with a Lightning Trainer on a RatingsDataModule made from the protocol's matrices:

- with a validation carve: early stopping on val RMSE, or on val NDCG@10 for a config with
  `model.eval_topn=true` (a ranking model; the config's patience, up to its max_epochs), the
  best epoch's weights kept; that epoch count is reported (`info["epochs"]`)
  and is what the refit on all of the training part trains for (deepcf.study.accuracy);
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

from deepcf.errors import ConfigError, DivergedModel

CHUNK = 512  # rows per predict_at call


def compose_train_cfg(overrides: list[str]):
    """The train config of `python -m deepcf.train <overrides>`, composed without running."""
    from hydra import compose, initialize_config_dir

    from deepcf.training.config import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


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
    net, cfg, info = _fit(overrides, train, val, rating_range, seed, epochs)
    return net, cfg.data.orientation, info


def fit_ranker(overrides: list[str], train: sp.csr_matrix, val: sp.csr_matrix | None,
               seed: int, epochs: int | None = None):
    """(score, info) of a ranking config (rows are users) fitted as `fit_contender` does:
    `score(users) -> (len(users), movies)` is the net's dense forward of the users' training
    rows (as interactions when the config's data.implicit says so), higher is better."""
    from deepcf.data.split import implicit_matrix
    from deepcf.serving.scoring import TorchScorer, UserScores

    net, cfg, info = _fit(overrides, train, val, (0.0, 1.0), seed, epochs)
    if cfg.data.orientation != "user":
        raise ConfigError(f"{' '.join(overrides)}: a ranking contender's rows must be users")
    X = implicit_matrix(sp.csr_matrix(train, dtype=np.float32), cfg.data.get("implicit"))
    scores = UserScores(TorchScorer(net), X, "user")
    return (lambda users: scores.block(np.asarray(users))), info


def _fit(overrides: list[str], train: sp.csr_matrix, val: sp.csr_matrix | None,
         rating_range: tuple[float, float], seed: int, epochs: int | None = None):
    """(trained net, composed config, info): see fit_contender."""
    import pytorch_lightning as pl
    from hydra.utils import instantiate

    from deepcf.data.datamodule import RatingsDataModule
    from deepcf.data.matrix import RatingMatrix
    from deepcf.data.split import Split
    from deepcf.training.config import build
    from deepcf.training.train import _quiet_lightning

    _quiet_lightning()
    for name in ("deepcf.training.module", "deepcf.data.datamodule", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    cfg = compose_train_cfg([*overrides, f"seed={seed}"])
    lo, hi = rating_range
    train = sp.csr_matrix(train, dtype=np.float32)
    matrix = RatingMatrix(train, np.arange(train.shape[0]), np.arange(train.shape[1]),
                          rating_min=lo, rating_max=hi, source="protocol split")
    split = Split(train, sp.csr_matrix(val, dtype=np.float32) if val is not None
                  else _empty(train.shape), _empty(train.shape))
    dm = RatingsDataModule(matrix, orientation=cfg.data.orientation,
                           batch_size=int(cfg.data.batch_size),
                           eval_batch_size=int(cfg.data.eval_batch_size), split=split,
                           implicit=cfg.data.get("implicit"))
    pl.seed_everything(seed, workers=True, verbose=False)
    dm.setup("fit")
    lo, hi = dm.rating_range  # 0..1 on implicit data
    model = build(cfg.model, "model", width=dm.width, rating_min=lo, rating_max=hi,
                  train_mean=dm.train_mean, train_rows=dm.train_rows)
    max_epochs = int(cfg.trainer.max_epochs)
    callbacks = []
    if val is not None:
        monitor, mode = (("val/ndcg@10", "max") if cfg.model.get("eval_topn", False)
                         else ("val/rmse", "min"))
        best = _best_state_callback(monitor, mode)
        patience = int(cfg.callbacks.early_stopping.patience)
        callbacks = [best, instantiate({"_target_": "pytorch_lightning.callbacks.EarlyStopping",
                                        "monitor": monitor, "mode": mode,
                                        "patience": patience})]
    else:
        max_epochs = int(epochs or max_epochs)
    trainer = pl.Trainer(max_epochs=max_epochs, accelerator="cpu", devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=callbacks,
                         limit_val_batches=1.0 if val is not None else 0,
                         num_sanity_val_steps=0, use_distributed_sampler=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, datamodule=dm)
    net = model.net
    info = {}
    if val is not None:
        if best.state is None:
            raise DivergedModel(f"{' '.join(overrides)}: no finite {monitor} (diverged)")
        net.load_state_dict(best.state)
        info = {"epochs": best.epochs}
    else:
        info = {"epochs": max_epochs}
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
