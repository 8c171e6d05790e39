"""Batches of sparse rows, as the DataModule serves them and the scorers read them.

A batch is a handful of rows of a CSR matrix, cut out in one vectorised scipy call and handed
over as flat tensors (never dense over the columns):

- `in_idx`, `in_val`, `in_off`: column ids, ratings and per-row offsets of the input rows (the
  layout of `F.embedding_bag`);
- with targets (validation/test), `tgt_row`, `tgt_idx`, `tgt_val`: the held-out ratings of those
  rows, and `tgt_cold`: True where the held-out rating's row or column has no training rating
  (deepcf.data.heldout).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from torch.utils.data import Dataset


def csr_rows(X: sp.csr_matrix, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """(column ids int64, values float32, row lengths) of `rows` of X, in row order."""
    sub = X[rows]
    return (
        torch.from_numpy(sub.indices.astype(np.int64)),
        torch.from_numpy(np.ascontiguousarray(sub.data, dtype=np.float32)),
        np.diff(sub.indptr),
    )


def _offsets(counts: np.ndarray) -> torch.Tensor:
    off = np.zeros(len(counts), dtype=np.int64)
    np.cumsum(counts[:-1], out=off[1:])
    return torch.from_numpy(off)


class RowBatches(Dataset):
    """Indexed by a list of positions in `rows`; returns one batch dict."""

    def __init__(self, inputs: sp.csr_matrix, rows: np.ndarray,
                 targets: sp.csr_matrix | None = None, cold_cols: np.ndarray | None = None):
        self.inputs, self.rows, self.targets = inputs, rows, targets
        self.cold_cols = cold_cols

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, positions) -> dict[str, torch.Tensor]:
        rows = self.rows[np.asarray(positions, dtype=np.int64)]
        in_idx, in_val, in_counts = csr_rows(self.inputs, rows)
        batch = {
            "rows": torch.from_numpy(rows),
            "in_idx": in_idx,
            "in_val": in_val,
            "in_off": _offsets(in_counts),
        }
        if self.targets is not None:
            t_idx, t_val, t_counts = csr_rows(self.targets, rows)
            t_row = np.repeat(np.arange(len(rows)), t_counts)
            cold = self.cold_cols[t_idx.numpy()] | (in_counts == 0)[t_row]
            batch.update(tgt_row=torch.from_numpy(t_row), tgt_idx=t_idx, tgt_val=t_val,
                         tgt_cold=torch.from_numpy(cold))
        return batch
