"""The data layer: ML-100K from the wheel, compaction, the split, the cache, the batches."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest
import scipy.sparse as sp

from deepcf.data.datamodule import RatingsDataModule
from deepcf.data.matrix import build_matrix, load_matrix
from deepcf.data.readers import RatingsTable
from deepcf.data.sources import MovieLens100K, RatingsFile, Synthetic
from deepcf.data.split import split_matrix
from deepcf.data.synthetic import SCALES, generate_ratings, scale_params, write_csv
from deepcf.errors import ConfigError
from tests.helpers import write


def test_ml100k_is_the_real_movielens_100k(cache_dir):
    m = load_matrix(MovieLens100K(), cache_dir)
    assert m.shape == (943, 1682) and m.ratings.nnz == 100_000
    assert set(np.unique(m.ratings.data).tolist()) == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert m.titles[list(m.item_ids).index(1)] == "Toy Story"
    assert m.source == "MovieLens-100K"
    # user 196 rated movie 242 with 3 stars: the first line of u.data
    r, c = list(m.user_ids).index(196), list(m.item_ids).index(242)
    assert m.ratings[r, c] == 3.0


def test_compaction_keeps_raw_ids_and_duplicates_keep_latest():
    t = RatingsTable(np.array([10, 10, 99, 10]), np.array([176275, 5, 5, 176275]),
                     np.array([1, 2, 3, 5], np.float32), np.array([1, 2, 3, 9]))
    m = build_matrix(t, {5: "Five", 176275: "Last"}, 1, 5)
    assert m.shape == (2, 2)  # not 176,275 columns
    assert m.user_ids.tolist() == [10, 99] and m.item_ids.tolist() == [5, 176275]
    assert m.ratings.toarray().tolist() == [[2, 5], [3, 0]]
    assert m.titles.tolist() == ["Five", "Last"]
    assert m.ratings.indices.dtype == np.int32 and m.ratings.data.dtype == np.float32


def _matrix(seed=0):
    return build_matrix(generate_ratings(200, 150, 4000, seed=seed), None, 1, 5)


def test_split_is_disjoint_complete_and_deterministic():
    m = _matrix()
    s1, s2 = split_matrix(m, 0.1, 0.2, seed=3), split_matrix(m, 0.1, 0.2, seed=3)
    for a, b in zip((s1.train, s1.val, s1.test), (s2.train, s2.val, s2.test)):
        assert (a != b).nnz == 0
    masks = [(x != 0).astype(int) for x in (s1.train, s1.val, s1.test)]
    assert (masks[0] + masks[1] + masks[2]).max() == 1  # disjoint
    assert (s1.train + s1.val + s1.test != m.ratings).nnz == 0  # complete, values kept
    assert (s1.val.nnz, s1.test.nnz) == (400, 800)
    other = split_matrix(m, 0.1, 0.2, seed=4)
    assert (other.test != s1.test).nnz > 0


@pytest.mark.parametrize("val,test", [(-0.1, 0.1), (0.5, 0.5), (0.1, 1.0)])
def test_bad_split_fractions(val, test):
    with pytest.raises(ConfigError, match="data."):
        split_matrix(_matrix(), val, test)


def test_user_supplied_test_file(tmp_path, cache_dir):
    train = write(tmp_path / "train.csv", "userId,movieId,rating\n" + "".join(
        f"{u},{i},{(u + i) % 5 + 1}\n" for u in range(1, 30) for i in range(1, 20) if (u * i) % 3))
    test = write(tmp_path / "test.csv", "userId,movieId,rating\n1,3,4\n2,77,5\n")
    m = load_matrix(RatingsFile(str(train), test_path=str(test), rating_min=1), cache_dir)
    s = split_matrix(m, 0.1, 0.1)
    assert s.test.nnz == 2 and 77 in m.item_ids  # an unseen movie joins the id space
    assert s.val.nnz == round(0.1 * m.ratings.nnz)


def test_cache_roundtrip_and_user_dir_untouched(tmp_path):
    data_dir = tmp_path / "mydata"
    data_dir.mkdir()
    t = generate_ratings(50, 40, 600, seed=1)
    write_csv(t, data_dir / "ratings.csv")
    before = {p.name: hashlib.sha1(p.read_bytes()).hexdigest() for p in data_dir.iterdir()}
    cache = tmp_path / "cache"
    m1 = load_matrix(RatingsFile(str(data_dir / "ratings.csv"), rating_min=1), cache)
    assert len(list((cache / "matrices").glob("*.npz"))) == 1
    m2 = load_matrix(RatingsFile(str(data_dir / "ratings.csv"), rating_min=1), cache)
    assert (m1.ratings != m2.ratings).nnz == 0 and (m1.item_ids == m2.item_ids).all()
    after = {p.name: hashlib.sha1(p.read_bytes()).hexdigest() for p in data_dir.iterdir()}
    assert before == after
    # a changed file is a new cache entry, never a stale hit
    os.utime(data_dir / "ratings.csv", ns=(1, 1))
    load_matrix(RatingsFile(str(data_dir / "ratings.csv"), rating_min=1), cache)
    assert len(list((cache / "matrices").glob("*.npz"))) == 2


def test_synthetic_is_seeded_sized_and_skewed():
    a, b = generate_ratings(2000, 500, 40_000, seed=7), generate_ratings(2000, 500, 40_000, seed=7)
    assert np.array_equal(a.rating, b.rating) and np.array_equal(a.item, b.item)
    m = build_matrix(a, None, 1, 5)
    assert m.ratings.nnz == 40_000  # distinct pairs, exactly as asked
    assert m.shape == (2000, 500)  # every user and movie has a rating
    assert set(np.unique(a.rating).tolist()) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    pop = np.sort(np.bincount(m.ratings.indices))[::-1]
    assert pop[:25].sum() > 0.15 * pop.sum()  # the top 5% of movies hold a large share
    act = np.diff(m.ratings.indptr)
    assert act.max() > 8 * np.median(act)  # heavy and light users
    assert 3.0 < a.rating.mean() < 4.2
    half = generate_ratings(300, 100, 3000, seed=1, half_stars=True, max_item_id=176_275)
    assert half.item.max() == 176_275 and (half.rating * 2 % 1 == 0).all()
    assert scale_params("movies_full")["n_ratings"] == SCALES["movies_full"]["n_ratings"]
    with pytest.raises(ConfigError, match="data.source.n_ratings=10 must be at least"):
        generate_ratings(20, 30, 10)
    with pytest.raises(ConfigError, match="data.source.scale='huge'"):
        scale_params("huge")


@pytest.mark.parametrize("orientation", ["user", "item"])
def test_batches_are_sparse_rows_and_targets_are_held_out(cache_dir, orientation):
    dm = RatingsDataModule(Synthetic("tiny"), orientation=orientation,
                           batch_size=16, eval_batch_size=32, cache_dir=str(cache_dir))
    dm.setup()
    train, val, _ = dm.oriented(dm.split)
    assert dm.width == train.shape[1]
    batch = next(iter(dm.train_dataloader()))
    rows = batch["rows"].numpy()
    assert len(rows) == 16 and set(batch) == {"rows", "in_idx", "in_val", "in_off"}
    dense = np.zeros((16, dm.width), np.float32)
    counts = np.diff(np.append(batch["in_off"].numpy(), len(batch["in_idx"])))
    dense[np.repeat(np.arange(16), counts), batch["in_idx"].numpy()] = batch["in_val"].numpy()
    np.testing.assert_array_equal(dense, train[rows].toarray())
    vb = next(iter(dm.val_dataloader()))
    vrows = vb["rows"].numpy()
    tgt = sp.csr_matrix((vb["tgt_val"].numpy(), (vb["tgt_row"].numpy(), vb["tgt_idx"].numpy())),
                        shape=(len(vrows), dm.width))
    assert (tgt != val[vrows]).nnz == 0
    # inputs of an eval batch are the training rows, never the held-out ones
    inp = train[vrows]
    assert inp.multiply(tgt != 0).nnz == 0
    cold_cols = np.bincount(train.indices, minlength=dm.width) == 0
    np.testing.assert_array_equal(
        vb["tgt_cold"].numpy(),
        cold_cols[vb["tgt_idx"].numpy()] | (np.diff(inp.indptr) == 0)[vb["tgt_row"].numpy()])


def test_bad_orientation():
    with pytest.raises(ConfigError, match="data.orientation='movies'"):
        RatingsDataModule(MovieLens100K(), orientation="movies")
