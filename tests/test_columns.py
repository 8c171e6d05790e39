"""The column-major path (model.objective.train_path=columns, experiment=i_autorec): the native
kernels give the dense masked formulation's outputs and gradients (finite differences included),
deepcf's Rprop is torch.optim.Rprop's update, held-out decoding equals the dense forward."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from deepcf.errors import ConfigError
from deepcf.models.autoencoder import AutoEncoder
from deepcf.models.sparse_ops import Pattern, entry_rows, sampled_decode, sparse_encode
from deepcf.training.optim import Rprop
from tests.helpers import assert_same_training_step, flat_batch, make_module

pytestmark = pytest.mark.filterwarnings("ignore:You are trying to")

WIDTH = 50


def _batch(n_rows=9, width=WIDTH, density=0.2, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(n_rows, width, generator=g) < density
    mask[3] = False  # an empty row
    mask[:, 7] = False  # a column no row has
    x = torch.randint(1, 6, (n_rows, width), generator=g).double() * mask
    counts = mask.sum(1)
    return x, mask, mask.nonzero()[:, 1], x[mask], torch.cumsum(counts, 0) - counts


def _columns(off, idx):
    pat = Pattern.from_offsets(off, idx, WIDTH)
    pat.by_columns = True
    return pat


# BLOCK_BYTES of 100 on these 6-wide float64 operands: blocks of 2 rows, the walk over 5 blocks
BLOCKS = pytest.mark.parametrize("block_bytes", [None, 100], ids=["one block", "row blocks"])


def _blocks(monkeypatch, block_bytes):
    import deepcf.kernels as kernels

    if block_bytes is not None:
        monkeypatch.setattr(kernels, "BLOCK_BYTES", block_bytes)


@BLOCKS
def test_column_kernels_match_the_dense_products_and_their_gradients(monkeypatch, block_bytes):
    _blocks(monkeypatch, block_bytes)
    torch.manual_seed(1)
    x, mask, idx, val, off = _batch()
    W = torch.randn(WIDTH, 6, dtype=torch.double, requires_grad=True)
    V = torch.randn(WIDTH, 6, dtype=torch.double, requires_grad=True)
    b = torch.randn(WIDTH, dtype=torch.double, requires_grad=True)
    pat, row = _columns(off, idx), entry_rows(off, len(idx))
    z = torch.sigmoid(sparse_encode(W, val, pat, sparse_grad=False))
    got = sampled_decode(z, V, b, pat, sparse_grad=False)
    want = (torch.sigmoid(x @ W) @ V.t() + b)[row, idx]
    torch.testing.assert_close(got, want)
    ga = torch.autograd.grad((got - val).square().mean(), (W, V, b))
    gb = torch.autograd.grad((want - val).square().mean(), (W, V, b))
    for a, c in zip(ga, gb):
        assert not a.is_sparse
        torch.testing.assert_close(a, c)
    assert (ga[0][7] == 0).all() and (ga[1][7] == 0).all() and ga[2][7] == 0


@BLOCKS
def test_column_kernels_pass_gradcheck(monkeypatch, block_bytes):
    _blocks(monkeypatch, block_bytes)
    x, mask, idx, val, off = _batch(n_rows=5, width=WIDTH, density=0.15, seed=2)
    pat = _columns(off, idx)
    g = torch.Generator().manual_seed(3)
    W, V, b = (torch.randn(*s, dtype=torch.double, generator=g).requires_grad_()
               for s in ((WIDTH, 3), (WIDTH, 3), (WIDTH,)))
    h = torch.randn(5, 3, dtype=torch.double, generator=g).requires_grad_()

    def f(W, V, b, h):
        return sampled_decode(torch.tanh(sparse_encode(W, val, pat, False)) + h, V, b, pat, False)

    assert torch.autograd.gradcheck(f, (W, V, b, h))


@pytest.mark.parametrize("residual", ["none", "target"])
def test_the_columns_step_equals_the_dense_masked_step(residual):
    x, mask, idx, val, off = _batch(seed=4)
    rows = sp.csr_matrix(x.numpy())
    batch = flat_batch(rows)
    opts = dict(hidden=[8], activation="sigmoid", residual=residual, l2=3.0, train_rows=rows,
                optimizer={"_target_": "deepcf.training.optim.Rprop"})
    torch.manual_seed(0)
    cols = make_module(WIDTH, objective_options={"train_path": "columns"}, **opts).double()
    dense = make_module(WIDTH, objective_options={"train_path": "dense"}, **opts).double()
    dense.load_state_dict(cols.state_dict())
    assert_same_training_step(cols, dense, batch, atol=1e-9, rtol=1e-7)


def test_columns_refuse_row_sparse_gradients():
    with pytest.raises(ConfigError, match="sparse_grad=true does not go with"):
        make_module(WIDTH, objective_options={"train_path": "columns", "sparse_grad": True},
                    hidden=[4], optimizer={"_target_": "deepcf.training.optim.LazyAdam"})


@BLOCKS
def test_held_out_scoring_equals_the_dense_forward_sorted_or_not(monkeypatch, block_bytes):
    import deepcf.models.autoencoder as ae

    _blocks(monkeypatch, block_bytes)
    # both decoding branches, and the column walk of the first layer, on small data
    monkeypatch.setattr(ae, "DECODE_CHUNK", 4)
    monkeypatch.setattr(ae, "COLUMN_WALK_MIN", 4)
    torch.manual_seed(5)
    net = AutoEncoder.build(WIDTH, hidden=[6], activation="sigmoid").double()
    x, mask, idx, val, off = _batch(seed=6)
    h_bag, _ = net.codes_at(idx, val, off)  # with gradients: the embedding bag
    dense = net(x)
    row = entry_rows(off, len(idx))
    with torch.no_grad():
        h, _ = net.codes_at(idx, val, off)  # held-out scoring: the column walk
        torch.testing.assert_close(h, h_bag)
        torch.testing.assert_close(net.decode_at(h, row, idx), dense[row, idx])
        perm = torch.randperm(len(idx))
        torch.testing.assert_close(net.decode_at(h, row[perm], idx[perm]),
                                   dense[row[perm], idx[perm]])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rprop_is_torch_rprop(dtype):
    torch.manual_seed(7)
    p_ref = torch.randn(40, 3, dtype=dtype, requires_grad=True)
    p_ours = p_ref.detach().clone().requires_grad_()
    kw = dict(lr=0.05, etas=(0.4, 1.3), step_sizes=(1e-3, 0.2))
    ref, ours = torch.optim.Rprop([p_ref], **kw), Rprop([p_ours], **kw)
    for step in range(12):
        g = torch.randn(40, 3, dtype=dtype)
        g[step % 5] = 0  # zero gradients keep their step size and reset the sign
        p_ref.grad, p_ours.grad = g.clone(), g.clone()
        ref.step()
        ours.step()
        torch.testing.assert_close(p_ours, p_ref, atol=0, rtol=0)
    st = ours.state[p_ours]
    assert st["prev"].dtype == torch.int8 and st["step_size"].dtype == dtype
    torch.testing.assert_close(st["step_size"], ref.state[p_ref]["step_size"], atol=0, rtol=0)


@pytest.mark.parametrize("native", [True, False])
def test_rprop_weight_decay_is_the_l2_gradient_added(native):
    """weight_decay: the step of grad + wd * p, on the native kernel and on torch's
    arithmetic (a non-contiguous parameter)."""
    torch.manual_seed(8)
    base = torch.randn(30, 4, dtype=torch.float64)

    def param():  # native: contiguous; else (30, 4) with a transposed layout
        return (base.clone() if native else torch.empty(4, 30, dtype=base.dtype).t()
                .copy_(base)).requires_grad_()

    p_ref, p_ours = param(), param()
    assert p_ours.is_contiguous() == native
    kw = dict(lr=0.05, etas=(0.4, 1.3), step_sizes=(1e-3, 0.2))
    ref, ours = Rprop([p_ref], **kw), Rprop([p_ours], weight_decay=0.3, **kw)
    for _ in range(10):
        g = torch.randn(30, 4, dtype=torch.float64)
        p_ref.grad = torch.empty_like(p_ref).copy_(g + 0.3 * p_ref.detach())
        p_ours.grad = torch.empty_like(p_ours).copy_(g)
        ref.step()
        ours.step()
        torch.testing.assert_close(p_ours, p_ref, atol=1e-12, rtol=0)


def test_model_l2_goes_into_rprop_and_the_steps_are_the_penalty_gradients(monkeypatch):
    """With optimizer=rprop, model.l2 is the optimizer's weight decay (lambda / N on the net's
    l2 weights, none on the biases) and the loss logs the penalty's value: the same training
    as differentiating lambda/2 ||W||^2 / N."""
    from deepcf.training import objectives

    rng = np.random.default_rng(4)
    X = sp.random(9, WIDTH, density=0.25, random_state=4, format="csr")
    X.data = rng.integers(1, 6, X.nnz).astype(np.float64)
    batch = flat_batch(X)

    def trained(fused: bool):
        monkeypatch.setattr(objectives.Objective, "configure_optimizers",
                            original if fused else unfused)
        torch.manual_seed(3)
        module = make_module(WIDTH, objective_options={"train_path": "columns"},
                             train_rows=X, l2=50.0, hidden=[6], activation="sigmoid",
                             optimizer={"_target_": "deepcf.training.optim.Rprop",
                                        "lr": 0.01}).double()
        opt = module.configure_optimizers()
        opt = opt["optimizer"] if isinstance(opt, dict) else opt
        for _ in range(4):
            opt.zero_grad()
            loss = module.training_step(batch, 0)
            loss.backward()
            opt.step()
        return module, opt, float(loss.detach())

    original = objectives.Objective.configure_optimizers

    def unfused(self, module):
        out = original(self, module)
        self.l2_fused = False
        opt = out["optimizer"] if isinstance(out, dict) else out
        for g in opt.param_groups:
            g["weight_decay"] = 0.0
        return out

    fused_module, fused_opt, fused_loss = trained(True)
    plain_module, _, plain_loss = trained(False)
    assert fused_module.objective.l2_fused
    decayed = [g for g in fused_opt.param_groups if g["weight_decay"] > 0]
    assert len(decayed) == 1
    assert {id(p) for p in decayed[0]["params"]} == {id(p) for p in
                                                      fused_module.net.l2_weights()}
    assert decayed[0]["weight_decay"] == pytest.approx(50.0 / fused_module.objective.setup.n_train)
    assert fused_loss == pytest.approx(plain_loss, rel=1e-5)
    for a, b in zip(fused_module.parameters(), plain_module.parameters()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_sum_squares_accumulates_in_float64():
    from deepcf.kernels import sum_squares

    torch.manual_seed(9)
    x = (torch.rand(2_000_006) - 0.5) * 0.09
    want = float(x.double().square().sum())
    assert sum_squares(x) == pytest.approx(want, rel=1e-12)
    assert sum_squares(x.view(1000003, 2).t()) == pytest.approx(want, rel=1e-12)  # strided


def test_rprop_refuses_bad_options():
    p = [torch.zeros(2, requires_grad=True)]
    with pytest.raises(ConfigError, match="etas"):
        Rprop(p, etas=(1.5, 1.2))
    with pytest.raises(ConfigError, match="lr"):
        Rprop(p, lr=0)
    with pytest.raises(ConfigError, match="weight_decay"):
        Rprop(p, weight_decay=-1.0)


def test_ddp_on_cpu_trains_the_columns_path_and_scores_once(tmp_path, cache_dir):
    """2-process gloo DDP of experiment=i_autorec_target (the columns path, Rprop): each rank
    steps on its share of the movie rows with the gradients averaged, rank 0 writes one summary
    and the ONNX export, and the test RMSE the two ranks computed together equals the
    1-process score of the same best checkpoint."""
    import json
    import subprocess
    import sys

    import pytorch_lightning as pl
    from omegaconf import OmegaConf

    from deepcf.serving.runs import run_datamodule
    from deepcf.training.assembly import build_module

    # refit=false: the checkpoint the ranks trained is the model they tested
    p = subprocess.run([sys.executable, "-m", "deepcf.train", "experiment=i_autorec_target",
                        "refit=false",
                        "data=synthetic", "model.net.hidden=[16]", "logger=none",
                        "trainer=ddp_cpu", "trainer.devices=2", "trainer.max_epochs=3",
                        "data.eval_batch_size=50", f"paths.cache_dir={cache_dir}",
                        "trainer.accelerator=cpu"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count("\n  test RMSE") == 1 and "not exported" not in p.stdout
    assert "column by column" in p.stdout + p.stderr
    (run,) = (tmp_path / "outputs" / "i_autorec_target" / "runs").iterdir()
    m = json.loads((run / "metrics.json").read_text())
    assert (run / "model.onnx").is_file() and m["epochs"] == 3

    cfg = OmegaConf.load(run / "config_resolved.yaml")
    dm = run_datamodule(run, cache_dir=str(cache_dir))
    model = build_module(cfg, dm)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_checkpointing=False)
    one = trainer.test(model, datamodule=dm, ckpt_path=m["best_checkpoint"], verbose=False,
                       weights_only=True)[0]
    assert m["test/n_ratings"] == one["test/n_ratings"] == dm.split.test.nnz
    assert m["test/rmse"] == pytest.approx(one["test/rmse"], rel=1e-6, abs=1e-6)
