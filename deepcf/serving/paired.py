"""Each test user's values of a training run's model, for paired tests between runs
(`python -m deepcf.report --baseline RUN`).

`run_per_user(run_dir)` re-creates the run's split (deepcf.serving.runs.run_datamodule), scores
its exported model on the test part and returns, per test user (in the order of the run's user
ids): every per-user metric of the top-N protocol (`deepcf.evaluate --protocol topn`: every
held-out rating relevant, movies rated in training or validation never ranked) and, for a model
that predicts ratings, the user's mean squared error (clipped to the rating range, a cold rating
at the training mean, the protocol of the run's own `test/rmse`). The catalog metrics (coverage,
novelty, ...) come back as the run's aggregates. A fingerprint of the test split says whether two
runs were tested on the same ratings, the condition of pairing them.
"""

from __future__ import annotations

import hashlib

import numpy as np
import scipy.sparse as sp

from deepcf.serving.evaluate import topn_protocol
from deepcf.serving.metrics import expand_metrics
from deepcf.serving.runs import check_same_movies, load_model, run_datamodule, run_model_path
from deepcf.serving.scoring import UserScores
from deepcf.serving.sidecar import ModelCard

METRICS = ("precision", "recall", "recall_capped", "ndcg", "map", "mrr", "hit", "coverage",
           "gini", "novelty")


def per_user_squared_error(scorer, card: ModelCard, train: sp.csr_matrix, test: sp.csr_matrix,
                           chunk: int = 1024) -> np.ndarray:
    """Each test user's mean squared error (users with a test rating, in order; users x movies
    matrices): predictions clipped to the rating range, the training mean where the user or the
    movie has no training rating."""
    rows = UserScores(scorer, train, card.orientation, chunk, card.codes)
    users = np.flatnonzero(np.diff(test.indptr) > 0)
    user_n = np.diff(train.indptr)
    item_n = np.bincount(train.indices, minlength=train.shape[1])
    out = np.empty(len(users))
    for s in range(0, len(users), chunk):
        part = users[s : s + chunk]
        T = test[part].tocoo()
        pred = np.clip(rows.block(part)[T.row, T.col].astype(np.float64), card.rating_min,
                       card.rating_max)
        cold = (user_n[part][T.row] == 0) | (item_n[T.col] == 0)
        pred[cold] = card.train_mean
        se = np.bincount(T.row, (pred - T.data.astype(np.float64)) ** 2, len(part))
        out[s : s + len(part)] = se / np.bincount(T.row, minlength=len(part))
    return out


def fingerprint(user_ids: np.ndarray, item_ids: np.ndarray, test: sp.csr_matrix) -> str:
    """A digest of the test ratings by raw ids: equal when two runs were tested on the same."""
    T = test.tocoo()
    h = hashlib.sha256()
    for a in (np.asarray(user_ids)[T.row], np.asarray(item_ids)[T.col], T.data):
        h.update(np.ascontiguousarray(a).astype(str).tobytes() if a.dtype.kind in "OUS"
                 else np.ascontiguousarray(a, np.float64).tobytes())
    return h.hexdigest()[:16]


def run_per_user(run_dir, cache_dir: str | None = None, ks=(10,)) -> dict:
    """{"users": raw ids of the test users, "per_user": {metric: (users,) values, "se" for a
    rating model}, "metrics": the aggregates, "fingerprint": the test split's digest}."""
    model = run_model_path(run_dir)
    scorer, card = load_model(model)
    dm = run_datamodule(run_dir, cache_dir)
    check_same_movies(card, dm.matrix.item_ids, dm.matrix.user_ids, str(model),
                      f"the data of {run_dir}")
    s = dm.split
    test = sp.csr_matrix(s.test)
    res = topn_protocol(scorer, card, s.train, (s.train + s.val).tocsr(), test, ks,
                        metrics=expand_metrics(METRICS, ks), per_user=True)
    per_user = dict(res.pop("per_user"))
    if card.rates:
        per_user["se"] = per_user_squared_error(scorer, card, s.train, test)
        res["rmse"] = float(np.sqrt(np.average(per_user["se"],
                                                weights=np.diff(test.indptr)[
                                                    np.diff(test.indptr) > 0])))
    users = np.flatnonzero(np.diff(test.indptr) > 0)
    return {"users": np.asarray(dm.matrix.user_ids)[users], "per_user": per_user,
            "metrics": res, "rates": card.rates,
            "fingerprint": fingerprint(dm.matrix.user_ids, dm.matrix.item_ids, test)}
