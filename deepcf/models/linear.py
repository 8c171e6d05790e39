"""A linear item-item model: each column predicted from the row's other ratings.

    prediction = x @ W + b,   diag(W) = 0

the regression behind SLIM and EASE (Steck 2019), trained here by gradient on the masked loss.
The zero diagonal keeps a rating from predicting itself. W is dense, width x width: fine for a
few thousand movies (ML-100K: 2.8M weights), not for 45,115.

It is also the smallest complete `RatingNet`: a Config and `forward`; training, held-out scoring,
ONNX export and serving come from the contract's defaults (deepcf.models.contract).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from deepcf.models.contract import RatingNet


@dataclass
class LinearConfig:
    width: int


class ItemLinear(RatingNet):
    Config = LinearConfig

    def __init__(self, config: LinearConfig):
        super().__init__(config)
        self.weight = nn.Parameter(torch.zeros(self.width, self.width))
        self.bias = nn.Parameter(torch.zeros(self.width))
        self.register_buffer("off_diagonal", 1.0 - torch.eye(self.width), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ (self.weight * self.off_diagonal) + self.bias
