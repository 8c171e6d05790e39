"""The data path at scale: the fast CSV writer/reader, linear-time CSR build and split give exactly
what the straightforward versions give; the full 26M-rating shape end to end (slow)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from deepcf.data.matrix import build_matrix, compact_ids, load_cached, save_matrix
from deepcf.data.readers import RatingsTable, read_ratings
from deepcf.data.split import split_matrix
from deepcf.data.synthetic import SCALES, generate_ratings, write_csv


def _reference_csr(table: RatingsTable) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
    """The plain construction: np.unique ids, COO -> CSR, latest rating per pair."""
    users, u = np.unique(table.user, return_inverse=True)
    items, i = np.unique(table.item, return_inverse=True)
    order = np.lexsort((np.arange(len(table)), table.timestamp, i, u))
    last = {}
    for k in order:  # later (timestamp, file position) wins
        last[(u[k], i[k])] = table.rating[k]
    rows, cols = zip(*last)
    m = sp.csr_matrix((np.array(list(last.values()), np.float32), (rows, cols)),
                      shape=(len(users), len(items)))
    m.sort_indices()
    return m, users, items


def test_csv_round_trip_in_the_movies_dataset_format(tmp_path):
    t = generate_ratings(300, 200, 5000, seed=1, half_stars=True, max_item_id=176_275)
    path = write_csv(t, tmp_path / "ratings.csv")
    lines = path.read_text().splitlines()
    assert lines[0] == "userId,movieId,rating,timestamp"
    assert all(len(x.split(",")) == 4 and "." in x.split(",")[2] for x in lines[1:50])
    r = read_ratings(path, 0.5, 5.0)
    for a, b in ((r.user, t.user), (r.item, t.item), (r.rating, t.rating),
                 (r.timestamp, t.timestamp)):
        np.testing.assert_array_equal(a, b)
    assert r.user.dtype == np.int64 and r.rating.dtype == np.float32


def test_reader_falls_back_to_line_numbered_errors(tmp_path):
    from deepcf.errors import DataError

    bad = tmp_path / "r.csv"
    bad.write_text("userId,movieId,rating,timestamp\n1,2,4.0,5\n1,x,3.0,6\n")
    with pytest.raises(DataError, match=r"r\.csv:3: movie id 'x' is not a number"):
        read_ratings(bad)
    bad.write_text("userId,movieId,rating,timestamp\n1,2,4.0,5\n1,3,9.0,6\n")
    with pytest.raises(DataError, match=r"r\.csv:3: rating 9 is outside"):
        read_ratings(bad, 0.5, 5.0)


@pytest.mark.parametrize("shuffle,dups", [(False, 0), (True, 0), (True, 40)])
def test_fast_csr_build_equals_the_plain_one(shuffle, dups):
    rng = np.random.default_rng(0)
    t = generate_ratings(200, 150, 3000, seed=2)
    n = len(t)
    order = rng.permutation(n) if shuffle else np.arange(n)
    extra = rng.integers(0, n, dups)
    pick = np.concatenate([order, extra])
    ts = t.timestamp[pick].copy()
    ts[n:] = rng.integers(0, 2_000_000_000, dups)  # some repeats are later, some earlier
    table = RatingsTable(t.user[pick] * 7, t.item[pick] + 10**6,
                         rng.integers(1, 6, len(pick)).astype(np.float32), ts)
    m = build_matrix(table)
    ref, users, items = _reference_csr(table)
    np.testing.assert_array_equal(m.user_ids, users)
    np.testing.assert_array_equal(m.item_ids, items)
    assert m.info["duplicates_dropped"] == len(pick) - ref.nnz
    assert (m.ratings != ref).nnz == 0
    assert m.ratings.has_sorted_indices and m.ratings.indices.dtype == np.int32


def test_compact_equals_np_unique():
    rng = np.random.default_rng(3)
    for ids in (rng.integers(0, 1000, 5000), rng.integers(-5, 5, 100),
                rng.integers(0, 2**40, 100)):
        uniq, code = compact_ids(ids)
        u2, c2 = np.unique(ids, return_inverse=True)
        np.testing.assert_array_equal(uniq, u2)
        np.testing.assert_array_equal(code, c2)


def test_split_is_the_same_function_of_data_and_seed():
    """The O(nnz) split assigns exactly the entries the COO-based version did."""
    m = build_matrix(generate_ratings(300, 200, 6000, seed=4))
    s = split_matrix(m, 0.1, 0.1, seed=7)
    X = m.ratings.tocoo()
    rng = np.random.default_rng(7)
    part = np.zeros(X.nnz, np.int8)
    order = rng.permutation(X.nnz)
    n_t, n_v = int(round(0.1 * X.nnz)), int(round(0.1 * X.nnz))
    part[order[:n_t]], part[order[n_t:n_t + n_v]] = 2, 1
    for k, got in enumerate((s.train, s.val, s.test)):
        want = sp.csr_matrix((X.data[part == k], (X.row[part == k], X.col[part == k])),
                             shape=X.shape)
        assert (got != want).nnz == 0 and got.has_sorted_indices
    assert s.train.nnz + s.val.nnz + s.test.nnz == m.ratings.nnz


@pytest.mark.slow
def test_movies_full_shape_end_to_end(tmp_path):
    """26M ratings: generate, write the CSV, read it back, build, cache, reload."""
    t = generate_ratings(**SCALES["movies_full"], seed=0)
    assert len(t) == 26_024_289 and t.item.max() == 176_275
    path = write_csv(t, tmp_path / "ratings.csv")
    del t
    m = build_matrix(read_ratings(path, 0.5, 5.0), None, 0.5, 5.0)
    assert m.ratings.nnz == 26_024_289 and m.shape[1] == 45_115
    assert m.item_ids.max() == 176_275
    save_matrix(m, tmp_path / "m.npz")
    again = load_cached(tmp_path / "m.npz")
    assert (again.ratings != m.ratings).nnz == 0
