"""Where ratings come from: one class per source, each chosen by `_target_` in `conf/data/*`.

A source knows its rating range, names what its parsed matrix depends on (`cache_key`, so a
changed file or parameter is a new cache entry, never a stale hit) and reads its ratings
(`read`). Caching, compaction and the split are the same for every source (deepcf.data.matrix,
deepcf.data.split). Adding a source is one subclass here and one yaml in `conf/data/`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

from deepcf.data.ml100k import WHEEL, load_ml100k
from deepcf.data.readers import RatingsTable, read_ratings, read_titles
from deepcf.data.synthetic import generate_ratings, scale_params
from deepcf.errors import ConfigError
from deepcf.files import check_first_line


@dataclass
class SourceRatings:
    """What a source reads: the ratings, titles by raw movie id, and an optional test file."""

    table: RatingsTable
    titles: dict[int, str] | None = None
    test_table: RatingsTable | None = None


class RatingsSource(ABC):
    """A source of (user, movie, rating) triples with a declared rating range."""

    #: the cache file's name prefix
    name: str = "ratings"
    rating_min: float = 1.0
    rating_max: float = 5.0

    @abstractmethod
    def cache_key(self) -> dict:
        """Everything the parsed matrix depends on (besides deepcf's own cache version)."""

    @abstractmethod
    def read(self, cache_dir: Path) -> SourceRatings:
        """Read (or generate) the ratings; `cache_dir` is where downloads may be kept."""

    @property
    def rating_range(self) -> tuple[float, float]:
        return float(self.rating_min), float(self.rating_max)


class MovieLens100K(RatingsSource):
    """The real MovieLens-100K (943 users x 1,682 movies, 1-5 stars) from the RecBole wheel."""

    name = "ml100k"

    def cache_key(self) -> dict:
        return {"source": "ml100k", "wheel": WHEEL}

    def read(self, cache_dir: Path) -> SourceRatings:
        table, titles, _ = load_ml100k(cache_dir)
        return SourceRatings(table, titles)


def _file_stamp(path: str | None) -> dict | None:
    if path is None:
        return None
    # a device, a FIFO or a file with no newline in its first MiB: one line
    p = check_first_line(Path(path).expanduser(), "file").resolve()
    st = p.stat()
    return {"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


@dataclass
class RatingsFile(RatingsSource):
    """A user's ratings file (CSV with header, MovieLens `::` or tab formats, RecBole `.inter`),
    with optional titles (movies.csv or u.item) and an optional held-out test file."""

    path: str | None = None
    titles_path: str | None = None
    test_path: str | None = None
    rating_min: float = 0.5
    rating_max: float = 5.0
    titles_encoding: str | None = None  # None: latin-1 for a file named u.item, else utf-8

    def __post_init__(self) -> None:
        if not self.path:
            raise ConfigError("data.source.path is required for data=ratings_csv (the ratings "
                              "file)")

    @property
    def name(self) -> str:  # type: ignore[override]
        return Path(self.path).stem

    def cache_key(self) -> dict:
        return {"source": "file", "path": _file_stamp(self.path),
                "titles": _file_stamp(self.titles_path), "test": _file_stamp(self.test_path),
                "rating_min": self.rating_min, "rating_max": self.rating_max,
                **({"titles_encoding": self.titles_encoding} if self.titles_encoding else {})}

    def read(self, cache_dir: Path) -> SourceRatings:
        lo, hi = self.rating_range
        table = read_ratings(self.path, lo, hi)
        test = read_ratings(self.test_path, lo, hi) if self.test_path else None
        titles = (read_titles(self.titles_path, encoding=self.titles_encoding)
                  if self.titles_path else None)
        return SourceRatings(table, titles, test)


@dataclass
class Synthetic(RatingsSource):
    """Seeded synthetic ratings with realistic skew (deepcf.data.synthetic). `scale` names a
    shape (tiny, ml100k, movies_small, movies_full); n_users / n_items / n_ratings override it,
    and `mode` the scale's generator (`taste` for the movies_* scales, `popularity` for the
    others and the benchmarks' data).
    The rating range follows the scale: 0.5..5 in half stars where it has them, else 1..5."""

    scale: str | None = "tiny"
    n_users: int | None = None
    n_items: int | None = None
    n_ratings: int | None = None
    seed: int = 0
    mode: str | None = None
    params: dict = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.params = scale_params(self.scale, n_users=self.n_users, n_items=self.n_items,
                                   n_ratings=self.n_ratings, mode=self.mode)
        self.rating_min = 0.5 if self.params["half_stars"] else 1.0
        self.rating_max = 5.0

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"synthetic-{self.scale or 'custom'}"

    def cache_key(self) -> dict:
        return {"source": "synthetic", **self.params, "seed": self.seed,
                "rating_min": self.rating_min, "rating_max": self.rating_max}

    def read(self, cache_dir: Path) -> SourceRatings:
        return SourceRatings(generate_ratings(**self.params, seed=self.seed))
