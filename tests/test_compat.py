"""Moved config keys fail in one line naming their new place; the shapes the code keeps."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from deepcf.data.datamodule import RatingsDataModule
from deepcf.errors import ConfigError
from deepcf.training.config import check_overrides

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("override,message", [
    ("model.hidden=[16]", "model.hidden is now model.net.hidden"),
    ("model.residual=target", "model.residual is now model.net.residual"),
    ("model.train_path=dense", "model.train_path is now model.objective.train_path"),
    ("model.sparse_grad=true", "model.sparse_grad is now model.objective.sparse_grad"),
    ("model.loss=multinomial", "model.loss is gone: use objective=masked_mse or "
                               "objective=multinomial"),
    ("loss=multinomial", "loss is gone: use objective=masked_mse or objective=multinomial"),
    ("model.refeed=true", "model.refeed is gone: use objective=refeed"),
    ("model.eval_topn=true", "model.eval_topn is gone: use model.metrics=[ndcg@10]"),
    ("callbacks=ranking", "callbacks=ranking is gone: the monitor follows"),
    ("data.val_fraction=0.2", "data.val_fraction is now data.protocol.val_fraction"),
    ("data.split_seed=3", "data.split_seed is now data.protocol.seed"),
    ("data.num_workers=2", "data.num_workers is now data.loader.num_workers"),
    ("data.path=r.csv", "data.path is now data.source.path"),
    ("model.net=deepcf.models.linear.ItemLinear",
     "the net's class is now model.net._target_=deepcf.models.linear.ItemLinear"),
])
def test_a_moved_key_is_one_line_naming_its_new_place(override, message):
    with pytest.raises(ConfigError) as e:
        check_overrides([override])
    assert message in str(e.value) and "\n" not in str(e.value)


def test_the_new_places_compose():
    cfg = check_overrides(["model.net.hidden=[16]", "model.objective.train_path=dense",
                           "data.protocol.seed=3", "data.loader.num_workers=0",
                           "objective=refeed", "model.metrics=[ndcg@10,map@20]"])
    assert cfg.model.net.hidden == [16] and cfg.data.protocol.seed == 3
    assert cfg.model.objective._target_.endswith("Refeed")


def test_the_datamodule_takes_at_most_ten_arguments():
    params = [p for p in inspect.signature(RatingsDataModule).parameters.values()
              if p.name != "self"]
    assert len(params) <= 10, [p.name for p in params]


def test_the_module_names_no_family_and_the_run_filters_no_closed_form_warning():
    module = (ROOT / "deepcf" / "training" / "module.py").read_text()
    assert not re.search(r"closed_form|loss_kind|refeed|dense_train|multinomial", module)
    run = (ROOT / "deepcf" / "training" / "train.py").read_text()
    assert "returned `None`" not in run and "configure_optimizers" not in run
