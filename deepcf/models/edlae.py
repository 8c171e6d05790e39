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
correction of deepcf.stats.popularity_weights (1 at pop_beta = 0). B and s are buffers set in
closed form (`objective=closed_form`: the batches' Gram matrices summed, then `solve`), saved
with the checkpoint, part of the ONNX graph. Nothing is learned by gradient.
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
from deepcf.models.sparse_ops import Pattern
from deepcf.stats import binary_gram, popularity_weights


def check_edlae(dropout: float, lam: float) -> None:
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"model.net.dropout={dropout} must be in [0, 1)")
    if not lam >= 0.0:
        raise ConfigError(f"model.net.lam={lam} must be >= 0")


def edlae_weights(G: np.ndarray, dropout: float, lam: float, emphasis: bool = True
                  ) -> np.ndarray:
    """The (width x width) weights B of EDLAE (`emphasis`, zero diagonal) or DLAE from the Gram
    matrix G of the binary inputs; see the module docstring."""
    check_edlae(dropout, lam)
    G = np.asarray(G, dtype=np.float64)
    reg = dropout / (1.0 - dropout) * np.diag(G) + lam
    if not (reg > 0).all():
        raise ConfigError(f"model.net.lam={lam}, model.net.dropout={dropout}: a movie with no "
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
    scores = "ranking"

    def __init__(self, config: EDLAEConfig):
        super().__init__(config)
        check_edlae(float(config.dropout), float(config.lam))
        if not float(config.pop_beta) >= 0.0:
            raise ConfigError(f"model.net.pop_beta={config.pop_beta} must be >= 0")
        self.register_buffer("weight", torch.zeros(self.width, self.width))
        self.register_buffer("col_scale", torch.ones(self.width))

    def closed_form_stats(self, rows: Pattern, values: torch.Tensor) -> dict[str, torch.Tensor]:
        """The batch's binary Gram matrix X_b^T X_b (float64; they add up to X^T X)."""
        if rows.width != self.width:
            raise ConfigError(f"EDLAE of width {self.width} fitted on rows of width "
                              f"{rows.width}")
        X = sp.csr_matrix((values.detach().cpu().numpy(), rows.idx.cpu().numpy(),
                           rows.crow.cpu().numpy()), shape=(rows.n_rows, self.width))
        return {"gram": torch.from_numpy(binary_gram(X)).to(values.device)}

    @torch.no_grad()
    def solve(self, stats: dict[str, torch.Tensor]) -> None:
        c = self.config
        G = stats["gram"].detach().cpu().double().numpy()
        B = edlae_weights(G, float(c.dropout), float(c.lam), bool(c.emphasis))
        self.weight.copy_(torch.from_numpy(B))
        self.col_scale.copy_(torch.from_numpy(popularity_weights(np.diag(G),
                                                                 float(c.pop_beta))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((x != 0).to(self.weight.dtype) @ self.weight) * self.col_scale
