"""DeepRecommender's dense re-feeding (objective=refeed): two optimizer steps per batch, checked
against the same two SGD steps computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import pytorch_lightning as pl
import scipy.sparse as sp
import torch

from deepcf.errors import ConfigError
from tests.helpers import make_module

WIDTH = 10


def _batch(seed=0, n=6):
    rng = np.random.default_rng(seed)
    X = sp.csr_matrix(rng.integers(1, 6, (n, WIDTH)) * (rng.random((n, WIDTH)) < 0.5))
    return X, {"in_idx": torch.from_numpy(X.indices.astype(np.int64)),
               "in_val": torch.from_numpy(X.data).float(),
               "in_off": torch.from_numpy(X.indptr[:-1].astype(np.int64))}


def _module(train, **kw):
    torch.manual_seed(0)
    return make_module(WIDTH, hidden=[4], activation="sigmoid", objective="refeed",
                       train_rows=train, optimizer={"_target_": "torch.optim.SGD", "lr": 0.5},
                       **kw)


@pytest.mark.parametrize("l2", [0.0, 2.0])
def test_refeed_takes_the_masked_step_then_the_dense_step_as_by_hand(l2):
    X, batch = _batch()
    m = _module(X, l2=l2)
    net = m.net
    start = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.from_numpy(X.toarray()).float()
    mask = x != 0

    def sgd(loss):
        net.zero_grad()
        loss.backward()
        with torch.no_grad():
            for p in net.parameters():
                p -= 0.5 * p.grad

    def reg():
        return l2 / 2 * sum((p**2).sum() for p in net.parameters() if p.dim() >= 2) / X.nnz

    sgd(((net(x) - x)[mask] ** 2).mean() + reg())  # the masked step on x
    with torch.no_grad():
        y = net(x)
    sgd(((net(y) - y) ** 2).mean() + reg())  # the refeed step: y in, y out, every entry
    want = {k: v.clone() for k, v in net.state_dict().items()}

    net.load_state_dict(start)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0)
    trainer.fit(m, train_dataloaders=torch.utils.data.DataLoader([batch], batch_size=None))
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, want[k], atol=1e-6, rtol=1e-5)
    assert not m.objective.sparse_grad


def test_bad_refeed_combinations_are_one_line():
    X, _ = _batch()
    with pytest.raises(ConfigError, match="scheduler=none"):
        _module(X, scheduler={"_target_": "torch.optim.lr_scheduler.StepLR", "step_size": 1})
    with pytest.raises(ConfigError, match="lbfgs"):
        make_module(WIDTH, hidden=[4], objective="refeed",
                    optimizer={"_target_": "torch.optim.LBFGS"})
    with pytest.raises(ConfigError, match="model.objective.train_path='fast'"):
        make_module(WIDTH, hidden=[4], objective="refeed",
                    objective_options={"train_path": "fast"})


def test_refeed_with_input_dropout_trains_from_config_only(make_cfg):
    from deepcf.training.train import train

    cfg = make_cfg("data=synthetic", "data.source.scale=tiny", "model.net.hidden=[16]",
                   "objective=refeed", "noise=dropout", "trainer.max_epochs=2",
                   "callbacks.onnx_export=null", "callbacks.loss_curve=null")
    m = train(cfg)
    assert m["status"] == "ok" and math.isfinite(m["test/rmse"]) and m["epochs"] == 2
