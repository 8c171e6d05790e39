"""Cached item codes: an item-row model (rows are movies, I-AutoRec) scored without a pass of
every movie through the dense graph, and new users folded in. A user-row model linear in its
binarised input (EDLAE) has its own cache, `ItemItem` (below): its scores from sparse rows.

An item-row net with a linear output layer (the autoencoder with `linear_last`, the kernel net;
`codes_at` / `output_layer` on the net) predicts, at movie m and user u,

    pred(m, u) = h_m . W_u + b_u + base_m

where h_m is the last hidden layer of movie m's training row (its *code*, k numbers), W_u and
b_u the output layer's row for user u (with the residual's fitted user bias added to b_u), and
base_m = mu + b_m the residual's movie part (0 without the residual). The export computes every
movie's code once from the training rows the model was trained on and stores codes, W, b and
base in the sidecar (`ItemCodes`, deepcf.serving.sidecar), so serving never needs the
checkpoint:

- a **known user's** scores over all movies are `codes @ W_u + b_u + base`: n_movies x k
  multiply-adds instead of a forward pass of every movie row (n_movies x n_users x k); equal to
  the ONNX forward on the training rows to float32 rounding (the export checks it, as it checks
  onnxruntime against PyTorch);
- a **new user** (one the model has no output row for) is *folded in*: their output row and
  bias are fitted to their ratings with the movies' codes held fixed, by the training
  objective's own sub-problem for one user's output row: ridge regression

      min_{w, b}  sum_{m rated} (r_m - base_m - c - h_m . w - b)^2 + ridge * (|w|^2 + b^2)

  where `ridge` is the model's L2 as the training objective applies it to one row of output
  weights (model.l2 / 2: the objective is sum sq err + l2/2 |W|^2), and c, with the residual,
  is the user's bias as the bias baseline fits it given the movie biases:
  c = sum_m (r_m - base_m) / (user_bias_reg + n). The intercept b is shrunk like the weights
  (in training it starts at 0 and early stopping keeps it small; unshrunk, a user with one
  rating would get b equal to that rating's residual). Solved exactly: in the n x n dual form
  when the user has at most k ratings, else in the k x k primal form.

What the fold-in does not do: the new user's ratings do not change the movies' codes (those
would need the user's input weights, which only training learns), so a folded-in user is
scored against the catalogue as trained.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp


@dataclass
class ItemCodes:
    """The cached pieces of an item-row model's output layer (see the module docstring)."""

    items: np.ndarray  # (n_movies, k) float32: each movie's code h_m
    item_base: np.ndarray  # (n_movies,) float32: mu + b_m (0 without the residual)
    user_weights: np.ndarray  # (n_users, k) float32: W_u of the model's users
    user_bias: np.ndarray  # (n_users,) float32: b_u (+ the residual's user bias)
    ridge: float  # the fold-in's ridge (model.l2 / 2)
    user_bias_reg: float = math.nan  # the residual's user-bias shrinkage; nan: no residual

    @property
    def k(self) -> int:
        return self.items.shape[1]

    @property
    def n_users(self) -> int:
        return self.user_weights.shape[0]

    @property
    def nbytes(self) -> int:
        """Memory the cache takes once loaded."""
        return sum(a.nbytes for a in (self.items, self.item_base, self.user_weights,
                                      self.user_bias))

    def fold_in(self, rows: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
        """(weights (n, k), bias (n,)) of users given as rows of ratings (n x movies)."""
        rows = rows.tocsr()
        W = np.zeros((rows.shape[0], self.k), np.float32)
        b = np.zeros(rows.shape[0], np.float32)
        for j in range(rows.shape[0]):
            lo, hi = rows.indptr[j], rows.indptr[j + 1]
            if hi > lo:
                W[j], b[j] = self._fold_one(rows.indices[lo:hi], rows.data[lo:hi])
        return W, b

    def _fold_one(self, movies: np.ndarray, ratings: np.ndarray) -> tuple[np.ndarray, float]:
        H = self.items[movies].astype(np.float64)
        y = ratings.astype(np.float64) - self.item_base[movies]
        c = 0.0
        if not math.isnan(self.user_bias_reg):
            c = float(y.sum() / (self.user_bias_reg + len(y)))
        y = y - c
        A = np.hstack([H, np.ones((len(y), 1))])
        lam = max(self.ridge, 1e-8)  # a tiny floor keeps an l2=0 model's system solvable
        if len(y) <= A.shape[1]:  # dual: theta = A^T (A A^T + lam I)^-1 y
            G = A @ A.T
            G[np.diag_indices_from(G)] += lam
            theta = A.T @ np.linalg.solve(G, y)
        else:  # primal: (A^T A + lam I) theta = A^T y
            G = A.T @ A
            G[np.diag_indices_from(G)] += lam
            theta = np.linalg.solve(G, A.T @ y)
        return theta[:-1].astype(np.float32), float(theta[-1] + c)

    def user_rows(self, X: sp.csr_matrix, rows: np.ndarray, model_users: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
        """(weights, bias) for `rows` of X: a model user's own (model_users >= 0: their index),
        else folded in from the row's ratings."""
        rows, model_users = np.asarray(rows), np.asarray(model_users)
        known = model_users >= 0
        W = np.empty((len(rows), self.k), np.float32)
        b = np.empty(len(rows), np.float32)
        W[known], b[known] = self.user_weights[model_users[known]], self.user_bias[
            model_users[known]]
        if (~known).any():
            W[~known], b[~known] = self.fold_in(X[rows[~known]])
        return W, b

    def scores(self, W: np.ndarray, b: np.ndarray) -> np.ndarray:
        """(n, n_movies) float32 predictions of users with output rows W (n, k), bias b."""
        out = W @ self.items.T
        out += b[:, None]
        out += self.item_base[None, :]
        return out

    def at(self, movies: np.ndarray, users: np.ndarray, step: int = 1 << 16) -> np.ndarray:
        """Predictions at (movie, model user) pairs, float32, in pieces of `step` pairs."""
        out = np.empty(len(movies), np.float32)
        for s in range(0, len(movies), step):
            m, u = movies[s : s + step], users[s : s + step]
            out[s : s + step] = (np.einsum("nk,nk->n", self.items[m], self.user_weights[u])
                                 + self.user_bias[u] + self.item_base[m])
        return out

    def model_rows(self, movies: np.ndarray) -> np.ndarray:
        """The model's outputs (len(movies), n_users) for those movie rows of the training
        matrix, as the dense forward computes them (the export's parity check)."""
        out = self.items[movies] @ self.user_weights.T
        out += self.user_bias[None, :]
        out += self.item_base[movies, None]
        return out


@dataclass
class ItemItem:
    """The cached weights of a user-row model that is linear in the binarised row over a set of
    movies (EDLAE / EASE, `model.net.max_items` or the whole catalogue): a user's scores are
    the sum of B's rows at their interactions with the modelled movies, times `scale`, and the
    lowest float32 at the movies not modelled. The ONNX graph computes the same from a dense
    row (rows x movies x movies multiply-adds); this is (interactions x movies), and any row
    scores, a new user's as a known one's. The export checks it against onnxruntime."""

    items: np.ndarray  # (k,) int64: the modelled movies (columns), ascending
    weight: np.ndarray  # (k, k) float32: B
    scale: np.ndarray  # (k,) float32: the column scale (the popularity correction; else 1)
    width: int  # the model's movies

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.items, self.weight, self.scale))

    def scores(self, X: sp.csr_matrix) -> np.ndarray:
        """(n, width) float32 scores of the rows of X (n x width; any stored nonzero an
        interaction): the net's own sparse-row scoring (deepcf.models.edlae.item_item_scores)
        on these arrays."""
        import torch

        # start-up: the net's module (torch, kernels) loads only when a linear model scores
        from deepcf.models.edlae import item_item_scores

        X = sp.csr_matrix(X)
        with torch.inference_mode():
            return item_item_scores(
                torch.from_numpy(X.indices.astype(np.int64)), torch.from_numpy(X.data),
                torch.from_numpy(X.indptr[:-1].astype(np.int64)), torch.from_numpy(self.items),
                torch.from_numpy(self.weight), torch.from_numpy(self.scale), self.width).numpy()
