"""A kernelised autoencoder: GLocal-K's local kernel (Han et al. 2021) as a `RatingNet`.

Every layer l (width -> hidden[0] -> ... -> hidden[-1] -> width, as I-AutoRec with more layers)
computes act(x @ (W_l * K_l)^T + b_l) where the kernel

    K_l[o, i] = max(0, 1 - ||v_o - u_i||^2)

is a finite-support RBF between a learned `dim`-vector u_i per input and v_o per output unit: a
weight is used only where the two vectors are close, so the layer learns its own sparse
connectivity (Muller et al. 2018's sparse FC layer). The vectors start near 0 (std `kernel_init`),
so the kernel starts at ~1 (a plain autoencoder) and sparsifies under training. The objective adds

- `model.l2` (the module's lambda/2 ||W||^2): on the W_l only (`l2_weights`), not on u, v;
- `sparsity`/2 * sum_l ||K_l||^2 (`penalty`), in the same summed-error units as l2.

GLocal-K's tf code writes 0.5 * sum sq err + lambda_2/2 ||W||^2 + lambda_s/2 ||K||^2, i.e. twice
deepcf's scale: its ML-100K values (lambda_2 20, lambda_s 0.006) are l2=40, sparsity=0.012 here.
GLocal-K's second stage, the global kernel (a convolution of the whole rating matrix), is
`GlobalKernel` below: it is not row-local, so it is not a `RatingNet` (deepcf.study.glocal).

`forward` is the dense computation (ONNX, ranking). Training and held-out scoring take the
autoencoder's sparse path: the effective weights W * K are formed once per step (small:
units x width), then the first layer is a sparse product over the batch's ratings and the last
is evaluated at the target entries only (deepcf.models.sparse_ops; gradients dense). Meant for
the item orientation, rows = movies of width = users, trained full-batch (experiment=glocal_k).
The bias residual of deepcf.models.residual is an option (`residual`), as for the autoencoder.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from deepcf.errors import ConfigError
from deepcf.models.autoencoder import ACTIVATIONS
from deepcf.models.contract import RatingNet, check_init, init_matrix
from deepcf.models.residual import BiasResidual
from deepcf.models.sparse_ops import Pattern, entry_rows, sampled_decode, sparse_encode


@dataclass
class KernelConfig:
    width: int
    hidden: list[int] = field(default_factory=lambda: [500, 500])
    activation: str = "sigmoid"  # hidden layers; the output layer is linear
    dim: int = 5  # the kernel vectors' dimension
    sparsity: float = 0.012  # sparsity/2 * sum ||K||^2 (summed-error units, as model.l2)
    kernel_init: float = 1e-3  # std of the kernel vectors at init (kernel ~1)
    residual: str = "none"  # none | bias | target (deepcf.models.residual)
    row_bias_reg: float = 5.0
    col_bias_reg: float = 5.0


def local_kernel(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(out, in) kernel max(0, 1 - ||v_o - u_i||^2) of u (in, dim) and v (out, dim)."""
    d2 = (v * v).sum(1, keepdim=True) + (u * u).sum(1) - 2.0 * v @ u.t()
    return torch.clamp(1.0 - d2, min=0.0)


class KernelNet(BiasResidual, RatingNet):
    Config = KernelConfig

    def __init__(self, config: KernelConfig):
        super().__init__(config)
        hidden = [int(h) for h in config.hidden]
        if not hidden or min(hidden) < 1:
            raise ConfigError(f"model.net.hidden={hidden} must be a non-empty list of positive "
                              f"sizes")
        if config.activation not in ACTIVATIONS:
            raise ConfigError(f"model.net.activation={config.activation!r} is not one of "
                              f"{', '.join(ACTIVATIONS)}")
        if int(config.dim) < 1:
            raise ConfigError(f"model.net.dim={config.dim} must be >= 1")
        for key in ("sparsity", "kernel_init"):
            if not float(getattr(config, key)) >= 0:
                raise ConfigError(f"model.net.{key}={getattr(config, key)} must be >= 0")
        config.hidden, config.dim = hidden, int(config.dim)
        config.sparsity, config.kernel_init = float(config.sparsity), float(config.kernel_init)
        self.setup_residual(config)
        self.act = ACTIVATIONS[config.activation]
        sizes = [self.width, *hidden, self.width]
        self.weight = nn.ParameterList(  # (out, in), as nn.Linear
            [nn.Parameter(torch.empty(o, i)) for i, o in zip(sizes[:-1], sizes[1:])])
        self.bias = nn.ParameterList([nn.Parameter(torch.empty(o)) for o in sizes[1:]])
        self.u = nn.ParameterList([nn.Parameter(torch.empty(i, config.dim)) for i in sizes[:-1]])
        self.v = nn.ParameterList([nn.Parameter(torch.empty(o, config.dim)) for o in sizes[1:]])
        self.init_weights("default")

    def kernels(self) -> list[torch.Tensor]:
        return [local_kernel(u, v) for u, v in zip(self.u, self.v)]

    def effective_weights(self) -> list[torch.Tensor]:
        """W_l * K_l, (out, in) per layer."""
        return [w * k for w, k in zip(self.weight, self.kernels())]

    def _middle(self, z: torch.Tensor, weights: list[torch.Tensor]) -> torch.Tensor:
        """From the first layer's pre-activation to the last hidden layer."""
        z = self.act(z)
        for w, b in zip(weights[1:-1], self.bias[1:-1]):
            z = self.act(F.linear(z, w, b))
        return z

    def predict_observed(self, inputs: Pattern, values: torch.Tensor, targets: Pattern,
                         sparse_grad: bool = False) -> torch.Tensor:
        """Training outputs at the targets: the first layer over the batch's ratings, the last
        at the target entries only; the same numbers as the dense forward (tests/test_kernel)."""
        if self.residual:
            values, b_row = self.residual_entries(inputs.idx, values, inputs.off)
        weights = self.effective_weights()
        z = sparse_encode(weights[0].t(), values, inputs, False) + self.bias[0]
        out = sampled_decode(self._middle(z, weights), weights[-1], self.bias[-1], targets,
                             False)
        if self.residual:
            out = out + self.base_at(b_row, entry_rows(targets.off, len(targets.idx)),
                                     targets.idx)
        return out

    def predict_at(self, idx, val, off, tgt_row, tgt_idx) -> torch.Tensor:
        weights = self.effective_weights()
        h, row_base = self._codes(idx, val, off, weights)
        out = torch.einsum("nk,nk->n", h[tgt_row], weights[-1][tgt_idx]) + self.bias[-1][tgt_idx]
        return out + row_base[tgt_row] + self.col_bias[tgt_idx] if self.residual else out

    # -- the output layer apart (serving's cached codes; see AutoEncoder.codes_at) -----------
    def codes_at(self, idx, val, off) -> tuple[torch.Tensor, torch.Tensor]:
        """(last hidden layer (rows, hidden[-1]), mu + b_row (rows,) or zeros) of flat rows."""
        return self._codes(idx, val, off, self.effective_weights())

    def _codes(self, idx, val, off, weights) -> tuple[torch.Tensor, torch.Tensor]:
        if self.residual:
            val, b_row = self.residual_entries(idx, val, off)
        z = F.embedding_bag(idx, weights[0].t(), off, mode="sum", per_sample_weights=val)
        h = self._middle(z + self.bias[0], weights)
        return h, (self.mu + b_row if self.residual else h.new_zeros(len(off)))

    def output_layer(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(W * K of the output layer (width, hidden[-1]), its bias, the residual's column
        biases or zeros); the output layer is linear."""
        col = self.col_bias if self.residual else self.bias[-1].new_zeros(self.width)
        return self.effective_weights()[-1], self.bias[-1], col

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Dense rows (batch, width) -> predicted ratings for every column (batch, width)."""
        x, base = self.dense_residual(x)  # base: mu + b_col + b_row, or None
        weights = self.effective_weights()
        h = self._middle(F.linear(x, weights[0], self.bias[0]), weights)
        out = F.linear(h, weights[-1], self.bias[-1])
        return out if base is None else out + base

    # -- the objective's terms -----------------------------------------------------------------
    def l2_weights(self) -> list[torch.Tensor]:
        return list(self.weight)

    def penalty(self) -> torch.Tensor | None:
        if self.config.sparsity == 0:
            return None
        return self.config.sparsity / 2.0 * sum(k.pow(2).sum() for k in self.kernels())

    @torch.no_grad()
    def init_weights(self, scheme: str = "default", bias: float | None = None,
                     nonlinearity: str = "relu") -> None:
        """The W_l and biases as nn.Linear under `scheme` (see AutoEncoder.init_weights); the
        kernel vectors always N(0, kernel_init^2); with the bias residual the output layer
        starts at zero (BiasResidual.start_at_baseline)."""
        check_init(scheme)
        for w, b in zip(self.weight, self.bias):
            init_matrix(w, scheme, nonlinearity)
            if scheme == "default" and bias is None:
                bound = 1.0 / math.sqrt(w.shape[1])
                nn.init.uniform_(b, -bound, bound)
            else:
                nn.init.constant_(b, 0.0 if bias is None else bias)
        for p in [*self.u, *self.v]:
            nn.init.normal_(p, 0.0, self.config.kernel_init)
        self.start_at_baseline(self.weight[-1], self.bias[-1])


# -- GLocal-K's global kernel -------------------------------------------------------------------
GLOBAL_STARTS = ("identity", "paper")


def global_conv(matrix: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """ReLU of the 'same' 2-d convolution (cross-correlation, zero padding, as TF's and torch's
    conv2d) of a dense (rows, width) matrix with an odd (k, k) kernel."""
    k = int(kernel.shape[-1])
    out = F.conv2d(matrix[None, None], kernel.reshape(1, 1, k, k), padding=k // 2)
    return F.relu(out[0, 0])


class GlobalKernel(nn.Module):
    """GLocal-K's global kernel (Han et al., CIKM 2021): the (size x size) convolution kernel

        K = base + (pool @ C) * dot_scale,   pool = the mean over columns of the pretrained
                                                     local model's predictions (rows,)

    with C a learned (rows, size^2) matrix, applied to the whole rating matrix (rows in id
    order) before the local net sees it: `global_conv(R, K)`. It mixes neighbouring rows and
    columns by id, so it needs the full matrix, never one row. `start`: "paper" draws C from
    N(0, 0.1^2) with base 0 (GLocal-K's code); "identity" starts C at 0 and base at the delta
    kernel, so the fine-tuning starts exactly at the pretrained model."""

    def __init__(self, rows: int, size: int = 3, dot_scale: float = 1.0,
                 start: str = "identity"):
        super().__init__()
        if int(size) < 1 or int(size) % 2 == 0:
            raise ConfigError(f"the global kernel's size={size} must be an odd number >= 1")
        if start not in GLOBAL_STARTS:
            raise ConfigError(f"the global kernel's start={start!r} is not one of "
                              f"{', '.join(GLOBAL_STARTS)}")
        self.size, self.dot_scale = int(size), float(dot_scale)
        self.register_buffer("pool", torch.zeros(int(rows)))
        base = torch.zeros(self.size * self.size)
        self.conv_kernel = nn.Parameter(torch.zeros(int(rows), self.size * self.size))
        if start == "identity":
            base[base.numel() // 2] = 1.0
        else:
            with torch.no_grad():
                nn.init.normal_(self.conv_kernel, 0.0, 0.1)
        self.register_buffer("base", base)

    @torch.no_grad()
    def set_pool(self, predictions: torch.Tensor) -> None:
        """pool from the pretrained model's dense (rows, width) predictions (clipped to the
        rating range by the caller, as GLocal-K does)."""
        if predictions.shape[0] != self.pool.numel():
            raise ConfigError(f"the global kernel has {self.pool.numel()} rows, the predictions "
                              f"{predictions.shape[0]}")
        self.pool.copy_(predictions.mean(1))

    def kernel(self) -> torch.Tensor:
        k = self.base + (self.pool @ self.conv_kernel) * self.dot_scale
        return k.view(self.size, self.size)

    def forward(self, matrix: torch.Tensor) -> torch.Tensor:
        return global_conv(matrix, self.kernel())
