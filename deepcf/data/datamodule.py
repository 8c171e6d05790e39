"""LightningDataModule that streams batches of sparse rows.

A batch is a handful of rows of the training CSR, cut out in one vectorised scipy call and handed
over as flat tensors (never dense over the movies):

- `in_idx`, `in_val`, `in_off`: column ids, ratings and per-row offsets of the input rows (the
  layout of `F.embedding_bag`);
- for validation/test, `tgt_row`, `tgt_idx`, `tgt_val`: the held-out ratings of those rows, and
  `tgt_cold`: True where the held-out rating's row or column has no training rating (the model
  has nothing to go on there, so it is scored with the declared fallback, the training mean).

Each row's input is its training ratings only; val/test ratings are targets, never inputs.
"""

from __future__ import annotations

import logging

import numpy as np
import pytorch_lightning as pl
import scipy.sparse as sp
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from deepcf.data.matrix import RatingMatrix, Split, load_matrix, split_matrix
from deepcf.errors import ConfigError

log = logging.getLogger(__name__)


def csr_rows(X: sp.csr_matrix, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """(column ids int64, values float32, row lengths) of `rows` of X, in row order."""
    sub = X[rows]
    return (
        torch.from_numpy(sub.indices.astype(np.int64)),
        torch.from_numpy(np.ascontiguousarray(sub.data, dtype=np.float32)),
        np.diff(sub.indptr),
    )


def _offsets(counts: np.ndarray) -> torch.Tensor:
    off = np.zeros(len(counts), dtype=np.int64)
    np.cumsum(counts[:-1], out=off[1:])
    return torch.from_numpy(off)


class RowBatches(Dataset):
    """Indexed by a list of positions in `rows`; returns one batch dict."""

    def __init__(self, inputs: sp.csr_matrix, rows: np.ndarray,
                 targets: sp.csr_matrix | None = None, cold_cols: np.ndarray | None = None):
        self.inputs, self.rows, self.targets = inputs, rows, targets
        self.cold_cols = cold_cols

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, positions) -> dict[str, torch.Tensor]:
        rows = self.rows[np.asarray(positions, dtype=np.int64)]
        in_idx, in_val, in_counts = csr_rows(self.inputs, rows)
        batch = {
            "rows": torch.from_numpy(rows),
            "in_idx": in_idx,
            "in_val": in_val,
            "in_off": _offsets(in_counts),
        }
        if self.targets is not None:
            t_idx, t_val, t_counts = csr_rows(self.targets, rows)
            t_row = np.repeat(np.arange(len(rows)), t_counts)
            cold = self.cold_cols[t_idx.numpy()] | (in_counts == 0)[t_row]
            batch.update(tgt_row=torch.from_numpy(t_row), tgt_idx=t_idx, tgt_val=t_val,
                         tgt_cold=torch.from_numpy(cold))
        return batch


def orient(mats, orientation: str) -> tuple[sp.csr_matrix, ...]:
    """Users x movies matrices as the model's rows: unchanged for "user", transposed for
    "item"."""
    mats = tuple(mats)
    if orientation == "item":
        mats = tuple(m.T.tocsr() for m in mats)
        for m in mats:
            m.sort_indices()
    return mats


def heldout_set(train: sp.csr_matrix, target: sp.csr_matrix) -> RowBatches:
    """The rows of `target` that have held-out ratings, with the training rows as inputs; a
    column with no training rating is cold."""
    cold = np.bincount(train.indices, minlength=train.shape[1]) == 0
    return RowBatches(train, np.flatnonzero(np.diff(target.indptr) > 0), target, cold)


class RatingsDataModule(pl.LightningDataModule):
    """Loads a ratings source, splits it, and serves sparse row batches.

    `orientation="user"` makes rows users (U-AutoRec, as in the original study); `"item"` makes
    rows movies (I-AutoRec).
    """

    def __init__(
        self,
        source: str = "ml100k",
        orientation: str = "user",
        batch_size: int = 32,
        eval_batch_size: int = 256,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        split_seed: int = 42,
        cache_dir: str = "~/.cache/deepcf",
        rating_min: float = 1.0,
        rating_max: float = 5.0,
        path: str | None = None,
        titles_path: str | None = None,
        test_path: str | None = None,
        scale: str | None = None,
        n_users: int | None = None,
        n_items: int | None = None,
        n_ratings: int | None = None,
        generator_seed: int = 0,
        cache: bool = True,
        pin_memory: bool = False,
    ):
        super().__init__()
        if orientation not in ("user", "item"):
            raise ConfigError(f"data.orientation={orientation!r} must be 'user' or 'item'")
        if batch_size < 1 or eval_batch_size < 1:
            raise ConfigError("data.batch_size and data.eval_batch_size must be >= 1")
        self.orientation = orientation
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.val_fraction, self.test_fraction, self.split_seed = (
            val_fraction, test_fraction, split_seed)
        self.load_kwargs = dict(
            source=source, cache_dir=cache_dir, path=path, titles_path=titles_path,
            test_path=test_path, rating_min=rating_min, rating_max=rating_max, scale=scale,
            n_users=n_users, n_items=n_items, n_ratings=n_ratings,
            generator_seed=generator_seed, cache=cache,
        )
        self.matrix: RatingMatrix | None = None
        self.split: Split | None = None
        self._sets: dict[str, RowBatches] = {}

    # -- loading ---------------------------------------------------------------------------
    def prepare_data(self) -> None:
        if self.matrix is None:
            self.matrix = load_matrix(**self.load_kwargs)

    def setup(self, stage: str | None = None) -> None:
        if self.split is not None:
            return
        self.prepare_data()
        self.split = split_matrix(self.matrix, self.val_fraction, self.test_fraction,
                                  self.split_seed)
        train, val, test = self.oriented(self.split)
        self._sets = {
            "train": RowBatches(train, np.flatnonzero(np.diff(train.indptr) > 0)),
            "val": heldout_set(train, val),
            "test": heldout_set(train, test),
        }
        s = self.split
        log.info("data: %s, %d users x %d movies; ratings train %d / val %d / test %d; rows=%ss",
                 self.matrix.source, *self.matrix.shape, s.train.nnz, s.val.nnz, s.test.nnz,
                 self.orientation)

    def oriented(self, split: Split) -> tuple[sp.csr_matrix, ...]:
        return orient((split.train, split.val, split.test), self.orientation)

    # -- facts the model needs -------------------------------------------------------------
    @property
    def n_cols(self) -> int:
        """Width of a row: movies for orientation=user, users for orientation=item."""
        shape = self.matrix.shape
        return shape[1] if self.orientation == "user" else shape[0]

    @property
    def train_mean(self) -> float:
        return self.split.train_mean

    @property
    def rating_range(self) -> tuple[float, float]:
        return self.matrix.rating_min, self.matrix.rating_max

    def dataset(self, name: str) -> RowBatches:
        return self._sets[name]

    # -- loaders ---------------------------------------------------------------------------
    def _loader(self, name: str, batch_size: int, shuffle: bool) -> DataLoader:
        ds = self._sets[name]
        base = RandomSampler(ds) if shuffle else SequentialSampler(ds)
        return DataLoader(
            ds, batch_size=None, sampler=BatchSampler(base, batch_size, drop_last=False),
            num_workers=self.num_workers, pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size, shuffle=False)
