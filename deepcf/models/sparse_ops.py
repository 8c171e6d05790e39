"""Autograd pieces of the sparse training step, whose cost follows the ratings of a batch.

A training batch touches U movies (U << n_items at scale). The step works on those rows only:

- `gather_rows(weight, rows, sparse)`: `weight[rows]` for the batch's sorted unique movie ids.
  Its gradient is a coalesced sparse COO tensor with exactly those rows (`sparse=True`; what
  `deepcf.optim.LazyAdam` or plain SGD update lazily), or the same values scattered into a dense
  zero tensor (`sparse=False`, for optimizers that only take dense gradients). Tied weights are
  gathered once and used by encoder and decoder, so both gradients add in the compact rows.
- `sparse_encode`: rows x compact weight, `sum_j val_j * W[idx_j]` per row (embedding_bag
  forward); the weight gradient is the sparse product `V^T @ dz` (no nnz x h0 intermediate).
- `sampled_decode`: outputs only at the observed (row, col) pairs, `h[row] . W[col] + b[col]`,
  with `torch.sparse.sampled_addmm` forward and sparse-matrix products backward
  (`dh = G @ W`, `dW = G^T @ h`), G the CSR matrix of output gradients.

Targets must come in CSR order (rows ascending; what the data module hands over): `crow` are
the row offsets of the entries.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch.autograd import Function


def _csr(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, shape) -> torch.Tensor:
    with warnings.catch_warnings():  # "CSR support is in beta" (once per process)
        warnings.simplefilter("ignore")
        return torch.sparse_csr_tensor(crow, col, values, size=shape, check_invariants=False)


def _csr_t(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, shape) -> torch.Tensor:
    """The transpose of CSR (crow, col, values) of `shape`, built as CSR directly: one stable
    argsort of the column ids (`csr.t() @ x` would go through CSC and a conversion)."""
    n_rows, n_cols = shape
    row = torch.repeat_interleave(torch.arange(n_rows, device=col.device), torch.diff(crow),
                                  output_size=len(col))
    perm = torch.argsort(col, stable=True)
    tcrow = torch.zeros(n_cols + 1, dtype=crow.dtype, device=crow.device)
    torch.cumsum(torch.bincount(col, minlength=n_cols), 0, out=tcrow[1:])
    return _csr(tcrow, row[perm], values[perm], (n_cols, n_rows))


class _GatherRows(Function):
    @staticmethod
    def forward(ctx, weight, rows, sparse):
        ctx.save_for_backward(rows)
        ctx.shape, ctx.sparse = weight.shape, sparse
        return weight.index_select(0, rows)

    @staticmethod
    def backward(ctx, grad):
        (rows,) = ctx.saved_tensors
        if ctx.sparse:  # rows are sorted and unique: the COO tensor is coalesced as built
            g = torch.sparse_coo_tensor(rows.unsqueeze(0), grad.contiguous(), ctx.shape,
                                        is_coalesced=True, check_invariants=False)
        else:
            g = grad.new_zeros(ctx.shape).index_copy_(0, rows, grad)
        return g, None, None


def gather_rows(weight: torch.Tensor, rows: torch.Tensor, sparse: bool = True) -> torch.Tensor:
    """`weight[rows]` (rows sorted, unique) with a row-sparse or dense gradient."""
    return _GatherRows.apply(weight, rows, sparse)


class _SparseEncode(Function):
    @staticmethod
    def forward(ctx, weight, idx, val, off, crow):
        ctx.save_for_backward(idx, val, crow)
        ctx.shape = (len(off), weight.shape[0])
        return F.embedding_bag(idx, weight, off, mode="sum", per_sample_weights=val)

    @staticmethod
    def backward(ctx, dz):
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        idx, val, crow = ctx.saved_tensors
        return _csr_t(crow, idx, val, ctx.shape) @ dz.contiguous(), None, None, None, None


def sparse_encode(weight: torch.Tensor, idx: torch.Tensor, val: torch.Tensor,
                  off: torch.Tensor) -> torch.Tensor:
    """(batch, h0) = sum over each row's entries of val * weight[idx]; empty rows give 0."""
    crow = torch.cat([off, off.new_tensor([len(idx)])])
    return _SparseEncode.apply(weight, idx, val, off, crow)


class _SampledDecode(Function):
    @staticmethod
    def forward(ctx, h, weight, bias, crow, col):
        ctx.save_for_backward(h, weight, crow, col)
        mask = _csr(crow, col, bias.index_select(0, col), (h.shape[0], weight.shape[0]))
        return torch.sparse.sampled_addmm(mask, h, weight.t()).values()

    @staticmethod
    def backward(ctx, g):
        h, weight, crow, col = ctx.saved_tensors
        G = _csr(crow, col, g.contiguous(), (h.shape[0], weight.shape[0]))
        dh = G @ weight if ctx.needs_input_grad[0] else None
        dw = _csr_t(crow, col, g, G.shape) @ h if ctx.needs_input_grad[1] else None
        db = g.new_zeros(weight.shape[0]).index_add_(0, col, g) \
            if ctx.needs_input_grad[2] else None
        return dh, dw, db, None, None


def sampled_decode(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                   crow: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
    """`h[r] . weight[c] + bias[c]` for each entry (r, c) of the CSR pattern (crow, col)."""
    return _SampledDecode.apply(h, weight, bias, crow, col)
