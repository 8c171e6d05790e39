"""The split: a seeded random split of the ratings (not of users) into train/val/test.

A pure function of (data, seed, fractions): the same run config always gives the same split, so
evaluate and recommend re-create a run's split from its config.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from deepcf.data.matrix import RatingMatrix, csr_in_order
from deepcf.errors import ConfigError


@dataclass
class Split:
    """Train/val/test CSR matrices of the same shape (users x movies)."""

    train: sp.csr_matrix
    val: sp.csr_matrix
    test: sp.csr_matrix

    @property
    def train_mean(self) -> float:
        return float(self.train.data.mean()) if self.train.nnz else 0.0


def parse_implicit(implicit) -> float | None:
    """`data.implicit`: None (ratings as they are), "all" (every rating an interaction: -inf),
    or a number t (a rating >= t is an interaction, the others are dropped)."""
    if implicit is None or implicit == "null":
        return None
    if implicit == "all":
        return -np.inf
    try:
        t = float(implicit)
    except (TypeError, ValueError):
        t = float("nan")
    if not np.isfinite(t):
        raise ConfigError(f"data.implicit={implicit!r} must be null, all or a rating threshold "
                          f"(e.g. data.implicit=4)")
    return t


def implicit_matrix(X: sp.csr_matrix, implicit) -> sp.csr_matrix:
    """X as interactions (see parse_implicit): the kept entries become 1, in CSR order."""
    t = parse_implicit(implicit)
    if t is None:
        return X
    X = sp.csr_matrix(X, dtype=np.float32, copy=True)
    if t > -np.inf:
        X.data[X.data < t] = 0
        X.eliminate_zeros()
    X.data[:] = 1.0
    return X


def implicit_split(split: Split, implicit) -> Split:
    """Every part of `split` as interactions (unchanged when `implicit` is None)."""
    if parse_implicit(implicit) is None:
        return split
    return Split(*(implicit_matrix(m, implicit) for m in (split.train, split.val, split.test)))


def split_matrix(
    m: RatingMatrix, val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0
) -> Split:
    """Seeded random split of the ratings (not of users) into train/val/test.

    With a user-supplied test file, test is that file and val is drawn from the rest.
    """
    if m.test_ratings is not None:
        test_fraction = 0.0
    for name, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= frac < 1.0:
            raise ConfigError(f"data.{name}={frac} must be in [0, 1)")
    if val_fraction + test_fraction >= 1.0:
        raise ConfigError("data.val_fraction + data.test_fraction must be below 1")
    X = m.ratings
    if not X.has_sorted_indices:
        X = X.sorted_indices()
    nnz = X.nnz
    rng = np.random.default_rng(seed)
    part = np.zeros(nnz, dtype=np.int8)  # 0 train, 1 val, 2 test, entries in CSR order
    order = rng.permutation(nnz)
    n_test = int(round(test_fraction * nnz))
    n_val = int(round(val_fraction * nnz))
    part[order[:n_test]] = 2
    part[order[n_test : n_test + n_val]] = 1
    del order
    # selecting entries of a sorted CSR keeps it sorted: no re-sort, O(nnz)
    row = np.repeat(np.arange(X.shape[0], dtype=np.int32), np.diff(X.indptr))
    mats = []
    for k in range(3):
        sel = part == k
        mats.append(csr_in_order(row[sel], X.indices[sel], X.data[sel], X.shape))
    del row, part
    if m.test_ratings is not None:
        mats[2] = m.test_ratings
    return Split(*mats)
