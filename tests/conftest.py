"""Shared fixtures: configs composed the way `python -m deepcf.train` composes them, and one
tiny trained run per test session.

Importing torch + Lightning + Hydra costs seconds per process, so tests run in-process where they
can and share the expensive pieces at session scope.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from deepcf.training.config import compose
from tests.helpers import TINY_RUN

os.environ.setdefault("WANDB_SILENT", "true")



def compose_cfg(overrides: list[str], output_dir: Path, cache_dir: Path) -> DictConfig:
    """The train config for `overrides`, writing into `output_dir`, on the CPU, quietly."""
    cfg = compose(list(overrides), return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.cache_dir = str(cache_dir)
        cfg.trainer.accelerator = "cpu"
        cfg.trainer.enable_progress_bar = False
    return cfg


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One cache for the session (ML-100K wheel, parsed matrices), never the user's."""
    return tmp_path_factory.mktemp("deepcf-cache")


@pytest.fixture
def make_cfg(tmp_path, cache_dir):
    """make_cfg(*overrides) -> a composed train config writing into tmp_path."""

    def _make(*overrides: str, output_dir: Path | None = None) -> DictConfig:
        return compose_cfg(list(overrides), output_dir or tmp_path / "run", cache_dir)

    yield _make
    GlobalHydra.instance().clear()


@pytest.fixture(scope="session")
def train_run(cache_dir):
    """train_run(run_dir, overrides) -> run_dir, after training there with those overrides."""
    from deepcf.training.train import train

    def _train(run: Path, overrides: list[str]) -> Path:
        try:
            train(compose_cfg(overrides, run, cache_dir))
        finally:
            GlobalHydra.instance().clear()
        return run

    return _train


@pytest.fixture(scope="session")
def tiny_run(train_run, tmp_path_factory) -> Path:
    """One tiny synthetic training run (model.onnx, sidecar, checkpoints) for the session."""
    return train_run(tmp_path_factory.mktemp("tiny-run"), TINY_RUN)
