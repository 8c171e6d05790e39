"""The split of a run's ratings into train/val/test, chosen by `data.protocol`.

`data.protocol` is one config node, its kind and that kind's settings (a config group,
conf/data/protocol/: `data/protocol=per_user` picks a kind with its defaults, and
`data.protocol.<key>=...` sets one of its options):

    protocol: {kind: random, val_fraction: 0.1, test_fraction: 0.1, seed: ${seed}}
    protocol: {kind: per_user, test_fraction: 0.2, val_fraction: 0.2, min_ratings: 5,
               seed: ${seed}}
    protocol: {kind: leave_last, n_test: 1, n_val: 1}

- `random`: a seeded random split of the ratings (not of users).
- `per_user`: for each user with >= min_ratings ratings a seeded random round(test_fraction * n)
  of them (at least 1) is the test part; the same rule with val_fraction on what is left is the
  validation carve (the top-N protocol of `make accuracy`, deepcf.study.protocols: the same
  function, so the same seed gives the same split).
- `leave_last`: for each user, the last n_test ratings by timestamp are the test part and the
  n_val before them the validation carve; a user with n_test + n_val ratings or fewer stays whole
  in training. Needs a source with timestamps (ties: the later movie column counts as later).

With a user-supplied test file (`data.source.test_path`) the test part is that file, for every
kind, and the validation carve is drawn from the rest by the kind's own rule.

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


def _fraction(name: str, value, low_open: bool = False) -> None:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and \
        (0.0 < value < 1.0 if low_open else 0.0 <= value < 1.0)
    if not ok:
        raise ConfigError(f"data.protocol.{name}={value!r} must be a number in "
                          f"{'(0, 1)' if low_open else '[0, 1)'}")


def _count(name: str, value, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ConfigError(f"data.protocol.{name}={value!r} must be an integer >= {least}")


def _sorted_csr(X: sp.spmatrix) -> sp.csr_matrix:
    X = sp.csr_matrix(X, dtype=np.float32)
    if not X.has_canonical_format:
        X.sum_duplicates()
    X.sort_indices()
    return X


def _parts(X: sp.csr_matrix, out: np.ndarray) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """(entries of sorted CSR X where `out` is False, where it is True), both CSR, sorted."""
    row = np.repeat(np.arange(X.shape[0]), np.diff(X.indptr))
    mats = [csr_in_order(row[s], X.indices[s], X.data[s], X.shape) for s in (~out, out)]
    return mats[0], mats[1]


def per_user_holdout(X: sp.spmatrix, seed, fraction: float = 0.2,
                     min_ratings: int = 5) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """(kept, held out): for each row with >= `min_ratings` entries, a seeded random
    round(fraction * n) of them (at least 1, at most n - 1) held out; other rows are kept
    whole."""
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"holdout fraction={fraction} must be in (0, 1)")
    if min_ratings < 2:
        raise ConfigError(f"min_ratings={min_ratings} must be at least 2")
    X = _sorted_csr(X)
    n = np.diff(X.indptr).astype(np.int64)
    n_out = np.where(n >= min_ratings, np.maximum(1, np.floor(fraction * n + 0.5)), 0)
    n_out = np.minimum(n_out, n - 1).astype(np.int64)  # a user always keeps a training rating
    row = np.repeat(np.arange(X.shape[0]), n)
    key = np.random.default_rng(seed).random(X.nnz)
    order = np.lexsort((key, row))  # within each row, a random order of its entries
    rank = np.empty(X.nnz, np.int64)
    rank[order] = np.arange(X.nnz) - X.indptr[row[order]]
    return _parts(X, rank < n_out[row])


def time_rank(X: sp.csr_matrix, times: np.ndarray) -> np.ndarray:
    """Each entry's place in its row from the latest (0) by `times` (aligned with X's sorted CSR
    entries; ties: the later column counts as later)."""
    row = np.repeat(np.arange(X.shape[0]), np.diff(X.indptr))
    order = np.lexsort((-np.arange(X.nnz), -np.asarray(times, np.int64), row))
    rank = np.empty(X.nnz, np.int64)
    rank[order] = np.arange(X.nnz) - X.indptr[row[order]]
    return rank


@dataclass(frozen=True)
class PerUserSplit:
    """`data.protocol.kind=per_user`: each user's seeded random share held out (see above)."""

    test_fraction: float = 0.2
    val_fraction: float = 0.2
    min_ratings: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        _fraction("test_fraction", self.test_fraction, low_open=True)
        _fraction("val_fraction", self.val_fraction, low_open=True)
        _count("min_ratings", self.min_ratings, 2)

    def split(self, m: RatingMatrix) -> Split:
        X = _sorted_csr(m.ratings)
        if m.test_ratings is not None:
            train, test = X, m.test_ratings
        else:
            train, test = per_user_holdout(X, [int(self.seed), 0], self.test_fraction,
                                           self.min_ratings)
        fit, val = per_user_holdout(train, [int(self.seed), 1], self.val_fraction,
                                    self.min_ratings)
        return Split(fit, val, test)


@dataclass(frozen=True)
class LeaveLastSplit:
    """`data.protocol.kind=leave_last`: each user's latest ratings held out (see above)."""

    n_test: int = 1
    n_val: int = 1

    def __post_init__(self) -> None:
        _count("n_test", self.n_test, 1)
        _count("n_val", self.n_val, 1)

    def split(self, m: RatingMatrix) -> Split:
        times = m.timestamps
        if times is None:
            raise ConfigError(f"data.protocol.kind=leave_last needs timestamps, and "
                              f"{m.source or 'the source'} has none: use a ratings file with a "
                              f"timestamp column, or data/protocol=per_user")
        X = m.ratings
        rank = time_rank(X, times)
        n = np.diff(X.indptr)[np.repeat(np.arange(X.shape[0]), np.diff(X.indptr))]
        n_test = 0 if m.test_ratings is not None else self.n_test
        ok = n > n_test + self.n_val  # a user keeps at least one training rating
        train = _parts(X, ok & (rank < n_test + self.n_val))[0]
        test = _parts(X, ok & (rank < n_test))[1]
        val = _parts(X, ok & (rank >= n_test) & (rank < n_test + self.n_val))[1]
        return Split(train, val, m.test_ratings if m.test_ratings is not None else test)


PROTOCOLS = {"random": RandomSplit, "per_user": PerUserSplit, "leave_last": LeaveLastSplit}


def protocol_text(protocol) -> str:
    """`data.protocol` as one line: `kind=random val_fraction=0.1 ...`."""
    kind = next(k for k, cls in PROTOCOLS.items() if isinstance(protocol, cls))
    return "data.protocol " + " ".join([f"kind={kind}", *(
        f"{f.name}={getattr(protocol, f.name)}" for f in dataclasses.fields(protocol))])


def parse_protocol(node) -> RandomSplit | PerUserSplit | LeaveLastSplit:
    """The split protocol of a `data.protocol` node (a dict with `kind`); None: the default; a
    kind's name alone (`data.protocol=per_user`): that kind at its defaults above (seed 0)."""
    node = {"kind": node} if isinstance(node, str) else dict(node or {})
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
