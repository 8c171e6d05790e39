"""The model contract: a second, minimal net goes the whole way from config only, and every net
is rebuilt from its checkpoint's spec."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from deepcf.errors import CheckpointError, ConfigError
from deepcf.models.autoencoder import AutoEncoder
from deepcf.models.contract import build_net, dense_observed, net_from_checkpoint
from deepcf.models.kernel import KernelNet
from deepcf.models.linear import ItemLinear
from deepcf.models.sparse_ops import Pattern, entry_rows


def test_a_second_net_trains_exports_and_evaluates_from_config_only(make_cfg, tmp_path):
    from deepcf.serving.evaluate import evaluate_run
    from deepcf.serving.export import export_run
    from deepcf.serving.runs import load_net
    from deepcf.training.train import train

    run = tmp_path / "run"
    cfg = make_cfg("data=synthetic", "model=linear", "trainer.max_epochs=8",
                   "model.optimizer.lr=0.01", output_dir=run)
    m = train(cfg)
    assert math.isfinite(m["test/rmse"]) and m["onnx"]  # exported, onnxruntime parity held
    # it learned: the untrained net predicts ~0, clipped to 1 star (val RMSE ~2.7 here)
    assert m["val/rmse_best"] < 2.0
    net = load_net(Path(m["best_checkpoint"]))  # rebuilt from the checkpoint's spec alone
    assert isinstance(net, ItemLinear) and net.width == 200
    r = evaluate_run(run)  # onnxruntime on the run's test split
    assert r["rating"]["rmse"] == pytest.approx(m["test/rmse"], abs=1e-5)
    out, diff = export_run(Path(m["best_checkpoint"]), tmp_path / "again.onnx")
    assert out.exists() and diff <= 1e-4


@pytest.mark.parametrize("make", [lambda: AutoEncoder.build(30, hidden=[8, 4], tied=True),
                                  lambda: ItemLinear.build(30),
                                  lambda: KernelNet.build(30, hidden=[4], residual="target")])
def test_spec_rebuilds_the_same_net(make):
    torch.manual_seed(0)
    net = make()
    for p in net.parameters():
        torch.nn.init.normal_(p, 0, 0.1)
    state = {"hyper_parameters": {"net": net.spec()},
             "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}}
    again = net_from_checkpoint(state)
    x = torch.rand(4, 30)
    torch.testing.assert_close(again(x), net.eval()(x))
    assert type(build_net(net.spec())) is type(net)


def test_contract_defaults_equal_the_dense_forward():
    """ItemLinear states only forward: its training and held-out predictions come from the
    contract's defaults, which must read the dense forward at the right positions."""
    torch.manual_seed(1)
    net = ItemLinear.build(12)
    torch.nn.init.normal_(net.weight)
    x = torch.randint(0, 6, (5, 12)).float() * (torch.rand(5, 12) < 0.4)
    idx = x.nonzero()[:, 1]
    off = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum((x != 0).sum(1), 0)[:-1]])
    val = x[x != 0]
    pat = Pattern.from_offsets(off, idx, 12)
    rows = entry_rows(off, len(idx))
    full = net(x)
    torch.testing.assert_close(net.predict_observed(pat, val, pat), full[rows, idx])
    torch.testing.assert_close(dense_observed(net, pat, val, pat), full[rows, idx])
    tr, ti = torch.tensor([0, 4, 2]), torch.tensor([11, 0, 5])
    torch.testing.assert_close(net.predict_at(idx, val, off, tr, ti), full[tr, ti])
    assert (torch.diagonal(torch.autograd.functional.jacobian(
        lambda v: net(v.unsqueeze(0))[0], x[0])) == 0).all()  # a rating never predicts itself


def test_unknown_options_and_nets_are_one_line():
    with pytest.raises(ConfigError, match="model.net.hiden is not an option of AutoEncoder"):
        AutoEncoder.build(10, hiden=[4])
    with pytest.raises(ConfigError, match="model.net._target_='torch.nn.Linear' is not a"):
        build_net({"target": "torch.nn.Linear", "config": {}})
    with pytest.raises(ConfigError, match="no such class"):
        build_net({"target": "deepcf.models.nope.Net", "config": {}})


def test_a_checkpoint_without_a_net_spec_is_one_line():
    with pytest.raises(CheckpointError, match="not a deepcf checkpoint"):
        net_from_checkpoint({"hyper_parameters": {"n_items": 20}, "state_dict": {}})
