"""`python -m deepcf.study.calibrate`: the shape figures of a data set by the study's own
baselines, the check that the synthetic generator looks like the real thing.

    python -m deepcf.study.calibrate                          # synthetic movies_small (taste)
    python -m deepcf.study.calibrate --data synthetic:movies_small:popularity
    python -m deepcf.study.calibrate --data path/to/ratings_small.csv

Figures, one split (seed 0) of each protocol of deepcf.study.protocols: the rating protocol's
random 80/20 split (user+item bias and biased MF by ALS: test RMSE, and how far MF is below the
bias), the top-N protocol's per-user 20% holdout (popularity, EASE and ItemKNN: test NDCG@10,
and EASE's and ItemKNN's as multiples of popularity's). Each row runs at the untuned defaults
of its `make accuracy` row (deepcf.study.rows), or with `--tune` chooses from its grid on the
validation carve as `make accuracy` does. EASE is deepcf.study.fits.ease_top over every movie
(the EASE row's closed form, in float32).

The generator's calibration ranges (`RANGES`) are the shape of The Movies Dataset's
`ratings_small.csv` (671 users x 9,066 movies), where these baselines give EASE about 2.0x
popularity's NDCG@10, ItemKNN about 1.8x, and MF about 1.7% below the bias in RMSE; with the
file at hand, `--data ratings_small.csv` prints those figures.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace

import deepcf.study.rows  # noqa: F401  (registers the rows)
from deepcf.data.matrix import load_matrix
from deepcf.data.sources import RatingsFile, Synthetic
from deepcf.errors import ConfigError, one_line_errors
from deepcf.study import fits
from deepcf.study.protocols import rating_split, topn_split
from deepcf.study.selection import ROWS, Task, run_row

# (figure, low, high): where the synthetic movies_small should land
RANGES = [("EASE / popularity NDCG@10", 1.6, 2.4), ("MF below bias in RMSE, %", 1.0, 3.0)]
RATING_ROWS = ("user+item bias", "biased MF (ALS)")
TOPN_ROWS = ("popularity", "EASE", "ItemKNN (cosine)")


def load(spec: str, cache_dir: str):
    """`synthetic:<scale>[:<mode>]` or a ratings file, as a RatingMatrix."""
    if spec.startswith("synthetic:"):
        parts = spec.split(":")
        source = Synthetic(scale=parts[1], mode=parts[2] if len(parts) > 2 else None)
        m = load_matrix(source, cache_dir)
        m.source = f"synthetic {source.scale} (mode {source.params['mode']})"
        return m
    if not os.path.exists(spec):
        raise ConfigError(f"--data {spec!r} is not synthetic:<scale>[:<mode>] or a file")
    return load_matrix(RatingsFile(spec), cache_dir)


def _row(protocol: str, name: str):
    row = ROWS[f"{protocol}:{name}"]
    if name == "EASE":  # the same closed form in float32 (the EDLAE net runs float64)
        row = replace(row, fit=fits.ease_top)
    return row


def figures(m, tune: bool = False, log=print) -> dict:
    """{row name: test figure} and the derived ratios, on split seed 0 of each protocol."""
    task = Task(m.rating_min, m.rating_max, 0)
    out: dict = {}
    for protocol, names, key, split in (("rating", RATING_ROWS, "rmse", rating_split(m, 0)),
                                        ("topn", TOPN_ROWS, "ndcg@10", topn_split(m, 0))):
        for name in names:
            t0 = time.perf_counter()
            metrics, params, _, _ = run_row(_row(protocol, name), split, task, tune)
            out[name] = metrics[key]
            log(f"{protocol}: {name}: {key} {metrics[key]:.4f} ({fits_params(params)}; "
                f"{time.perf_counter() - t0:.0f} s)")
    out["EASE / popularity NDCG@10"] = out["EASE"] / out["popularity"]
    out["ItemKNN / popularity NDCG@10"] = out["ItemKNN (cosine)"] / out["popularity"]
    out["MF below bias in RMSE, %"] = 100.0 * (1.0 - out["biased MF (ALS)"]
                                               / out["user+item bias"])
    return out


def fits_params(p: dict) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in p.items()) or "no parameters"


def table(m, out: dict) -> str:
    lines = [f"{m.source} ({m.shape[0]:,} users x {m.shape[1]:,} movies, {m.ratings.nnz:,} "
             f"ratings)", "", "| figure | value | calibration range |", "|---|---|---|"]
    ranges = {name: (lo, hi) for name, lo, hi in RANGES}
    for name in ("user+item bias", "biased MF (ALS)"):
        lines.append(f"| {name}: test RMSE | {out[name]:.4f} | |")
    for name in TOPN_ROWS:
        lines.append(f"| {name}: test NDCG@10 | {out[name]:.4f} | |")
    for name in ("EASE / popularity NDCG@10", "ItemKNN / popularity NDCG@10",
                 "MF below bias in RMSE, %"):
        lo, hi = ranges.get(name, (None, None))
        band = "" if lo is None else (f"{lo:g} .. {hi:g}: "
                                      f"{'inside' if lo <= out[name] <= hi else 'OUTSIDE'}")
        lines.append(f"| {name} | {out[name]:.2f} | {band} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m deepcf.study.calibrate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="synthetic:movies_small",
                   help="synthetic:<scale>[:<mode>] or a ratings file")
    p.add_argument("--tune", action="store_true",
                   help="choose each row's setting from its grid on the validation carve")
    p.add_argument("--cache-dir", default=os.environ.get("DEEPCF_CACHE_DIR", "~/.cache/deepcf"))
    args = p.parse_args(argv)
    with one_line_errors("deepcf.study.calibrate"):
        m = load(args.data, args.cache_dir)
        out = figures(m, args.tune, log=lambda s: print(s, flush=True))
        print()
        print(table(m, out))


if __name__ == "__main__":
    main()
