"""A seeded synthetic ratings generator with the skew of real movie ratings.

Popular movies (Zipf-like item popularity), heavy and light users (log-normal activity), and
ratings from a low-rank model plus user/item biases and noise, rounded to the star grid. Any
size: the `movies_full` scale matches "The Movies Dataset" `ratings.csv` (270,896 users,
45,115 movies with ids up to 176,275, 26,024,289 ratings).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from deepcf.data.readers import RatingsTable
from deepcf.errors import ConfigError

SCALES: dict[str, dict] = {
    "tiny": dict(n_users=300, n_items=200, n_ratings=6_000, max_item_id=None, half_stars=False),
    "ml100k": dict(n_users=943, n_items=1_682, n_ratings=100_000, max_item_id=None,
                   half_stars=False),
    "movies_small": dict(n_users=671, n_items=9_066, n_ratings=100_004, max_item_id=163_949,
                         half_stars=True),
    "movies_full": dict(n_users=270_896, n_items=45_115, n_ratings=26_024_289,
                        max_item_id=176_275, half_stars=True),
}


def scale_params(scale: str | None, **overrides) -> dict:
    """Generator parameters for a named scale, with explicit (non-None) overrides applied."""
    if scale is None:
        params = dict(SCALES["tiny"])
    elif scale in SCALES:
        params = dict(SCALES[scale])
    else:
        raise ConfigError(f"data.source.scale={scale!r} is not one of {', '.join(SCALES)}")
    params.update({k: v for k, v in overrides.items() if v is not None})
    return params


def _sorted_unique(x: np.ndarray) -> np.ndarray:
    """np.unique by sorting in place (numpy 2.3+'s hash-based unique is ~10x slower here)."""
    x.sort()
    keep = np.ones(len(x), dtype=bool)
    np.not_equal(x[1:], x[:-1], out=keep[1:])
    return x[keep]


def generate_ratings(
    n_users: int,
    n_items: int,
    n_ratings: int,
    seed: int = 0,
    rank: int = 8,
    noise: float = 0.6,
    half_stars: bool = False,
    max_item_id: int | None = None,
    popularity_exponent: float = 1.0,
    activity_sigma: float = 1.1,
) -> RatingsTable:
    """Generate `n_ratings` distinct (user, movie, rating, timestamp) rows."""
    if min(n_users, n_items, n_ratings) <= 0:
        raise ConfigError("data.source.n_users, n_items and n_ratings must be positive")
    if n_ratings > n_users * n_items // 2:
        raise ConfigError(
            f"data.source.n_ratings={n_ratings} is too dense for {n_users} x {n_items} "
            f"(at most half)"
        )
    rng = np.random.default_rng(seed)
    # Item popularity: Zipf over a random permutation of the items.
    pop = 1.0 / np.arange(1, n_items + 1, dtype=np.float64) ** popularity_exponent
    pop = pop[rng.permutation(n_items)]
    pop /= pop.sum()
    act = rng.lognormal(0.0, activity_sigma, n_users)
    act /= act.sum()

    if n_ratings < n_users + n_items:
        raise ConfigError(f"data.source.n_ratings={n_ratings} must be at least n_users + n_items "
                          f"({n_users + n_items}): every user and movie gets a rating")
    # One rating per user and one per movie first, so the matrix has exactly the asked shape.
    base = _sorted_unique(np.concatenate([
        np.arange(n_users, dtype=np.int64) * n_items + rng.choice(n_items, n_users, p=pop),
        rng.choice(n_users, n_items, p=act).astype(np.int64) * n_items + np.arange(n_items),
    ]))
    keys = base
    while len(keys) < n_ratings:
        need = int((n_ratings - len(keys)) * 1.3) + 1024
        u = rng.choice(n_users, size=need, p=act)
        i = rng.choice(n_items, size=need, p=pop)
        keys = _sorted_unique(np.concatenate([keys, u.astype(np.int64) * n_items + i]))
    extra = keys[~np.isin(keys, base, assume_unique=True)]
    keys = np.sort(np.concatenate(
        [base, rng.choice(extra, size=n_ratings - len(base), replace=False)]))
    users = (keys // n_items).astype(np.int64)
    items = (keys % n_items).astype(np.int64)
    del keys

    # Ratings: mean + biases (popular movies rate a little higher) + low-rank taste + noise.
    b_u = rng.normal(0.0, 0.35, n_users).astype(np.float32)
    b_i = (rng.normal(0.0, 0.3, n_items) + 0.15 * (np.log(pop) - np.log(pop).mean())
           / np.log(pop).std()).astype(np.float32)
    P = rng.normal(0.0, (0.7 / rank) ** 0.5, (n_users, rank)).astype(np.float32)
    Q = rng.normal(0.0, (0.7 / rank) ** 0.5, (n_items, rank)).astype(np.float32) * 1.5
    ratings = np.empty(n_ratings, dtype=np.float32)
    chunk = 2_000_000
    for s in range(0, n_ratings, chunk):
        u, i = users[s : s + chunk], items[s : s + chunk]
        r = 3.55 + b_u[u] + b_i[i] + np.einsum("ij,ij->i", P[u], Q[i])
        r += rng.normal(0.0, noise, len(u)).astype(np.float32)
        ratings[s : s + chunk] = r
    if half_stars:
        np.clip(np.round(ratings * 2) / 2, 0.5, 5.0, out=ratings)
    else:
        np.clip(np.round(ratings), 1.0, 5.0, out=ratings)

    raw_items = np.arange(1, n_items + 1, dtype=np.int64)
    if max_item_id is not None and max_item_id > n_items:
        raw_items = np.sort(rng.choice(np.arange(1, max_item_id + 1), n_items, replace=False))
        raw_items[-1] = max_item_id
    timestamps = rng.integers(789_652_009, 1_501_505_581, n_ratings, dtype=np.int64)
    return RatingsTable(users + 1, raw_items[items], ratings, timestamps,
                        source=f"synthetic(n_users={n_users}, n_items={n_items}, "
                        f"n_ratings={n_ratings}, seed={seed})")


def _digits(x: np.ndarray, width: int) -> np.ndarray:
    """(n, width) ASCII digits of non-negative ints, right-aligned, leading zeros as byte 0."""
    out = np.zeros((len(x), width), dtype=np.uint8)
    v = x.astype(np.int64, copy=True)
    for j in range(width - 1, -1, -1):
        d = (v % 10).astype(np.uint8)
        out[:, j] = np.where((v > 0) | (j == width - 1), d + 48, 0)
        v //= 10
    return out


def write_csv(table: RatingsTable, path: str | Path, chunk: int = 2_000_000) -> Path:
    """Write a table as a Movies-Dataset style `userId,movieId,rating,timestamp` CSV
    (ratings as `4.0`, `3.5`, like the real file).

    Lines are assembled as fixed-width byte rows in numpy, chunk by chunk, and the padding
    dropped: ~1 s per million rows instead of pandas' formatter. Negative ids or ratings not on
    a 0.1 grid fall back to pandas.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ts = table.timestamp if table.timestamp is not None else np.zeros(len(table), np.int64)
    tenths = np.round(table.rating.astype(np.float64) * 10)
    fast = (len(table) > 0 and min(table.user.min(), table.item.min(), ts.min()) >= 0
            and np.allclose(tenths, table.rating * 10.0, atol=1e-3)
            and tenths.min() >= 0 and tenths.max() <= 999)
    if not fast:
        frame = pd.DataFrame({"userId": table.user, "movieId": table.item,
                              "rating": table.rating, "timestamp": ts})
        frame.to_csv(path, index=False, float_format="%g", chunksize=1_000_000)
        return path
    widths = [len(str(int(a.max()))) for a in (table.user, table.item, ts)]
    tenths = tenths.astype(np.int64)
    comma, dot, nl = (np.full((1, 1), ord(c), np.uint8) for c in ",.\n")
    with open(path, "wb") as f:
        f.write(b"userId,movieId,rating,timestamp\n")
        for s in range(0, len(table), chunk):
            sl = slice(s, s + chunk)
            n = len(table.user[sl])
            t = tenths[sl]
            c, d, e = (np.repeat(x, n, axis=0) for x in (comma, dot, nl))
            line = np.hstack([
                _digits(table.user[sl], widths[0]), c, _digits(table.item[sl], widths[1]), c,
                _digits(t // 10, 3), d, (t % 10).astype(np.uint8)[:, None] + 48, c,
                _digits(ts[sl], widths[2]), e,
            ])
            f.write(line[line != 0].tobytes())
    return path
