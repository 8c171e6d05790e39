"""RatingMatrix: ratings as scipy CSR (users x movies) with raw-id maps, titles and a split.

Raw ids are compacted to 0..n-1 (the original study fed all 176,275 raw movie-id columns); the
maps back to raw ids travel with the matrix. The parsed, compacted matrix is cached as `.npz` in
the cache dir (never next to the user's file: nothing in the user's data dir is written).
The split is a pure function of (data, seed, fractions).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from deepcf.data.readers import RatingsTable, dedupe_latest, read_ratings, read_titles
from deepcf.errors import ConfigError, DataError
from deepcf.kernels import compact

log = logging.getLogger(__name__)
CACHE_VERSION = 2  # 2: synthetic sets give every user and movie a rating


@dataclass
class RatingMatrix:
    """All ratings of one source, users x movies, plus the maps back to raw ids."""

    ratings: sp.csr_matrix  # users x movies, float32 data, int32 indices
    user_ids: np.ndarray  # raw id of each row
    item_ids: np.ndarray  # raw id of each column
    titles: np.ndarray | None = None  # title of each column ("" when unknown)
    rating_min: float = 1.0
    rating_max: float = 5.0
    source: str = ""
    # ratings from a separate test file (same id space), when the user gave one
    test_ratings: sp.csr_matrix | None = None
    info: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return self.ratings.shape


@dataclass
class Split:
    """Train/val/test CSR matrices of the same shape (users x movies)."""

    train: sp.csr_matrix
    val: sp.csr_matrix
    test: sp.csr_matrix

    @property
    def train_mean(self) -> float:
        return float(self.train.data.mean()) if self.train.nnz else 0.0


def _compact(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted unique ids, int32 code of each entry), as np.unique(return_inverse=True) gives,
    in O(n) through a lookup table when the ids are non-negative and not too sparse."""
    lo, hi = (int(ids.min()), int(ids.max())) if len(ids) else (0, -1)
    if lo >= 0 and hi < 4 * len(ids) + (1 << 24):
        return compact(ids, hi + 1, np.int32)
    uniq, code = np.unique(ids, return_inverse=True)
    return uniq, code.astype(np.int32)


def _csr_from_codes(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray,
                    shape: tuple[int, int]) -> sp.csr_matrix | None:
    """CSR of distinct (row, col) entries, sorted; None when some (row, col) repeats."""
    key = rows.astype(np.int64) * shape[1] + cols
    if len(key) > 1 and not (key[1:] > key[:-1]).all():  # a file in (user, movie) order skips this
        order = np.argsort(key, kind="stable")
        key = key[order]
        if len(key) > 1 and not (key[1:] > key[:-1]).all():
            return None
        rows, cols, vals = rows[order], cols[order], vals[order]
    del key
    return _csr_in_order(rows, cols, vals, shape)


def _csr_in_order(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray,
                  shape: tuple[int, int]) -> sp.csr_matrix:
    """CSR of entries already in (row, col) order, distinct: only the row offsets to count."""
    indptr = np.zeros(shape[0] + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=shape[0]), out=indptr[1:])
    indptr = indptr.astype(np.int64 if len(cols) >= 2**31 else np.int32)
    return sp.csr_matrix((np.asarray(vals, np.float32), cols.astype(np.int32, copy=False), indptr),
                         shape=shape)


def build_matrix(
    table: RatingsTable,
    titles: dict[int, str] | None = None,
    rating_min: float = 1.0,
    rating_max: float = 5.0,
    test_table: RatingsTable | None = None,
) -> RatingMatrix:
    """Compact raw ids and build the CSR; duplicates keep the latest rating.

    Linear-time for the common case (no repeated (user, movie) pair); a repeat sends the table
    through `dedupe_latest` first.
    """
    dropped = 0
    users, items = table.user, table.item
    if test_table is not None:
        test_table, _ = dedupe_latest(test_table)
        users = np.concatenate([users, test_table.user])
        items = np.concatenate([items, test_table.item])
    user_ids, u_code = _compact(users)
    item_ids, i_code = _compact(items)
    del users, items
    n = len(table)
    shape = (len(user_ids), len(item_ids))
    m = _csr_from_codes(u_code[:n], i_code[:n], table.rating, shape)
    if m is None:
        table, dropped = dedupe_latest(table)
        log.info("%s: %d duplicate (user, movie) ratings; kept the latest of each",
                 table.source, dropped)
        # deduping keeps one rating of each pair, so every id survives: same id maps
        m = _csr_from_codes(np.searchsorted(user_ids, table.user).astype(np.int32),
                            np.searchsorted(item_ids, table.item).astype(np.int32),
                            table.rating, shape)
    test = None
    if test_table is not None:
        test = _csr_from_codes(u_code[n:], i_code[n:], test_table.rating, shape)
    title_arr = None
    if titles:
        title_arr = np.array([titles.get(int(i), "") for i in item_ids], dtype=str)
    return RatingMatrix(m, user_ids.astype(np.int64), item_ids.astype(np.int64), title_arr,
                        float(rating_min), float(rating_max), table.source, test,
                        {"duplicates_dropped": dropped})


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
        mats.append(_csr_in_order(row[sel], X.indices[sel], X.data[sel], X.shape))
    del row, part
    if m.test_ratings is not None:
        mats[2] = m.test_ratings
    return Split(*mats)


# ---------------------------------------------------------------------------------------------
# Loading with a cache


def _cache_key(parts: dict) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _file_stamp(path: str | None) -> dict | None:
    if path is None:
        return None
    p = Path(path).expanduser().resolve()
    if not p.exists():
        raise DataError(f"{path}: no such file")
    st = p.stat()
    return {"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def save_matrix(m: RatingMatrix, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {
        "indptr": m.ratings.indptr, "indices": m.ratings.indices, "data": m.ratings.data,
        "shape": np.array(m.shape, np.int64), "user_ids": m.user_ids, "item_ids": m.item_ids,
        "range": np.array([m.rating_min, m.rating_max]),
        "meta": np.array(json.dumps({"source": m.source, "info": m.info, "v": CACHE_VERSION})),
    }
    if m.titles is not None:
        arrays["titles"] = m.titles
    if m.test_ratings is not None:
        t = m.test_ratings
        arrays.update(t_indptr=t.indptr, t_indices=t.indices, t_data=t.data)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)  # uncompressed: reload speed matters more than disk here
    os.replace(tmp, path)


def load_cached(path: Path) -> RatingMatrix:
    with np.load(path, allow_pickle=False) as z:
        shape = tuple(int(x) for x in z["shape"])
        m = sp.csr_matrix((z["data"], z["indices"], z["indptr"]), shape=shape)
        test = None
        if "t_indptr" in z:
            test = sp.csr_matrix((z["t_data"], z["t_indices"], z["t_indptr"]), shape=shape)
        meta = json.loads(str(z["meta"]))
        lo, hi = (float(x) for x in z["range"])
        titles = z["titles"] if "titles" in z else None
        return RatingMatrix(m, z["user_ids"], z["item_ids"], titles, lo, hi, meta["source"],
                            test, meta.get("info", {}))


def _source_key(source, cache_dir, path, titles_path, test_path, rating_min, rating_max, scale,
                n_users, n_items, n_ratings, generator_seed):
    """(cache path, rating range, generator params) of a source."""
    cache_dir = Path(cache_dir).expanduser()
    params = None
    if source == "ml100k":
        from deepcf.data.ml100k import WHEEL

        key = {"source": "ml100k", "wheel": WHEEL}
        name = "ml100k"
    elif source == "file":
        if not path:
            raise ConfigError("data.path is required for data=ratings_csv (the ratings file)")
        key = {"source": "file", "path": _file_stamp(path), "titles": _file_stamp(titles_path),
               "test": _file_stamp(test_path)}
        name = Path(path).stem
    elif source == "synthetic":
        from deepcf.data.synthetic import scale_params

        params = scale_params(scale, n_users=n_users, n_items=n_items, n_ratings=n_ratings)
        key = {"source": "synthetic", **params, "seed": generator_seed}
        rating_min, rating_max = (0.5 if params["half_stars"] else 1.0), 5.0
        name = f"synthetic-{scale or 'custom'}"
    else:
        raise ConfigError(f"data.source={source!r} is not one of ml100k, file, synthetic")
    key.update(rating_min=rating_min, rating_max=rating_max, v=CACHE_VERSION)
    return cache_dir / "matrices" / f"{name}-{_cache_key(key)}.npz", rating_min, rating_max, params


def matrix_cache_path(source: str = "ml100k", cache_dir: str | Path = "~/.cache/deepcf",
                      path: str | None = None, titles_path: str | None = None,
                      test_path: str | None = None, rating_min: float = 1.0,
                      rating_max: float = 5.0, scale: str | None = None,
                      n_users: int | None = None, n_items: int | None = None,
                      n_ratings: int | None = None, generator_seed: int = 0) -> Path:
    """Where `load_matrix` with these arguments caches its `.npz`."""
    return _source_key(source, cache_dir, path, titles_path, test_path, rating_min, rating_max,
                       scale, n_users, n_items, n_ratings, generator_seed)[0]


def load_matrix(
    source: str = "ml100k",
    cache_dir: str | Path = "~/.cache/deepcf",
    path: str | None = None,
    titles_path: str | None = None,
    test_path: str | None = None,
    rating_min: float = 1.0,
    rating_max: float = 5.0,
    scale: str | None = None,
    n_users: int | None = None,
    n_items: int | None = None,
    n_ratings: int | None = None,
    generator_seed: int = 0,
    cache: bool = True,
) -> RatingMatrix:
    """Load a RatingMatrix from `source` (ml100k | file | synthetic), through the .npz cache."""
    cache_path, rating_min, rating_max, params = _source_key(
        source, cache_dir, path, titles_path, test_path, rating_min, rating_max, scale,
        n_users, n_items, n_ratings, generator_seed)
    cache_dir = Path(cache_dir).expanduser()
    if cache and cache_path.exists():
        try:
            return load_cached(cache_path)
        except Exception as e:  # a broken cache is rebuilt, never trusted
            log.warning("ignoring unreadable cache %s (%s)", cache_path, e)

    titles = None
    test_table = None
    if source == "ml100k":
        from deepcf.data.ml100k import load_ml100k

        table, titles, _ = load_ml100k(cache_dir)
    elif source == "file":
        table = read_ratings(path, rating_min, rating_max)
        if test_path:
            test_table = read_ratings(test_path, rating_min, rating_max)
        if titles_path:
            titles = read_titles(titles_path)
    else:
        from deepcf.data.synthetic import generate

        table = generate(**params, seed=generator_seed)
    m = build_matrix(table, titles, rating_min, rating_max, test_table)
    if cache:
        save_matrix(m, cache_path)
    return m
