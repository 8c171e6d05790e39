"""RatingMatrix: ratings as scipy CSR (users x movies) with raw-id maps and titles, and its cache.

Raw ids are compacted to 0..n-1 (the original study fed all 176,275 raw movie-id columns); the
maps back to raw ids travel with the matrix. The parsed, compacted matrix is cached as `.npz` in
the cache dir (never next to the user's file: nothing in the user's data dir is written).
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

from deepcf.data.readers import RatingsTable, dedupe_latest
from deepcf.data.sources import RatingsSource
from deepcf.kernels import unique_inverse

log = logging.getLogger(__name__)
CACHE_VERSION = 3  # 2: synthetic sets give every user and movie a rating; 3: timestamps kept


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
    # each rating's timestamp (int64, aligned with `ratings`' sorted CSR entries), when the
    # source has them (data.protocol.kind=leave_last orders by them)
    timestamps: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.ratings.shape


def compact_ids(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted unique ids, int32 code of each entry), as np.unique(return_inverse=True) gives,
    in O(n) through a lookup table when the ids are non-negative and not too sparse."""
    lo, hi = (int(ids.min()), int(ids.max())) if len(ids) else (0, -1)
    if lo >= 0 and hi < 4 * len(ids) + (1 << 24):
        return unique_inverse(ids, hi + 1, np.int32)
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
    return csr_in_order(rows, cols, vals, shape)


def csr_in_order(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray,
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
    user_ids, u_code = compact_ids(users)
    item_ids, i_code = compact_ids(items)
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
    times = None
    if table.timestamp is not None:
        rows = np.searchsorted(user_ids, table.user) if dropped else u_code[:n]
        cols = np.searchsorted(item_ids, table.item) if dropped else i_code[:n]
        times = table.timestamp[np.argsort(rows.astype(np.int64) * shape[1] + cols,
                                           kind="stable")].astype(np.int64)
    test = None
    if test_table is not None:
        test = _csr_from_codes(u_code[n:], i_code[n:], test_table.rating, shape)
    title_arr = None
    if titles:
        title_arr = np.array([titles.get(int(i), "") for i in item_ids], dtype=str)
    return RatingMatrix(m, user_ids.astype(np.int64), item_ids.astype(np.int64), title_arr,
                        float(rating_min), float(rating_max), table.source, test,
                        {"duplicates_dropped": dropped}, times)


# ---------------------------------------------------------------------------------------------
# Loading with a cache


def _cache_key(parts: dict) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


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
    if m.timestamps is not None:
        arrays["timestamps"] = m.timestamps
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
        times = z["timestamps"] if "timestamps" in z else None
        return RatingMatrix(m, z["user_ids"], z["item_ids"], titles, lo, hi, meta["source"],
                            test, meta.get("info", {}), times)


def matrix_cache_path(source: RatingsSource, cache_dir: str | Path) -> Path:
    """Where `load_matrix` caches the parsed matrix of `source`."""
    key = {**source.cache_key(), "v": CACHE_VERSION}
    return Path(cache_dir).expanduser() / "matrices" / f"{source.name}-{_cache_key(key)}.npz"


def load_matrix(source: RatingsSource, cache_dir: str | Path = "~/.cache/deepcf",
                cache: bool = True) -> RatingMatrix:
    """The RatingMatrix of `source`, through the .npz cache in `cache_dir`."""
    cache_path = matrix_cache_path(source, cache_dir)
    if cache and cache_path.exists():
        try:
            return load_cached(cache_path)
        except Exception as e:  # a broken cache is rebuilt, never trusted
            log.warning("ignoring unreadable cache %s (%s)", cache_path, e)
    got = source.read(Path(cache_dir).expanduser())
    m = build_matrix(got.table, got.titles, *source.rating_range, got.test_table)
    if cache:
        save_matrix(m, cache_path)
    return m
