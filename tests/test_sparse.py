"""The sparse training step: same loss and gradients as the dense masked MSE, row-sparse
gradients where the optimizer takes them, LazyAdam's exact semantics, automatic fallbacks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from deepcf.errors import ConfigError
from deepcf.models.autoencoder import AutoEncoder
from deepcf.models.sparse_ops import Pattern, entry_rows, sampled_decode, sparse_encode
from deepcf.training.optim import LazyAdam, takes_sparse_grads
from tests.helpers import assert_same_training_step, make_module

pytestmark = [pytest.mark.filterwarnings("ignore:Sparse invariant checks"),
              pytest.mark.filterwarnings("ignore:You are trying to")]

N_ITEMS = 60


def _batch(n_rows=7, n_items=N_ITEMS, density=0.15, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(n_rows, n_items, generator=g) < density
    mask[2] = False  # an empty row
    mask[:, 5] = False  # a movie nobody in the batch rated
    x = torch.randint(1, 6, (n_rows, n_items), generator=g).double() * mask
    idx = mask.nonzero()[:, 1]
    counts = mask.sum(1)
    off = torch.cumsum(counts, 0) - counts
    return x, mask, idx, x[mask], off


def _dense_masked_loss(net, x, mask):
    return ((net(x) - x) ** 2 * mask).sum() / mask.sum()


def _rows_loss(net, idx, val, off, sparse_grad):
    pat = Pattern.from_offsets(off, idx, net.width)
    return F.mse_loss(net.predict_observed(pat, val, pat, sparse_grad), val)


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("linear_last", [True, False])
@pytest.mark.parametrize("sparse_grad", [True, False])
def test_rows_step_equals_dense_masked_mse(tied, linear_last, sparse_grad):
    torch.manual_seed(0)
    net = AutoEncoder.build(N_ITEMS, hidden=[16, 8, 4], activation="selu", tied=tied,
                            linear_last=linear_last).double()
    x, mask, idx, val, off = _batch()
    params = list(net.parameters())
    dense = _dense_masked_loss(net, x, mask)
    g_dense = torch.autograd.grad(dense, params)
    loss = _rows_loss(net, idx, val, off, sparse_grad)
    g_rows = torch.autograd.grad(loss, params)
    assert abs(dense.item() - loss.item()) < 1e-5
    item_params = {id(net.item_in), id(net.out_b)} | ({id(net.item_out)} if not tied else set())
    touched = torch.unique(idx)
    for p, a, b in zip(params, g_dense, g_rows):
        if id(p) in item_params:
            assert b.is_sparse == sparse_grad
            if sparse_grad:  # exactly the touched rows, coalesced (tied: both uses summed)
                b = b.coalesce()
                assert torch.equal(b.indices()[0], touched)
            b = b.to_dense()
            assert (a[5] == 0).all()  # the unrated movie has no gradient in dense either
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_ops_match_their_dense_definitions():
    torch.manual_seed(2)
    x, mask, idx, val, off = _batch(seed=3)
    W = torch.randn(N_ITEMS, 6, dtype=torch.double, requires_grad=True)
    b = torch.randn(N_ITEMS, dtype=torch.double, requires_grad=True)
    h = torch.randn(len(x), 6, dtype=torch.double, requires_grad=True)
    pat = Pattern.from_offsets(off, idx, N_ITEMS)
    row = entry_rows(off, len(idx))
    got = sampled_decode(h, W, b, pat) + sparse_encode(W, val, pat)[row].sum(1)
    want = (h @ W.t() + b)[row, idx] + (x @ W)[row].sum(1)
    torch.testing.assert_close(got, want)
    ga = torch.autograd.grad(got.square().sum(), (W, b, h))
    gb = torch.autograd.grad(want.square().sum(), (W, b, h))
    for a, c in zip(ga, gb):
        torch.testing.assert_close(a.to_dense(), c)
    g = torch.autograd.grad(sparse_encode(W, val, pat).sum(), W)[0]
    assert g.is_sparse and g.is_coalesced() and torch.equal(g.indices()[0], torch.unique(idx))
    g = torch.autograd.grad(sparse_encode(W, val, pat, sparse_grad=False).sum(), W)[0]
    assert not g.is_sparse and (g[5] == 0).all()


def test_pattern_compaction_and_movie_order_match_torch():
    torch.manual_seed(4)
    counts = torch.tensor([3, 0, 5, 1, 0, 7])
    idx = torch.cat([torch.randperm(40)[:c] for c in counts.tolist()])
    pat = Pattern.from_offsets(torch.cumsum(counts, 0) - counts, idx, 40)
    movies, pos = pat.unique_movies()
    want_movies, want_pos = torch.unique(idx, sorted=True, return_inverse=True)
    assert torch.equal(movies, want_movies) and torch.equal(pos, want_pos)
    toff, trow, perm = pat.by_movie()
    row = entry_rows(pat.off, len(idx))
    want_perm = torch.argsort(pos, stable=True)  # movie-major, rows ascending within a movie
    assert torch.equal(perm, want_perm) and torch.equal(trow, row[want_perm])
    n_per_movie = torch.bincount(pos)
    assert torch.equal(toff, torch.cumsum(n_per_movie, 0) - n_per_movie)
    with pytest.raises(IndexError, match=r"\[0, 40\)"):  # a stray id is refused, not written
        Pattern.from_offsets(torch.tensor([0]), torch.tensor([3, 40]), 40).unique_movies()


def test_lazy_adam_equals_adam_on_dense_grads_and_touched_rows():
    torch.manual_seed(0)
    p_ref = torch.randn(10, 4, requires_grad=True)
    p_lazy = p_ref.detach().clone().requires_grad_()
    ref = torch.optim.Adam([p_ref], lr=0.01, weight_decay=0.1)
    lazy = LazyAdam([p_lazy], lr=0.01, weight_decay=0.1)
    for _ in range(3):  # dense gradients: Adam's update
        g = torch.randn(10, 4)
        p_ref.grad, p_lazy.grad = g.clone(), g.clone()
        ref.step()
        lazy.step()
    torch.testing.assert_close(p_lazy, p_ref)
    # a row-sparse gradient touching every row: still Adam's update
    g = torch.randn(10, 4)
    p_ref.grad = g.clone()
    p_lazy.grad = g.to_sparse(1)
    ref.step()
    lazy.step()
    torch.testing.assert_close(p_lazy, p_ref)


def test_lazy_adam_leaves_untouched_rows_and_their_moments_alone():
    p = torch.randn(6, 3, requires_grad=True)
    opt = LazyAdam([p], lr=0.1)
    p.grad = torch.ones(6, 3).to_sparse(1)
    opt.step()
    before = p.detach().clone()
    m_before = opt.state[p]["exp_avg"].clone()
    rows = torch.tensor([1, 4])
    p.grad = torch.sparse_coo_tensor(rows[None], torch.ones(2, 3), (6, 3)).coalesce()
    opt.step()
    untouched = torch.tensor([0, 2, 3, 5])
    assert torch.equal(p.detach()[untouched], before[untouched])  # dense Adam would move them
    assert torch.equal(opt.state[p]["exp_avg"][untouched], m_before[untouched])
    assert (p.detach()[rows] != before[rows]).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lazy_adam_native_kernel_equals_the_gathered_fused_update(dtype, monkeypatch):
    """The in-place CPU kernel and the gather / fused Adam / scatter path (what runs off the
    CPU; here forced by a non-contiguous parameter) take the same steps."""
    import deepcf.training.optim as optim

    calls = []
    native_kernel = optim.row_adam_
    monkeypatch.setattr(optim, "row_adam_", lambda p, *a: (calls.append(p), native_kernel(p, *a)))
    torch.manual_seed(1)
    base = torch.randn(9, 5, dtype=dtype)
    native = torch.nn.Parameter(base.clone())
    gathered = torch.nn.Parameter(base.t().contiguous().t())  # same values, column-major
    assert native.is_contiguous() and not gathered.is_contiguous()
    opts = [LazyAdam([p], lr=0.05, weight_decay=0.01) for p in (native, gathered)]
    for rows in ([0, 3, 4], [3, 8], [1, 2, 3, 4, 5, 6, 7]):
        g = torch.randn(len(rows), 5, dtype=dtype)
        for p, opt in zip((native, gathered), opts):
            p.grad = torch.sparse_coo_tensor(torch.tensor([rows]), g, p.shape).coalesce()
            opt.step()
    assert len(calls) == 3 and all(p is native for p in calls)  # the gathered path never did
    assert not gathered.is_contiguous()  # scattered back in place, layout kept
    torch.testing.assert_close(native, gathered)
    for key in ("exp_avg", "exp_avg_sq", "step"):
        torch.testing.assert_close(opts[0].state[native][key], opts[1].state[gathered][key])


def test_lazy_adam_bad_options_name_the_key():
    p = [torch.zeros(2, requires_grad=True)]
    for kwargs, key in (({"lr": -1}, "model.optimizer.lr"),
                        ({"betas": (0.9, 1.5)}, "model.optimizer.betas"),
                        ({"weight_decay": -1}, "model.optimizer.weight_decay")):
        with pytest.raises(ConfigError, match=key):
            LazyAdam(p, **kwargs)


@pytest.mark.parametrize("opt,sparse", [
    ({"_target_": "deepcf.training.optim.LazyAdam", "lr": 1e-3}, True),
    ({"_target_": "torch.optim.SGD", "lr": 0.1, "momentum": 0.0, "weight_decay": 0.0}, True),
    ({"_target_": "torch.optim.SGD", "lr": 0.1, "momentum": 0.9}, False),
    ({"_target_": "torch.optim.RMSprop", "lr": 0.01}, False),
    ({"_target_": "torch.optim.Adam", "lr": 1e-3}, False),
])
def test_optimizers_get_sparse_grads_only_when_they_take_them(opt, sparse):
    assert takes_sparse_grads(opt)[0] == sparse
    m = make_module(3000, hidden=[8], optimizer=opt)
    assert m.objective.sparse_grad == sparse and m.objective.train_path == "sparse"
    # every such optimizer trains a step through the sparse path, its grads as chosen
    x, mask, idx, val, off = _batch(n_items=3000, density=0.01)
    batch = {"in_idx": idx, "in_val": val.float(), "in_off": off}
    optimizer = m.configure_optimizers()
    before = m.net.item_in.detach().clone()
    m.training_step(batch, 0).backward()
    assert m.net.item_in.grad.is_sparse == sparse
    optimizer.step()
    changed = (m.net.item_in.detach() != before).any(1)
    assert changed[torch.unique(idx)].all()
    if sparse:  # lazily updated: no other movie moved
        assert changed.sum() == len(torch.unique(idx))


def test_sparse_grad_true_with_a_dense_optimizer_is_a_config_error():
    with pytest.raises(ConfigError, match="model.objective.sparse_grad=true"):
        make_module(100, hidden=[8], optimizer={"_target_": "torch.optim.RMSprop", "lr": 0.01},
                    objective_options={"sparse_grad": True})
    with pytest.raises(ConfigError, match="model.objective.train_path='fast'"):
        make_module(100, hidden=[8], objective_options={"train_path": "fast"})
    with pytest.raises(ConfigError, match="model.objective.sparse_grad='yes'"):
        make_module(100, hidden=[8], objective_options={"sparse_grad": "yes"})


def test_sparse_is_the_default_path_and_dense_stays_selectable():
    assert make_module(1682, hidden=[8]).objective.train_path == "sparse"
    dense = make_module(1682, hidden=[8], objective_options={"train_path": "dense"})
    assert dense.objective.train_path == "dense" and not dense.objective.sparse_grad
    with pytest.raises(ConfigError, match="auto was sparse"):
        make_module(1682, hidden=[8], objective_options={"train_path": "auto"})


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("noise", [{"kind": "none"}, {"kind": "dropout", "p": 0.3},
                                   {"kind": "gaussian", "std": 0.5}])
def test_sparse_and_dense_training_steps_agree(noise, tied):
    """The module's two paths give the same loss and gradients (same noise draw). Tied with
    dropout: encoder and decoder see different entries, autograd adds their gradients."""
    opt = {"_target_": "torch.optim.SGD", "lr": 0.1}
    torch.manual_seed(0)
    a = make_module(N_ITEMS, hidden=[16, 8], noise=noise, optimizer=opt, tied=tied)
    b = make_module(N_ITEMS, hidden=[16, 8], noise=noise, optimizer=opt, tied=tied,
                    objective_options={"train_path": "dense"})
    b.load_state_dict(a.state_dict())
    x, mask, idx, val, off = _batch()
    batch = {"in_idx": idx, "in_val": val.float(), "in_off": off}
    assert_same_training_step(a, b, batch, atol=1e-5, rtol=1e-5)
