"""The real MovieLens-100K, taken from the RecBole 1.2.1 wheel on PyPI.

The wheel is fetched with `pip download --no-deps` (a package client is the only way to reach data
from here), kept in the cache dir, checksummed, and read straight from the zip. RecBole itself is
never installed or imported.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

from deepcf.data.readers import RatingsTable, read_ratings, read_titles
from deepcf.errors import DataError

WHEEL = "recbole-1.2.1-py3-none-any.whl"
INTER = "recbole/dataset_example/ml-100k/ml-100k.inter"
ITEM = "recbole/dataset_example/ml-100k/ml-100k.item"
SHA256 = {
    INTER: "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    ITEM: "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
}


def fetch_wheel(cache_dir: str | Path) -> Path:
    """Return the path of the RecBole wheel, downloading it into cache_dir/ml100k if needed."""
    target = Path(cache_dir).expanduser() / "ml100k"
    wheel = target / WHEEL
    if wheel.exists():
        return wheel
    target.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", "-d", str(target), "recbole==1.2.1"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not wheel.exists():
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise DataError(
            f"could not download MovieLens-100K ({' '.join(cmd[2:])}): {last}; "
            f"or place {WHEEL} in {target}"
        )
    return wheel


def _member(zf: zipfile.ZipFile, name: str, wheel: Path) -> bytes:
    try:
        data = zf.read(name)
    except KeyError:
        raise DataError(f"{wheel}: has no {name}") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != SHA256[name]:
        raise DataError(f"{wheel}: checksum mismatch for {name} (got {digest[:12]}...); "
                        f"delete the file to download it again")
    return data


def load_ml100k(cache_dir: str | Path) -> tuple[RatingsTable, dict[int, str], Path]:
    """Ratings and titles of MovieLens-100K; also returns the wheel path (the cache key)."""
    wheel = fetch_wheel(cache_dir)
    try:
        with zipfile.ZipFile(wheel) as zf:
            inter, item = _member(zf, INTER, wheel), _member(zf, ITEM, wheel)
    except zipfile.BadZipFile:
        raise DataError(f"{wheel}: not a valid wheel; delete it to download it again") from None
    name = f"{wheel}!"
    table = read_ratings(name + INTER, rating_min=1, rating_max=5, data=inter)
    titles = read_titles(name + ITEM, data=item)
    table.source = "MovieLens-100K"
    return table, titles, wheel
