"""The bias residual shared by deepcf's nets: the output is mu + b_col + b_row + the net's output.

mu and the column biases b_j are buffers fitted on the training rows by `fit_data` (the bias
baseline's regularised ALS, deepcf.stats.fit_biases); the row's own bias comes from the
row itself, b_row = sum_j (x_j - mu - b_j) / (row_bias_reg + n_row) over its observed (non-zero)
entries, so a new user (or movie) needs no refit. Two kinds (`residual`):

- `bias`: the net is fed the residuals x_j - mu - b_j - b_row at observed entries (0 elsewhere);
- `target`: the net is fed the raw ratings; only its output is a residual. Residual inputs hide
  which columns were rated behind values near 0; raw inputs keep that signal.

The output layer starts at zero (`start_at_baseline`, called by the net's `init_weights`), so an
untrained (untied) net predicts the bias baseline exactly.

A net mixes `BiasResidual` in before `RatingNet`, calls `setup_residual(config)` in `__init__`,
and reads `dense_residual(x)` in `forward` (and `residual_entries` / `base_at` on a sparse path),
so the ONNX graph holds the whole computation.
"""

from __future__ import annotations

import torch

from deepcf.errors import ConfigError
from deepcf.models.sparse_ops import entry_rows
from deepcf.stats import fit_biases

RESIDUALS = ("none", "bias", "target")


class BiasResidual:
    """Mixin of a RatingNet whose config has `residual`, `row_bias_reg`, `col_bias_reg`."""

    def setup_residual(self, config) -> None:
        if config.residual not in RESIDUALS:
            raise ConfigError(f"model.net.residual={config.residual!r} is not one of "
                              f"{', '.join(RESIDUALS)}")
        for key in ("row_bias_reg", "col_bias_reg"):
            if not float(getattr(config, key)) >= 0:
                raise ConfigError(f"model.net.{key}={getattr(config, key)} must be >= 0")
        config.row_bias_reg, config.col_bias_reg = (float(config.row_bias_reg),
                                                    float(config.col_bias_reg))
        self.residual = config.residual != "none"  # the output adds mu + b_col + b_row
        self.residual_input = config.residual == "bias"  # the input is the residual
        if self.residual:  # fitted by fit_data, saved with the weights
            self.register_buffer("mu", torch.zeros(()))
            self.register_buffer("col_bias", torch.zeros(self.width))

    needs_train_rows = property(lambda self: self.residual)

    @torch.no_grad()
    def fit_data(self, train_rows) -> None:
        """Fit mu and the column biases on the training rows (a rows x width CSR), by the same
        regularised ALS as the bias baseline; a no-op without the residual."""
        if not self.residual:
            return
        mu, _, b_col = fit_biases(train_rows, reg_u=self.config.row_bias_reg,
                                  reg_i=self.config.col_bias_reg)
        self.mu.fill_(mu)
        self.col_bias.copy_(torch.as_tensor(b_col, dtype=self.col_bias.dtype))

    @torch.no_grad()
    def start_at_baseline(self, weight: torch.Tensor | None, bias: torch.Tensor) -> None:
        """With the residual, zero the output layer (`weight` None: tied to the encoder, left
        as it is), so an untrained net predicts mu + b_col + b_row: training starts where the
        bias baseline ends and early stopping can only keep what improves on it."""
        if self.residual:
            if weight is not None:
                weight.zero_()
            bias.zero_()

    def residual_entries(self, idx: torch.Tensor, val: torch.Tensor, off: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """(the net's input values at the entries, bias of each row) of a flat batch: the
        residuals (residual=bias) or the ratings themselves (residual=target)."""
        rows = entry_rows(off, len(idx))
        r = val - self.mu - self.col_bias[idx]
        n = torch.zeros(len(off), dtype=val.dtype, device=val.device)
        n = n.index_add(0, rows, torch.ones_like(r))
        b_row = torch.zeros_like(n).index_add(0, rows, r) / (self.config.row_bias_reg + n)
        return (r - b_row[rows] if self.residual_input else val), b_row

    def base_at(self, b_row: torch.Tensor, row: torch.Tensor, idx: torch.Tensor):
        """mu + b_col + b_row at (row, idx) pairs."""
        return self.mu + self.col_bias[idx] + b_row[row]

    def dense_residual(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(the net's input, the base mu + b_col + b_row to add to its output, or None) of dense
        rows (batch, width) with 0 for unrated."""
        if not self.residual:
            return x, None
        m = (x != 0).to(x.dtype)
        r = (x - self.mu - self.col_bias) * m
        b_row = r.sum(1, keepdim=True) / (self.config.row_bias_reg + m.sum(1, keepdim=True))
        return (r - b_row * m if self.residual_input else x), self.mu + self.col_bias + b_row
