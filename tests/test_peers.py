"""The peer rows of `make accuracy` (deepcf.study.peers): Surprise and implicit on tiny data,
where the extra deepcf[peers] is installed, and their labels (library + installed version)."""

from __future__ import annotations

from importlib import metadata

import numpy as np
import pytest
import scipy.sparse as sp

import deepcf.study.rows  # noqa: F401  (registers the rows)
from deepcf.errors import ConfigError
from deepcf.study import peers
from deepcf.study import selection as sel
from deepcf.study.protocols import rating_split, topn_split


def ratings(n_users=30, n_items=20, seed=0) -> sp.csr_matrix:
    """Low-rank 1..5 ratings on a random 40% of the pairs (every user and movie rated)."""
    rng = np.random.default_rng(seed)
    P, Q = rng.normal(size=(n_users, 2)), rng.normal(size=(n_items, 2))
    R = np.clip(np.rint(3 + P @ Q.T), 1, 5)
    mask = rng.random((n_users, n_items)) < 0.4
    mask[np.arange(n_users), rng.integers(0, n_items, n_users)] = True
    mask[rng.integers(0, n_users, n_items), np.arange(n_items)] = True
    return sp.csr_matrix(np.where(mask, R, 0.0).astype(np.float32))


def peer_rows(dist: str) -> list[sel.Row]:
    return [r for r in sel.ROWS.values() if f"({dist} " in r.name or f"({dist}," in r.name]


@pytest.mark.parametrize("dist", [peers.SURPRISE, peers.IMPLICIT])
def test_peer_rows_say_library_and_version(dist):
    rows = peer_rows(dist)
    assert len(rows) == (3 if dist == peers.SURPRISE else 2)
    try:
        v = metadata.version(dist)
    except metadata.PackageNotFoundError:
        v = None
    for r in rows:
        assert r.name.endswith(f"({dist} {v})" if v else f"({dist}, not installed)")
        assert r.note.startswith(f"{dist} {v}" if v else f"{dist}, not installed")


def test_surprise_rows_run_on_tiny_data():
    pytest.importorskip("surprise")
    X = ratings()
    split = rating_split(X, 0)
    task = sel.Task(1.0, 5.0, 0)
    bias = sel.ROWS["rating:user+item bias"]
    base = sel.run_row(bias, split, task)[0]["rmse"]
    for row in peer_rows(peers.SURPRISE):
        small = sel.Row(row.name, "rating", row.fit, grid=row.grid[:2])
        m, params, _, val = sel.run_row(small, split, task)
        assert np.isfinite(m["rmse"]) and m["n_ratings"] == split.test.nnz, row.name
        assert params in row.grid[:2] and np.isfinite(val)
        assert m["rmse"] < base + 0.5, (row.name, m["rmse"], base)
    # the prediction is Surprise's own estimate, unclipped (the protocol clips)
    import surprise

    fit = peers.surprise_fit("svd")(split.train, None, {"n_factors": 2}, task)
    algo = surprise.SVD(n_factors=2, random_state=0)
    _, trainset = peers._trainset(split.train, 1.0, 5.0)
    algo.fit(trainset)
    T = split.test.tocoo()
    want = [algo.predict(int(u), int(i), clip=False).est for u, i in zip(T.row, T.col)]
    np.testing.assert_allclose(fit(T.row, T.col), want, rtol=1e-12)


def test_implicit_rows_run_on_tiny_data():
    pytest.importorskip("implicit")
    X = ratings(40, 25)
    split = topn_split(X, 0)
    task = sel.Task(1.0, 5.0, 0)
    for row in peer_rows(peers.IMPLICIT):
        small = sel.Row(row.name, "topn", row.fit, grid=[{**row.grid[0], "factors": 4}])
        m, _, _, _ = sel.run_row(small, split, task)
        assert 0.0 <= m["ndcg@10"] <= 1.0 and 0.0 < m["coverage@10"] <= 1.0, row.name
        # the scores are the factors' products, seeded: the same seed, the same scores
        fit = row.fit
        params = {**row.grid[0], "factors": 4}
        a = fit(split.train, None, params, task)(np.arange(5))
        b = fit(split.train, None, params, task)(np.arange(5))
        assert a.shape == (5, X.shape[1])
        np.testing.assert_allclose(a, b)


def test_a_missing_library_is_one_line():
    with pytest.raises(ConfigError, match=r"pip install 'deepcf\[peers\]'"):
        peers._need("no-such-dist", "no_such_module_here")
    with pytest.raises(ConfigError):
        peers.surprise_fit("svd+++")
    assert peers.library("no-such-dist") == "no-such-dist, not installed"
