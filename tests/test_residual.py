"""The bias residual, AutoRec's L2 on weights only, and the full-batch optimizers: each against a
brute-force computation on small data, sparse == dense, ONNX parity, and training from config."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from deepcf.errors import ConfigError
from deepcf.models.autoencoder import AutoEncoder
from deepcf.stats import fit_biases
from deepcf.training.objectives import l2_penalty
from tests.helpers import (
    assert_predict_at_reads_the_dense_forward,
    assert_same_training_step,
    flat_batch,
    make_module,
)

N_ROWS, WIDTH = 9, 40


def _rows(seed=0, n_rows=N_ROWS, width=WIDTH, density=0.3) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    mask = rng.random((n_rows, width)) < density
    mask[3] = False  # an empty row
    mask[:, 7] = False  # a column nobody rated
    X = rng.integers(1, 6, (n_rows, width)).astype(np.float64) * mask
    return sp.csr_matrix(X)


def _residual_net(train: sp.csr_matrix, residual="bias", untrained=False,
                  **options) -> AutoEncoder:
    torch.manual_seed(0)
    net = AutoEncoder.build(train.shape[1], hidden=[6, 4], residual=residual, row_bias_reg=3.0,
                            col_bias_reg=2.0, **options).double()
    net.fit_data(train)
    if not untrained:  # the output layer starts at 0: give it weights, as training would
        with torch.no_grad():
            for p in (net.out_b, *([] if net.tied else [net.item_out])):
                p.normal_(0.0, 0.3)
    return net


@pytest.mark.parametrize("residual", ["bias", "target"])
def test_an_untrained_residual_net_predicts_the_bias_baseline(residual):
    """The output layer starts at zero: before any step the net is the bias baseline (mu + b_j
    + the row's bias), so training starts where the baseline ends."""
    train = _rows()
    net = _residual_net(train, residual, untrained=True)
    mu, b_row, b_col = fit_biases(train, reg_u=3.0, reg_i=2.0)
    with torch.no_grad():
        out = net(torch.from_numpy(train.toarray())).numpy()
    np.testing.assert_allclose(out, mu + b_col[None, :] + b_row[:, None], atol=1e-10)
    for init in ("xavier_uniform", "kaiming"):
        net.init_weights(init, bias=0.01)
        assert float(net.item_out.abs().sum()) == 0.0 and float(net.out_b.abs().sum()) == 0.0
    plain = AutoEncoder.build(WIDTH, hidden=[6, 4])  # without the residual: nn.Linear's init
    assert float(plain.item_out.abs().sum()) > 0.0


def _brute_force(net: AutoEncoder, train: sp.csr_matrix, X: np.ndarray) -> np.ndarray:
    """mu + b_j + b_row + AE(input), with the biases computed in numpy; the input is the
    residual (residual=bias) or the raw ratings (residual=target)."""
    mu, _, b_col = fit_biases(train, reg_u=3.0, reg_i=2.0)
    mask = X != 0
    r = np.where(mask, X - mu - b_col[None, :], 0.0)
    b_row = r.sum(1) / (3.0 + mask.sum(1))
    inp = np.where(mask, r - b_row[:, None], 0.0) if net.config.residual == "bias" else X
    plain = AutoEncoder.build(X.shape[1], hidden=[6, 4]).double()
    plain.load_state_dict({k: v for k, v in net.state_dict().items()
                           if k not in ("mu", "col_bias")})
    with torch.no_grad():
        core = plain(torch.from_numpy(inp)).numpy()
    return mu + b_col[None, :] + b_row[:, None] + core


@pytest.mark.parametrize("residual", ["bias", "target"])
def test_residual_forward_equals_the_brute_force_computation(residual):
    train = _rows()
    net = _residual_net(train, residual)
    mu, _, b_col = fit_biases(train, reg_u=3.0, reg_i=2.0)
    assert float(net.mu) == pytest.approx(mu)
    np.testing.assert_allclose(net.col_bias.numpy(), b_col)
    X = _rows(seed=1).toarray()  # rows never seen in fitting: the row bias comes from the row
    with torch.no_grad():
        ours = net(torch.from_numpy(X)).numpy()
    np.testing.assert_allclose(ours, _brute_force(net, train, X), atol=1e-10)
    # the row bias of a training row is exactly the bias baseline's user bias
    _, b_row, _ = fit_biases(train, reg_u=3.0, reg_i=2.0)
    empty = np.zeros((1, WIDTH))
    with torch.no_grad():  # an empty row: the row bias is 0, the output mu + b_j + AE(0)
        out = net(torch.from_numpy(empty)).numpy()
    np.testing.assert_allclose(out, _brute_force(net, train, empty), atol=1e-10)
    assert b_row[3] == 0.0


@pytest.mark.parametrize("residual", ["bias", "target"])
@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("noise", [{"kind": "none"}, {"kind": "dropout", "p": 0.3}])
def test_residual_sparse_and_dense_training_steps_agree(tied, noise, residual):
    train = _rows()
    opt = {"_target_": "torch.optim.SGD", "lr": 0.1}
    torch.manual_seed(0)
    a = make_module(WIDTH, hidden=[6, 4], residual=residual, tied=tied, noise=noise,
                    optimizer=opt, train_rows=train)
    b = make_module(WIDTH, hidden=[6, 4], residual=residual, tied=tied, noise=noise,
                    optimizer=opt, objective_options={"train_path": "dense"}, train_rows=train)
    with torch.no_grad():  # the output layer starts at 0: give it weights, as training would
        for p in (a.net.out_b, *([] if tied else [a.net.item_out])):
            p.normal_(0.0, 0.3)
    b.load_state_dict(a.state_dict())
    a, b = a.double(), b.double()
    assert_same_training_step(a, b, flat_batch(train), atol=1e-10, rtol=1e-8)
    # held-out scoring (predict_at) reads the dense forward at the targets
    assert_predict_at_reads_the_dense_forward(a.net, train, _rows(seed=2).toarray())


@pytest.mark.parametrize("residual", ["bias", "target"])
def test_residual_net_exports_to_onnx_with_parity(tmp_path, residual):
    from deepcf.serving.export import export_onnx, parity

    train = _rows()
    net = _residual_net(train, residual).float().eval()
    rows = _rows(seed=1).toarray().astype(np.float32)
    path = tmp_path / "res.onnx"
    export_onnx(net, path, torch.from_numpy(rows[:4]), {})
    assert parity(path, net, rows) <= 1e-5


def test_residual_net_rebuilds_from_its_spec_with_its_biases():
    from deepcf.models.contract import net_from_checkpoint

    net = _residual_net(_rows())
    state = {"hyper_parameters": {"net": net.spec()},
             "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}}
    again = net_from_checkpoint(state).double()
    x = torch.from_numpy(_rows(seed=1).toarray())
    torch.testing.assert_close(again(x), net.eval()(x))


def test_bad_residual_options_are_one_line():
    with pytest.raises(ConfigError, match="model.net.residual='user'"):
        AutoEncoder.build(10, hidden=[4], residual="user")
    with pytest.raises(ConfigError, match="model.net.row_bias_reg=-1"):
        AutoEncoder.build(10, hidden=[4], residual="bias", row_bias_reg=-1.0)
    with pytest.raises(ConfigError, match="fits from the training rows"):
        make_module(10, hidden=[4], residual="bias")
    with pytest.raises(ConfigError, match="model.l2=-1"):
        make_module(10, hidden=[4], l2=-1.0)


def test_l2_is_half_lambda_times_the_squared_weights_only():
    torch.manual_seed(0)
    for tied in (False, True):
        net = AutoEncoder.build(WIDTH, hidden=[6, 4], tied=tied)
        weights = [net.item_in, *net.enc_w] + ([] if tied else [*net.dec_w, net.item_out])
        expected = 0.5 * 3.0 * sum(float((w.detach() ** 2).sum()) for w in weights)
        assert float(l2_penalty(net, 3.0).detach()) == pytest.approx(expected, rel=1e-6)
    # the step's objective: mean squared error + lambda/2 ||W||^2 / N (N training ratings)
    train = _rows()
    m = make_module(WIDTH, hidden=[6, 4], l2=3.0, train_rows=train,
                    optimizer={"_target_": "deepcf.training.optim.LazyAdam", "lr": 1e-3})
    assert not m.objective.sparse_grad  # the penalty's gradient is dense
    X = train
    batch = {"in_idx": torch.from_numpy(X.indices.astype(np.int64)),
             "in_val": torch.from_numpy(X.data).float(),
             "in_off": torch.from_numpy(X.indptr[:-1].astype(np.int64))}
    loss = m.training_step(batch, 0)
    with torch.no_grad():
        pred = m.net(torch.from_numpy(X.toarray()).float()).numpy()
    r, c = X.nonzero()
    mse = float(np.mean((pred[r, c] - X.toarray()[r, c]) ** 2))
    penalty = float(l2_penalty(m.net, 3.0).detach())
    assert float(loss.detach()) == pytest.approx(mse + penalty / X.nnz, rel=1e-5)


@pytest.mark.parametrize("optimizer", ["rprop", "lbfgs"])
def test_full_batch_optimizers_train_from_config_only(make_cfg, optimizer):
    from deepcf.training.train import train

    cfg = make_cfg("data=synthetic", "data.source.scale=tiny", "experiment=i_autorec",
                   f"optimizer={optimizer}", "model.net.hidden=[16]", "model.net.residual=bias",
                   "trainer.max_epochs=3", "model.l2=1.0", "callbacks.onnx_export=null",
                   "callbacks.loss_curve=null")
    m = train(cfg)
    assert m["status"] == "ok" and math.isfinite(m["test/rmse"]) and m["epochs"] == 3
    assert m["test/rmse"] < 1.5  # the bias residual starts at the bias baseline
