"""Reading what a run dir holds, safely: the bottom layer that serving and training share.

- `safe_load`: a checkpoint through `torch.load(weights_only=True)` (a pickle that would run code
  is refused), every failure one line naming the file;
- `inside`: whether a path lies in a folder (symbolic links resolved), for the paths a
  checkpoint's state names.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

from deepcf.errors import CheckpointError


def safe_load(path: str | Path) -> dict:
    """torch.load(weights_only=True) of a checkpoint, every failure as one line naming it."""
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(f"{path}: refused: it holds Python objects other than tensors and "
                              f"plain data (loading it could run code); use a checkpoint that "
                              f"deepcf wrote") from None
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        why = (str(e).splitlines() or [type(e).__name__])[0].split(". ")[0]  # torch's 1st
        raise CheckpointError(f"{path}: not a readable checkpoint, truncated or corrupt ({why}); "
                              f"resume from another file in its checkpoints dir") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{path}: not a deepcf checkpoint (no state_dict)")
    return ckpt


def inside(path: str | Path, folder: str | Path) -> bool:
    p, f = Path(os.path.realpath(path)), Path(os.path.realpath(folder))
    return p.parent == f or f in p.parents
