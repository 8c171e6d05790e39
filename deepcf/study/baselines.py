"""Reference predictors scored with the same split and protocol as the autoencoders.

- global mean: every held-out rating predicted as the training mean;
- user+item bias: r = mu + b_u + b_i, fitted by regularised alternating least squares (the
  baseline estimator of Koren's "Factor in the neighbors", Surprise's BaselineOnly defaults:
  reg_u=15, reg_i=10, 10 sweeps). Predictions are clipped to the rating range, as for the models.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def fit_biases(train: sp.csr_matrix, reg_u: float = 15.0, reg_i: float = 10.0,
               sweeps: int = 10) -> tuple[float, np.ndarray, np.ndarray]:
    """(mu, user biases, item biases) of a users x items training matrix."""
    X = train.tocoo()
    mu = float(X.data.mean())
    b_u, b_i = np.zeros(X.shape[0]), np.zeros(X.shape[1])
    n_u = np.bincount(X.row, minlength=X.shape[0])
    n_i = np.bincount(X.col, minlength=X.shape[1])
    for _ in range(sweeps):
        b_i = np.bincount(X.col, X.data - mu - b_u[X.row], X.shape[1]) / (reg_i + n_i)
        b_u = np.bincount(X.row, X.data - mu - b_i[X.col], X.shape[0]) / (reg_u + n_u)
    return mu, b_u, b_i


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
