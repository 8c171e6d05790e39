"""The split of a run's ratings into train/val/test, chosen by `data.protocol`.

`data.protocol` is one config node, its kind and that kind's settings:

    protocol: {kind: random, val_fraction: 0.1, test_fraction: 0.1, seed: ${seed}}

- `random`: a seeded random split of the ratings (not of users); with a user-supplied test file
  (`data.source.test_path`) the test part is that file and val is drawn from the rest.

A split is a pure function of (data, protocol): the same run config always gives the same split,
so evaluate and recommend re-create a run's split from its config.
"""

from __future__ import annotations

import dataclasses
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


@dataclass(frozen=True)
class RandomSplit:
    """`data.protocol.kind=random`: a seeded random share of all ratings for val and test."""

    val_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("val_fraction", "test_fraction"):
            frac = getattr(self, name)
            if isinstance(frac, bool) or not isinstance(frac, (int, float)) or \
                    not 0.0 <= frac < 1.0:
                raise ConfigError(f"data.protocol.{name}={frac!r} must be a number in [0, 1)")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ConfigError("data.protocol.val_fraction + data.protocol.test_fraction must be "
                              "below 1")

    def split(self, m: RatingMatrix) -> Split:
        return split_matrix(m, self.val_fraction, self.test_fraction, self.seed)


PROTOCOLS = {"random": RandomSplit}


def parse_protocol(node) -> RandomSplit:
    """The split protocol of a `data.protocol` node (a dict with `kind`); None: the default."""
    node = dict(node or {})
    kind = node.pop("kind", "random")
    if kind not in PROTOCOLS:
        raise ConfigError(f"data.protocol.kind={kind!r} is not one of {', '.join(PROTOCOLS)}")
    cls = PROTOCOLS[kind]
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(node) - set(names))
    if unknown:
        raise ConfigError(f"data.protocol.{unknown[0]} is not an option of the {kind} protocol "
                          f"(its options: {', '.join(names)})")
    return cls(**node)


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
            raise ConfigError(f"data.protocol.{name}={frac} must be in [0, 1)")
    if val_fraction + test_fraction >= 1.0:
        raise ConfigError("data.protocol.val_fraction + data.protocol.test_fraction must be "
                          "below 1")
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
