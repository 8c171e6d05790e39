"""The autoencoder: sparse path == dense masked MSE, tied weights, noise, init."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from deepcf.errors import ConfigError
from deepcf.models.autoencoder import AutoEncoder
from deepcf.models.noise import corrupt
from deepcf.models.sparse_ops import entry_rows
from tests.helpers import make_module


def _sparse_batch(n_rows=6, n_items=40, density=0.2, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(n_rows, n_items, generator=g) < density
    mask[2] = False  # an empty row
    x = torch.randint(1, 6, (n_rows, n_items), generator=g).float() * mask
    idx = mask.nonzero()[:, 1]
    val = x[mask]
    counts = mask.sum(1)
    off = torch.cumsum(counts, 0) - counts
    return x.double(), mask, idx, val.double(), off


def _dense_masked_loss(net, x, mask):
    out = net(x)
    return ((out - x) ** 2 * mask).sum() / mask.sum()


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("linear_last", [True, False])
def test_sparse_loss_and_gradients_equal_dense_masked_mse(tied, linear_last):
    torch.manual_seed(0)
    net = AutoEncoder.build(40, hidden=[16, 8, 4], activation="selu", tied=tied,
                            linear_last=linear_last).double()
    x, mask, idx, val, off = _sparse_batch()
    dense = _dense_masked_loss(net, x, mask)
    g_dense = torch.autograd.grad(dense, list(net.parameters()))
    row = entry_rows(off, len(idx))
    sparse = F.mse_loss(net.predict_at(idx, val, off, row, idx), val)
    g_sparse = torch.autograd.grad(sparse, list(net.parameters()))
    assert abs(dense.item() - sparse.item()) < 1e-5
    for a, b in zip(g_dense, g_sparse):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_held_out_scoring_equals_dense_outputs_at_those_positions():
    torch.manual_seed(1)
    net = AutoEncoder.build(40, hidden=[16, 8], activation="elu").eval()
    x, mask, idx, val, off = _sparse_batch()
    net = net.double()
    tgt_row, tgt_idx = torch.tensor([0, 0, 3, 5]), torch.tensor([1, 39, 7, 0])
    with torch.no_grad():
        got = net.predict_at(idx, val, off, tgt_row, tgt_idx)
        want = net(x)[tgt_row, tgt_idx]
    torch.testing.assert_close(got, want)


def test_tied_weights_are_one_parameter():
    untied = AutoEncoder.build(50, hidden=[8, 4])
    tied = AutoEncoder.build(50, hidden=[8, 4], tied=True)
    assert tied.item_decoder is tied.item_in
    n_tied = sum(p.numel() for p in tied.parameters())
    n_untied = sum(p.numel() for p in untied.parameters())
    assert n_untied - n_tied == 50 * 8 + 8 * 4  # the decoder's weights, biases kept
    with torch.no_grad():
        tied.item_in[3].add_(1.0)  # changing the encoder changes the decoder
        h = torch.ones(1, 8)
    out = tied.decode_at(h, torch.tensor([0]), torch.tensor([3]))
    assert out.item() == pytest.approx((tied.item_in[3].sum() + tied.out_b[3]).item(), rel=1e-6)
    # the decoder's middle layer is the encoder's transposed, not a copy
    assert tied.decoder_weights()[0].data_ptr() == tied.enc_w[0].data_ptr()


@pytest.mark.filterwarnings("ignore:You are trying to")
def test_noise_applies_in_training_only():
    torch.manual_seed(0)
    module = make_module(40, hidden=[16, 8], noise={"kind": "dropout", "p": 0.5},
                         optimizer={"_target_": "torch.optim.SGD", "lr": 0.1})
    _, _, idx, val, off = _sparse_batch()
    batch = {"in_idx": idx, "in_val": val.float(), "in_off": off}
    module.train()
    losses = {module.training_step(batch, 0).item() for _ in range(5)}
    assert len(losses) > 1  # corrupted differently each step
    module.eval()
    tb = dict(batch, tgt_row=entry_rows(off, len(idx)), tgt_idx=idx,
              tgt_cold=torch.zeros(len(idx), dtype=torch.bool))
    with torch.no_grad():
        a, b = module.predict_targets(tb), module.predict_targets(tb)
    torch.testing.assert_close(a, b)  # no noise when scoring


@pytest.mark.parametrize("kind,p,std", [("dropout", 0.3, 0.0), ("gaussian", 0.0, 0.5)])
def test_corrupt_keeps_rows_sparse_and_consistent(kind, p, std):
    torch.manual_seed(0)
    _, _, idx, val, off = _sparse_batch(n_rows=50, n_items=100, density=0.3)
    row = entry_rows(off, len(idx))
    c_idx, c_val, c_off = corrupt(idx, val, off, row, kind, p, std)
    assert len(c_off) == len(off)
    if kind == "dropout":
        assert 0.55 < len(c_idx) / len(idx) < 0.85
        original = {(r, i): v for r, i, v in zip(row.tolist(), idx.tolist(), val.tolist())}
        kept_rows = entry_rows(c_off, len(c_idx))
        for r, i, v in zip(kept_rows.tolist(), c_idx.tolist(), c_val.tolist()):
            assert v * (1 - p) == pytest.approx(original[(r, i)])  # same entry, rescaled
    else:
        assert torch.equal(c_idx, idx) and not torch.equal(c_val, val)


def test_init_schemes():
    net = AutoEncoder.build(300, hidden=[64, 32])
    net.init_weights("xavier_uniform", bias=0.01)
    bound = math.sqrt(6 / (300 + 64))
    assert net.item_in.abs().max() <= bound and net.item_in.abs().max() > 0.9 * bound
    assert all((b == 0.01).all() for b in [*net.enc_b, *net.dec_b, net.out_b])
    net.init_weights("default")
    assert net.item_in.abs().max() <= 1 / math.sqrt(300)  # nn.Linear(300, 64): fan_in 300
    assert net.out_b.abs().max() <= 1 / math.sqrt(64)
    with pytest.raises(ConfigError, match="init.scheme='glorot'"):
        net.init_weights("glorot")


@pytest.mark.parametrize("kwargs,key", [({"hidden": []}, "model.net.hidden"),
                                        ({"activation": "gelu2"}, "model.net.activation"),
                                        ({"dropout": 1.5}, "model.net.dropout")])
def test_bad_model_options(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        AutoEncoder.build(10, **{"hidden": [4], **kwargs})


def test_the_export_scores_the_net_itself_restores_its_mode_and_writes_its_metadata(tmp_path):
    import onnx

    from deepcf.serving.export import export_onnx, parity, scoring_net

    torch.manual_seed(0)
    net = AutoEncoder.build(12, hidden=[4], dropout=0.5)  # dropout: eval mode matters
    net.train()
    with scoring_net(net) as scorer:  # on the CPU in float32: no copy (a GB at scale)
        assert scorer is net and not net.training
    assert net.training
    wide = AutoEncoder.build(12, hidden=[4]).double()
    with scoring_net(wide) as scorer:  # float64: a float32 copy, the net left as it is
        assert scorer is not wide and next(scorer.parameters()).dtype == torch.float32
    assert next(wide.parameters()).dtype == torch.float64
    rows = (torch.rand(6, 12) < 0.4).float() * 4.0
    path = export_onnx(net, tmp_path / "m.onnx", rows[:3], {"deepcf.width": 12, "k": "v"})
    assert net.training  # the export does not leave the training run's net in eval mode
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert props["deepcf.width"] == "12" and props["k"] == "v"
    assert parity(path, net, rows.numpy()) <= 1e-5  # scored in eval mode: dropout off
