"""Reading what a run dir holds, safely: the bottom layer that serving and training share.

- `safe_load`: a checkpoint through `torch.load(weights_only=True)` (a pickle that would run code
  is refused), every failure one line naming the file;
- `inside`: whether a path lies in a folder (symbolic links resolved), for the paths a
  checkpoint's state names;
- `check_input` / `open_input` / `read_line` / `check_first_line` / `compression`: inputs are
  regular files only (a device, a named pipe or a socket is one line, never a hang or an endless
  read) read with bounded lines, a compressed one known by its first bytes;
- `check_output`: a command's output never replaces a file it did not make (unless --force)
  nor its own input; `atomic_path` / `atomic_open` / `write_text`: every artifact is written to a
  temporary file beside it and renamed into place, and a full disk or a denied folder is one
  line naming the path.
"""

from __future__ import annotations

import errno
import os
import pickle
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from deepcf.errors import CheckpointError, DataError, OutputError


def safe_load(path: str | Path) -> dict:
    """torch.load(weights_only=True) of a checkpoint, every failure as one line naming it. The
    tensors are mapped from the file, read when used: a full-batch checkpoint at the Movies
    Dataset's scale is half optimizer state, which serving never reads."""
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
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


# --- targets a run dir's config or a checkpoint may name -----------------------------------------

# `_target_`s and net targets outside deepcf's own classes are used only when they start with a
# prefix the user allows: --allow-target PREFIX, or DEEPCF_ALLOW_TARGETS=prefix1,prefix2
ALLOW_ENV = "DEEPCF_ALLOW_TARGETS"


def allowed_target(target: str, extra: tuple[str, ...] = ()) -> bool:
    """Whether `target` starts with an allowed prefix (`extra` or DEEPCF_ALLOW_TARGETS); a
    prefix matches at a dot (mypkg allows mypkg.nets.Net, not mypkg_evil)."""
    prefixes = [p.strip() for p in os.environ.get(ALLOW_ENV, "").split(",") if p.strip()]
    return any(target == p or target.startswith(p.rstrip(".") + ".")
               for p in [*prefixes, *extra])


# --- inputs: regular files only, bounded lines --------------------------------------------------

MAX_LINE = 1 << 20  # the longest line a ratings or titles file may have (1 MiB)
STDIN = "-"


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISDIR, "a directory")):
        if test(mode):
            return name
    return "not a regular file"


def check_input(path: str | Path, what: str = "file") -> Path:
    """`path` if it is a regular file that can be read, else one line (DataError) naming it.

    Devices (/dev/zero: endless), named pipes (an open blocks until a writer comes), sockets and
    directories are refused before anything is opened; symbolic links are followed.
    """
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise DataError(f"{p}: no such file") from None
    except PermissionError:
        raise DataError(f"{p}: permission denied: cannot read it (check the file's permissions, "
                        f"e.g. chmod u+r, or copy it somewhere readable)") from None
    except OSError as e:
        raise DataError(f"{p}: cannot read it ({e.strerror or e})") from None
    if not stat.S_ISREG(st.st_mode):
        kind = _kind(st.st_mode)
        if kind == "a directory":
            raise DataError(f"{p}: is a directory, expected a {what}")
        raise DataError(f"{p}: is {kind}; {what}s are read from regular files only (copy it "
                        f"into a file first)")
    return p


def open_input(path: str | Path, what: str = "file"):
    """open(path, "rb") of a regular file (check_input), every failure as one line. The file is
    opened non-blocking and checked again on its descriptor, so that a path swapped for a named
    pipe between the check and the open cannot hang."""
    p = check_input(path, what)
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except PermissionError:
        raise DataError(f"{p}: permission denied: cannot read it (check the file's permissions, "
                        f"e.g. chmod u+r, or copy it somewhere readable)") from None
    except OSError as e:
        raise DataError(f"{p}: cannot read it ({e.strerror or e})") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise DataError(f"{p}: is {_kind(mode)}; {what}s are read from regular files only")
    if hasattr(os, "set_blocking"):
        os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def read_line(f, path: str | Path, limit: int = MAX_LINE, line: int = 1) -> bytes:
    """One line of an open binary file, at most `limit` bytes: a longer one (e.g. a file with
    no newline) is one line of error, not a read of the whole file into memory."""
    got = f.readline(limit + 1)
    if len(got) > limit:
        raise DataError(f"{path}:{line}: a line longer than {limit} bytes (no newline in the "
                        f"first {limit // (1 << 20)} MiB): not a ratings or titles file")
    return got


def compression(path: str | Path, what: str = "ratings file") -> str | None:
    """"gzip" or "zip" by the file's first bytes (whatever its name), else None."""
    with open_input(path, what) as f:
        magic = f.read(4)
    if magic[:2] == b"\x1f\x8b":
        return "gzip"
    if magic == b"PK\x03\x04":
        return "zip"
    return None


def check_first_line(path: str | Path, what: str = "file") -> Path:
    """check_input, then the first line read with its bound (read_line): a file with no newline
    in its first MiB is one line after reading about 1 MiB, before anything reads the whole file
    (or loads torch). A gzip or zip file is left to the reader, which bounds its decompressed
    first line."""
    p = check_input(path, what)
    if compression(p, what) is None:
        with open_input(p, what) as f:
            read_line(f, p)
    return p


# --- outputs: never over a file deepcf did not make, always complete -----------------------------


def _write_error(path: Path, e: OSError) -> OutputError:
    reason = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
              errno.EACCES: "permission denied", errno.EPERM: "permission denied",
              errno.EROFS: "read-only file system"}.get(e.errno, e.strerror or str(e))
    hint = {errno.ENOSPC: "; free some space and run it again (nothing partial was left)",
            errno.EDQUOT: "; free some space and run it again (nothing partial was left)",
            errno.EACCES: "; check the folder's permissions or write elsewhere",
            errno.EPERM: "; check the folder's permissions or write elsewhere",
            errno.EROFS: "; write elsewhere"}.get(e.errno, "")
    return OutputError(f"{path}: cannot write it ({reason}){hint}")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path in `path`'s folder; once the block succeeds it is renamed onto `path`
    (one rename: readers see the old file or the complete new one, never a part), else removed.
    ENOSPC, EACCES and the like are one line naming `path` (OutputError)."""
    path = Path(path)
    folder = path.parent
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix,
                                   dir=folder)
        # mkstemp makes the file 0600: give it the mode open() would (or the replaced file's)
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode)
        except OSError:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.fchmod(fd, mode)
        os.close(fd)
    except FileNotFoundError:
        raise OutputError(f"{path}: cannot write it: no such directory {folder}") from None
    except OSError as e:
        raise _write_error(path, e) from None
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except OSError as e:
        tmp_path.unlink(missing_ok=True)
        raise _write_error(path, e) from None
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs) -> Iterator:
    """open() of a temporary file beside `path`, renamed onto it when the block succeeds
    (atomic_path), synced to disk first."""
    with atomic_path(path) as tmp:
        try:
            with open(tmp, mode, **kwargs) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise _write_error(Path(path), e) from None


def write_text(path: str | Path, text: str) -> Path:
    """`text` into `path`, atomically (atomic_open)."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return Path(path)


def _same_file(a: Path, b: str | Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def check_output(path: str | Path, force: bool = False, inputs=(), what: str = "output",
                 flag: str = "--force") -> Path:
    """`path` if a command may write it: its folder exists, it is not a folder or special file,
    not one of the command's `inputs` (never, even with --force), and does not exist yet unless
    `force`. One line (OutputError) otherwise, before any work is done."""
    p = Path(path)
    for i in inputs:
        if i is not None and (p.exists() or os.path.lexists(p)) and _same_file(p, i):
            raise OutputError(f"{p}: refused: it is this command's own input {i}; write the "
                              f"{what} to another file")
    if not p.parent.is_dir():
        raise OutputError(f"{p}: cannot write the {what}: no such directory {p.parent} (create "
                          f"it first)")
    if p.is_dir():
        raise OutputError(f"{p}: is a directory; give a file name for the {what}")
    if os.path.lexists(p):
        if not p.is_file():
            raise OutputError(f"{p}: exists and is not a regular file; give another {what} path")
        if not force:
            raise OutputError(f"{p}: exists; refusing to overwrite a file this command did not "
                              f"create as its {what} (pass {flag} to replace it, or choose "
                              f"another path)")
    return p


def sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """The hex sha256 of a file (the fingerprint a sidecar carries of its model)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
