"""Reference predictors scored with the same split and protocol as the autoencoders.

- global mean: every held-out rating predicted as the training mean;
- user+item bias: r = mu + b_u + b_i, fitted by regularised alternating least squares (the
  baseline estimator of Koren's "Factor in the neighbors", Surprise's BaselineOnly defaults:
  reg_u=15, reg_i=10, 10 sweeps). Predictions are clipped to the rating range, as for the models.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from deepcf.kernels import als_side
from deepcf.models.edlae import edlae_weights_f32
from deepcf.stats import binary_gram, fit_biases


def score(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    err = pred - target
    return {"rmse": float(np.sqrt(np.mean(err**2))), "mae": float(np.mean(np.abs(err)))}


def baseline_scores(train: sp.csr_matrix, test: sp.csr_matrix, lo: float, hi: float
                    ) -> dict[str, dict[str, float]]:
    """Test RMSE/MAE of the global mean and of user+item biases (users x items matrices)."""
    T = test.tocoo()
    mu, b_u, b_i = fit_biases(train)
    return {
        "global mean": score(np.full(T.nnz, np.clip(mu, lo, hi)), T.data),
        "user+item bias": score(np.clip(mu + b_u[T.row] + b_i[T.col], lo, hi), T.data),
    }


# ---------------------------------------------------------------------------------------------
# The baselines of the accuracy protocols (deepcf.study.rows): fitted on a users x movies
# CSR, they predict ratings at (rows, cols) or score every movie for some users.


def predict_biases(mu: float, b_u: np.ndarray, b_i: np.ndarray, rows: np.ndarray,
                   cols: np.ndarray) -> np.ndarray:
    return mu + b_u[rows] + b_i[cols]


def fit_itemknn(train: sp.csr_matrix, k: int) -> np.ndarray:
    """Item-based kNN (cosine on the binary interactions): S[i, j] = cos(movie i, movie j),
    each column j keeping its k most similar other movies (its neighbourhood), the rest 0; a
    user's scores are x_u S (the summed similarity of the user's movies in j's neighbourhood)."""
    if k < 1:
        raise ValueError(f"ItemKNN needs k >= 1, got {k}")
    G = binary_gram(train)
    norm = np.sqrt(np.diag(G))
    norm[norm == 0] = 1.0
    S = G / norm[:, None] / norm[None, :]
    S[np.diag_indices_from(S)] = 0.0
    if k < S.shape[0]:
        drop = np.argpartition(-S, k, axis=0)[k:]  # per column, all but its k largest
        np.put_along_axis(S, drop, 0.0, axis=0)
    return S


@dataclass
class BiasedMF:
    """r_ui = mu + b_u + b_i + p_u . q_i (biased matrix factorisation, SVD-style)."""

    mu: float
    b_u: np.ndarray
    b_i: np.ndarray
    P: np.ndarray
    Q: np.ndarray

    def predict(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return (self.mu + self.b_u[rows] + self.b_i[cols]
                + np.einsum("nk,nk->n", self.P[rows], self.Q[cols]))

    def scores(self, users: np.ndarray) -> np.ndarray:
        """Predicted ratings of every movie for `users` (len(users), movies)."""
        return self.mu + self.b_u[users, None] + self.b_i[None, :] + self.P[users] @ self.Q.T


def fit_mf(train: sp.csr_matrix, rank: int = 20, reg: float = 10.0, reg_bias: float = 10.0,
           sweeps: int = 15, seed: int = 0) -> BiasedMF:
    """Biased MF by alternating least squares: each sweep solves every user's (factors, bias)
    exactly with the movies fixed, then every movie's (deepcf.kernels.als_side, rows in
    parallel: 26M ratings at rank 20 in seconds a side); L2 penalties `reg` (factors) and
    `reg_bias` (biases) per user/movie. Deterministic given `seed` (the initial movie factors)."""
    if rank < 1 or reg < 0 or reg_bias < 0 or sweeps < 1:
        raise ValueError(f"fit_mf: rank={rank}, reg={reg}, reg_bias={reg_bias}, "
                         f"sweeps={sweeps} out of range")
    X = sp.csr_matrix(train, dtype=np.float64)
    X.sort_indices()
    XT = X.T.tocsr()
    XT.sort_indices()
    mu = float(X.data.mean())
    rng = np.random.default_rng(seed)
    Q = rng.normal(0.0, 0.1, (X.shape[1], rank))
    b_i = np.zeros(X.shape[1])
    P, b_u = np.zeros((X.shape[0], rank)), np.zeros(X.shape[0])
    for _ in range(sweeps):
        P, b_u = als_side(X.indptr, X.indices, X.data, Q, b_i, mu, reg, reg_bias)
        Q, b_i = als_side(XT.indptr, XT.indices, XT.data, P, b_u, mu, reg, reg_bias)
    return BiasedMF(mu, b_u, b_i, P, Q)


def fit_ease_f32(train: sp.csr_matrix, lam: float, items: np.ndarray | None = None,
                 dropout: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """EASE (Steck 2019) in float32 with an in-place Cholesky inverse, on the movies `items`
    (default: all): B = I - P / diag(P), P = (G + lam I)^-1, G the binary Gram of those movies'
    columns; with `dropout` p > 0 it is EDLAE (Lambda = p / (1 - p) diag(G) + lam I, Steck
    2020). One movies x movies float32 matrix is held (plus G's sparse product): 8 GB at 45K
    movies, 0.4 GB at 10K. Returns (items, B) with B over `items`."""
    if not lam > 0:
        raise ValueError(f"EASE needs lam > 0, got {lam}")
    items = np.arange(train.shape[1]) if items is None else np.asarray(items)
    G = binary_gram(train[:, items], np.float32)
    return items, edlae_weights_f32(G, dropout, lam)
