"""Input corruption for the denoising autoencoder, on sparse rows, in training only.

- `dropout`: each observed input rating is hidden with probability `p` (the kept ones are scaled
  by 1/(1-p), as inverted dropout does); the targets stay the full row, so the model learns to
  fill in what was hidden.
- `gaussian`: N(0, std^2) is added to each observed input rating.
Unobserved entries stay unobserved: noise never densifies a row.
"""

from __future__ import annotations

import torch

from deepcf.errors import ConfigError
from deepcf.models.sparse_ops import entry_rows

NOISE_KINDS = ("none", "dropout", "gaussian")


def check_noise(kind: str = "none", p: float = 0.0, std: float = 0.0) -> None:
    if kind not in NOISE_KINDS:
        raise ConfigError(f"noise.kind={kind!r} is not one of {', '.join(NOISE_KINDS)}")
    if kind == "dropout" and not 0.0 <= p < 1.0:
        raise ConfigError(f"noise.p={p} must be in [0, 1)")
    if kind == "gaussian" and std < 0:
        raise ConfigError(f"noise.std={std} must be >= 0")


def corrupt(
    idx: torch.Tensor, val: torch.Tensor, off: torch.Tensor, row: torch.Tensor | None = None,
    kind: str = "none", p: float = 0.0, std: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Corrupted (idx, val, off) of a batch; `row` is the batch row of each entry (derived from
    `off` when not given, and only dropout needs it). Without noise the tensors come back as
    they are, the same objects."""
    if kind == "gaussian" and std > 0:
        return idx, val + std * torch.randn_like(val), off
    if kind == "dropout" and p > 0:
        if row is None:
            row = entry_rows(off, len(idx))
        keep = torch.rand_like(val) >= p
        counts = torch.zeros_like(off).index_add_(0, row, keep.to(off.dtype))
        new_off = torch.cumsum(counts, 0) - counts
        return idx[keep], val[keep] / (1.0 - p), new_off
    return idx, val, off
