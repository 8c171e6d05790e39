"""The shared math below every layer: bias fitting, popularity, the binary Gram matrix.

Data, models, serving and the study all use these; they import nothing of deepcf but errors.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from deepcf.errors import ConfigError


def fit_biases(train: sp.csr_matrix, reg_u: float = 15.0, reg_i: float = 10.0,
               sweeps: int = 10) -> tuple[float, np.ndarray, np.ndarray]:
    """(mu, user biases, item biases) of a users x items training matrix: r = mu + b_u + b_i
    by regularised alternating least squares (the baseline estimator of Koren's "Factor in the
    neighbors", Surprise's BaselineOnly defaults: reg_u=15, reg_i=10, 10 sweeps)."""
    X = train.tocoo()
    mu = float(X.data.mean())
    b_u, b_i = np.zeros(X.shape[0]), np.zeros(X.shape[1])
    n_u = np.bincount(X.row, minlength=X.shape[0])
    n_i = np.bincount(X.col, minlength=X.shape[1])
    for _ in range(sweeps):
        b_i = np.bincount(X.col, X.data - mu - b_u[X.row], X.shape[1]) / (reg_i + n_i)
        b_u = np.bincount(X.row, X.data - mu - b_i[X.col], X.shape[0]) / (reg_u + n_u)
    return mu, b_u, b_i


def item_popularity(train: sp.csr_matrix) -> np.ndarray:
    """Training interactions per movie (every stored rating is one)."""
    return np.bincount(train.indices, minlength=train.shape[1]).astype(np.float64)


def popularity_weights(item_count: np.ndarray, beta: float) -> np.ndarray:
    """The popularity correction of a ranking score: a movie's score is multiplied by
    max(count, 1)^-beta (count: its training interactions), i.e. score / popularity^beta.

    Multiplicative, not an additive penalty: it is free of the score's scale (no penalty to
    re-calibrate per model or lam), keeps every positive score positive, and is a fixed column
    scaling, so a net can hold it in its ONNX graph. beta = 0 changes nothing."""
    if not beta >= 0:
        raise ConfigError(f"popularity correction beta={beta} must be >= 0")
    return np.maximum(np.asarray(item_count, np.float64), 1.0) ** -float(beta)


def binary_gram(X: sp.spmatrix, dtype=np.float64) -> np.ndarray:
    """G = X^T X of the binarised X (every stored entry an interaction), dense, in `dtype`
    (float32 holds the counts exactly below 2^24 rows)."""
    X = sp.csr_matrix(X, dtype=dtype, copy=True)
    X.eliminate_zeros()
    X.data[:] = 1.0
    return (X.T @ X).toarray()


PAIRED_TESTS = ("wilcoxon", "ttest")


def paired_test(a, b, test: str = "wilcoxon") -> dict:
    """Whether two models differ beyond noise on the same units (users of one test set):
    `a`, `b` are their per-unit values in the same order (per-user NDCG@10, per-user squared
    error). `test`: "wilcoxon" (scipy.stats.wilcoxon, signed ranks, zero differences dropped)
    or "ttest" (scipy.stats.ttest_rel), two-sided. Returns {"test", "n" (paired units),
    "mean_diff" (mean of a - b), "p" (NaN with fewer than 2 units; 1 when every difference is
    0)}."""
    from scipy import stats as st

    if test not in PAIRED_TESTS:
        raise ConfigError(f"paired test {test!r} is not one of {', '.join(PAIRED_TESTS)}")
    a, b = np.asarray(a, np.float64).reshape(-1), np.asarray(b, np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ConfigError(f"a paired test needs the same units: {len(a)} values against "
                          f"{len(b)}")
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    d = a - b
    out = {"test": test, "n": int(len(d)), "mean_diff": float(d.mean()) if len(d) else
           float("nan"), "p": float("nan")}
    if len(d) < 2:
        return out
    if not np.any(d != 0):
        out["p"] = 1.0
        return out
    res = st.wilcoxon(a, b) if test == "wilcoxon" else st.ttest_rel(a, b)
    out["p"] = float(res.pvalue)
    return out
