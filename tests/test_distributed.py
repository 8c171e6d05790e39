"""Multi-process training: every DDP rank trains on a disjoint share of the rows each epoch (no
row dropped or counted twice), with as many batches as every other rank; the trainer configs
compose to what Lightning needs. In-process: the samplers of rank r of world w, no subprocesses
(tests/test_runs.py has the 2-process gloo run)."""

from __future__ import annotations

import pytest

from deepcf.data.datamodule import RankShare
from deepcf.errors import ConfigError


@pytest.mark.parametrize("n,world,batch", [(943, 2, 32), (943, 3, 32), (10, 4, 3), (7, 7, 32),
                                           (100, 8, 1), (1682, 16, 64), (5, 2, 1)])
def test_every_rank_sees_a_disjoint_share_and_every_row_once_per_epoch(n, world, batch):
    for epoch in (0, 1, 5):
        seen, steps = [], set()
        for rank in range(world):
            s = RankShare(n, world, rank, batch, seed=42)
            s.set_epoch(epoch)
            batches = list(s)
            assert len(batches) == len(s) and all(len(b) >= 1 for b in batches)
            assert max(len(b) for b in batches) <= max(batch, 2)
            steps.add(len(batches))
            seen += [i for b in batches for i in b]
        assert len(steps) == 1  # DDP: the same number of optimizer steps on every rank
        assert sorted(seen) == list(range(n))  # none dropped, none twice


def test_shares_are_reshuffled_per_epoch_and_the_same_on_every_call():
    a, b = RankShare(500, 2, 0, 32, seed=1), RankShare(500, 2, 0, 32, seed=1)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first


def test_the_datamodule_gives_each_rank_its_share(make_cfg):
    from types import SimpleNamespace

    from deepcf.training.config import build

    dm = build(make_cfg("data=synthetic", "data.batch_size=16").data, "data")
    dm.setup("fit")
    n = len(dm.dataset("train"))
    seen = []
    for rank in range(3):
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=3)
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(2)
        seen += [int(r) for batch in loader for r in batch["rows"]]
    assert sorted(seen) == sorted(int(r) for r in dm.dataset("train").rows) and len(seen) == n


def test_more_processes_than_rows_is_one_line():
    with pytest.raises(ConfigError, match="3 DDP processes but only 2 training rows"):
        RankShare(2, 3, 0, 32)


@pytest.mark.parametrize("choice,accelerator,backend", [("ddp_cpu", "cpu", "gloo"),
                                                        ("ddp", "gpu", None)])
def test_trainer_configs(make_cfg, choice, accelerator, backend):
    cfg = make_cfg(f"trainer={choice}", "trainer.num_nodes=3")
    t = cfg.trainer
    assert t.devices == 2 and t.num_nodes == 3
    if backend:
        assert t.accelerator == accelerator  # make_cfg forces cpu; ddp_cpu is cpu anyway
        assert t.strategy.process_group_backend == backend
    else:
        assert t.strategy._target_ == "deepcf.training.strategies.DDPStrategy"
