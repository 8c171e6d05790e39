"""The kernelised autoencoder (GLocal-K's local kernel): its layer against a brute-force loop,
its objective's terms, ONNX parity, the bias residual, and training from config only; GLocal-K's
global kernel against a brute-force convolution and its fine-tuning stage against one Rprop step
of the brute-force objective."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from deepcf.errors import ConfigError
from deepcf.models.kernel import GlobalKernel, KernelNet, global_conv
from deepcf.study.glocal import fine_tune
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


# -- GLocal-K's global kernel --------------------------------------------------------------------
def _brute_conv(M: np.ndarray, K: np.ndarray) -> np.ndarray:
    k, c = K.shape[0], K.shape[0] // 2
    out = np.zeros_like(M)
    for i in range(M.shape[0]):
        for j in range(M.shape[1]):
            for a in range(k):
                for b in range(k):
                    r, s = i + a - c, j + b - c
                    if 0 <= r < M.shape[0] and 0 <= s < M.shape[1]:
                        out[i, j] += K[a, b] * M[r, s]
    return np.maximum(out, 0.0)


@pytest.mark.parametrize("size", [1, 3, 5])
def test_global_conv_is_the_zero_padded_convolution_of_a_brute_force_loop(size):
    rng = np.random.default_rng(size)
    M, K = rng.normal(size=(7, 9)), rng.normal(size=(size, size))
    got = global_conv(torch.from_numpy(M), torch.from_numpy(K)).numpy()
    np.testing.assert_allclose(got, _brute_conv(M, K), atol=1e-12)


def test_global_kernel_reads_its_kernel_from_the_pool_and_starts_at_the_identity():
    R = torch.from_numpy(_rows(3, n=8))
    gk = GlobalKernel(8).double()
    pred = torch.rand(8, WIDTH, dtype=torch.float64) * 4 + 1
    gk.set_pool(pred)
    torch.testing.assert_close(gk.pool, pred.mean(1))
    torch.testing.assert_close(gk(R), R)  # the delta kernel on non-negative ratings
    with torch.no_grad():
        gk.conv_kernel.normal_(0.0, 0.1)
    want = np.eye(3)[1:2].T @ np.eye(3)[1:2] + (gk.pool.numpy() @ gk.conv_kernel.detach()
                                                 .numpy()).reshape(3, 3)
    torch.testing.assert_close(gk.kernel(), torch.from_numpy(want))
    paper = GlobalKernel(8, start="paper")
    assert float(paper.base.abs().sum()) == 0 and float(paper.conv_kernel.detach().std()) > 0.05
    for bad in ({"size": 2}, {"size": 0}, {"start": "zeros"}):
        with pytest.raises(ConfigError):
            GlobalKernel(8, **bad)
    with pytest.raises(ConfigError, match="rows"):
        gk.set_pool(pred[:5])


def test_global_kernel_gradient_matches_finite_differences():
    R = torch.from_numpy(_rows(4, n=5) + 1.0)  # positive everywhere: no ReLU kink
    gk = GlobalKernel(5).double()
    gk.set_pool(torch.rand(5, WIDTH, dtype=torch.float64) + 1)
    with torch.no_grad():
        gk.conv_kernel.uniform_(0.0, 0.01)

    def f(ck):
        k = (gk.base + (gk.pool @ ck)).view(3, 3)
        return global_conv(R, k)

    assert torch.autograd.gradcheck(f, (gk.conv_kernel.detach().clone().requires_grad_(),))


def _glocal_data(seed=0):
    rng = np.random.default_rng(seed)
    X = rng.integers(1, 6, (10, WIDTH)) * (rng.random((10, WIDTH)) < 0.5)
    val = rng.integers(1, 6, (10, WIDTH)) * (rng.random((10, WIDTH)) < 0.2) * (X == 0)
    return sp.csr_matrix(X.astype(np.float32)), sp.csr_matrix(val.astype(np.float32))


def _small_kernel_net(**options) -> KernelNet:
    torch.manual_seed(0)
    return KernelNet.build(WIDTH, hidden=[6], dim=3, **options)


def test_fine_tune_at_zero_epochs_is_the_pretrained_net_and_one_epoch_is_one_rprop_step():
    X, _ = _glocal_data()
    net = _small_kernel_net()
    R = torch.from_numpy(X.toarray())
    with torch.no_grad():
        want0 = net(R).numpy()
    got0, info = fine_tune(copy.deepcopy(net), X, None, (1.0, 5.0), l2=2.0, epochs=0)
    np.testing.assert_allclose(got0, want0, rtol=1e-6)
    assert info == {"ft_epochs": 0}
    # one epoch: every parameter (net and C) moves by lr * sign of the brute-force objective's
    # gradient (Rprop's first step)
    lr, ref = 1e-3, copy.deepcopy(net).double()
    Rd = R.double()
    gk = GlobalKernel(X.shape[0]).double()
    with torch.no_grad():
        gk.set_pool(ref(Rd).clamp(1.0, 5.0))
    k = (gk.base + gk.pool @ gk.conv_kernel).view(3, 3)
    conv = torch.relu(torch.stack([torch.stack([
        sum(k[a, b] * Rd[i + a - 1, j + b - 1] for a in range(3) for b in range(3)
            if 0 <= i + a - 1 < Rd.shape[0] and 0 <= j + b - 1 < Rd.shape[1])
        for j in range(WIDTH)]) for i in range(Rd.shape[0])]))
    mask = Rd != 0
    loss = (((ref(conv) - Rd)[mask] ** 2).sum() + l2_penalty(ref, 2.0) + ref.penalty()) / mask.sum()
    params = [*ref.parameters(), gk.conv_kernel]
    grads = torch.autograd.grad(loss, params)
    with torch.no_grad():
        for p, g in zip(params, grads):
            p -= lr * torch.sign(g)
        want1 = ref(global_conv(Rd, (gk.base + gk.pool @ gk.conv_kernel).view(3, 3))).numpy()
    got1, info = fine_tune(copy.deepcopy(net), X, None, (1.0, 5.0), l2=2.0, epochs=1, lr=lr)
    np.testing.assert_allclose(got1, want1, rtol=1e-4, atol=1e-5)
    assert info == {"ft_epochs": 1}


def test_fine_tune_keeps_the_carve_best_epoch_and_refuses_what_it_cannot_do():
    X, val = _glocal_data(1)
    net = _small_kernel_net()
    V = val.tocoo()

    def rmse(P):
        return float(np.sqrt(((np.clip(P[V.row, V.col], 1, 5) - V.data) ** 2).mean()))

    P0, _ = fine_tune(copy.deepcopy(net), X, None, (1.0, 5.0), l2=1.0, epochs=0)
    P, info = fine_tune(copy.deepcopy(net), X, val, (1.0, 5.0), l2=1.0, lr=1e-2,
                        max_epochs=8, patience=3)
    assert 0 <= info["ft_epochs"] <= 8 and rmse(P) <= rmse(P0) + 1e-6
    again, _ = fine_tune(copy.deepcopy(net), X, None, (1.0, 5.0), l2=1.0, lr=1e-2,
                         epochs=info["ft_epochs"])
    np.testing.assert_allclose(again, P, rtol=1e-5, atol=1e-6)  # the refit replays it
    with pytest.raises(ConfigError, match="residual"):
        fine_tune(_small_kernel_net(residual="target"), X, None, (1.0, 5.0), 1.0, epochs=1)
    with pytest.raises(ConfigError, match="epoch count"):
        fine_tune(copy.deepcopy(net), X, None, (1.0, 5.0), 1.0)
