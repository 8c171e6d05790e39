"""hparams_search=optuna_*: a seeded TPE search over the experiment's own space
(conf/search_space/<search>/<experiment>.yaml) returning a validation metric, never test."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from deepcf.errors import ConfigError
from deepcf.train import check_search_space
from deepcf.training.config import CONF_DIR, compose

SPACES = sorted((Path(CONF_DIR) / "search_space").glob("*/*.yaml"))


def sweep(tmp_path: Path, cache_dir: Path, name: str, *overrides: str,
          search: str = "optuna_rating") -> Path:
    """A tiny optuna sweep run in this process, as `python -m deepcf.train` runs it."""
    import deepcf.train

    out = tmp_path / name
    argv = ["deepcf.train", f"hparams_search={search}", "data=synthetic",
            "data.source.scale=tiny", "trainer.max_epochs=1", "model.net.hidden=[16]",
            "logger=none",
            "callbacks.onnx_export=null", "callbacks.loss_curve=null",
            "hydra.sweeper.n_trials=3", "hydra.sweeper.sampler.n_startup_trials=2",
            f"hydra.sweep.dir={out}", f"paths.cache_dir={cache_dir}", "trainer.accelerator=cpu",
            *overrides]
    old = sys.argv
    sys.argv = argv
    try:
        assert deepcf.train.run() == 0
    finally:
        sys.argv = old
        GlobalHydra.instance().clear()
    return out


def trials(out: Path) -> list[tuple[dict, dict]]:
    """(sampled values, metrics.json) of each trial of a sweep dir, in trial order."""
    rows = []
    for job in sorted(out.glob("*/metrics.json"), key=lambda p: int(p.parent.name)):
        overrides = OmegaConf.load(job.parent / ".hydra" / "overrides.yaml")
        sampled = dict(o.split("=", 1) for o in overrides if o.startswith(
            ("model.optimizer.", "model.net.dropout")))
        rows.append((sampled, json.loads(job.read_text())))
    return rows


def test_a_seeded_search_samples_reproducibly_and_names_the_best_val_trial(tmp_path, cache_dir):
    first = trials(sweep(tmp_path, cache_dir, "a"))
    again = trials(sweep(tmp_path, cache_dir, "b"))
    assert len(first) == 3
    values = [s for s, _ in first]
    assert all(set(s) == {"model.optimizer.lr", "model.optimizer.weight_decay", "model.net.dropout"}
               for s in values)
    assert len({tuple(sorted(s.items())) for s in values}) == 3  # every trial its own values
    assert [s for s, _ in again] == values  # the seeded sampler: the same values again
    for _, m in first:
        assert "test/rmse" not in m and m["val/rmse_best"] > 0  # validation only, never test
    result = yaml.safe_load((tmp_path / "a" / "optimization_results.yaml").read_text())
    best_s, best_m = min(first, key=lambda t: t[1]["val/rmse_best"])
    assert result["best_value"] == pytest.approx(best_m["val/rmse_best"])
    assert {k: str(v) for k, v in result["best_params"].items()} == best_s
    from deepcf.study.report import find_runs, table

    rows = table(find_runs([tmp_path / "a"])).splitlines()[2:]  # `deepcf.report SWEEP`'s table
    assert len(rows) == 3 and all("| not scored | not scored |" in r for r in rows)


def test_a_topn_search_maximises_val_ndcg(tmp_path, cache_dir):
    out = sweep(tmp_path, cache_dir, "topn", "hydra.sweeper.n_trials=2", search="optuna_topn")
    runs = trials(out)
    assert len(runs) == 2 and len({tuple(sorted(s.items())) for s, _ in runs}) == 2
    assert all("test/ndcg@10" not in m and "test/rmse" not in m for _, m in runs)
    result = yaml.safe_load((out / "optimization_results.yaml").read_text())
    assert result["best_value"] == pytest.approx(max(m["val/ndcg@10_best"] for _, m in runs))


@pytest.mark.parametrize("space", SPACES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_search_space_names_keys_of_its_experiment(space):
    search, experiment = space.parent.name, space.stem
    own = Path(CONF_DIR) / "experiment" / f"{experiment}.yaml"
    if experiment != "None" and not own.is_file():
        pytest.skip(f"experiment={experiment} is not on this branch yet")
    overrides = [f"hparams_search={search}"] + \
        ([] if experiment == "None" else [f"experiment={experiment}"])
    cfg = compose(overrides, return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    assert dict(params) == yaml.safe_load(space.read_text())
    for key in params:
        assert OmegaConf.select(cfg, key, default="MISSING") != "MISSING", (space, key)
    assert cfg.hydra.sweeper.sampler.seed is not None and cfg.hydra.sweeper.n_trials
    assert cfg.optimized_metric.startswith("val/") and cfg.test is False


def test_other_sweeps_get_no_search_space():
    grid = compose(["experiment=item_autorec", "hparams_search=autorec_grid"],
                   return_hydra_config=True)
    plain = compose(["experiment=i_autorec"], return_hydra_config=True)
    assert set(grid.hydra.sweeper.params) == {"model.net.hidden", "model.optimizer.weight_decay",
                                              "model.net.dropout"}
    assert not plain.hydra.sweeper.params


def test_a_search_without_a_space_is_one_line():
    with pytest.raises(ConfigError, match="no search space for experiment=first_test_run"):
        check_search_space(["hparams_search=optuna_rating", "experiment=first_test_run"])
    check_search_space(["hparams_search=optuna_rating", "experiment=first_test_run",
                        "model.net.dropout=interval(0, 0.5)"])
    check_search_space(["hparams_search=optuna_rating", "experiment=i_autorec"])
