"""Which way a model reads the ratings: the one place that knows what `orientation` means.

- "user": a row is a user, its entries are movies (U-AutoRec, the original study);
- "item": a row is a movie, its entries are users (I-AutoRec).

Matrices are stored users x movies everywhere; `orient` turns them into the model's rows, and
`input_width` is the width of a model input row (movies, or users).
"""

from __future__ import annotations

import scipy.sparse as sp

from deepcf.errors import ConfigError

ORIENTATIONS = ("user", "item")


def check_orientation(orientation: str) -> str:
    if orientation not in ORIENTATIONS:
        raise ConfigError(f"data.orientation={orientation!r} must be 'user' or 'item'")
    return orientation


def rows_are_items(orientation: str) -> bool:
    return check_orientation(orientation) == "item"


def input_width(n_users: int, n_movies: int, orientation: str) -> int:
    """Entries of a model row: movies for rows=users, users for rows=movies."""
    return n_users if rows_are_items(orientation) else n_movies


def entries_name(orientation: str) -> str:
    """What a model row's entries are, in words."""
    return "users" if rows_are_items(orientation) else "movies"


def orient(mats, orientation: str) -> tuple[sp.csr_matrix, ...]:
    """Users x movies matrices as the model's rows: unchanged for "user", transposed (CSR,
    sorted indices) for "item"."""
    mats = tuple(mats)
    if rows_are_items(orientation):
        mats = tuple(m.T.tocsr() for m in mats)
        for m in mats:
            m.sort_indices()
    return mats
