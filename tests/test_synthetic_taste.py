"""The taste mode of the synthetic generator: the exact asked shape, seeded, personal signal
that a top-N model finds (EASE clearly above popularity, unlike the popularity mode), and
timestamps whose order carries a drift of taste; the baselines it is calibrated with (the ALS
kernel, float32 EASE) against brute force."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from deepcf.data.matrix import build_matrix
from deepcf.data.sources import Synthetic
from deepcf.data.synthetic import T_FIRST, T_LAST, generate_ratings, scale_params
from deepcf.errors import ConfigError
from deepcf.kernels import als_side
from deepcf.serving.evaluate import topn_metrics
from deepcf.study import fits
from deepcf.study.baselines import fit_ease_f32
from deepcf.study.protocols import KS, per_user_holdout, topn_split
from deepcf.study.selection import Task

SHAPE = dict(n_users=600, n_items=400, n_ratings=24_000)


def _matrix(mode: str, seed: int = 0):
    return build_matrix(generate_ratings(**SHAPE, seed=seed, mode=mode), rating_min=1,
                        rating_max=5)


def _ndcg(fit, split, params=None):
    pred = fit(split.train, None, params or {}, Task(1.0, 5.0, 0))
    return topn_metrics(pred, split.train, split.test, KS)["ndcg@10"]


def test_taste_mode_has_the_asked_shape_and_is_seeded():
    a = generate_ratings(**SHAPE, seed=3, mode="taste")
    b = generate_ratings(**SHAPE, seed=3, mode="taste")
    assert len(a) == SHAPE["n_ratings"]
    assert len(np.unique(a.user * 10_000 + a.item)) == len(a)  # distinct pairs
    assert len(np.unique(a.user)) == SHAPE["n_users"] and len(np.unique(a.item)) == 400
    for x, y in ((a.user, b.user), (a.item, b.item), (a.rating, b.rating),
                 (a.timestamp, b.timestamp)):
        np.testing.assert_array_equal(x, y)
    assert set(np.unique(a.rating)) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    assert T_FIRST <= a.timestamp.min() and a.timestamp.max() <= T_LAST


def test_the_movies_scales_default_to_taste_and_popularity_stays_reachable():
    assert scale_params("movies_small")["mode"] == "taste"
    assert scale_params("movies_full")["mode"] == "taste"
    assert scale_params("tiny")["mode"] == "popularity"
    assert Synthetic("movies_small", mode="popularity").params["mode"] == "popularity"
    assert (Synthetic("movies_small").cache_key()
            != Synthetic("movies_small", mode="popularity").cache_key())
    with pytest.raises(ConfigError, match="data.source.mode='tastes'"):
        Synthetic("movies_small", mode="tastes")
    # the popularity generator is the one the benchmarks were measured on, unchanged
    old = generate_ratings(300, 200, 6000, seed=0)
    assert len(old) == 6000 and old.rating.dtype == np.float32


def test_taste_mode_has_personal_signal():
    taste = topn_split(_matrix("taste"), 0)
    pop, ease = _ndcg(fits.popularity, taste), _ndcg(fits.ease_top, taste, {"lam": 50.0})
    assert ease > 1.4 * pop, (ease, pop)
    flat = topn_split(_matrix("popularity"), 0)  # popularity alone: nothing personal to find
    assert _ndcg(fits.ease_top, flat, {"lam": 50.0}) < 1.15 * _ndcg(fits.popularity, flat)


def _by_time(X: sp.csr_matrix, T: sp.csr_matrix, fraction: float = 0.2):
    """Each user's last `fraction` of ratings by timestamp held out."""
    rows, cols, keep = [], [], []
    for u in range(X.shape[0]):
        lo, hi = X.indptr[u], X.indptr[u + 1]
        order = np.argsort(T.data[lo:hi], kind="stable")
        n_out = max(1, round(fraction * (hi - lo))) if hi - lo >= 5 else 0
        flag = np.zeros(hi - lo, bool)
        flag[order[len(order) - n_out:]] = True
        rows.append(np.full(hi - lo, u))
        cols.append(X.indices[lo:hi])
        keep.append(~flag)
    r, c, k = (np.concatenate(x) for x in (rows, cols, keep))
    mk = lambda m: sp.csr_matrix((np.ones(m.sum(), np.float32), (r[m], c[m])), X.shape)  # noqa: E731
    return mk(k), mk(~k)


def test_timestamps_unfold_each_history_in_taste_order():
    """Later movies drift in taste: the future of a user's history is harder to predict from
    its past than a random 20% of it is from the rest (in the popularity mode, where the
    timestamps carry no order, the two are alike)."""
    t = generate_ratings(**SHAPE, seed=0, mode="taste")
    X = sp.csr_matrix((np.ones(len(t), np.float32), (t.user - 1, t.item - 1)))
    X.sort_indices()
    T = sp.csr_matrix((t.timestamp.astype(np.float64), (t.user - 1, t.item - 1)))
    T.sort_indices()
    # every user's ratings lie in one span, not spread over the whole range
    spans = np.array([np.ptp(T.data[T.indptr[u]:T.indptr[u + 1]]) for u in range(X.shape[0])])
    assert np.median(spans) < 0.25 * (T_LAST - T_FIRST)
    task = Task(1.0, 5.0, 0)

    def ndcg(train, test):
        return topn_metrics(fits.ease_top(train, None, {"lam": 50.0}, task), train, test,
                            KS)["ndcg@10"]

    temporal = ndcg(*_by_time(X, T))
    shuffled = ndcg(*per_user_holdout(X, 0))
    assert temporal < 0.9 * shuffled, (temporal, shuffled)


def test_als_side_is_the_ridge_solution_of_every_row():
    rng = np.random.default_rng(0)
    X = sp.random(30, 20, density=0.3, random_state=1, format="csr") * 4 + sp.csr_matrix(
        (30, 20))
    X.data += 1.0
    Q, b_other = rng.normal(size=(20, 4)), rng.normal(size=20)
    F, b = als_side(X.indptr, X.indices, X.data, Q, b_other, 3.0, 2.0, 5.0)
    for u in range(30):
        idx = X.indices[X.indptr[u]:X.indptr[u + 1]]
        if len(idx) == 0:
            assert not F[u].any() and b[u] == 0
            continue
        A = np.c_[Q[idx], np.ones(len(idx))]
        y = X.data[X.indptr[u]:X.indptr[u + 1]] - 3.0 - b_other[idx]
        sol = np.linalg.solve(A.T @ A + np.diag([2.0] * 4 + [5.0]), A.T @ y)
        np.testing.assert_allclose(np.r_[F[u], b[u]], sol, rtol=1e-9, atol=1e-10)


def test_float32_ease_equals_the_dense_closed_form_on_chosen_movies():
    X = build_matrix(generate_ratings(200, 120, 3000, seed=2), rating_min=1,
                     rating_max=5).ratings
    items = np.arange(0, 120, 2)
    got_items, B = fit_ease_f32(X, 20.0, items)
    Xb = (X[:, items].toarray() != 0).astype(np.float64)
    P = np.linalg.inv(Xb.T @ Xb + 20.0 * np.eye(len(items)))
    ref = -P / np.diag(P)[None, :]
    np.fill_diagonal(ref, 0.0)
    np.testing.assert_array_equal(got_items, items)
    np.testing.assert_allclose(B, ref, atol=1e-5)
