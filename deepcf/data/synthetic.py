"""A seeded synthetic ratings generator with the skew of real movie ratings.

Popular movies (Zipf-like item popularity), heavy and light users (log-normal activity), and
ratings from a low-rank model plus user/item biases and noise, rounded to the star grid. Any
size: the `movies_full` scale matches "The Movies Dataset" `ratings.csv` (270,896 users,
45,115 movies with ids up to 176,275, 26,024,289 ratings).

Two modes say *which* movies a user rates:

- `popularity`: (user, movie) pairs drawn from activity x popularity alone; only the rating
  values carry taste, so a top-N comparison on it measures popularity (the generator of the
  benchmarks, kept as it was);
- `taste` (the default of the movies_* scales): the chance that user u rates movie i is
  ~ popularity_i x exp(taste * s_ui), s_ui = p_u . q_i the same latent tastes that make the
  rating (unit variance over random pairs). Per user, a candidate pool of
  `pool` x (ratings of the user) + 20 movies is drawn by popularity and the user's movies are
  its Gumbel-top-k by taste * s_ui (sampling without replacement in proportion to
  exp(taste * s_ui) within the pool); users whose pool would reach a quarter of the catalogue
  take the exact Gumbel-top-k of log popularity + taste * s_ui over every movie. Timestamps
  have an order: each user's history is one span of time, and their movies unfold along a
  personal drift direction d_u (movies with a higher q_i . d_u come later), the rating made
  with the taste of that moment, p_u + (t - 1/2) d_u at position t in [0, 1] of the history.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from deepcf.data.readers import RatingsTable
from deepcf.errors import ConfigError
from deepcf.kernels import pool_top_k

MODES = ("popularity", "taste")

SCALES: dict[str, dict] = {
    "tiny": dict(n_users=300, n_items=200, n_ratings=6_000, max_item_id=None, half_stars=False,
                 mode="popularity"),
    "ml100k": dict(n_users=943, n_items=1_682, n_ratings=100_000, max_item_id=None,
                   half_stars=False, mode="popularity"),
    "movies_small": dict(n_users=671, n_items=9_066, n_ratings=100_004, max_item_id=163_949,
                         half_stars=True, mode="taste"),
    "movies_full": dict(n_users=270_896, n_items=45_115, n_ratings=26_024_289,
                        max_item_id=176_275, half_stars=True, mode="taste"),
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
    if params.get("mode", "popularity") not in MODES:
        raise ConfigError(f"data.source.mode={params['mode']!r} is not one of {', '.join(MODES)}")
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
    rank: int | None = None,
    noise: float | None = None,
    half_stars: bool = False,
    max_item_id: int | None = None,
    popularity_exponent: float = 1.0,
    activity_sigma: float = 1.1,
    mode: str = "popularity",
    **taste_options,
) -> RatingsTable:
    """Generate `n_ratings` distinct (user, movie, rating, timestamp) rows; `mode` says which
    movies a user rates (module docstring), `taste_options` are `generate_taste`'s own."""
    if mode == "taste":
        taste_options.update({k: v for k, v in (("rank", rank), ("noise", noise))
                              if v is not None})
        return generate_taste(n_users, n_items, n_ratings, seed=seed,
                              half_stars=half_stars, max_item_id=max_item_id,
                              popularity_exponent=popularity_exponent,
                              activity_sigma=activity_sigma, **taste_options)
    if mode != "popularity" or taste_options:
        raise ConfigError(f"synthetic mode={mode!r} with options {sorted(taste_options)}: "
                          f"the modes are {', '.join(MODES)}; only taste takes options")
    _check_shape(n_users, n_items, n_ratings)
    rng = np.random.default_rng(seed)
    rank = 8 if rank is None else rank
    noise = 0.6 if noise is None else noise
    # Item popularity: Zipf over a random permutation of the items.
    pop = 1.0 / np.arange(1, n_items + 1, dtype=np.float64) ** popularity_exponent
    pop = pop[rng.permutation(n_items)]
    pop /= pop.sum()
    act = rng.lognormal(0.0, activity_sigma, n_users)
    act /= act.sum()

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
    _to_stars(ratings, half_stars)
    raw_items = _raw_item_ids(rng, n_items, max_item_id)
    timestamps = rng.integers(T_FIRST, T_LAST, n_ratings, dtype=np.int64)
    return RatingsTable(users + 1, raw_items[items], ratings, timestamps,
                        source=f"synthetic(n_users={n_users}, n_items={n_items}, "
                        f"n_ratings={n_ratings}, seed={seed})")


# the time range of The Movies Dataset's ratings (first and last timestamp of ratings.csv)
T_FIRST, T_LAST = 789_652_009, 1_501_505_581


def _check_shape(n_users: int, n_items: int, n_ratings: int) -> None:
    if min(n_users, n_items, n_ratings) <= 0:
        raise ConfigError("data.source.n_users, n_items and n_ratings must be positive")
    if n_ratings > n_users * n_items // 2:
        raise ConfigError(
            f"data.source.n_ratings={n_ratings} is too dense for {n_users} x {n_items} "
            f"(at most half)"
        )
    if n_ratings < n_users + n_items:
        raise ConfigError(f"data.source.n_ratings={n_ratings} must be at least n_users + n_items "
                          f"({n_users + n_items}): every user and movie gets a rating")


def _to_stars(ratings: np.ndarray, half_stars: bool) -> None:
    """Round in place to the star grid (half stars 0.5..5, or whole stars 1..5)."""
    if half_stars:
        np.clip(np.round(ratings * 2) / 2, 0.5, 5.0, out=ratings)
    else:
        np.clip(np.round(ratings), 1.0, 5.0, out=ratings)


def _raw_item_ids(rng: np.random.Generator, n_items: int, max_item_id: int | None) -> np.ndarray:
    raw_items = np.arange(1, n_items + 1, dtype=np.int64)
    if max_item_id is not None and max_item_id > n_items:
        raw_items = np.sort(rng.choice(np.arange(1, max_item_id + 1), n_items, replace=False))
        raw_items[-1] = max_item_id
    return raw_items


def _user_counts(rng: np.random.Generator, act: np.ndarray, n_ratings: int, cap: int
                 ) -> np.ndarray:
    """Ratings per user: at least 1, at most `cap`, in proportion to activity, summing to
    `n_ratings`."""
    n = len(act)
    k = 1 + rng.multinomial(n_ratings - n, act)
    while (k > cap).any():
        excess = int((k - cap).clip(0).sum())
        np.minimum(k, cap, out=k)
        room = np.where(k < cap, act, 0.0)
        k += rng.multinomial(excess, room / room.sum())
    return k.astype(np.int64)


def generate_taste(
    n_users: int,
    n_items: int,
    n_ratings: int,
    seed: int = 0,
    rank: int = 8,
    noise: float = 0.65,
    half_stars: bool = False,
    max_item_id: int | None = None,
    popularity_exponent: float = 1.0,
    activity_sigma: float = 1.1,
    taste: float = 3.0,
    taste_rating: float = 1.3,
    drift: float = 1.0,
    pool: float = 10.0,
    chunk: int = 4_000_000,
) -> RatingsTable:
    """The taste mode (module docstring): `taste` how strongly the latent tastes pick the
    movies, `taste_rating` their weight in the rating (stars per unit of s_ui), `drift` the
    length of each user's drift direction relative to their taste, `pool` the candidate
    pool's size per rating. Memory stays O(n_ratings + chunk)."""
    _check_shape(n_users, n_items, n_ratings)
    rng = np.random.default_rng(seed)
    pop = 1.0 / np.arange(1, n_items + 1, dtype=np.float64) ** popularity_exponent
    pop = pop[rng.permutation(n_items)]
    pop /= pop.sum()
    cdf = np.cumsum(pop)
    cdf[-1] = 1.0
    log_pop = np.log(pop).astype(np.float32)
    act = rng.lognormal(0.0, activity_sigma, n_users)
    act /= act.sum()
    # unit-variance tastes: s_ui = p_u . q_i has variance 1 over random (user, movie) pairs
    scale = rank ** -0.5
    P = rng.normal(0.0, scale, (n_users, rank)).astype(np.float32)
    Q = rng.normal(0.0, 1.0, (n_items, rank)).astype(np.float32)
    D = (rng.normal(0.0, scale, (n_users, rank)) * drift).astype(np.float32)
    k = _user_counts(rng, act, n_ratings, cap=n_items // 2)

    # which movies: the popularity-drawn pool, Gumbel-top-k by taste; heavy users exactly
    m = np.ceil(pool * k).astype(np.int64) + 20
    exact = m > n_items // 4
    parts_u, parts_i = [], []
    light = np.flatnonzero(~exact)
    mark = np.zeros(n_items, np.int64)  # pool_top_k's scratch
    group = np.cumsum(m[light]) // chunk  # users in chunks of about `chunk` candidates
    for us in np.split(light, np.flatnonzero(np.diff(group)) + 1):
        if len(us) == 0:
            continue
        u = np.repeat(us, m[us])
        i = np.searchsorted(cdf, rng.random(len(u)), side="right").astype(np.int64)
        np.minimum(i, n_items - 1, out=i)
        lg = taste * np.einsum("nk,nk->n", P[u], Q[i]) + rng.gumbel(size=len(u)).astype(
            np.float32)
        out, got = pool_top_k(np.r_[0, np.cumsum(m[us])], us, i, lg, k[us], mark)
        exact[us[got < k[us]]] = True  # a pool with too few distinct movies: the exact draw
        full = np.repeat(got == k[us], k[us])
        parts_u.append(np.repeat(us, k[us])[full])
        parts_i.append(out[full])
    for u0 in np.flatnonzero(exact):
        lg = log_pop + taste * (Q @ P[u0]) + rng.gumbel(size=n_items).astype(np.float32)
        top = np.argpartition(-lg, k[u0] - 1)[:k[u0]]
        parts_u.append(np.full(k[u0], u0, dtype=np.int64))
        parts_i.append(top.astype(np.int64))
    users, items = np.concatenate(parts_u), np.concatenate(parts_i)
    del parts_u, parts_i
    users, items = _cover_every_movie(rng, users, items, act, n_users, n_items)

    # when: each user's movies ordered along their drift, spread over the user's span of time
    n = len(users)
    order = np.lexsort((np.einsum("nk,nk->n", D[users], Q[items])
                        + 0.5 * rng.standard_normal(n).astype(np.float32), users))
    users, items = users[order], items[order]
    start = np.searchsorted(users, users, side="left")
    k = np.bincount(users, minlength=n_users)
    pos = (np.arange(n) - start) / np.maximum(k[users] - 1, 1)
    span = T_LAST - T_FIRST
    length = np.minimum(rng.lognormal(np.log(0.05 * span), 1.5, n_users), span)
    first = T_FIRST + rng.random(n_users) * (span - length)
    timestamps = (first[users] + pos * length[users]).astype(np.int64)

    # ratings: mean + biases + the taste of the moment + noise
    b_u = rng.normal(0.0, 0.35, n_users).astype(np.float32)
    zp = (np.log(pop) - np.log(pop).mean()) / np.log(pop).std()
    b_i = (rng.normal(0.0, 0.3, n_items) + 0.15 * zp).astype(np.float32)
    ratings = np.empty(n, dtype=np.float32)
    step = 2_000_000
    for s in range(0, n, step):
        u, i, t = users[s:s + step], items[s:s + step], pos[s:s + step, None]
        ratings[s:s + step] = b_u[u] + b_i[i] + taste_rating * np.einsum(
            "nk,nk->n", P[u] + (t - 0.5).astype(np.float32) * D[u], Q[i])
    # the movies a user picks are popular and to their taste, so rate high: the mean stays 3.55
    ratings += 3.55 - ratings.mean()
    for s in range(0, n, step):
        ratings[s:s + step] += rng.normal(0.0, noise, len(ratings[s:s + step])).astype(
            np.float32)
    _to_stars(ratings, half_stars)
    raw_items = _raw_item_ids(rng, n_items, max_item_id)
    return RatingsTable(users + 1, raw_items[items], ratings, timestamps,
                        source=f"synthetic(mode=taste, n_users={n_users}, n_items={n_items}, "
                        f"n_ratings={n_ratings}, seed={seed})")


def _cover_every_movie(rng: np.random.Generator, users: np.ndarray, items: np.ndarray,
                       act: np.ndarray, n_users: int, n_items: int
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Give each movie no one picked one rating (from a user drawn by activity), dropping as
    many picked pairs at random, never a user's or a movie's only one: the matrix keeps the
    asked shape and number of ratings."""
    missing = np.flatnonzero(np.bincount(items, minlength=n_items) == 0)
    if len(missing) == 0:
        return users, items
    n = len(users)
    key = rng.random(n)
    droppable = np.ones(n, dtype=bool)
    rank_in = np.empty(n, np.int64)
    for group in (users, items):  # never the first pair (in a random order) of either
        order = np.lexsort((key, group))
        g = group[order]
        rank_in[order] = np.arange(n) - np.searchsorted(g, g, side="left")
        droppable &= rank_in > 0
    drop = rng.choice(np.flatnonzero(droppable), size=len(missing), replace=False)
    keep = np.ones(n, dtype=bool)
    keep[drop] = False
    new_u = rng.choice(n_users, size=len(missing), p=act)
    return (np.concatenate([users[keep], new_u.astype(np.int64)]),
            np.concatenate([items[keep], missing.astype(np.int64)]))


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
