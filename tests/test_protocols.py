"""The split protocols of `data.protocol` (deepcf.data.split): random, per_user, leave_last."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from deepcf.data.matrix import build_matrix, load_cached, save_matrix
from deepcf.data.readers import RatingsTable
from deepcf.data.split import LeaveLastSplit, PerUserSplit, parse_protocol
from deepcf.data.synthetic import generate_ratings
from deepcf.errors import ConfigError
from deepcf.study.protocols import topn_split


def _matrix(seed=0):
    return build_matrix(generate_ratings(120, 90, 3000, seed=seed), None, 1, 5)


def _pattern(X) -> set:
    C = sp.coo_matrix(X)
    return set(zip(C.row.tolist(), C.col.tolist()))


def _disjoint_complete(s, m):
    parts = [_pattern(x) for x in (s.train, s.val, s.test)]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert (s.train + s.val + s.test != m.ratings).nnz == 0  # every rating once, values kept


def test_per_user_is_the_top_n_protocol_of_the_study():
    m = _matrix()
    for seed in (0, 1):
        s = PerUserSplit(seed=seed).split(m)
        study = topn_split(m, seed)
        _disjoint_complete(s, m)
        assert (s.test != study.test).nnz == 0 and (s.val != study.val).nnz == 0
        assert (s.train != study.fit).nnz == 0
    n = np.diff(m.ratings.indptr)
    test_n = np.diff(PerUserSplit(seed=0).split(m).test.indptr)
    want = np.where(n >= 5, np.minimum(np.maximum(1, np.floor(0.2 * n + 0.5)), n - 1), 0)
    assert (test_n == want).all()  # sizes: round(20%) of each user with >= 5 ratings


def test_leave_last_holds_out_each_users_latest_ratings():
    # user 1: four ratings at times 5, 1, 9, 3 -> test the one at 9, val the one at 5
    # user 2: two ratings: kept whole (n_test + n_val + 1 needed)
    t = RatingsTable(np.array([1, 1, 1, 1, 2, 2]), np.array([10, 11, 12, 13, 10, 11]),
                     np.array([1, 2, 3, 4, 5, 1], np.float32), np.array([5, 1, 9, 3, 2, 8]))
    m = build_matrix(t, None, 1, 5)
    s = LeaveLastSplit().split(m)
    _disjoint_complete(s, m)
    assert _pattern(s.test) == {(0, 2)} and _pattern(s.val) == {(0, 0)}
    assert _pattern(s.train) == {(0, 1), (0, 3), (1, 0), (1, 1)}


def test_leave_last_orders_by_time_on_larger_data(tmp_path):
    m = _matrix(3)
    s = LeaveLastSplit(n_test=2, n_val=1).split(m)
    _disjoint_complete(s, m)
    X, times = m.ratings, m.timestamps
    for u in range(X.shape[0]):
        lo, hi = X.indptr[u], X.indptr[u + 1]
        cols, ts = X.indices[lo:hi], times[lo:hi]
        parts = [set(p.indices[p.indptr[u]:p.indptr[u + 1]]) for p in (s.train, s.val, s.test)]
        if hi - lo <= 3:
            assert not parts[1] and not parts[2]
            continue
        assert len(parts[2]) == 2 and len(parts[1]) == 1
        t_of = dict(zip(cols.tolist(), ts.tolist()))
        assert min(t_of[c] for c in parts[2]) >= max(t_of[c] for c in parts[1])
        assert min(t_of[c] for c in parts[1]) >= max(t_of[c] for c in parts[0])
    # the timestamps survive the cache
    save_matrix(m, tmp_path / "m.npz")
    assert (load_cached(tmp_path / "m.npz").timestamps == times).all()


def test_a_test_file_is_the_test_part_of_every_protocol():
    m = _matrix()
    m.test_ratings = sp.csr_matrix(m.ratings[:, :5])
    for proto in (PerUserSplit(seed=1), LeaveLastSplit()):
        s = proto.split(m)
        assert s.test is m.test_ratings
        assert s.val.nnz > 0 and (s.train + s.val != m.ratings).nnz == 0


def test_protocol_options_are_checked():
    assert parse_protocol("per_user") == PerUserSplit()
    assert parse_protocol({"kind": "leave_last", "n_test": 2}) == LeaveLastSplit(n_test=2)
    with pytest.raises(ConfigError, match="data.protocol.val_fraction is not an option of the "
                                          "leave_last protocol"):
        parse_protocol({"kind": "leave_last", "val_fraction": 0.1})
    with pytest.raises(ConfigError, match="data.protocol.test_fraction=1.5"):
        parse_protocol({"kind": "per_user", "test_fraction": 1.5})
    with pytest.raises(ConfigError, match="data.protocol.kind='time' is not one of"):
        parse_protocol({"kind": "time"})
    m = _matrix()
    m.timestamps = None
    with pytest.raises(ConfigError, match="leave_last needs timestamps"):
        LeaveLastSplit().split(m)
