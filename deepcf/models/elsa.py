"""ELSA: the scalable linear shallow autoencoder (Vancura, Alves, Kasalicky, Pilat, "Scalable
Linear Shallow Autoencoder for Collaborative Filtering", RecSys 2022), as a `RatingNet`
(deepcf.models.contract).

A user's binary row b (any rating is an interaction) is scored over every movie as

    f(b) = b (A A^T - I),   A = rownorm(W),  W of shape (movies, rank)

with each row of A of unit length, so diag(A A^T) = 1 and the item-item matrix A A^T - I has a
zero diagonal: EASE's constraint (a movie never predicts itself), at rank `rank` instead of a
dense movies x movies matrix. The parameters are movies x rank (45,115 x 64 floats is 11.5 MB at
The Movies Dataset's scale, where EASE's matrix is 8 GB), learned by gradient.

Its training objective is the normalised MSE (`objective=normalized_mse`,
deepcf.training.objectives.normalized_mse): || b/|b| - f(b)/|f(b)| ||^2 per row, which needs only
<f(b), t> and |f(b)|^2 of each row. For this net both follow from the code z = b A (rank numbers,
a sum over the row's movies) and the rank x rank Gram matrix A^T A, never a dense row:

    <f(b), t> = (z . t A) - <b, t>
    |f(b)|^2  = z (A^T A) z^T - 2 |z|^2 + |b|^2

(`output_norms`), so an epoch costs O(ratings x rank + batches x movies x rank^2), not
users x movies x rank. `forward(x)` is the dense computation (the ONNX graph, full ranking).
The scores order the movies; they are not ratings.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from deepcf.errors import ConfigError
from deepcf.models.contract import RatingNet
from deepcf.models.sparse_ops import Pattern, entry_rows, sparse_encode


@dataclass
class ELSAConfig:
    width: int
    rank: int = 256  # r, the columns of A (the item embedding size)


class ELSA(RatingNet):
    Config = ELSAConfig
    scores = "ranking"

    def __init__(self, config: ELSAConfig):
        super().__init__(config)
        rank = int(config.rank)
        if rank < 1:
            raise ConfigError(f"model.net.rank={config.rank} must be >= 1")
        config.rank = rank
        self.weight = nn.Parameter(torch.empty(self.width, rank))
        self.init_weights("default")

    def item_factors(self) -> torch.Tensor:
        """A: the rows of the weight scaled to unit length (movies, rank)."""
        return F.normalize(self.weight, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Dense rows (batch, width) -> b (A A^T - I), b = (x != 0): ranking scores."""
        b = (x != 0).to(self.weight.dtype)
        A = self.item_factors()
        return (b @ A) @ A.T - b

    def code(self, rows: Pattern) -> torch.Tensor:
        """z = b A of a batch's binary rows (batch, rank), a sum over their entries."""
        A = self.item_factors()
        return sparse_encode(A, torch.ones_like(rows.idx, dtype=A.dtype), rows, False)

    def rank_rows(self, idx: torch.Tensor, val: torch.Tensor, off: torch.Tensor) -> torch.Tensor:
        """forward's scores from flat rows: z = b A over the entries, then z A^T - b (half the
        dense forward's work)."""
        A = self.item_factors()
        rows = Pattern.from_offsets(off, idx, self.width)
        out = self.code(rows) @ A.T
        out[entry_rows(off, len(idx)), idx] -= 1.0
        return out

    def output_norms(self, inputs: Pattern, values: torch.Tensor, targets: Pattern,
                     target_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(<f(b), t>, |f(b)|^2) per row from the code and A^T A (see the module docstring);
        b is the binary `inputs`, t the `targets` with `target_values`."""
        A = self.item_factors()
        t_val = target_values.to(A.dtype)
        # sparse_encode: the backward on the batch's movies by a counting sort (embedding_bag's
        # own backward sorts every entry: most of a step at 45K movies)
        z = sparse_encode(A, torch.ones_like(inputs.idx, dtype=A.dtype), inputs, False)
        zt = z if inputs is targets and bool((t_val == 1).all()) else \
            sparse_encode(A, t_val, targets, False)
        overlap = _overlap(inputs, targets, t_val)  # <b, t>
        n_in = torch.zeros(inputs.n_rows, dtype=A.dtype, device=A.device).index_add(
            0, entry_rows(inputs.off, len(inputs.idx)),
            torch.ones(len(inputs.idx), dtype=A.dtype, device=A.device))  # |b|^2
        zz = (z * z).sum(1)
        dot = (z * zt).sum(1) - overlap
        sq = ((z @ (A.T @ A)) * z).sum(1) - 2.0 * zz + n_in
        return dot, sq

    @torch.no_grad()
    def init_weights(self, scheme: str = "default", bias: float | None = None,
                     nonlinearity: str = "relu") -> None:
        """`default`: Xavier-uniform, as the authors' implementation (recombee/elsa); the
        other schemes as contract.init_matrix applies them. The row scale does not matter (A
        is row-normalised), only the directions."""
        if scheme == "default":
            nn.init.xavier_uniform_(self.weight)
        else:
            super().init_weights(scheme, bias, nonlinearity)


def _overlap(inputs: Pattern, targets: Pattern, target_values: torch.Tensor) -> torch.Tensor:
    """<b, t> per row: the target values at the row's input movies, summed. Without input
    corruption the inputs are the targets' own entries (the common case, no search)."""
    if inputs is targets:
        return torch.zeros(targets.n_rows, dtype=target_values.dtype,
                           device=target_values.device).index_add(
            0, entry_rows(targets.off, len(targets.idx)), target_values)
    width = targets.width
    t_rows = entry_rows(targets.off, len(targets.idx))
    i_rows = entry_rows(inputs.off, len(inputs.idx))
    t_key = t_rows * width + targets.idx
    i_key = i_rows * width + inputs.idx
    order = torch.argsort(t_key)
    pos = torch.searchsorted(t_key[order], i_key).clamp_max(max(len(t_key) - 1, 0))
    hit = (t_key[order][pos] == i_key) if len(t_key) else torch.zeros_like(i_key, dtype=bool)
    vals = torch.where(hit, target_values[order][pos], 0.0) if len(t_key) else \
        torch.zeros(len(i_key), dtype=target_values.dtype, device=target_values.device)
    return torch.zeros(inputs.n_rows, dtype=target_values.dtype,
                       device=target_values.device).index_add(0, i_rows, vals)
