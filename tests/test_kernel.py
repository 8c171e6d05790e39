"""The kernelised autoencoder (GLocal-K's local kernel): its layer against a brute-force loop,
its objective's terms, ONNX parity, the bias residual, and training from config only."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from deepcf.errors import ConfigError
from deepcf.models.kernel import KernelNet
from deepcf.training.objectives import l2_penalty
from tests.helpers import (
    assert_predict_at_reads_the_dense_forward,
    assert_same_training_step,
    flat_batch,
    make_module,
)

WIDTH = 12


def _net(**options) -> KernelNet:
    torch.manual_seed(0)
    net = KernelNet.build(WIDTH, hidden=[5, 4], dim=3, **options).double()
    with torch.no_grad():  # vectors spread enough that some kernel entries are exactly 0
        for p in [*net.u, *net.v]:
            p.normal_(0.0, 0.5)
        for p in (net.weight[-1], net.bias[-1]):  # zero with the residual until trained
            p.normal_(0.0, 0.3)
    return net


def _rows(seed=0, n=6) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(1, 6, (n, WIDTH)) * (rng.random((n, WIDTH)) < 0.4).astype(np.float64)


def _brute_force(net: KernelNet, x: np.ndarray) -> tuple[np.ndarray, float]:
    """The forward and sum ||K||^2 by explicit loops over (unit, input) pairs."""
    h, k2 = x, 0.0
    n_layers = len(net.weight)
    for layer in range(n_layers):
        W = net.weight[layer].detach().numpy()
        b = net.bias[layer].detach().numpy()
        u, v = net.u[layer].detach().numpy(), net.v[layer].detach().numpy()
        K = np.zeros_like(W)
        for o in range(W.shape[0]):
            for i in range(W.shape[1]):
                K[o, i] = max(0.0, 1.0 - float(np.sum((u[i] - v[o]) ** 2)))
        k2 += float((K**2).sum())
        h = h @ (W * K).T + b
        if layer < n_layers - 1:
            h = 1.0 / (1.0 + np.exp(-h))
    return h, k2


def test_kernel_forward_and_penalty_equal_the_brute_force_computation():
    net = _net(sparsity=0.3)
    x = _rows()
    want, k2 = _brute_force(net, x)
    with torch.no_grad():
        np.testing.assert_allclose(net(torch.from_numpy(x)).numpy(), want, atol=1e-12)
        assert float(net.penalty()) == pytest.approx(0.3 / 2 * k2, rel=1e-12)
    assert min(float((k == 0).float().mean()) for k in net.kernels()) > 0  # finite support
    # l2 reaches the W's only, not the kernel vectors
    expected = 0.5 * 2.0 * sum(float((w.detach() ** 2).sum()) for w in net.weight)
    assert float(l2_penalty(net, 2.0).detach()) == pytest.approx(expected, rel=1e-12)
    assert KernelNet.build(WIDTH, hidden=[4], sparsity=0.0).penalty() is None


def test_kernel_starts_near_one_and_the_step_adds_its_penalty():
    net = KernelNet.build(WIDTH, hidden=[4])
    assert all(float(k.detach().min()) > 0.99 for k in net.kernels())  # a plain autoencoder
    train = sp.csr_matrix(_rows(seed=1, n=8))
    m = make_module(WIDTH, net="deepcf.models.kernel.KernelNet", hidden=[5, 4], dim=3,
                    sparsity=0.3, l2=2.0, train_rows=train,
                    optimizer={"_target_": "torch.optim.Rprop"}).double()
    loss = m.training_step(flat_batch(train), 0)
    with torch.no_grad():
        pred = m.net(torch.from_numpy(train.toarray())).numpy()
        r, c = train.nonzero()
        mse = float(np.mean((pred[r, c] - train.toarray()[r, c]) ** 2))
        own = float(m.net.penalty()) + float(l2_penalty(m.net, 2.0))
    assert float(loss.detach()) == pytest.approx(mse + own / train.nnz, rel=1e-10)
    with pytest.raises(ConfigError, match="needs the training rows"):
        make_module(WIDTH, net="deepcf.models.kernel.KernelNet", hidden=[4])


@pytest.mark.parametrize("residual", ["none", "target"])
@pytest.mark.parametrize("noise", [{"kind": "none"}, {"kind": "dropout", "p": 0.3}])
def test_kernel_sparse_and_dense_training_steps_agree(residual, noise):
    train = sp.csr_matrix(_rows(seed=1, n=8))
    kw = dict(net="deepcf.models.kernel.KernelNet", hidden=[5, 4], dim=3, residual=residual,
              noise=noise, l2=1.0, train_rows=train, optimizer={"_target_": "torch.optim.Rprop"})
    a = make_module(WIDTH, **kw)
    b = make_module(WIDTH, objective_options={"train_path": "dense"}, **kw)
    with torch.no_grad():
        for p in [*a.net.u, *a.net.v]:
            p.normal_(0.0, 0.5)
    b.load_state_dict(a.state_dict())
    a, b = a.double(), b.double()
    assert_same_training_step(a, b, flat_batch(train), atol=1e-10, rtol=1e-8)
    assert_predict_at_reads_the_dense_forward(a.net, train, _rows(seed=5, n=8))


@pytest.mark.parametrize("residual", ["none", "target"])
def test_kernel_net_exports_to_onnx_with_parity(tmp_path, residual):
    from deepcf.serving.export import export_onnx, parity

    net = _net(residual=residual)
    if residual != "none":
        net.fit_data(sp.csr_matrix(_rows(seed=2, n=8)))
    net = net.float().eval()
    rows = _rows(seed=3).astype(np.float32)
    path = tmp_path / "kernel.onnx"
    export_onnx(net, path, torch.from_numpy(rows[:4]), {})
    assert parity(path, net, rows) <= 1e-5


def test_kernel_residual_target_adds_the_biases_to_the_plain_net():
    from deepcf.stats import fit_biases

    train = sp.csr_matrix(_rows(seed=2, n=8))
    net = _net(residual="target", row_bias_reg=3.0, col_bias_reg=2.0)
    net.fit_data(train)
    plain = _net()
    x = _rows(seed=4)
    mu, _, b_col = fit_biases(train, reg_u=3.0, reg_i=2.0)
    mask = x != 0
    b_row = np.where(mask, x - mu - b_col, 0.0).sum(1) / (3.0 + mask.sum(1))
    with torch.no_grad():
        want = plain(torch.from_numpy(x)).numpy() + mu + b_col + b_row[:, None]
        np.testing.assert_allclose(net(torch.from_numpy(x)).numpy(), want, atol=1e-10)


def test_bad_kernel_options_are_one_line():
    with pytest.raises(ConfigError, match="model.net.dim=0"):
        KernelNet.build(WIDTH, dim=0)
    with pytest.raises(ConfigError, match="model.net.sparsity=-1"):
        KernelNet.build(WIDTH, sparsity=-1.0)
    with pytest.raises(ConfigError, match="model.net.residual='x'"):
        KernelNet.build(WIDTH, residual="x")


def test_glocal_k_trains_from_config_only(make_cfg):
    from deepcf.training.train import train

    cfg = make_cfg("data=synthetic", "data.source.scale=tiny", "experiment=glocal_k",
                   "model.net.hidden=[16]", "trainer.max_epochs=3", "callbacks.onnx_export=null",
                   "callbacks.loss_curve=null")
    m = train(cfg)
    assert m["status"] == "ok" and math.isfinite(m["test/rmse"]) and m["epochs"] == 3


def test_an_untrained_residual_kernel_net_predicts_the_bias_baseline():
    from deepcf.stats import fit_biases

    train = sp.csr_matrix(_rows(seed=2, n=8))
    net = KernelNet.build(WIDTH, hidden=[5, 4], dim=3, residual="target").double()
    net.fit_data(train)
    mu, b_row, b_col = fit_biases(train, reg_u=net.config.row_bias_reg,
                                  reg_i=net.config.col_bias_reg)
    with torch.no_grad():
        out = net(torch.from_numpy(train.toarray())).numpy()
    np.testing.assert_allclose(out, mu + b_col[None, :] + b_row[:, None], atol=1e-10)
