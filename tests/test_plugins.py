"""Extending deepcf from outside: a training objective and a ranking metric, each one new file
(tests/plugins/) plus config, trained through checkpoint, ONNX parity and evaluate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from deepcf.serving.evaluate import evaluate_run
from deepcf.serving.metrics import RankingAccumulator
from deepcf.serving.runs import load_net
from deepcf.training.train import train
from tests.helpers import flat_batch

HIT2 = "tests.plugins.hit2:hit2@10"


@pytest.fixture
def conf_dir(tmp_path) -> Path:
    """The objective's yaml, in a config dir on Hydra's search path (as a user's own conf/)."""
    d = tmp_path / "myconf" / "objective"
    d.mkdir(parents=True)
    (d / "huber.yaml").write_text("# @package model.objective\n"
                                  "_target_: tests.plugins.huber.MaskedHuber\n"
                                  "delta: 0.5\ntrain_path: sparse\nsparse_grad: auto\n")
    return d.parent


def test_a_new_objective_and_metric_train_export_and_evaluate(make_cfg, conf_dir, tmp_path):
    run = tmp_path / "run"
    cfg = make_cfg(f"hydra.searchpath=[file://{conf_dir}]", "objective=huber",
                   "data=synthetic", "model.net.hidden=[16]", "trainer.max_epochs=2",
                   f"model.metrics=[ndcg@10,{HIT2}]", "logger=none", output_dir=run)
    m = train(cfg)
    assert m["status"] == "ok" and m["monitor"] == "val/rmse"  # still a rating model
    assert 0 <= m[f"val/{HIT2.split(':')[1]}"] <= 1 and f"test/{HIT2.split(':')[1]}" in m
    assert m["onnx"] and Path(m["onnx"]).is_file()  # exported, onnxruntime parity checked
    hp = torch.load(m["best_checkpoint"], weights_only=True)["hyper_parameters"]
    assert hp["objective"] == {"_target_": "tests.plugins.huber.MaskedHuber",
                               "train_path": "sparse", "sparse_grad": "auto", "delta": 0.5}

    # the objective's step is the Huber loss of the net's predictions at the observed ratings
    from deepcf.training.assembly import assemble

    dm, module = assemble(cfg)
    X = dm.train_rows[:20]
    loss = module.training_step({**flat_batch(X), "in_val": torch.from_numpy(X.data)}, 0)
    with torch.no_grad():
        dense = module.net(torch.from_numpy(X.toarray()))
    r, c = X.nonzero()
    want = F.huber_loss(dense[r, c], torch.from_numpy(X.toarray()[r, c]), delta=0.5)
    assert float(loss) == pytest.approx(float(want), rel=1e-5)

    # evaluate takes the same metric by name; the served net is the checkpoint's
    r = evaluate_run(run, ks=(10,), metrics=["ndcg", "tests.plugins.hit2:hit2"])
    assert "hit2@10" in r["ranking"] and 0 <= r["ranking"]["hit2@10"] <= 1
    net = load_net(Path(m["best_checkpoint"]))
    assert net.width == dm.width
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["metrics"] == ["ndcg@10", "hit2@10"]


def test_the_plugged_metric_against_brute_force():
    rng = np.random.default_rng(0)
    top = np.stack([rng.permutation(30)[:10] for _ in range(8)])
    rel = rng.random((8, 30)) < 0.3
    acc = RankingAccumulator(30, [HIT2], np.ones(30), per_user=True)
    acc.add(top, rel)
    want = [float(sum(rel[u, j] for j in top[u]) >= 2) for u in range(8) if rel[u].any()]
    np.testing.assert_array_equal(acc.per_user_values()["hit2@10"], want)


def test_the_command_line_takes_a_config_group_from_the_search_path(conf_dir):
    from deepcf.training.config import check_overrides

    cfg = check_overrides([f"hydra.searchpath=[file://{conf_dir}]", "objective=huber"])
    assert cfg.model.objective._target_ == "tests.plugins.huber.MaskedHuber"
    assert cfg.model.objective.delta == 0.5
