"""ELSA and the normalised MSE: the scores against the dense b (A A^T - I), the sparse
per-row norms and the loss's gradient against the dense computation and finite differences, the
ONNX graph against PyTorch, configs that compose."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from deepcf.errors import ConfigError
from deepcf.models.contract import RatingNet
from deepcf.models.elsa import ELSA
from deepcf.models.sparse_ops import Pattern
from deepcf.training.objectives.normalized_mse import normalized_mse


def _rows(seed: int = 0, n: int = 7, width: int = 11, density: float = 0.35):
    X = sp.random(n, width, density=density, format="csr", random_state=seed,
                  dtype=np.float64)
    X.data[:] = 1.0
    X = X[np.diff(X.indptr) > 0]  # a row without entries is never served
    return X


def _pattern(X: sp.csr_matrix) -> tuple[Pattern, torch.Tensor]:
    off = torch.from_numpy(X.indptr[:-1].astype(np.int64))
    idx = torch.from_numpy(X.indices.astype(np.int64))
    return Pattern.from_offsets(off, idx, X.shape[1]), torch.from_numpy(X.data.copy())


def _net(width: int, rank: int = 4, seed: int = 0) -> ELSA:
    torch.manual_seed(seed)
    return ELSA.build(width, rank=rank).double()


def test_the_scores_are_b_times_a_a_transposed_minus_identity_with_a_zero_diagonal():
    X = _rows()
    net = _net(X.shape[1])
    W = net.weight.detach().numpy()
    A = W / np.linalg.norm(W, axis=1, keepdims=True)
    B = A @ A.T - np.eye(len(A))
    assert np.allclose(np.diag(B), 0.0, atol=1e-12)  # a movie never predicts itself
    x = X.toarray() * 3.0  # ratings: the net sees interactions
    got = net(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(got, (x != 0) @ B, atol=1e-12)


def test_the_scores_of_flat_rows_equal_the_dense_forward():
    X = _rows(seed=5, n=8, width=12)
    net = _net(X.shape[1], rank=3)
    rows, val = _pattern(X)
    with torch.no_grad():
        got = net.rank_rows(rows.idx, val * 2.0, rows.off)
        want = net(torch.from_numpy(X.toarray() * 2.0))
        base = RatingNet.rank_rows(net, rows.idx, val * 2.0, rows.off)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(base, want)


@pytest.mark.parametrize("corrupt", [False, True])
def test_the_sparse_norms_equal_the_dense_outputs(corrupt):
    """ELSA's <f(b), t> and |f(b)|^2 from its rank-r code equal the dense output's (the
    contract's default), also when the inputs are a corrupted subset of the targets."""
    X = _rows(seed=1, n=9, width=13)
    targets, t_val = _pattern(X)
    inputs, i_val = targets, t_val
    if corrupt:
        keep = X.copy()
        keep.data = (np.random.default_rng(0).random(keep.nnz) < 0.6).astype(np.float64)
        keep.eliminate_zeros()
        inputs, i_val = _pattern(keep)
    net = _net(X.shape[1], rank=5)
    dot, sq = net.output_norms(inputs, i_val, targets, t_val * 2.0)
    ref_dot, ref_sq = RatingNet.output_norms(net, inputs, i_val, targets, t_val * 2.0)
    torch.testing.assert_close(dot, ref_dot)
    torch.testing.assert_close(sq, ref_sq)


def _dense_nmse(net: ELSA, X: sp.csr_matrix) -> torch.Tensor:
    """The textbook loss: || x/|x| - f(x)/|f(x)| ||^2 over every column, mean over rows."""
    x = torch.from_numpy(X.toarray())
    y = net(x)
    return ((F.normalize(x, dim=1) - F.normalize(y, dim=1)) ** 2).sum(1).mean()


def _sparse_nmse(net: ELSA, X: sp.csr_matrix) -> torch.Tensor:
    rows, val = _pattern(X)
    return normalized_mse(*net.output_norms(rows, val, rows, val), rows, val)


def test_the_loss_and_its_gradient_equal_the_dense_computation():
    X = _rows(seed=2, n=12, width=17)
    net = _net(X.shape[1], rank=6)
    dense = _dense_nmse(net, X)
    (g_dense,) = torch.autograd.grad(dense, net.weight)
    sparse = _sparse_nmse(net, X)
    (g_sparse,) = torch.autograd.grad(sparse, net.weight)
    torch.testing.assert_close(sparse, dense)
    torch.testing.assert_close(g_sparse, g_dense)


def test_the_gradient_matches_finite_differences():
    X = _rows(seed=3, n=6, width=9)
    net = _net(X.shape[1], rank=3)
    W0 = net.weight.detach().clone()

    def loss_of(W):
        with torch.no_grad():
            net.weight.copy_(W)
        with torch.no_grad():
            return float(_sparse_nmse(net, X))

    (g,) = torch.autograd.grad(_sparse_nmse(net, X), net.weight)
    num, h = torch.zeros_like(W0), 1e-6
    for i in range(W0.shape[0]):
        for j in range(W0.shape[1]):
            e = torch.zeros_like(W0)
            e[i, j] = h
            num[i, j] = (loss_of(W0 + e) - loss_of(W0 - e)) / (2 * h)
    torch.testing.assert_close(g, num, atol=1e-7, rtol=1e-5)


def test_onnx_parity(tmp_path):
    from deepcf.serving.export import export_onnx, parity

    X = _rows(seed=4, n=20, width=30)
    torch.manual_seed(0)
    net = ELSA.build(30, rank=8).eval()
    rows = (X.toarray() * 4.0).astype(np.float32)
    path = export_onnx(net, tmp_path / "elsa.onnx", torch.from_numpy(rows[:4]))
    assert parity(path, net, rows) <= 1e-5


def test_a_bad_rank_is_one_line():
    with pytest.raises(ConfigError, match="model.net.rank=0 must be >= 1"):
        ELSA.build(5, rank=0)


def test_the_experiment_composes_with_its_objective(make_cfg):
    cfg = make_cfg("experiment=elsa")
    assert cfg.model.net._target_ == "deepcf.models.elsa.ELSA"
    assert cfg.model.objective._target_.endswith("normalized_mse.NormalizedMSE")
    assert cfg.data.implicit == "all" and cfg.data.orientation == "user"


def test_a_dense_net_trains_with_the_normalised_mse_from_its_logits(make_cfg):
    """The objective is family-free: a net without output_norms of its own (Mult-DAE) gets
    the contract's dense default, and one training step runs."""
    from deepcf.training.train import train

    m = train(make_cfg("experiment=mult_dae", "objective=normalized_mse", "data=synthetic",
                       "model.net.hidden=[8]", "model.net.latent=4", "trainer.max_epochs=1",
                       "logger=none", "callbacks.onnx_export=null"))
    assert 0 <= m["test/ndcg@10"] <= 1


def test_ddp_on_cpu_trains_elsa_and_the_ranking_score_is_aggregated(tmp_path, cache_dir):
    """2-process gloo DDP of the new path: one summary, the ONNX export; the test NDCG@10 the
    two ranks computed together equals the 1-process score of the same best checkpoint."""
    import json
    import subprocess
    import sys

    import pytorch_lightning as pl
    from omegaconf import OmegaConf

    from deepcf.serving.runs import run_datamodule
    from deepcf.training.assembly import build_module

    p = subprocess.run([sys.executable, "-m", "deepcf.train", "experiment=elsa", "data=synthetic",
                        "model.net.rank=8", "logger=none", "trainer=ddp_cpu", "trainer.devices=2",
                        "trainer.max_epochs=2", "data.batch_size=16", "data.eval_batch_size=50",
                        f"paths.cache_dir={cache_dir}", "trainer.accelerator=cpu"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count("no RMSE") == 1 and "not exported" not in p.stdout
    (run,) = (tmp_path / "outputs" / "elsa" / "runs").iterdir()
    m = json.loads((run / "metrics.json").read_text())
    assert (run / "model.onnx").is_file() and m["epochs"] == 2

    cfg = OmegaConf.load(run / "config_resolved.yaml")
    dm = run_datamodule(run, cache_dir=str(cache_dir))
    model = build_module(cfg, dm)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_checkpointing=False)
    one = trainer.test(model, datamodule=dm, ckpt_path=m["best_checkpoint"], verbose=False,
                       weights_only=True)[0]
    assert 0 < m["test/ndcg@10"] <= 1
    assert m["test/ndcg@10"] == pytest.approx(one["test/ndcg@10"], rel=1e-6, abs=1e-6)


def test_the_threaded_top_k_picks_what_the_numpy_one_picks():
    from deepcf.serving.scoring import top_k_unseen, top_k_unseen_fast

    rng = np.random.default_rng(0)
    S = rng.standard_normal((50, 40)).astype(np.float32)  # no ties
    seen = sp.random(50, 40, density=0.9, format="csr", random_state=1)  # some rows run out
    a_idx, a_val = top_k_unseen(S.copy(), seen, 10)
    b_idx, b_val = top_k_unseen_fast(S.copy(), seen, 10)
    np.testing.assert_array_equal(a_idx, b_idx)
    np.testing.assert_array_equal(a_val, b_val)
    assert (a_idx == -1).any()
