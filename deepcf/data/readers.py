"""Read and validate ratings and titles files.

Formats, sniffed from the first line:
- CSV with a header (`userId,movieId,rating,timestamp`: "The Movies Dataset" `ratings.csv` /
  `ratings_small.csv`, MovieLens `ratings.csv`); column-name aliases are accepted.
- MovieLens `ratings.dat` (`user::movie::rating::timestamp`, no header).
- MovieLens `u.data` (tab separated, no header).
- RecBole atomic files (`.inter`, tab separated, `name:type` header).
- Any of these separated by `;`, `|` or runs of spaces instead; gzip (`ratings.csv.gz`) and
  single-file zip archives are read transparently (recognised by their first bytes).

Every problem is reported as one line that names the file and, where there is one, the line
(blank lines counted, as an editor counts them). Only regular files are read (a device, a named
pipe or a socket is refused before it is opened, deepcf.files.check_input), and a first line
longer than 1 MiB is refused before anything else is read. Parsing is columnar (pandas' C
reader); there is no Python loop per rating.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from deepcf.errors import DataError
from deepcf.files import MAX_LINE, check_input, compression, open_input, read_line

INT64_MAX = np.iinfo(np.int64).max

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


def _open_raw(path: Path, what: str = "ratings file"):
    """open(path, "rb") of a regular file, every reason it cannot be opened as one line naming
    the file (deepcf.files.open_input)."""
    return open_input(path, what)


def _decode_error(path: Path, raw: bytes | None, encoding: str, e: UnicodeDecodeError,
                  hint: str = "") -> DataError:
    """The line and byte of the first byte that is not `encoding` text, found in the file's
    own bytes (pandas' offsets are those of its read buffer)."""
    if raw is None:
        try:
            with _open_raw(path) as f:
                raw = f.read()
        except DataError:
            raw = b""
    try:
        raw.decode(encoding)
        at = None
    except UnicodeDecodeError as err:
        at = err.start
    if at is None:
        return DataError(f"{path}: not {encoding} text ({e.reason}){hint}")
    line = raw.count(b"\n", 0, at) + 1
    col = at - (raw.rfind(b"\n", 0, at) + 1)
    return DataError(f"{path}:{line}: not {encoding} text (byte 0x{raw[at]:02x} at byte {at} of "
                     f"the file, byte {col + 1} of the line){hint}")


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
    path: Path, encoding: str = "utf-8", data: bytes | None = None, numeric_fields: int = 3,
    hint: str = "",
) -> tuple[pd.DataFrame, bool]:
    """Read a delimited file (or its bytes, named `path`); return (frame, has_header)."""
    if data is None and compression(path):
        data = _read_bytes(path)
    if data is None:
        with _open_raw(path) as f:
            head = read_line(f, path)
    else:
        end = data.find(b"\n", 0, MAX_LINE + 1)
        if end < 0 and len(data) > MAX_LINE:
            raise DataError(f"{path}:1: a line longer than {MAX_LINE} bytes (no newline in the "
                            f"first {MAX_LINE >> 20} MiB): not a ratings or titles file")
        head = data[: end + 1 or len(data)]
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
            skip_blank_lines=False,  # kept (then dropped below) so that lines are counted right
            quotechar='"',
            low_memory=False,
        )
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: file is empty") from None
    except pd.errors.ParserError as e:
        msg = str(e).replace("Error tokenizing data. C error: ", "").strip()
        raise DataError(f"{path}: malformed: {msg}") from None
    except UnicodeDecodeError as e:
        raw = data if data is not None else None
        raise _decode_error(path, raw, encoding, e, hint) from None
    except OSError as e:
        raise DataError(f"{path}: cannot read it ({e.strerror or e})") from None
    # file line of each row: blank lines are rows of NaN here, counted, then dropped
    blank = frame.isna().all(axis=1).to_numpy() if frame.shape[1] else np.zeros(len(frame), bool)
    lines = np.flatnonzero(~blank) + (2 if has_header else 1)
    if blank.any():
        frame = frame[~blank].reset_index(drop=True)
    frame.attrs["lines"] = lines
    return frame, has_header


def _line(frame: pd.DataFrame, i: int, has_header: bool) -> int:
    """The file line of frame row `i` (blank lines counted)."""
    lines = frame.attrs.get("lines")
    return int(lines[i]) if lines is not None and i < len(lines) else i + (2 if has_header
                                                                          else 1)


def _numeric(frame: pd.DataFrame, col, name: str, path: Path, has_header: bool) -> pd.Series:
    """Column `col` as numbers; the first bad or missing value is reported with its line."""
    s = frame[col]
    if not pd.api.types.is_numeric_dtype(s):
        num = pd.to_numeric(s, errors="coerce")
        bad = num.isna() & s.notna()
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(f"{path}:{_line(frame, i, has_header)}: {name} {s.iloc[i]!r} is not "
                            f"a number")
        if name.endswith(" id"):
            _check_id_range(s, num, name, path, frame, has_header)
        s = num
    missing = s.isna().to_numpy()
    if missing.any():
        i = int(np.flatnonzero(missing)[0])
        raise DataError(f"{path}:{_line(frame, i, has_header)}: {name} is missing or NaN")
    if name.endswith(" id"):
        _check_id_range(s, s, name, path, frame, has_header)
    return s


def _check_id_range(raw: pd.Series, num: pd.Series, name: str, path: Path, frame: pd.DataFrame,
                    has_header: bool) -> None:
    """Ids must fit in int64: a larger one would wrap to a negative id without a word."""
    v = num.to_numpy()
    if v.dtype.kind == "u":
        big = v > np.uint64(INT64_MAX)
    elif v.dtype.kind == "f":
        big = np.abs(v) >= 2.0**63
    else:
        return
    if big.any():
        i = int(np.flatnonzero(big)[0])
        raise DataError(f"{path}:{_line(frame, i, has_header)}: {name} {raw.iloc[i]} is beyond "
                        f"the 64-bit id range (ids must lie within +-(2^63 - 1); renumber them)")


def _ids(s: pd.Series, name: str, path: Path, has_header: bool,
         frame: pd.DataFrame | None = None) -> np.ndarray:
    v = s.to_numpy()
    if v.dtype.kind == "f":
        frac = v != np.floor(v)
        if frac.any():
            i = int(np.flatnonzero(frac)[0])
            line = _line(frame, i, has_header) if frame is not None else i + 1 + has_header
            raise DataError(f"{path}:{line}: {name} {v[i]:g} is not an integer id")
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
                has_header, frame)
    item = _ids(_numeric(frame, picked["movie"], "movie id", path, has_header), "movie id", path,
                has_header, frame)
    rating = _numeric(frame, picked["rating"], "rating", path, has_header).to_numpy(np.float64)
    bad = ~np.isfinite(rating)
    if rating_min is not None:
        bad |= rating < rating_min
    if rating_max is not None:
        bad |= rating > rating_max
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{path}:{_line(frame, i, has_header)}: rating {rating[i]:g} is outside the "
            f"declared range [{rating_min:g}, {rating_max:g}] (set data.source.rating_min / "
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
    check_input(path, "ratings file")
    if compression(path):
        return None
    with _open_raw(path) as f:
        first = read_line(f, path).decode("utf-8", errors="replace").strip("\r\n")
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
        # every column is read (no usecols) so that a line with extra fields stays an error;
        # an id like 1e30 makes pandas warn before it refuses the cast (the general path
        # then reports it with its line)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
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


def read_titles(path: str | Path, data: bytes | None = None,
                encoding: str | None = None) -> dict[int, str]:
    """Movie titles from `movies.csv` (movieId,title,...), RecBole `.item` or MovieLens `u.item`.

    `encoding`: the file's text encoding (data.source.titles_encoding); default latin-1 for a
    file named u.item (MovieLens 100K's), else utf-8. Every line must give an id and a title.
    Returns {raw movie id: title}.
    """
    path = Path(path).expanduser()
    if encoding is None:
        encoding = "latin-1" if path.name == "u.item" else "utf-8"
    try:
        "".encode(encoding)
    except LookupError:
        raise DataError(f"{path}: unknown text encoding {encoding!r} (e.g. utf-8, latin-1)"
                        ) from None
    hint = (" (MovieLens u.item is latin-1: set data.source.titles_encoding=latin-1)"
            if encoding != "latin-1" else "")
    frame, has_header = _read_table(path, encoding=encoding, data=data, numeric_fields=1,
                                    hint=hint)
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
    if frame.shape[1] <= max(i_id, i_title):
        raise DataError(f"{path}: a titles file needs a movie id and a title on every line; "
                        f"found {frame.shape[1]} column(s)")
    raw_ids = frame.iloc[:, i_id]
    ids = pd.to_numeric(raw_ids, errors="coerce")
    bad = ids.isna().to_numpy() | (ids.to_numpy() != np.floor(ids.to_numpy()))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{path}:{_line(frame, i, has_header)}: movie id {raw_ids.iloc[i]!r} is "
                        f"not an integer (a titles line is: id, title, ... separated as the "
                        f"header line is)")
    _check_id_range(raw_ids, ids, "movie id", path, frame, has_header)
    title_col = frame.iloc[:, i_title]
    no_title = title_col.isna().to_numpy()
    if no_title.any():
        i = int(np.flatnonzero(no_title)[0])
        raise DataError(f"{path}:{_line(frame, i, has_header)}: no title (the line has no "
                        f"separator after the movie id {raw_ids.iloc[i]!r})")
    titles = title_col.astype(str).to_numpy()
    return dict(zip(ids.to_numpy().astype(np.int64).tolist(), titles.tolist()))


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
