"""The two fixed accuracy protocols of `make accuracy`, for any ratings matrix (users x movies CSR).

Rating protocol (`rating_split`, `rating_errors`)
    A seeded random 80/20 split of all ratings (seeds 0, 1, 2 in `make accuracy`). Model
    selection may only use the 80%: `fit`/`val` is a seeded random carve of it (10% of the 80%
    for validation) to tune and early-stop on; the final model may be refit on all of `train`
    (the 80%) at the selected settings. RMSE and MAE are over every test rating, predictions
    clipped to the rating range. A test rating whose user or movie has no training rating is
    *cold*: it gets the declared fallback (mu + the known bias of the user+item bias model fitted
    on the training part, Surprise's defaults) and is counted.

Top-N protocol (`topn_split`, `topn_metrics`)
    Every rating is an interaction. For each user with >= 5 ratings a seeded random 20% of their
    ratings (rounded, at least 1) is held out; users with fewer ratings stay whole in training
    and are not evaluated. For each evaluated user every movie with a training interaction that
    the user has not rated in training is a candidate and gets ranked (movies no one interacted
    with in training are never candidates; a held-out movie of that kind still counts in the
    user's |held-out|). Recall@K = hits / min(K, |held-out|), NDCG@K binary with the ideal over
    min(K, |held-out|), K = 10, 20; coverage@10 and Gini@10 over the whole catalog
    (deepcf.serving.metrics); per-user metrics averaged over evaluated users. The validation
    carve is the same holdout applied to the training part. The metrics are
    deepcf.serving.evaluate.topn_metrics (the code `deepcf.evaluate --protocol topn` uses).

Both split functions are pure functions of (matrix, seed): anyone gets the same splits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from deepcf.data.matrix import RatingMatrix
from deepcf.data.split import per_user_holdout, split_matrix
from deepcf.errors import ConfigError, DataError
from deepcf.stats import fit_biases

SEEDS = (0, 1, 2)
TEST_FRACTION = 0.2  # of all ratings (rating) / of each user's ratings (top-N)
VAL_FRACTION = 0.1  # of the 80%: the rating protocol's validation carve
MIN_USER_RATINGS = 5  # top-N: users with fewer ratings are not evaluated
KS = (10, 20)


def _csr(data: RatingMatrix | sp.spmatrix) -> sp.csr_matrix:
    X = data.ratings if isinstance(data, RatingMatrix) else data
    if not sp.issparse(X) or X.ndim != 2:
        raise DataError("a protocol needs a RatingMatrix or a 2-d scipy sparse matrix")
    X = sp.csr_matrix(X, dtype=np.float32)
    X.sum_duplicates()
    X.sort_indices()
    if X.nnz == 0:
        raise DataError("a protocol needs at least one rating")
    return X


def _seed(seed: int, part: int) -> list[int]:
    """The seed of one random draw of a split (0: the test holdout, 1: the validation carve)."""
    return [int(seed), part]


# ---------------------------------------------------------------------------------------------
# Rating protocol


@dataclass
class RatingSplit:
    """One split of the rating protocol; all matrices users x movies, same shape."""

    train: sp.csr_matrix  # the 80%: what the final model may be fitted on
    test: sp.csr_matrix  # the 20%: scored once, never used for selection
    fit: sp.csr_matrix  # the 80% less the validation carve
    val: sp.csr_matrix  # the validation carve (10% of the 80%)
    seed: int
    rating_min: float
    rating_max: float


def rating_split(data: RatingMatrix | sp.spmatrix, seed: int,
                 rating_range: tuple[float, float] | None = None,
                 test_fraction: float = TEST_FRACTION,
                 val_fraction: float = VAL_FRACTION) -> RatingSplit:
    """The seeded 80/20 split of all ratings and its seeded validation carve of the 80%."""
    X = _csr(data)
    if rating_range is None:
        rating_range = ((data.rating_min, data.rating_max) if isinstance(data, RatingMatrix)
                        else (float(X.data.min()), float(X.data.max())))
    lo, hi = (float(v) for v in rating_range)
    if not lo < hi:
        raise ConfigError(f"rating range [{lo}, {hi}] is empty")
    outer = split_matrix(RatingMatrix(X, np.arange(X.shape[0]), np.arange(X.shape[1])),
                         val_fraction=0.0, test_fraction=test_fraction, seed=_seed(seed, 0))
    inner = split_matrix(RatingMatrix(outer.train, np.arange(X.shape[0]), np.arange(X.shape[1])),
                         val_fraction=val_fraction, test_fraction=0.0, seed=_seed(seed, 1))
    return RatingSplit(outer.train, outer.test, inner.train, inner.val, int(seed), lo, hi)


def cold_mask(train: sp.csr_matrix, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """True where the user or the movie of (rows[j], cols[j]) has no rating in `train`."""
    user_n = np.diff(train.indptr)
    item_n = np.bincount(train.indices, minlength=train.shape[1])
    return (user_n[rows] == 0) | (item_n[cols] == 0)


def bias_fallback(train: sp.csr_matrix) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """The declared cold fallback: mu + b_u + b_i of the bias model (Surprise defaults) fitted on
    `train`; an unknown user's or movie's bias is 0, so a cold rating gets mu + the known bias."""
    mu, b_u, b_i = fit_biases(train)
    return lambda rows, cols: mu + b_u[rows] + b_i[cols]


def rating_errors(predict: Callable[[np.ndarray, np.ndarray], np.ndarray],
                  train: sp.csr_matrix, test: sp.csr_matrix, rating_min: float,
                  rating_max: float, fallback: bool = True, per_user: bool = False) -> dict:
    """RMSE/MAE of `predict(rows, cols)` over every rating of `test`, clipped to the range;
    cold ratings (no training rating for the user or the movie) get `bias_fallback(train)`
    when `fallback`, and are counted either way. A non-finite prediction makes both NaN.
    With `per_user`, the result's "per_user" holds {"se": each test user's mean squared
    error} (the users with a test rating, in order), for paired significance tests."""
    T = test.tocoo()
    rows, cols = T.row.astype(np.int64), T.col.astype(np.int64)
    pred = np.asarray(predict(rows, cols), np.float64).reshape(-1)
    if pred.shape != (T.nnz,):
        raise DataError(f"a rating model returned {pred.shape[0]} predictions for {T.nnz} "
                        f"ratings")
    cold = cold_mask(train, rows, cols)
    if fallback and cold.any():
        pred[cold] = bias_fallback(train)(rows[cold], cols[cold])
    pred = np.clip(pred, rating_min, rating_max)
    finite = np.isfinite(pred)  # a diverged model's RMSE is NaN, reported as such, never hidden
    err = pred - T.data.astype(np.float64)
    out = {"rmse": float(np.sqrt(np.mean(err**2))) if T.nnz else float("nan"),
           "mae": float(np.mean(np.abs(err))) if T.nnz else float("nan"),
           "n_ratings": int(T.nnz), "n_cold": int(cold.sum()),
           "n_nonfinite": int((~finite).sum())}
    if per_user:
        n = np.bincount(rows, minlength=test.shape[0])
        se = np.bincount(rows, err**2, minlength=test.shape[0])
        out["per_user"] = {"se": se[n > 0] / n[n > 0]}
    return out


# ---------------------------------------------------------------------------------------------
# Top-N protocol


@dataclass
class TopNSplit:
    """One split of the top-N protocol; matrices users x movies with the rating values (every
    stored entry is an interaction; a model may binarise)."""

    train: sp.csr_matrix  # training interactions of every user
    test: sp.csr_matrix  # the held-out 20% of each user with >= 5 ratings
    fit: sp.csr_matrix  # train less its own per-user holdout
    val: sp.csr_matrix  # that holdout: the validation carve
    seed: int


def topn_split(data: RatingMatrix | sp.spmatrix, seed: int,
               fraction: float = TEST_FRACTION,
               min_ratings: int = MIN_USER_RATINGS) -> TopNSplit:
    """The seeded per-user holdout and its seeded validation carve (the same rule on train)."""
    X = _csr(data)
    train, test = per_user_holdout(X, _seed(seed, 0), fraction, min_ratings)
    fit, val = per_user_holdout(train, _seed(seed, 1), fraction, min_ratings)
    return TopNSplit(train, test, fit, val, int(seed))


# ---------------------------------------------------------------------------------------------
# Split files


def _write_csv(path, X: sp.csr_matrix, m: RatingMatrix, times: sp.csr_matrix | None) -> None:
    C = X.tocoo()
    order = np.lexsort((C.col, C.row))
    rows, cols, vals = C.row[order], C.col[order], C.data[order]
    cols_out = [m.user_ids[rows].astype(np.int64), m.item_ids[cols].astype(np.int64), vals]
    header = "userId,movieId,rating"
    if times is not None:
        cols_out.append(np.asarray(times[rows, cols]).ravel().astype(np.int64))
        header += ",timestamp"
    with open(path, "x") as f:  # "x": a file already there is never overwritten
        f.write(header + "\n")
        for rec in zip(*cols_out):
            f.write(f"{rec[0]},{rec[1]},{rec[2]:g}" + (f",{rec[3]}" if len(rec) > 3 else "")
                    + "\n")


def write_splits(m: RatingMatrix, out_dir, seeds=SEEDS) -> list:
    """Each split of both protocols as ratings files with raw ids (userId,movieId,rating and
    the timestamp where the source has one): OUT/rating/split<seed>/{train,test}.csv (the 80%
    and the 20% of `rating_split`) and OUT/topn/split<seed>/{train,test}.csv (`topn_split`'s
    training part and per-user holdout). `python -m deepcf.train data=ratings_csv
    data.source.path=.../train.csv data.source.test_path=.../test.csv` trains on one of them.
    A file that exists already is an error, never overwritten. Returns the paths written."""
    from pathlib import Path

    times = None
    if m.timestamps is not None:
        times = sp.csr_matrix((np.asarray(m.timestamps, np.int64), m.ratings.indices,
                               m.ratings.indptr), shape=m.shape)
    out, written = Path(out_dir), []
    for seed in seeds:
        for name, (train, test) in (
                ("rating", (lambda s: (s.train, s.test))(rating_split(m, seed))),
                ("topn", (lambda s: (s.train, s.test))(topn_split(m, seed)))):
            folder = out / name / f"split{seed}"
            folder.mkdir(parents=True, exist_ok=True)
            for part, X in (("train", train), ("test", test)):
                path = folder / f"{part}.csv"
                try:
                    _write_csv(path, X, m, times)
                except FileExistsError:
                    raise ConfigError(f"{path}: exists already; give --write-splits an empty "
                                      f"or new directory") from None
                written.append(path)
    return written
