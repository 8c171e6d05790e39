"""Native CPU kernels (numba) for the parts of the sparse step that PyTorch has no single op for.

- `row_adam_`: Adam on the touched rows of a parameter, in place. PyTorch's way (gather p, m, v
  rows into buffers, run the fused Adam kernel, scatter them back) moves each byte three times;
  this reads and writes each touched row once, the memory traffic of the update itself.
- `transpose_pattern`: the movie-major (CSC) order of a batch's CSR pattern by counting sort,
  O(nnz + columns); `torch.argsort` on the ~20k entries of a batch costs ~1 ms.
- `unique_inverse`: the sorted unique movie ids of a batch and each entry's position among them,
  O(nnz + width) through a mark array instead of a sort.

Each takes and returns torch CPU tensors (shared memory, no copies); the kernels are compiled on
first use and cached on disk next to this file (numba's `cache=True`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numba
import numpy as np

# the fork-safe thread pool: the study's at-scale rows run in forked children after the parent
# has run parallel kernels, and GNU OpenMP's pool ends a forked child (SIGTERM) when used there
numba.config.THREADING_LAYER = "workqueue"

if TYPE_CHECKING:  # torch loads where a kernel runs: data loading and serving need only numpy
    import torch

_JIT = dict(nogil=True, cache=True)


@numba.njit(parallel=True, **_JIT)
def _row_adam(p, g, m, v, rows, step_size, b1, omb1, b2, omb2, eps, wd,
              bc2_sqrt):  # pragma: no cover
    for i in numba.prange(rows.shape[0]):
        r = rows[i]
        for k in range(p.shape[1]):
            gk = g[i, k]
            if wd != 0:
                gk = gk + wd * p[r, k]
            mk = b1 * m[r, k] + omb1 * gk
            vk = b2 * v[r, k] + omb2 * gk * gk
            m[r, k] = mk
            v[r, k] = vk
            p[r, k] -= step_size * mk / (np.sqrt(vk) / bc2_sqrt + eps)


def _np2d(t: torch.Tensor) -> np.ndarray:
    return t.detach().reshape(t.shape[0], -1).numpy()


def row_adam_(p: torch.Tensor, grad_rows: torch.Tensor, exp_avg: torch.Tensor,
              exp_avg_sq: torch.Tensor, rows: torch.Tensor, step: int, lr: float, b1: float,
              b2: float, eps: float, weight_decay: float) -> None:
    """torch.optim.Adam's update (step `step`, 1-based) of rows `rows` (unique) of p, in place.

    `grad_rows[i]` is the gradient of row `rows[i]`; p, exp_avg, exp_avg_sq contiguous CPU
    tensors of one float dtype. Arithmetic in that dtype, as Adam's CPU kernel does."""
    import torch

    ft = np.dtype(str(p.dtype).removeprefix("torch.")).type
    # as many threads as torch's intra-op pool, so that the two never oversubscribe the cores.
    # (prange also matters on one thread: the parallel lowering vectorizes the row loop, the
    # serial one measured 4x slower.)
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
    _row_adam(_np2d(p), _np2d(grad_rows.contiguous()), _np2d(exp_avg), _np2d(exp_avg_sq),
              rows.numpy(), ft(lr / (1.0 - b1**step)), ft(b1), ft(1.0 - b1), ft(b2),
              ft(1.0 - b2), ft(eps), ft(weight_decay), ft(np.sqrt(1.0 - b2**step)))


@numba.njit(**_JIT)
def _transpose(crow, col, n_cols):  # pragma: no cover
    nnz = col.shape[0]
    counts = np.zeros(n_cols + 1, dtype=np.int64)
    for j in range(nnz):
        counts[col[j] + 1] += 1
    for c in range(n_cols):
        counts[c + 1] += counts[c]
    toff = counts[:n_cols].copy()
    trow = np.empty(nnz, dtype=np.int64)
    perm = np.empty(nnz, dtype=np.int64)
    for r in range(crow.shape[0] - 1):
        for j in range(crow[r], crow[r + 1]):
            dst = counts[col[j]]
            counts[col[j]] = dst + 1
            trow[dst] = r
            perm[dst] = j
    return toff, trow, perm


def transpose_pattern(crow: torch.Tensor, col: torch.Tensor, n_cols: int):
    """For the CSR pattern (crow, col) with columns in [0, n_cols): (toff, trow, perm), the
    pattern column by column: column c's entries are perm[toff[c]:toff[c+1]] (in row order,
    `toff` has n_cols entries: the `offsets` of `F.embedding_bag`), in rows trow[...]."""
    import torch

    toff, trow, perm = _transpose(crow.numpy(), col.numpy(), int(n_cols))
    return torch.from_numpy(toff), torch.from_numpy(trow), torch.from_numpy(perm)


@numba.njit(**_JIT)
def _unique_inverse(idx, n, pos):  # pragma: no cover
    pos_of = np.full(n, -1, dtype=pos.dtype)
    for j in range(idx.shape[0]):
        if idx[j] < 0 or idx[j] >= n:  # numba does not check bounds: a stray id would corrupt
            raise IndexError("id out of range")
        pos_of[idx[j]] = 0
    k = 0
    for c in range(n):
        if pos_of[c] == 0:
            pos_of[c] = k
            k += 1
    ids = np.empty(k, dtype=np.int64)
    for j in range(idx.shape[0]):
        pos[j] = pos_of[idx[j]]
        ids[pos[j]] = idx[j]
    return ids


def unique_inverse(ids: np.ndarray, n: int, dtype=np.int64) -> tuple[np.ndarray, np.ndarray]:
    """`np.unique(ids, return_inverse=True)` for ids in [0, n), through a mark array in
    O(len(ids) + n): (sorted unique ids as int64, each entry's position among them as `dtype`)."""
    pos = np.empty(len(ids), dtype=dtype)
    try:
        return _unique_inverse(ids, int(n), pos), pos
    except IndexError:
        raise IndexError(f"ids must lie in [0, {n}); got ids from {int(ids.min())} to "
                         f"{int(ids.max())}") from None


def unique_inverse_torch(idx: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`torch.unique(idx, sorted=True, return_inverse=True)` for ids in [0, n)."""
    import torch

    ids, pos = unique_inverse(idx.numpy(), n)
    return torch.from_numpy(ids), torch.from_numpy(pos)


@numba.njit(parallel=True, **_JIT)
def _als_side(indptr, indices, data, other_f, other_b, mu, reg, reg_bias, F, b
              ):  # pragma: no cover
    n, k = len(indptr) - 1, other_f.shape[1]
    for u in numba.prange(n):
        lo, hi = indptr[u], indptr[u + 1]
        if lo == hi:
            F[u, :] = 0.0
            b[u] = 0.0
            continue
        A = np.zeros((k + 1, k + 1))
        y = np.zeros(k + 1)
        for j in range(lo, hi):
            it = indices[j]
            r = data[j] - mu - other_b[it]
            for a in range(k):
                qa = other_f[it, a]
                y[a] += qa * r
                for c in range(a + 1):
                    A[a, c] += qa * other_f[it, c]
                A[k, a] += qa
            A[k, k] += 1.0
            y[k] += r
        for a in range(k):
            A[a, a] += reg
        A[k, k] += reg_bias
        # Cholesky of the lower triangle in place, then the two triangular solves
        for a in range(k + 1):
            s = A[a, a]
            for c in range(a):
                s -= A[a, c] * A[a, c]
            d = np.sqrt(s)
            A[a, a] = d
            for r_ in range(a + 1, k + 1):
                t = A[r_, a]
                for c in range(a):
                    t -= A[r_, c] * A[a, c]
                A[r_, a] = t / d
        for a in range(k + 1):
            t = y[a]
            for c in range(a):
                t -= A[a, c] * y[c]
            y[a] = t / A[a, a]
        for a in range(k, -1, -1):
            t = y[a]
            for c in range(a + 1, k + 1):
                t -= A[c, a] * y[c]
            y[a] = t / A[a, a]
        F[u, :] = y[:k]
        b[u] = y[k]


def als_side(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, other_f: np.ndarray,
             other_b: np.ndarray, mu: float, reg: float, reg_bias: float
             ) -> tuple[np.ndarray, np.ndarray]:
    """One side of biased-MF ALS: every CSR row's (factors, bias) by ridge regression of
    r - mu - b_other on [q, 1] (penalty `reg` on the factors, `reg_bias` on the bias), the
    normal equations built and Cholesky-solved per row, rows in parallel: O(nnz k^2) without a
    Python loop. Rows without entries get zeros."""
    n, k = len(indptr) - 1, other_f.shape[1]
    F, b = np.empty((n, k)), np.empty(n)
    _als_side(indptr, indices, np.asarray(data, np.float64), np.ascontiguousarray(other_f,
              np.float64), np.asarray(other_b, np.float64), float(mu), float(reg),
              float(reg_bias), F, b)
    return F, b


@numba.njit(**_JIT)
def _pool_top_k(seg, users, items, logit, k, mark, out, got):  # pragma: no cover
    pos = 0
    for j in range(len(users)):
        lo, hi = seg[j], seg[j + 1]
        stamp = users[j] + 1
        order = np.argsort(-logit[lo:hi])
        c = 0
        for t in range(hi - lo):
            if c == k[j]:
                break
            it = items[lo + order[t]]
            if mark[it] != stamp:
                mark[it] = stamp
                out[pos + c] = it
                c += 1
        got[j] = c
        pos += k[j]


def pool_top_k(seg: np.ndarray, users: np.ndarray, items: np.ndarray, logit: np.ndarray,
               k: np.ndarray, mark: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per user j (candidates items[seg[j]:seg[j+1]]), the k[j] distinct items of the largest
    logits, best first (an item drawn twice counts with its largest logit). Returns (out, got):
    user j's items in out[sum(k[:j]) : sum(k[:j]) + got[j]], got[j] < k[j] where the pool had
    fewer distinct items. `mark` (one int64 per item, zeros before the first call) is scratch
    stamped with user id + 1, so `users` must be distinct across the calls sharing it."""
    out = np.full(int(k.sum()), -1, np.int64)
    got = np.zeros(len(users), np.int64)
    _pool_top_k(seg.astype(np.int64), users.astype(np.int64), items.astype(np.int64),
                np.asarray(logit, np.float32), k.astype(np.int64), mark, out, got)
    return out, got

# -- column-major products of a batch's pattern (the item-row autoencoder's user-indexed weights)
# A batch of movie rows is (rows x columns) with a column per user; the user-indexed weights W
# (columns x k) are the big operand (hundreds of MB), the rows' codes (rows x k) the small one.
# Walking the pattern column by column reads each row of W once, contiguously, and touches the
# small operand at random: the cache-friendly order for W. The small operand (tens of MB at the
# Movies Dataset's scale) does not fit a core's cache either, so the walk goes over blocks of
# `bounds` rows (`row_blocks`: BLOCK_BYTES of the small operand each): all columns' entries in
# rows [bounds[j], bounds[j+1]), then the next block, each column's entries being sorted by row
# (`cur[i]`: column i's first entry not walked yet). A W row is then read once per block its
# column has entries in; the block's rows stay in cache while every column visits them
# (measured on the Movies Dataset's pattern: 1.4x on the output dots, 2x on their backward).
# Writes into the small operand from several threads go to one private slab per thread
# (`slabs`, summed by the caller), so no two threads ever write the same memory. `cols[i]` is
# the i-th column's id in W, its entries toff[i]:toff[i+1] (rows `trow`, values `tval`, CSR
# positions `perm`).
BLOCK_BYTES = 16 << 20


@numba.njit(parallel=True, fastmath=True, **_JIT)
def _col_scatter(cols, toff, trow, tval, w, slabs, bounds, cur):  # pragma: no cover
    n, n_thr, k = cols.shape[0], slabs.shape[0], w.shape[1]
    for j in range(len(bounds) - 1):
        r1 = bounds[j + 1]
        for t in numba.prange(n_thr):
            z = slabs[t]
            for i in range(n * t // n_thr, n * (t + 1) // n_thr):
                e, end = cur[i], toff[i + 1]
                if e < end and trow[e] < r1:
                    wi = w[cols[i]]
                    while e < end and trow[e] < r1:
                        zr, v = z[trow[e]], tval[e]
                        for q in range(k):
                            zr[q] += v * wi[q]
                        e += 1
                    cur[i] = e


@numba.njit(parallel=True, fastmath=True, **_JIT)
def _col_gather(cols, toff, trow, tval, x, out, bounds, cur):  # pragma: no cover
    # out[cols[i]] += sum over column i's entries of tval[e] * x[trow[e]]; other rows untouched
    k = x.shape[1]
    for j in range(len(bounds) - 1):
        r1 = bounds[j + 1]
        for i in numba.prange(cols.shape[0]):
            e, end = cur[i], toff[i + 1]
            if e < end and trow[e] < r1:
                acc = out[cols[i]]
                while e < end and trow[e] < r1:
                    xr, v = x[trow[e]], tval[e]
                    for q in range(k):
                        acc[q] += v * xr[q]
                    e += 1
                cur[i] = e


@numba.njit(parallel=True, fastmath=True, **_JIT)
def _col_dots(cols, toff, trow, perm, h, w, b, out, bounds, cur):  # pragma: no cover
    # out[perm[e]] = h[trow[e]] . w[cols[i]] + b[cols[i]] for column i's entries e
    k = h.shape[1]
    for j in range(len(bounds) - 1):
        r1 = bounds[j + 1]
        for i in numba.prange(cols.shape[0]):
            e, end = cur[i], toff[i + 1]
            if e < end and trow[e] < r1:
                wi, bi = w[cols[i]], b[cols[i]]
                while e < end and trow[e] < r1:
                    hr = h[trow[e]]
                    s = bi - bi  # 0 in the weights' type
                    for q in range(k):
                        s += hr[q] * wi[q]
                    out[perm[e]] = s + bi
                    e += 1
                cur[i] = e


@numba.njit(parallel=True, fastmath=True, **_JIT)
def _col_dots_backward(cols, toff, trow, perm, g, h, w, dw, db, slabs, bounds, cur
                       ):  # pragma: no cover
    # dw[cols[i]] += sum_e g[perm e] h[trow e]; db[cols[i]] += sum_e g[perm e];
    # slab[t][trow e] += g[perm e] * w[cols[i]] (dh, one slab per thread)
    n, n_thr, k = cols.shape[0], slabs.shape[0], h.shape[1]
    for j in range(len(bounds) - 1):
        r1 = bounds[j + 1]
        for t in numba.prange(n_thr):
            dh = slabs[t]
            for i in range(n * t // n_thr, n * (t + 1) // n_thr):
                e, end = cur[i], toff[i + 1]
                if e < end and trow[e] < r1:
                    c = cols[i]
                    wi, acc = w[c], dw[c]
                    gs = db[c] - db[c]  # 0 in the weights' type
                    while e < end and trow[e] < r1:
                        ge, r = g[perm[e]], trow[e]
                        hr, dr = h[r], dh[r]
                        for q in range(k):
                            acc[q] += ge * hr[q]
                            dr[q] += ge * wi[q]
                        gs += ge
                        e += 1
                    db[c] += gs
                    cur[i] = e


@numba.njit(parallel=True, fastmath=True, **_JIT)
def _rprop(p, g, step, prev, eta_minus, eta_plus, lo, hi, wd):  # pragma: no cover
    for j in numba.prange(p.shape[0]):
        gj, sj, pj = g[j], step[j], prev[j]
        if wd != 0:  # the L2 term's gradient, wd * p, added here: no pass of its own
            gj += wd * p[j]
        if (gj > 0 and pj > 0) or (gj < 0 and pj < 0):
            sj = sj * eta_plus
        elif (gj > 0 and pj < 0) or (gj < 0 and pj > 0):
            sj = sj * eta_minus
            gj = 0.0
        sj = min(max(sj, lo), hi)
        step[j] = sj
        if gj > 0:
            p[j] -= sj
            prev[j] = 1
        elif gj < 0:
            p[j] += sj
            prev[j] = -1
        else:
            prev[j] = 0


@numba.njit(parallel=True, fastmath=True, **_JIT)
def _sum_squares(x):  # pragma: no cover
    s = 0.0
    for i in numba.prange(x.shape[0]):
        v = np.float64(x[i])
        s += v * v
    return s


def _threads() -> int:
    import torch

    n = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(n)
    return n


def row_blocks(n_rows: int, k: int, itemsize: int, toff) -> tuple[np.ndarray, np.ndarray]:
    """(bounds, cur) of a blocked column walk (module comment above): row blocks of
    BLOCK_BYTES of a (n_rows, k) operand, and each column's cursor at its first entry."""
    per = max(1, BLOCK_BYTES // max(1, k * itemsize))
    bounds = np.append(np.arange(0, n_rows, per, dtype=np.int64), np.int64(n_rows))
    return bounds, toff.numpy()[:-1].copy()


def column_scatter(cols, toff, trow, tval, w: torch.Tensor, n_rows: int) -> torch.Tensor:
    """(n_rows, k) = sum over entries e of tval[e] * w[column of e] into row trow[e]: M @ W of
    the pattern, walked column by column (module comment above)."""
    import torch

    n_thr = _threads()
    slabs = torch.zeros((n_thr, n_rows, w.shape[1]), dtype=w.dtype)
    _col_scatter(cols.numpy(), toff.numpy(), trow.numpy(), tval.numpy(), _np2d(w),
                 slabs.numpy(), *row_blocks(n_rows, w.shape[1], w.element_size(), toff))
    return slabs[0] if n_thr == 1 else slabs.sum(0)


def column_gather(cols, toff, trow, tval, x: torch.Tensor, n_cols: int) -> torch.Tensor:
    """(n_cols, k) = M^T @ x, dense; the rows of columns without entries are 0."""
    import torch

    _threads()
    out = torch.zeros((n_cols, x.shape[1]), dtype=x.dtype)
    x = x.contiguous()
    _col_gather(cols.numpy(), toff.numpy(), trow.numpy(), tval.numpy(), _np2d(x), out.numpy(),
                *row_blocks(x.shape[0], x.shape[1], x.element_size(), toff))
    return out


def column_dots(cols, toff, trow, perm, h: torch.Tensor, w: torch.Tensor, b: torch.Tensor
                ) -> torch.Tensor:
    """h[row] . w[col] + b[col] for every entry of the pattern, in CSR order."""
    import torch

    _threads()
    out = torch.empty(len(perm), dtype=h.dtype)
    h = h.contiguous()
    _col_dots(cols.numpy(), toff.numpy(), trow.numpy(), perm.numpy(), _np2d(h), _np2d(w),
              b.detach().numpy(), out.numpy(), *row_blocks(h.shape[0], h.shape[1],
                                                            h.element_size(), toff))
    return out


def column_dots_backward(cols, toff, trow, perm, g: torch.Tensor, h: torch.Tensor,
                         w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dh, dw, db) of `column_dots` for the output gradient g (CSR order); dw, db dense over
    w's rows (0 where no entry)."""
    import torch

    n_thr = _threads()
    slabs = torch.zeros((n_thr, h.shape[0], h.shape[1]), dtype=h.dtype)
    dw = torch.zeros_like(w)
    db = torch.zeros(w.shape[0], dtype=w.dtype)
    h = h.contiguous()
    _col_dots_backward(cols.numpy(), toff.numpy(), trow.numpy(), perm.numpy(),
                       g.contiguous().numpy(), _np2d(h), _np2d(w), _np2d(dw), db.numpy(),
                       slabs.numpy(), *row_blocks(h.shape[0], h.shape[1], h.element_size(),
                                                  toff))
    return (slabs[0] if n_thr == 1 else slabs.sum(0)), dw, db


def rprop_(p: torch.Tensor, grad: torch.Tensor, step_size: torch.Tensor, prev: torch.Tensor,
           eta_minus: float, eta_plus: float, step_min: float, step_max: float,
           weight_decay: float = 0.0) -> None:
    """torch.optim.Rprop's update of p in place, each element read and written once, with the
    previous gradient kept as its sign (int8: all the update reads of it); the gradient is
    grad + weight_decay * p (an L2 term's, added in the same pass)."""
    ft = np.dtype(str(p.dtype).removeprefix("torch.")).type
    _threads()
    _rprop(p.detach().view(-1).numpy(), grad.reshape(-1).numpy(), step_size.view(-1).numpy(),
           prev.view(-1).numpy(), ft(eta_minus), ft(eta_plus), ft(step_min), ft(step_max),
           ft(weight_decay))


def sum_squares(t: torch.Tensor) -> float:
    """The sum of t's squares accumulated in float64: one pass, no temporary, on the CPU (a
    float64 copy elsewhere). float32 reductions of 135M squares (I-AutoRec's user weights at
    the Movies Dataset's scale) can be off by percents; this is not."""
    import torch

    x = t.detach()
    if x.device.type != "cpu" or not x.is_contiguous() or x.dtype not in (torch.float32,
                                                                            torch.float64):
        return float(x.double().square().sum())
    _threads()
    return float(_sum_squares(x.reshape(-1).numpy()))
