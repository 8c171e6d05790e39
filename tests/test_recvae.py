"""RecVAE (deepcf.models.recvae) and the alternating objective: the sparse training path and
its loss against a dense brute-force computation (values and gradients), the composite prior
against its definition, the phases, ONNX parity and a deepcf.train run."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from deepcf.errors import ConfigError
from deepcf.models.recvae import RecVAE
from deepcf.models.sparse_ops import Pattern
from deepcf.training.objectives.alternating import Alternating


def tiny(seed=0, n_rows=7, width=9):
    rng = np.random.default_rng(seed)
    X = (rng.random((n_rows, width)) < 0.4).astype(np.float32)
    X[:, 0] = 1.0
    return torch.from_numpy(X)


def pattern(X: torch.Tensor) -> tuple[Pattern, torch.Tensor]:
    r, c = X.nonzero(as_tuple=True)
    off = torch.searchsorted(r, torch.arange(X.shape[0]))
    return Pattern.from_offsets(off, c, X.shape[1]), X[r, c]


def brute_loss(net: RecVAE, X: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """The paper's negative ELBO written densely, with the draw's noise `eps` given."""
    enc = net.encoder
    x = X / X.norm(dim=1, keepdim=True)
    h = [enc.norms[0](torch.nn.functional.silu(x @ enc.item_in + enc.in_b))]
    for layer, norm in zip(enc.layers, enc.norms[1:]):
        h.append(norm(torch.nn.functional.silu(layer(h[-1]) + sum(h))))
    mu, logvar = enc.mu(h[-1]), enc.logvar(h[-1])
    z = mu + eps * torch.exp(0.5 * logvar)
    logp = torch.log_softmax(net.decoder(z), 1)
    nll = -(logp * X).sum(1).mean()

    def lognorm(v, m, lv):
        return -0.5 * (lv + math.log(2 * math.pi) + (v - m) ** 2 / torch.exp(lv))

    with torch.no_grad():
        old_mu, old_lv = net.prior_encoder.dense(X, 0.0)
    w = net.config.mixture
    prior = torch.log(w[0] * torch.exp(lognorm(z, 0 * z, 0 * z))
                      + w[1] * torch.exp(lognorm(z, old_mu, old_lv))
                      + w[2] * torch.exp(lognorm(z, 0 * z, 0 * z + 10.0)))
    kl = (lognorm(z, mu, logvar) - prior).sum(1)
    return nll + (net.config.gamma * X.sum(1) * kl).mean()


def test_sparse_loss_and_gradients_match_the_dense_elbo():
    torch.manual_seed(0)
    X = tiny()
    net = RecVAE.build(X.shape[1], hidden=5, latent=3, input_dropout=0.0, gamma=0.3)
    with torch.no_grad():  # a prior encoder unlike the encoder: the mixture's middle part counts
        for p in net.prior_encoder.parameters():
            p.add_(0.3 * torch.randn_like(p))
    net.train()
    inputs, values = pattern(X)
    from deepcf.training.objectives.multinomial import multinomial_nll

    torch.manual_seed(1)
    logits, penalty = net.train_logits(inputs, values)
    loss = multinomial_nll(logits, inputs, values) + penalty
    grads = torch.autograd.grad(loss, list(net.encoder.parameters()) +
                                list(net.decoder.parameters()))
    torch.manual_seed(1)
    eps = torch.randn(X.shape[0], 3)
    want = brute_loss(net, X, eps)
    wgrads = torch.autograd.grad(want, list(net.encoder.parameters()) +
                                 list(net.decoder.parameters()))
    torch.testing.assert_close(loss, want, atol=1e-5, rtol=1e-5)
    for g, w in zip(grads, wgrads):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-4)
    # inference: the code's mean, the same from dense rows (forward, ONNX) and sparse entries
    net.eval()
    mu, _ = net.encoder.sparse(inputs, values, 0.0)
    torch.testing.assert_close(net(X), net.decoder(mu), atol=1e-5, rtol=1e-5)


def test_phases_step_only_their_block_and_refresh_the_prior():
    obj = Alternating(phases={"encoder": 2, "decoder": 1})
    assert [obj.block_of(e) for e in range(6)] == ["encoder", "encoder", "decoder"] * 2
    net = RecVAE.build(9, hidden=4, latent=2)
    with torch.no_grad():
        net.encoder.mu.weight.add_(1.0)
    assert not torch.equal(net.prior_encoder.mu.weight, net.encoder.mu.weight)
    net.begin_block("decoder")
    assert not net.dropout_on
    net.end_block("encoder")
    torch.testing.assert_close(net.prior_encoder.mu.weight, net.encoder.mu.weight)
    assert not any(p.requires_grad for p in net.prior_encoder.parameters())
    for bad in ({"encoder": 0}, {"encoder": 1.5}):
        with pytest.raises(ConfigError, match="phases"):
            Alternating(phases=bad)
    with pytest.raises(ConfigError, match="mixture"):
        RecVAE.build(9, mixture=[0.5, 0.5])


def test_onnx_parity(tmp_path):
    from deepcf.serving.export import export_onnx, parity

    X = tiny(3, n_rows=20, width=15).numpy()
    net = RecVAE.build(15, hidden=8, latent=4).eval()
    path = export_onnx(net, tmp_path / "recvae.onnx", torch.from_numpy(X[:4]))
    assert parity(path, net, X) <= 1e-4


def test_trains_in_phases_through_deepcf_train(make_cfg, tmp_path):
    from deepcf.serving.runs import load_net
    from deepcf.training.train import train

    m = train(make_cfg("experiment=recvae", "data=synthetic", "logger=none",
                       "model.net.hidden=16", "model.net.latent=4", "trainer.max_epochs=4",
                       output_dir=tmp_path / "run"))
    assert m["onnx"] and m["scores"] == "ranking" and m["epochs"] == 4
    assert 0.0 < m["test/ndcg@10"] <= 1.0
    net = load_net(Path(m["best_checkpoint"]))
    assert isinstance(net, RecVAE)
