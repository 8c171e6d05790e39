"""EDLAE / DLAE: the linear autoencoder trained with (emphasised) dropout, in closed form.

Steck, "Autoencoders that don't overfit towards the identity" (NeurIPS 2020). With X the binary
users x movies interactions and G = X^T X, the linear autoencoder x -> x B trained with input
dropout at rate p (the expected loss over the dropout draws) has the closed form

    Lambda = p / (1 - p) * diag(G) + lam * I
    DLAE:   B = (G + Lambda)^-1 G
    EDLAE:  B = I - P diagMat(1 / diag(P)),  P = (G + Lambda)^-1,  diag(B) = 0

EDLAE is the paper's full emphasis on the dropped-out entries, which amounts to the zero-diagonal
constraint (a movie never predicts itself): with p = 0 it is EASE (Steck 2019) with lam. Dropout
acts as a per-movie L2 penalty proportional to the movie's popularity: popular movies are
regularised harder, which is why it ranks better than EASE at equal lam.

As a `RatingNet` (deepcf.models.contract): the input is binarised (any rating is an interaction),
`forward(x) = (x != 0) @ B * s` with s = max(popularity, 1)^-pop_beta, the optional popularity
correction of deepcf.serving.scoring.popularity_weights (1 at pop_beta = 0). B and s are
buffers set by `fit_data` from the training rows, saved with the checkpoint, part of the ONNX
graph. Nothing is learned by gradient (`closed_form`): the training module skips its steps.
The scores are ranking scores, not ratings: their held-out RMSE means nothing; rank with them
(`deepcf.evaluate --protocol topn`, `deepcf.recommend`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from deepcf.errors import ConfigError
from deepcf.models.contract import RatingNet


def binary_gram(X: sp.spmatrix) -> np.ndarray:
    """G = X^T X of the binarised X (every stored entry an interaction), dense float64."""
    X = sp.csr_matrix(X, dtype=np.float64, copy=True)
    X.eliminate_zeros()
    X.data[:] = 1.0
    return (X.T @ X).toarray()


def check_edlae(dropout: float, lam: float) -> None:
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"model.dropout={dropout} must be in [0, 1)")
    if not lam >= 0.0:
        raise ConfigError(f"model.lam={lam} must be >= 0")


def edlae_weights(G: np.ndarray, dropout: float, lam: float, emphasis: bool = True
                  ) -> np.ndarray:
    """The (width x width) weights B of EDLAE (`emphasis`, zero diagonal) or DLAE from the Gram
    matrix G of the binary inputs; see the module docstring."""
    check_edlae(dropout, lam)
    G = np.asarray(G, dtype=np.float64)
    reg = dropout / (1.0 - dropout) * np.diag(G) + lam
    if not (reg > 0).all():
        raise ConfigError(f"model.lam={lam}, model.dropout={dropout}: a movie with no "
                          f"interaction gets no penalty; use lam > 0")
    A = G.copy()
    A[np.diag_indices_from(A)] += reg
    if not emphasis:  # (G + Lambda)^-1 G = I - (G + Lambda)^-1 Lambda
        return np.linalg.solve(A, G)
    P = np.linalg.inv(A)
    B = -P / np.diag(P)[None, :]
    B[np.diag_indices_from(B)] = 0.0
    return B


@dataclass
class EDLAEConfig:
    width: int
    dropout: float = 0.33  # p, the input dropout rate the closed form takes the expectation over
    lam: float = 100.0  # the L2 on B on top of dropout's (lam * I)
    emphasis: bool = True  # EDLAE (zero diagonal); false: DLAE
    pop_beta: float = 0.0  # popularity correction: scores * max(popularity, 1)^-pop_beta


class EDLAE(RatingNet):
    Config = EDLAEConfig
    needs_train_rows = True
    closed_form = True
    scores = "ranking"

    def __init__(self, config: EDLAEConfig):
        super().__init__(config)
        check_edlae(float(config.dropout), float(config.lam))
        if not float(config.pop_beta) >= 0.0:
            raise ConfigError(f"model.pop_beta={config.pop_beta} must be >= 0")
        self.register_buffer("weight", torch.zeros(self.width, self.width))
        self.register_buffer("col_scale", torch.ones(self.width))

    def fit_data(self, train_rows) -> None:
        from deepcf.serving.scoring import popularity_weights

        X = sp.csr_matrix(train_rows)
        if X.shape[1] != self.width:
            raise ConfigError(f"EDLAE of width {self.width} fitted on rows of width "
                              f"{X.shape[1]}")
        c = self.config
        G = binary_gram(X)
        B = edlae_weights(G, float(c.dropout), float(c.lam), bool(c.emphasis))
        self.weight.copy_(torch.from_numpy(B))
        self.col_scale.copy_(torch.from_numpy(popularity_weights(np.diag(G),
                                                                 float(c.pop_beta))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((x != 0).to(self.weight.dtype) @ self.weight) * self.col_scale
