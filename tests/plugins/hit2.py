"""A new ranking metric in one file: 1 when the top K holds at least two relevant movies.

Named in a spec as `tests.plugins.hit2:hit2@K` (model.metrics, deepcf.evaluate --metrics).
"""

from __future__ import annotations

import numpy as np

from deepcf.serving.metrics import Metric


def _at_least_two(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    return (hits[:, :k].sum(1) >= 2).astype(np.float64)


hit2 = Metric("hit2", per_user=_at_least_two, doc="1 when the top K holds two hits or more")
