"""Mult-DAE and Mult-VAE: the sparse training path against the dense computation, the KL term
and its annealing against brute force, ONNX parity, rebuilding from the spec."""

from __future__ import annotations

import math

import pytest
import torch

from deepcf.errors import ConfigError
from deepcf.models.contract import net_from_checkpoint
from deepcf.models.mult import MultDAE, MultVAE, gaussian_kl
from deepcf.models.sparse_ops import Pattern

NETS = [lambda: MultDAE.build(20, hidden=[8, 6], latent=4),
        lambda: MultVAE.build(20, hidden=8, latent=4, anneal_steps=10)]


def _x(seed=0, rows=6, width=20) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(rows, width, generator=g) < 0.3).float()
    x[:, 0] = 1.0
    return x


def _batch(x):
    nz = x.nonzero()
    counts = (x != 0).sum(1)
    off = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(counts, 0)[:-1]])
    return Pattern.from_offsets(off, nz[:, 1], x.shape[1]), x[x != 0]


def _dense_by_hand(net, x):
    """Liang's computation in plain torch: normalise, tanh layers, the mean code."""
    h = x / x.norm(dim=1, keepdim=True)
    h = torch.tanh(h @ net.item_in + net.in_b)
    for m in net.enc_mid:
        h = torch.tanh(h @ m.weight.T + m.bias)
    c = h @ net.enc.weight.T + net.enc.bias
    z = c[:, : net.config.latent] if net.variational else torch.tanh(c)
    h = torch.tanh(z @ net.dec.weight.T + net.dec.bias)
    for m in net.dec_mid:
        h = torch.tanh(h @ m.weight.T + m.bias)
    return h @ net.out.weight.T + net.out.bias


@pytest.mark.parametrize("make", NETS)
def test_forward_and_the_sparse_path_equal_the_dense_computation(make):
    torch.manual_seed(0)
    net = make().eval()  # no dropout, the mean code: deterministic
    x = _x()
    torch.testing.assert_close(net(x), _dense_by_hand(net, x))
    logits, penalty = net.train_logits(*_batch(x))
    torch.testing.assert_close(logits, net(x))
    assert penalty is None  # eval mode: no draw, no KL


def test_input_dropout_is_applied_to_the_normalised_entries(monkeypatch):
    import deepcf.models.mult as mult

    seen = []

    def dropout(v, p, training):
        seen.append((v.detach().clone(), p, training))
        return v * 2.0  # every entry kept, scaled as inverted dropout scales

    torch.manual_seed(0)
    net = MultDAE.build(20, hidden=8, latent=4, input_dropout=0.5).train()
    x = _x()
    monkeypatch.setattr(mult.F, "dropout", dropout)
    pat, val = _batch(x)
    sparse, _ = net.train_logits(pat, val)
    dense = net(x)
    v, p, training = seen[0]
    xn = x / x.norm(dim=1, keepdim=True)
    torch.testing.assert_close(v, xn[x != 0])  # the sparse path: the normalised entries
    assert (p, training) == (0.5, True)
    torch.testing.assert_close(seen[1][0], xn)  # the dense path: the normalised rows
    torch.testing.assert_close(sparse, dense)


def test_kl_and_its_annealing_against_brute_force():
    torch.manual_seed(0)
    mu, logvar = torch.randn(5, 3), torch.randn(5, 3)
    # KL(N(mu, s^2) || N(0, 1)) per dimension = log(1/s) + (s^2 + mu^2) / 2 - 1/2
    s2 = logvar.exp().double()
    want = (torch.log(1 / s2.sqrt()) + (s2 + mu.double() ** 2) / 2 - 0.5).sum(1)
    torch.testing.assert_close(gaussian_kl(mu, logvar).double(), want)
    net = MultVAE.build(20, hidden=8, latent=4, anneal_cap=0.2, anneal_steps=10)
    assert [net.beta(s) for s in (0, 1, 5, 10, 50)] == pytest.approx([0, 0.1, 0.2, 0.2, 0.2])
    assert MultVAE.build(20, anneal_cap=0.3, anneal_steps=0).beta(0) == 0.3


def test_vae_training_penalty_is_beta_times_the_batch_mean_kl():
    torch.manual_seed(0)
    net = MultVAE.build(20, hidden=8, latent=4, input_dropout=0.0, anneal_steps=10).train()
    x = _x()
    torch.manual_seed(5)
    logits, penalty = net.train_logits(*_batch(x), step=1)
    h = torch.tanh((x / x.norm(dim=1, keepdim=True)) @ net.item_in + net.in_b)
    mu, logvar = net.enc(h).chunk(2, dim=1)
    torch.manual_seed(5)
    z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)  # the reparameterised draw
    torch.testing.assert_close(logits, net._decode(z))
    torch.testing.assert_close(penalty, 0.1 * gaussian_kl(mu, logvar).mean())  # beta(1)
    penalty.backward()  # the KL's gradient reaches the encoder
    assert net.enc.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("make", NETS)
def test_onnx_parity_and_spec_rebuild(make, tmp_path):
    from deepcf.serving.export import export_onnx, parity

    torch.manual_seed(0)
    net = make().eval()
    rows = _x(1, rows=9).numpy()
    path = tmp_path / "m.onnx"
    export_onnx(net, path, torch.from_numpy(rows[:4]), {})
    assert parity(path, net, rows) <= 1e-5
    state = {"hyper_parameters": {"net": net.spec()},
             "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}}
    again = net_from_checkpoint(state)
    torch.testing.assert_close(again(torch.from_numpy(rows)), net(torch.from_numpy(rows)))


def test_bad_options_are_one_line():
    with pytest.raises(ConfigError, match="model.net.input_dropout=1.0"):
        MultDAE.build(10, input_dropout=1.0)
    with pytest.raises(ConfigError, match="model.net.anneal_steps=-1"):
        MultVAE.build(10, anneal_steps=-1)
    with pytest.raises(ConfigError, match="model.net.anneal_cap is not an option of MultDAE"):
        MultDAE.build(10, anneal_cap=0.2)


@pytest.mark.parametrize("exp", ["mult_dae", "mult_vae"])
def test_experiments_train_on_ranking_and_export(exp, make_cfg):
    from deepcf.training.train import train

    m = train(make_cfg(f"experiment={exp}", "data=synthetic", "data.source.scale=tiny",
                       "trainer.max_epochs=2", "model.net.hidden=[16]", "model.net.latent=8"))
    assert math.isfinite(m["val/ndcg@10_best"]) and m["onnx"] and "test/rmse" not in m
    assert m["status"] == "ok"
