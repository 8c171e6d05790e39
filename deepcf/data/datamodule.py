"""LightningDataModule that streams batches of sparse rows of one ratings source.

It loads the source's matrix (through the cache), splits it (deepcf.data.split), orients it
(rows are users or movies, deepcf.data.orientation) and serves RowBatches (deepcf.data.batches):
training rows as inputs, and for val/test the training rows as inputs with the held-out ratings
as targets (deepcf.data.heldout).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pytorch_lightning as pl
import scipy.sparse as sp
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    RandomSampler,
    SequentialSampler,
)

from deepcf.data.batches import RowBatches
from deepcf.data.heldout import heldout_set
from deepcf.data.matrix import RatingMatrix, load_matrix
from deepcf.data.orientation import check_orientation, input_width, orient
from deepcf.data.sources import RatingsSource
from deepcf.data.split import (
    Split,
    implicit_split,
    parse_implicit,
    parse_protocol,
    protocol_text,
)
from deepcf.errors import ConfigError, DataError

log = logging.getLogger(__name__)


class EpochBatches(BatchSampler):
    """A BatchSampler that passes Lightning's per-epoch `set_epoch` on to its sampler."""

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)


class RankShare:
    """The training batches of rank `rank` of `world` DDP processes for one epoch.

    Every rank draws the same permutation of the `n` rows (seeded by `seed` and the epoch, which
    Lightning passes to `set_epoch`) and takes its own contiguous share of it, so the shares are
    disjoint and cover every row once per epoch. DDP needs the same number of steps on every
    rank: each share is cut into the same number of batches, `ceil(largest share / batch_size)`
    (fewer where a share has fewer rows than that, batch_size 1 on tiny data), so a batch has at
    most `batch_size` rows, one more in that corner case. Unlike DistributedSampler nothing is
    padded with repeated rows.
    """

    def __init__(self, n: int, world: int, rank: int, batch_size: int, seed: int = 0):
        if n < world:
            raise ConfigError(f"trainer: {world} DDP processes but only {n} training rows; "
                              f"use at most {n} processes (trainer.devices x trainer.num_nodes)")
        self.n, self.world, self.rank, self.batch_size, self.seed = n, world, rank, batch_size, seed
        self.epoch = 0
        smallest, largest = n // world, -(-n // world)
        self.n_batches = max(1, min(-(-largest // batch_size), smallest))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def share(self) -> np.ndarray:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        return np.array_split(order, self.world)[self.rank]

    def __iter__(self):
        for batch in np.array_split(self.share(), self.n_batches):
            yield batch.tolist()

    def __len__(self) -> int:
        return self.n_batches


def data_warnings(m: RatingMatrix) -> list[str]:
    """One line per thing about the ratings that trains without error but likely not as meant:
    one user, all-identical ratings, or ratings narrower than the declared range by half a star
    or more (predictions are clipped to the declared range; deepcf warns, it does not guess)."""
    vals = m.ratings.data
    out = []
    if m.ratings.shape[0] == 1:
        out.append(f"{m.source}: only one user: held-out ratings are that user's own and the "
                   f"model learns a single row; add more users' ratings")
    if len(vals) and vals.min() == vals.max():
        out.append(f"{m.source}: every rating is {vals[0]:g}: there is nothing to learn (a "
                   f"constant predicts it exactly)")
    elif len(vals):
        lo, hi = float(vals.min()), float(vals.max())
        if lo - m.rating_min >= 0.5 or m.rating_max - hi >= 0.5:
            out.append(f"{m.source}: ratings span {lo:g}..{hi:g} but the declared range is "
                       f"{m.rating_min:g}..{m.rating_max:g} (predictions are clipped to it); if "
                       f"the scale is {lo:g}-{hi:g} stars set data.source.rating_min={lo:g} "
                       f"data.source.rating_max={hi:g}")
    return out


@dataclass
class DataFacts:
    """What the model needs of the data: the input width, the rating range, the training mean
    and the oriented training rows (rows x width CSR; None when not at hand)."""

    width: int
    rating_min: float = 1.0
    rating_max: float = 5.0
    train_mean: float = 3.5
    rows: sp.csr_matrix | None = None


class RatingsDataModule(pl.LightningDataModule):
    """Loads `source`, splits it by `protocol` (deepcf.data.split), serves sparse row batches.

    `source` may also be a RatingMatrix given with its `split` (a deepcf.data.split.Split of
    users x movies CSRs): then nothing is read or split (the accuracy protocols' rows).

    `orientation="user"` makes rows users (U-AutoRec, as in the original study); `"item"` makes
    rows movies (I-AutoRec). `cache_dir` holds downloads and parsed matrices (`cache=False`
    reads the source every time). `loader`: the DataLoader's `num_workers` and `pin_memory`.

    `implicit` (data.implicit) turns the ratings into interactions after the split, for every
    source: null keeps the ratings; `all` makes every rating a 1; a number t keeps the ratings
    >= t as 1s and drops the others (train, val and test alike). The rating range is then 0..1.
    """

    def __init__(
        self,
        source: RatingsSource,
        orientation: str = "user",
        protocol: dict | None = None,
        batch_size: int = 32,
        eval_batch_size: int = 256,
        implicit: str | float | None = None,
        cache_dir: str = "~/.cache/deepcf",
        cache: bool = True,
        loader: dict | None = None,
        split: Split | None = None,
    ):
        super().__init__()
        parse_implicit(implicit)  # a wrong value is one line now, not after loading
        if isinstance(source, RatingMatrix) and split is not None:
            # a matrix and its split given (deepcf.study's protocols), no source to read
            self.matrix, source = source, None
        elif not isinstance(source, RatingsSource):
            raise ConfigError(f"data.source must be a ratings source (a config with a _target_ "
                              f"from deepcf.data.sources), got {type(source).__name__}")
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"data.{name}={value!r} must be an integer >= 1")
        self.source = source
        self.orientation = check_orientation(orientation)
        self.protocol = parse_protocol(protocol)
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.cache_dir, self.cache = cache_dir, cache
        loader = dict(loader or {})
        self.num_workers = loader.pop("num_workers", 0)
        self.pin_memory = loader.pop("pin_memory", False)
        if loader:
            raise ConfigError(f"data.loader.{sorted(loader)[0]} is not an option (data.loader: "
                              f"num_workers, pin_memory)")
        if source is not None:
            self.matrix: RatingMatrix | None = None
        self.split: Split | None = split
        self.implicit = implicit
        self._sets: dict[str, RowBatches] = {}
        self.train_rows: sp.csr_matrix | None = None  # the oriented training rows, after setup

    # -- loading ---------------------------------------------------------------------------
    def prepare_data(self) -> None:
        if self.matrix is None:
            self.matrix = load_matrix(self.source, self.cache_dir, self.cache)

    def setup(self, stage: str | None = None) -> None:
        if self._sets:
            return
        if self.split is None:
            self.prepare_data()
            for line in data_warnings(self.matrix):
                log.warning(line)
            self.split = self.protocol.split(self.matrix)
            for name in ("val", "test"):
                if getattr(self.split, name).nnz == 0:  # nothing to select or report on
                    raise DataError(
                        f"{self.matrix.source}: no {name} ratings: {self.matrix.ratings.nnz} "
                        f"rating(s) split by {protocol_text(self.protocol)} leave none; use "
                        f"more ratings or hold out more")
        self.ratings_split = self.split  # before `implicit`: what a refit merges
        self.split = implicit_split(self.split, self.implicit)
        train, val, test = self.oriented(self.split)
        self.train_rows = train
        self._sets = {
            "train": RowBatches(train, np.flatnonzero(np.diff(train.indptr) > 0)),
            "val": heldout_set(train, val),
            "test": heldout_set(train, test),
        }
        s = self.split
        log.info("data: %s, %d users x %d movies; ratings train %d / val %d / test %d; rows=%ss",
                 self.matrix.source, *self.matrix.shape, s.train.nnz, s.val.nnz, s.test.nnz,
                 self.orientation)

    def merged(self) -> RatingsDataModule:
        """This data with its validation carve merged into training (train + val, no
        validation part, the same test part), set up: what a refit trains on (refit=true) and
        what a refit run's model is evaluated from."""
        if self.split is None:
            self.setup()
        s = self.ratings_split
        train = (s.train + s.val).tocsr()
        train.sort_indices()
        dm = RatingsDataModule(self.matrix, self.orientation, None, self.batch_size,
                               self.eval_batch_size, self.implicit, self.cache_dir, self.cache,
                               {"num_workers": self.num_workers, "pin_memory": self.pin_memory},
                               Split(train, sp.csr_matrix(train.shape, dtype=np.float32), s.test))
        dm.protocol = self.protocol
        dm.setup()
        return dm

    def oriented(self, split: Split) -> tuple[sp.csr_matrix, ...]:
        return orient((split.train, split.val, split.test), self.orientation)

    # -- facts the model needs -------------------------------------------------------------
    @property
    def width(self) -> int:
        """Width of a model input row: movies for orientation=user, users for orientation=item."""
        return input_width(*self.matrix.shape, self.orientation)

    @property
    def train_mean(self) -> float:
        return self.split.train_mean

    @property
    def rating_range(self) -> tuple[float, float]:
        if parse_implicit(self.implicit) is not None:
            return 0.0, 1.0
        return self.matrix.rating_min, self.matrix.rating_max

    def facts(self) -> DataFacts:
        """What the model needs of this (set-up) data."""
        lo, hi = self.rating_range
        return DataFacts(self.width, lo, hi, self.train_mean, self.train_rows)

    def dataset(self, name: str) -> RowBatches:
        return self._sets[name]

    # -- loaders ---------------------------------------------------------------------------
    def _shard(self) -> tuple[int, int]:
        """(rank, world size) of the trainer this DataModule serves; (0, 1) without DDP."""
        trainer = getattr(self, "trainer", None)
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _loader(self, name: str, batch_size: int, shuffle: bool) -> DataLoader:
        """Batches of rows. Under DDP each rank takes its own rows (deepcf.training.train sets
        `use_distributed_sampler=False`, because Lightning's wrapper of this batch sampler would
        pad by repeating whole batches): for training a RankShare (a disjoint share of an
        epoch's permutation, in as many batches as every other rank takes, as DDP's gradient
        sync needs, and without padding: no row is dropped or seen twice per epoch); for val/test
        contiguous blocks without padding, so every held-out rating is scored exactly once and
        the metrics' sums are then added over the ranks."""
        ds = self._sets[name]
        rank, world = self._shard()
        if world > 1 and shuffle:
            batches = RankShare(len(ds), world, rank, batch_size,
                                seed=getattr(self.protocol, "seed", 0))
        elif world > 1:
            base = np.array_split(np.arange(len(ds)), world)[rank].tolist()
            batches = EpochBatches(base, batch_size, drop_last=False)
        else:
            base = RandomSampler(ds) if shuffle else SequentialSampler(ds)
            batches = EpochBatches(base, batch_size, drop_last=False)
        return DataLoader(
            ds, batch_size=None, sampler=batches,
            num_workers=self.num_workers, pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size, shuffle=False)
