"""Read and validate ratings and titles files.

Formats, sniffed from the first line:
- CSV with a header (`userId,movieId,rating,timestamp`: "The Movies Dataset" `ratings.csv` /
  `ratings_small.csv`, MovieLens `ratings.csv`); column-name aliases are accepted.
- MovieLens `ratings.dat` (`user::movie::rating::timestamp`, no header).
- MovieLens `u.data` (tab separated, no header).
- RecBole atomic files (`.inter`, tab separated, `name:type` header).
- Any of these separated by `;`, `|` or runs of spaces instead; gzip (`ratings.csv.gz`) and
  single-file zip archives are read transparently (recognised by their first bytes).

Every problem is reported as one line that names the file and, where there is one, the line.
Parsing is columnar (pandas' C reader); there is no Python loop per rating.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from deepcf.errors import DataError

USER_ALIASES = ("userid", "user_id", "user", "uid")
ITEM_ALIASES = ("movieid", "movie_id", "itemid", "item_id", "item", "movie", "iid")
RATING_ALIASES = ("rating", "ratings", "score")
TIME_ALIASES = ("timestamp", "time", "ts")
TITLE_ALIASES = ("title", "movie_title", "name")


@dataclass
class RatingsTable:
    """Raw ratings as parallel columns: raw ids as in the file."""

    user: np.ndarray  # int64 raw user ids
    item: np.ndarray  # int64 raw movie ids
    rating: np.ndarray  # float32
    timestamp: np.ndarray | None  # int64, or None when the file has none
    source: str = ""

    def __len__(self) -> int:
        return len(self.rating)


def _norm(name: str) -> str:
    return name.strip().split(":")[0].strip().lower()


def _sniff(first_line: str, numeric_fields: int = 3) -> tuple[str, bool]:
    """Return (separator, has_header) from the first line of a file.

    A line whose first `numeric_fields` fields are all numbers is data, not a header.
    """
    if "::" in first_line:
        sep = "::"
    elif "\t" in first_line:
        sep = "\t"
    elif "," in first_line:
        sep = ","
    elif ";" in first_line:
        sep = ";"
    elif "|" in first_line:
        sep = "|"
    else:
        sep = r"\s+"
    fields = first_line.split(sep) if sep != r"\s+" else first_line.split()
    has_header = not all(_is_number(f) for f in fields[:numeric_fields])
    return sep, has_header


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def _find(columns: list[str], aliases: tuple[str, ...]) -> int | None:
    normed = [_norm(c) for c in columns]
    for a in aliases:
        if a in normed:
            return normed.index(a)
    return None


def compression(path: Path) -> str | None:
    """"gzip" or "zip" by the file's first bytes (whatever its name), else None."""
    with _open_raw(path) as f:
        magic = f.read(4)
    if magic[:2] == b"\x1f\x8b":
        return "gzip"
    if magic == b"PK\x03\x04":
        return "zip"
    return None


def _open_raw(path: Path):
    """open(path, "rb"), every reason it cannot be opened as one line naming the file."""
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected a ratings file") from None
    except PermissionError:
        raise DataError(f"{path}: permission denied: cannot read it (check the file's "
                        f"permissions, e.g. chmod u+r, or copy it somewhere readable)") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read it ({e.strerror or e})") from None


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, decompressed when it is gzip or a one-file zip."""
    kind = compression(path)
    try:
        if kind == "gzip":
            import gzip

            with gzip.open(path, "rb") as f:
                return f.read()
        if kind == "zip":
            import zipfile

            with zipfile.ZipFile(path) as z:
                names = [n for n in z.namelist() if not n.endswith("/")]
                if len(names) != 1:
                    raise DataError(f"{path}: a zip archive must hold exactly one ratings file, "
                                    f"it holds {len(names)}; unzip it and give the file")
                return z.read(names[0])
        with _open_raw(path) as f:
            return f.read()
    except DataError:
        raise
    except (OSError, EOFError, ValueError) as e:  # gzip.BadGzipFile, zipfile.BadZipFile
        what = f"{kind} file" if kind else "file"
        raise DataError(f"{path}: a truncated or corrupt {what} ({e}); download or compress "
                        f"it again") from None


def _read_table(
    path: Path, encoding: str = "utf-8", data: bytes | None = None, numeric_fields: int = 3
) -> tuple[pd.DataFrame, bool]:
    """Read a delimited file (or its bytes, named `path`); return (frame, has_header)."""
    if data is None and compression(path):
        data = _read_bytes(path)
    if data is None:
        with _open_raw(path) as f:
            head = f.readline()
    else:
        head = data[: data.find(b"\n") + 1 or len(data)]
    first = head.decode(encoding, errors="replace").strip("\r\n")
    if not first.strip():
        raise DataError(f"{path}: file is empty")
    sep, has_header = _sniff(first, numeric_fields)
    source: io.BytesIO | Path = path if data is None else io.BytesIO(data)
    if sep == "::":  # pandas' C reader takes one-character separators only
        raw = _read_bytes(path) if data is None else data
        source = io.BytesIO(raw.replace(b"::", b"\t"))
        sep = "\t"
    try:
        frame = pd.read_csv(
            source,
            sep=sep,
            header=0 if has_header else None,
            engine="c",  # the C reader takes r"\s+" too
            encoding=encoding,
            dtype=str if sep == "|" else None,
            skip_blank_lines=True,
            quotechar='"',
            low_memory=False,
        )
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: file is empty") from None
    except pd.errors.ParserError as e:
        msg = str(e).replace("Error tokenizing data. C error: ", "").strip()
        raise DataError(f"{path}: malformed: {msg}") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not {encoding} text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read it ({e.strerror or e})") from None
    return frame, has_header


def _numeric(frame: pd.DataFrame, col, name: str, path: Path, has_header: bool) -> pd.Series:
    """Column `col` as numbers; the first bad or missing value is reported with its line."""
    s = frame[col]
    offset = 2 if has_header else 1  # file line of frame row 0
    if not pd.api.types.is_numeric_dtype(s):
        num = pd.to_numeric(s, errors="coerce")
        bad = num.isna() & s.notna()
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(f"{path}:{i + offset}: {name} {s.iloc[i]!r} is not a number")
        s = num
    missing = s.isna().to_numpy()
    if missing.any():
        i = int(np.flatnonzero(missing)[0])
        raise DataError(f"{path}:{i + offset}: {name} is missing or NaN")
    return s


def _ids(s: pd.Series, name: str, path: Path, has_header: bool) -> np.ndarray:
    offset = 2 if has_header else 1
    v = s.to_numpy()
    if v.dtype.kind == "f":
        frac = v != np.floor(v)
        if frac.any():
            i = int(np.flatnonzero(frac)[0])
            raise DataError(f"{path}:{i + offset}: {name} {v[i]:g} is not an integer id")
    return v.astype(np.int64)


def read_ratings(
    path: str | Path,
    rating_min: float | None = None,
    rating_max: float | None = None,
    data: bytes | None = None,
) -> RatingsTable:
    """Read a ratings file into a RatingsTable, validating every value.

    Ratings outside [rating_min, rating_max] (when given) are an error, reported with their line.
    """
    path = Path(path).expanduser()
    if data is None:
        table = _read_typed_csv(path, rating_min, rating_max)
        if table is not None:
            return table
    frame, has_header = _read_table(path, data=data)
    offset = 2 if has_header else 1
    if len(frame) == 0:
        raise DataError(f"{path}: no ratings (header only)")
    cols = [str(c) for c in frame.columns]
    if has_header:
        idx = {
            "user": _find(cols, USER_ALIASES),
            "movie": _find(cols, ITEM_ALIASES),
            "rating": _find(cols, RATING_ALIASES),
            "timestamp": _find(cols, TIME_ALIASES),
        }
        missing = [k for k in ("user", "movie", "rating") if idx[k] is None]
        if missing:
            raise DataError(
                f"{path}: missing column(s) {', '.join(missing)}; header has {', '.join(cols)} "
                f"(expected e.g. userId,movieId,rating,timestamp)"
            )
        picked = {k: frame.columns[v] for k, v in idx.items() if v is not None}
    else:
        if frame.shape[1] < 3:
            raise DataError(
                f"{path}: expected at least 3 columns (user, movie, rating[, timestamp]), "
                f"found {frame.shape[1]}"
            )
        picked = {"user": frame.columns[0], "movie": frame.columns[1], "rating": frame.columns[2]}
        if frame.shape[1] >= 4:
            picked["timestamp"] = frame.columns[3]

    user = _ids(_numeric(frame, picked["user"], "user id", path, has_header), "user id", path,
                has_header)
    item = _ids(_numeric(frame, picked["movie"], "movie id", path, has_header), "movie id", path,
                has_header)
    rating = _numeric(frame, picked["rating"], "rating", path, has_header).to_numpy(np.float64)
    bad = ~np.isfinite(rating)
    if rating_min is not None:
        bad |= rating < rating_min
    if rating_max is not None:
        bad |= rating > rating_max
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{path}:{i + offset}: rating {rating[i]:g} is outside the declared range "
            f"[{rating_min:g}, {rating_max:g}] (set data.source.rating_min / "
            f"data.source.rating_max)"
        )
    ts = None
    if "timestamp" in picked:
        ts = _numeric(frame, picked["timestamp"], "timestamp", path, has_header)
        ts = ts.to_numpy().astype(np.int64)
    return RatingsTable(user, item, rating.astype(np.float32), ts, source=str(path))


def _read_typed_csv(path: Path, rating_min: float | None,
                    rating_max: float | None) -> RatingsTable | None:
    """The fast path for a clean comma-separated file with a header (e.g. the 26M-row
    `ratings.csv`): only the needed columns, parsed by pandas' C reader straight into typed
    arrays. Returns None for anything else (other formats, a bad or missing value, a rating out
    of range), which the general path then reads and reports with its line number."""
    if not path.is_file() or compression(path):
        return None
    with _open_raw(path) as f:
        first = f.readline().decode("utf-8", errors="replace").strip("\r\n")
    if "," not in first or "::" in first or "\t" in first:
        return None
    sep, has_header = _sniff(first)
    if not has_header:
        return None
    cols = [c.strip().strip('"') for c in first.split(",")]
    picked = {k: _find(cols, a) for k, a in (("user", USER_ALIASES), ("movie", ITEM_ALIASES),
                                             ("rating", RATING_ALIASES),
                                             ("timestamp", TIME_ALIASES))}
    if any(picked[k] is None for k in ("user", "movie", "rating")):
        return None
    types = {"user": np.int64, "movie": np.int64, "rating": np.float32, "timestamp": np.int64}
    use = {k: v for k, v in picked.items() if v is not None}
    try:
        # every column is read (no usecols) so that a line with extra fields stays an error
        frame = pd.read_csv(path, sep=",", header=0,
                            dtype={cols[v]: types[k] for k, v in use.items()}, engine="c",
                            na_filter=True, skip_blank_lines=True, low_memory=False)
    except (ValueError, OverflowError, pd.errors.ParserError, UnicodeDecodeError):
        return None
    if len(frame) == 0:
        return None
    col = {k: frame[cols[v]].to_numpy() for k, v in use.items()}
    rating = col["rating"]
    ok = np.isfinite(rating)
    if rating_min is not None:
        ok &= rating >= np.float32(rating_min)
    if rating_max is not None:
        ok &= rating <= np.float32(rating_max)
    if not ok.all():
        return None
    return RatingsTable(col["user"], col["movie"], rating, col.get("timestamp"),
                        source=str(path))


def read_titles(path: str | Path, data: bytes | None = None) -> dict[int, str]:
    """Movie titles from `movies.csv` (movieId,title,...), RecBole `.item` or MovieLens `u.item`.

    Returns {raw movie id: title}.
    """
    path = Path(path).expanduser()
    encoding = "latin-1" if path.name == "u.item" else "utf-8"
    frame, has_header = _read_table(path, encoding=encoding, data=data, numeric_fields=1)
    cols = [str(c) for c in frame.columns]
    if has_header:
        i_id, i_title = _find(cols, ITEM_ALIASES + ("id",)), _find(cols, TITLE_ALIASES)
        if i_id is None or i_title is None:
            raise DataError(
                f"{path}: a titles file needs a movie id and a title column; header has "
                f"{', '.join(cols)}"
            )
    else:  # u.item: id|title|release date|...
        i_id, i_title = 0, 1
    ids = pd.to_numeric(frame.iloc[:, i_id], errors="coerce")
    keep = ids.notna().to_numpy()
    titles = frame.iloc[:, i_title].astype(str).to_numpy()[keep]
    return dict(zip(ids.to_numpy()[keep].astype(np.int64).tolist(), titles.tolist()))


def dedupe_latest(table: RatingsTable) -> tuple[RatingsTable, int]:
    """Keep one rating per (user, movie): the latest by timestamp (the last in the file on ties).

    Returns the table and how many duplicates were dropped.
    """
    n = len(table)
    key_order = (
        np.lexsort((np.arange(n), table.timestamp, table.item, table.user))
        if table.timestamp is not None
        else np.lexsort((np.arange(n), table.item, table.user))
    )
    u, i = table.user[key_order], table.item[key_order]
    last = np.ones(n, dtype=bool)
    last[:-1] = (u[1:] != u[:-1]) | (i[1:] != i[:-1])
    keep = np.sort(key_order[last])
    dropped = n - len(keep)
    if dropped == 0:
        return table, 0
    ts = table.timestamp[keep] if table.timestamp is not None else None
    return RatingsTable(table.user[keep], table.item[keep], table.rating[keep], ts,
                        table.source), dropped
