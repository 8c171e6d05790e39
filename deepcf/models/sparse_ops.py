"""Autograd pieces of the sparse training step, whose cost follows the ratings of a batch.

A training batch touches U movies (U << width at scale). The step reads the movie-indexed
weights at the batch's entries only and computes their gradients on those U rows only:

- `Pattern`: a batch's entries in CSR order (row offsets, global movie ids), with, computed once
  on first use, the batch's sorted unique movies, each entry's position among them, and the
  entries in movie-major order (`deepcf.kernels`: a mark array and a counting sort, no sort).
- `sparse_encode(W, val, pattern)`: per row `sum_j val_j * W[idx_j]` (`F.embedding_bag`); the
  weight gradient `V^T @ dz` on the U rows.
- `sampled_decode(h, W, b, pattern)`: outputs only at the observed (row, movie) pairs,
  `h[row] . W[movie] + b[movie]` (`torch.sparse.sampled_addmm`); backward `dh = G @ W`,
  `dW = G^T @ h`, `db` on the U rows, G the sparse matrix of output gradients.

The weights go in whole: nothing is gathered or copied forward. A movie-indexed gradient is a
coalesced sparse COO tensor over the batch's U movies (`sparse_grad=True`: what
`deepcf.training.optim.LazyAdam` and plain SGD update lazily) or those rows scattered into a
dense zero tensor (`sparse_grad=False`, for optimizers that take dense gradients only). A tied
weight, used by both ops, gets the sum of both gradients (added on the batch's rows when both
ops see the same pattern, `tied=True`).

Both sparse products run as `F.embedding_bag(mode="sum", per_sample_weights=...)`: over the
rows for `M @ x`, over the movies for `M^T @ x`. torch's CSR product with the ~8k short rows of
`M^T` runs ~100x slower.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch.autograd import Function

from deepcf.kernels import (
    column_dots,
    column_dots_backward,
    column_gather,
    column_scatter,
    transpose_pattern,
    unique_inverse_torch,
)


def _csr(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, shape) -> torch.Tensor:
    with warnings.catch_warnings():  # "CSR support is in beta" (once per process)
        warnings.simplefilter("ignore")
        return torch.sparse_csr_tensor(crow, col, values, size=shape, check_invariants=False)


def entry_rows(off: torch.Tensor, nnz: int) -> torch.Tensor:
    """Batch row of each entry of a flat (idx, val, off) batch, without a host sync."""
    counts = torch.diff(off, append=off.new_tensor([nnz]))
    return torch.repeat_interleave(torch.arange(len(off), device=off.device), counts,
                                   output_size=nnz)


class Pattern:
    """A batch's entries in CSR order: row offsets `crow` (n_rows + 1) and movie ids `idx` in
    [0, width). What the backward passes need (`unique_movies`, `by_movie`) is computed once, on
    first use, and shared: without input noise, encoder and decoder get the same object."""

    def __init__(self, crow: torch.Tensor, idx: torch.Tensor, width: int):
        self.crow, self.idx, self.width = crow, idx, int(width)
        self.off = crow[:-1]  # row starts: F.embedding_bag's offsets
        self.n_rows = len(self.off)
        self._unique = self._by_movie = None
        self.decoder_rows: torch.Tensor | None = None  # see sparse_encode(tied=True)
        self.by_columns = False  # walk the pattern column by column (`columns_ok`)

    @classmethod
    def from_offsets(cls, off: torch.Tensor, idx: torch.Tensor, width: int) -> Pattern:
        return cls(torch.cat([off, off.new_tensor([len(idx)])]), idx, width)

    def unique_movies(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(movies, pos): the sorted unique movie ids and each entry's position among them."""
        if self._unique is None:
            if self.idx.device.type == "cpu":
                self._unique = unique_inverse_torch(self.idx, self.width)
            else:
                self._unique = torch.unique(self.idx, sorted=True, return_inverse=True)
        return self._unique

    def by_movie(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(toff, trow, perm): the i-th movie's entries are perm[toff[i]:toff[i+1]], in row
        order, in rows trow[toff[i]:toff[i+1]]; toff has one entry per movie of `unique_movies`."""
        if self._by_movie is None:
            movies, pos = self.unique_movies()
            if pos.device.type == "cpu":
                self._by_movie = transpose_pattern(self.crow, pos, len(movies))
            else:  # no native kernel off the CPU: a stable sort of the positions
                row = entry_rows(self.off, len(pos))
                perm = torch.argsort(pos, stable=True)
                counts = torch.bincount(pos, minlength=len(movies))
                self._by_movie = (torch.cumsum(counts, 0) - counts, row[perm], perm)
        return self._by_movie

    def column_walk(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(cols, toff, trow, perm) for the native column-major kernels (deepcf.kernels):
        column i is global column cols[i], its entries toff[i]:toff[i+1] (toff with an end)."""
        movies, _ = self.unique_movies()
        toff, trow, perm = self.by_movie()
        end = toff.new_tensor([len(perm)])
        return movies, torch.cat([toff, end]), trow, perm

    def columns_ok(self, *tensors: torch.Tensor) -> bool:
        """Whether the column-major kernels run here: asked for (`by_columns`), on the CPU, and
        float32/float64 contiguous weights."""
        return self.by_columns and all(t.device.type == "cpu" and t.is_contiguous()
                                       and t.dtype in (torch.float32, torch.float64)
                                       for t in tensors)

    def matmul(self, values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """M @ x, (n_rows, x.shape[1]), for the (n_rows, width) matrix M of this pattern
        with `values`; an empty row gives 0."""
        return F.embedding_bag(self.idx, x, self.off, mode="sum", per_sample_weights=values)

    def t_matmul(self, values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(M^T @ x)[movies], (U, x.shape[1]): the rows of M^T @ x that can be non-zero."""
        toff, trow, perm = self.by_movie()
        return F.embedding_bag(trow, x, toff, mode="sum", per_sample_weights=values[perm])

    def movie_sums(self, values: torch.Tensor) -> torch.Tensor:
        """(M^T @ 1)[movies]: each movie's sum of `values`, (U,)."""
        movies, pos = self.unique_movies()
        return values.new_zeros(len(movies)).index_add_(0, pos, values)

    def grad(self, rows: torch.Tensor, shape: torch.Size, sparse: bool) -> torch.Tensor:
        """The gradient of a (width, ...) weight whose `movies` rows are `rows`: coalesced
        row-sparse COO, or dense with zeros elsewhere."""
        movies, _ = self.unique_movies()
        if sparse:  # movies are sorted and unique: coalesced as built
            return torch.sparse_coo_tensor(movies.unsqueeze(0), rows, shape, is_coalesced=True,
                                           check_invariants=False)
        return rows.new_zeros(shape).index_copy_(0, movies, rows)


class _SparseEncode(Function):
    @staticmethod
    def forward(ctx, weight, val, pattern, sparse_grad, tied):
        ctx.save_for_backward(val)
        ctx.pattern, ctx.sparse_grad, ctx.shape, ctx.tied = pattern, sparse_grad, weight.shape, tied
        ctx.columns = not sparse_grad and not tied and pattern.columns_ok(weight, val)
        if ctx.columns:
            cols, toff, trow, perm = pattern.column_walk()
            return column_scatter(cols, toff, trow, val[perm], weight.detach(), pattern.n_rows)
        return pattern.matmul(val, weight)

    @staticmethod
    def backward(ctx, dz):
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        (val,) = ctx.saved_tensors
        pat = ctx.pattern
        if ctx.columns:  # dense over the weight's rows, written once each
            cols, toff, trow, perm = pat.column_walk()
            return (column_gather(cols, toff, trow, val[perm], dz, ctx.shape[0]), None, None,
                    None, None)
        rows = pat.t_matmul(val, dz.contiguous())
        if ctx.tied and pat.decoder_rows is not None:  # the decoder's share, same rows
            rows += pat.decoder_rows
            pat.decoder_rows = None
        return pat.grad(rows, ctx.shape, ctx.sparse_grad), None, None, None, None


def sparse_encode(weight: torch.Tensor, val: torch.Tensor, pattern: Pattern,
                  sparse_grad: bool = True, tied: bool = False) -> torch.Tensor:
    """(n_rows, h0) = sum over each row's entries of val * weight[idx]; empty rows give 0.

    `tied`: `sampled_decode` uses the same weight on the same pattern (also with `tied=True`);
    its share of the weight gradient is then added here, on the batch's rows, instead of by
    autograd as a second sparse tensor (a sparse + sparse add measured ~4 ms per step)."""
    return _SparseEncode.apply(weight, val, pattern, sparse_grad, tied)


class _SampledDecode(Function):
    @staticmethod
    def forward(ctx, h, weight, bias, pattern, sparse_grad, tied):
        ctx.save_for_backward(h, weight)
        ctx.pattern, ctx.sparse_grad, ctx.tied = pattern, sparse_grad, tied
        ctx.columns = not sparse_grad and not tied and pattern.columns_ok(h, weight, bias)
        if ctx.columns:
            cols, toff, trow, perm = pattern.column_walk()
            return column_dots(cols, toff, trow, perm, h.detach(), weight.detach(), bias)
        idx = pattern.idx
        mask = _csr(pattern.crow, idx, bias.index_select(0, idx), (h.shape[0], weight.shape[0]))
        return torch.sparse.sampled_addmm(mask, h, weight.t()).values()

    @staticmethod
    def backward(ctx, g):
        h, weight = ctx.saved_tensors
        pat, g, sparse = ctx.pattern, g.contiguous(), ctx.sparse_grad
        need = ctx.needs_input_grad
        if ctx.columns:  # one walk gives all three, dw and db dense
            dh, dw, db = column_dots_backward(*pat.column_walk(), g, h, weight.detach())
            return (dh if need[0] else None, dw if need[1] else None, db if need[2] else None,
                    None, None, None)
        dh = pat.matmul(g, weight) if need[0] else None
        dw = pat.t_matmul(g, h) if need[1] else None
        if dw is not None and ctx.tied:  # handed to the encoder's backward, which runs next
            pat.decoder_rows, dw = dw, None
        elif dw is not None:
            dw = pat.grad(dw, weight.shape, sparse)
        db = pat.grad(pat.movie_sums(g), (weight.shape[0],), sparse) if need[2] else None
        return dh, dw, db, None, None, None


def sampled_decode(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                   pattern: Pattern, sparse_grad: bool = True, tied: bool = False
                   ) -> torch.Tensor:
    """`h[r] . weight[c] + bias[c]` for each entry (r, c) of the pattern, in its order.
    `tied`: see `sparse_encode`."""
    return _SampledDecode.apply(h, weight, bias, pattern, sparse_grad, tied)
