"""One autoencoder for ratings rows; tied weights, dropout, activation, sizes are options.

A `RatingNet` (deepcf.models.contract). Shapes follow NVIDIA DeepRecommender:
n -> hidden[0] -> ... -> hidden[-1] -> ... -> hidden[0] -> n, the decoder mirroring the encoder.
The movie-indexed weights are stored movie-major, `(width, hidden[0])`, so that

- the first layer is a sparse product, `F.embedding_bag(mode="sum", per_sample_weights=ratings)`,
  whose cost follows the number of ratings in the batch, not the number of movies;
- in training the last layer is evaluated only where a rating is observed (`decode_at`);
- with `tied=True` the last layer's weight *is* the first layer's parameter (decoder = encoder
  transposed, DeepRecommender's `is_constrained`), each layer keeping its own bias;
- `predict_observed` is the training step's computation at the ratings of a batch: the encoder is
  a sparse product, the decoder is evaluated at the observed ratings only, and the gradients of
  the movie-indexed weights live on the movies the batch touches (row-sparse or dense, see
  `deepcf.models.sparse_ops`). Same numbers as the dense masked computation (tests/test_sparse.py).

`forward(x)` is the plain dense computation over all movies, for ONNX export and full ranking.

Bias residual (`residual="bias"` or `"target"`, deepcf.models.residual): the output is
mu + b_j + b_row + the autoencoder's output, fed the residuals (bias) or the raw ratings (target).
Everything lives in `forward`, hence in the ONNX graph; the sparse path computes the same numbers
from the batch's entries (tests/test_residual).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from deepcf.errors import ConfigError
from deepcf.models.contract import RatingNet, check_init, init_matrix
from deepcf.models.residual import BiasResidual
from deepcf.models.sparse_ops import Pattern, entry_rows, sampled_decode, sparse_encode

DECODE_CHUNK = 1 << 16  # (row, column) pairs per gathered product in `decode_at`
# entries from which a gradient-free first layer walks the batch column by column on the CPU
# (deepcf.kernels: each row of the weight read once, as in training): held-out scoring of a
# whole batch of movie rows, whose embedding bag would read a user row of the weight per rating
COLUMN_WALK_MIN = 1 << 16

ACTIVATIONS = {
    "selu": F.selu,
    "elu": F.elu,
    "relu": F.relu,
    "lrelu": F.leaky_relu,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "silu": F.silu,
    "none": lambda x: x,
}


@dataclass
class AutoEncoderConfig:
    width: int
    hidden: list[int] = field(default_factory=lambda: [512, 256, 128])
    activation: str = "selu"
    tied: bool = False
    dropout: float = 0.0  # on the code layer
    linear_last: bool = True  # no activation on the output layer
    # none | bias: predict deviations from mu + b_row + b_col, fed the residuals | target: the
    # same output, fed the raw ratings (deepcf.models.residual)
    residual: str = "none"
    row_bias_reg: float = 5.0  # the row bias' shrinkage (residual=bias/target)
    col_bias_reg: float = 5.0  # the column biases' shrinkage when fitted (residual=bias/target)


class AutoEncoder(BiasResidual, RatingNet):
    Config = AutoEncoderConfig
    supports_sparse_grad = True

    def __init__(self, config: AutoEncoderConfig):
        super().__init__(config)
        hidden = [int(h) for h in config.hidden]
        activation, dropout = config.activation, float(config.dropout)
        tied, linear_last, width = bool(config.tied), bool(config.linear_last), self.width
        if not hidden or min(hidden) < 1:
            raise ConfigError(f"model.net.hidden={hidden} must be a non-empty list of positive "
                              f"sizes")
        if activation not in ACTIVATIONS:
            raise ConfigError(f"model.net.activation={activation!r} is not one of "
                              f"{', '.join(ACTIVATIONS)}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"model.net.dropout={dropout} must be in [0, 1)")
        config.hidden, config.dropout = hidden, dropout
        self.setup_residual(config)
        self.hidden, self.tied = hidden, tied
        self.activation, self.linear_last = activation, linear_last
        self.act = ACTIVATIONS[activation]
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

        # Encoder: item_in (width, h0) is nn.Linear(width, h0).weight transposed.
        self.item_in = nn.Parameter(torch.empty(width, hidden[0]))
        self.enc_w = nn.ParameterList(
            [nn.Parameter(torch.empty(o, i)) for i, o in zip(hidden[:-1], hidden[1:])]
        )
        self.enc_b = nn.ParameterList([nn.Parameter(torch.empty(h)) for h in hidden])
        # Decoder: mirrored; tied layers reuse the encoder's weights, transposed.
        if tied:
            self.dec_w = None
            self.item_out = None
        else:
            self.dec_w = nn.ParameterList(
                [nn.Parameter(torch.empty(i, o)) for i, o in zip(hidden[:-1], hidden[1:])][::-1]
            )
            self.item_out = nn.Parameter(torch.empty(width, hidden[0]))
        self.dec_b = nn.ParameterList(
            [nn.Parameter(torch.empty(h)) for h in hidden[:-1][::-1]]
        )
        self.out_b = nn.Parameter(torch.empty(width))
        self.init_weights("default")

    # -- weights as nn.Linear would hold them: (out_features, in_features) ------------------
    def decoder_weights(self) -> list[torch.Tensor]:
        """Weights of the middle decoder layers, (out, in), tied or not."""
        if self.tied:
            return [w.t() for w in reversed(self.enc_w)]
        return list(self.dec_w)

    @property
    def item_decoder(self) -> torch.Tensor:
        """(width, h0): the last layer's weight; the encoder's own parameter when tied."""
        return self.item_in if self.tied else self.item_out

    # -- sparse path (training and held-out scoring) ----------------------------------------
    def encode_sparse(self, idx: torch.Tensor, val: torch.Tensor, off: torch.Tensor):
        """Code of rows given as (column ids, ratings, offsets); empty rows are allowed."""
        if len(idx) >= COLUMN_WALK_MIN and not torch.is_grad_enabled():
            pattern = Pattern.from_offsets(off, idx, self.width)
            pattern.by_columns = True
            z = sparse_encode(self.item_in, val, pattern, sparse_grad=False)
        else:
            z = F.embedding_bag(idx, self.item_in, off, mode="sum", per_sample_weights=val)
        z = self.act(z + self.enc_b[0])
        for w, b in zip(self.enc_w, self.enc_b[1:]):
            z = self.act(F.linear(z, w, b))
        return z

    def decode_hidden(self, z: torch.Tensor) -> torch.Tensor:
        """From the code to the last hidden layer (width hidden[0])."""
        z = self.drop(z)
        for w, b in zip(self.decoder_weights(), self.dec_b):
            z = self.act(F.linear(z, w, b))
        return z

    def decode_at(self, h: torch.Tensor, row: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Outputs only at (row, idx) pairs: sum_k h[row, k] * W[idx, k] + b[idx].

        Rows in order (a batch's held-out entries): one sampled product, column by column on
        the CPU; else in chunks, so that the gathered (pairs, k) operands stay small (at the
        Movies Dataset's scale all of them would be gigabytes)."""
        w, b = self.item_decoder, self.out_b
        if len(row) > DECODE_CHUNK and bool((row[1:] >= row[:-1]).all()):
            counts = torch.bincount(row, minlength=len(h))
            crow = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
            pattern = Pattern(crow, idx, self.width)
            pattern.by_columns = True
            out = sampled_decode(h, w, b, pattern, sparse_grad=False)
        else:
            out = torch.cat([torch.einsum("nk,nk->n", h[r], w[i]) + b[i] for r, i in
                             zip(row.split(DECODE_CHUNK), idx.split(DECODE_CHUNK))]
                            ) if len(row) else b[idx]
        return out if self.linear_last else self.act(out)

    def predict_at(self, idx, val, off, tgt_row, tgt_idx) -> torch.Tensor:
        h, row_base = self.codes_at(idx, val, off)
        out = self.decode_at(h, tgt_row, tgt_idx)
        return out + row_base[tgt_row] + self.col_bias[tgt_idx] if self.residual else out

    # -- the output layer apart (serving's cached codes, deepcf.serving.codes) ----------------
    def codes_at(self, idx, val, off) -> tuple[torch.Tensor, torch.Tensor]:
        """(h, row_base) of rows given as (column ids, ratings, offsets): the last hidden
        layer h (rows, hidden[0]) and the row's part of the residual's base, mu + b_row (zeros
        without the residual). With (W, b, col_base) = `output_layer()` the output at (row r,
        column j) is h_r . W_j + b_j + row_base_r + col_base_j (`linear_last`)."""
        if self.residual:
            val, b_row = self.residual_entries(idx, val, off)
        h = self.decode_hidden(self.encode_sparse(idx, val, off))
        return h, (self.mu + b_row if self.residual else h.new_zeros(len(off)))

    def output_layer(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """(W (width, hidden[0]), b (width,), col_base (width,)) of the linear output layer
        (col_base: the residual's column biases, zeros without it); None when the output
        layer has an activation (its outputs are then not linear in h)."""
        if not self.linear_last:
            return None
        col = self.col_bias if self.residual else self.out_b.new_zeros(self.width)
        return self.item_decoder, self.out_b, col

    def predict_observed(self, inputs: Pattern, values: torch.Tensor, targets: Pattern,
                         sparse_grad: bool = True) -> torch.Tensor:
        """Training outputs at the targets, computed at the batch's ratings only.

        `inputs` (values `values`) and `targets` are the batch's entries (the same object when
        the input is not corrupted). Returns the outputs at the targets, in their order.
        Gradients of `item_in`, `item_out`, `out_b` live on the movies of the batch: row-sparse
        (coalesced COO) when `sparse_grad`, else dense.
        """
        tied = self.tied and inputs is targets  # one weight, one pattern: grads add compactly
        if self.residual:
            values, b_row = self.residual_entries(inputs.idx, values, inputs.off)
        z = self.act(sparse_encode(self.item_in, values, inputs, sparse_grad, tied)
                     + self.enc_b[0])
        for w, b in zip(self.enc_w, self.enc_b[1:]):
            z = self.act(F.linear(z, w, b))
        out = sampled_decode(self.decode_hidden(z), self.item_decoder, self.out_b, targets,
                             sparse_grad, tied)
        out = out if self.linear_last else self.act(out)
        if self.residual:
            out = out + self.base_at(b_row, entry_rows(targets.off, len(targets.idx)),
                                     targets.idx)
        return out

    def train_logits(self, inputs: Pattern, values: torch.Tensor, step: int = 0):
        """Dense outputs of the batch (the multinomial loss' logits) from the sparse encoder;
        the last layer is dense over every column by nature."""
        if self.residual:  # the row bias needs the dense row: the textbook path
            return super().train_logits(inputs, values, step)
        h = self.decode_hidden(self.encode_sparse(inputs.idx, values, inputs.off))
        out = F.linear(h, self.item_decoder, self.out_b)
        return (out if self.linear_last else self.act(out)), None

    # -- dense path (export, ranking all movies) --------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Dense rows (batch, width) -> predicted ratings for every column (batch, width)."""
        x, base = self.dense_residual(x)  # base: mu + b_col + b_row, or None
        z = self.act(x @ self.item_in + self.enc_b[0])
        for w, b in zip(self.enc_w, self.enc_b[1:]):
            z = self.act(F.linear(z, w, b))
        out = F.linear(self.decode_hidden(z), self.item_decoder, self.out_b)
        out = out if self.linear_last else self.act(out)
        return out if base is None else out + base

    @torch.no_grad()
    def init_weights(self, scheme: str = "default", bias: float | None = None,
                     nonlinearity: str = "relu") -> None:
        """Initialise every layer as nn.Linear(in, out) would be under `scheme`.

        default: PyTorch's nn.Linear init (kaiming-uniform a=sqrt(5), bias U(+-1/sqrt(fan_in)));
        xavier_uniform / xavier_normal: Glorot, biases set to `bias` (0.01 in the original
        study); kaiming: He-normal for `nonlinearity` (use "linear" for LeCun-normal, the SELU
        choice). Tied decoder weights are the encoder's and are initialised once. With the
        bias residual the output layer starts at zero (BiasResidual.start_at_baseline).
        """
        check_init(scheme)
        # (weight as (out, in) or None when tied, bias, fan_in)
        layers = [(self.item_in.t(), self.enc_b[0], self.width)]
        layers += [(w, b, w.shape[1]) for w, b in zip(self.enc_w, self.enc_b[1:])]
        dec = self.decoder_weights()
        layers += [(None if self.tied else w, b, w.shape[1]) for w, b in zip(dec, self.dec_b)]
        layers += [(None if self.tied else self.item_out, self.out_b, self.hidden[0])]
        for w, b, fan_in in layers:
            if w is not None:
                init_matrix(w, scheme, nonlinearity)
            if scheme == "default" and bias is None:
                bound = 1.0 / math.sqrt(fan_in)
                nn.init.uniform_(b, -bound, bound)
            else:
                nn.init.constant_(b, 0.0 if bias is None else bias)
        self.start_at_baseline(None if self.tied else self.item_out, self.out_b)
