"""`make accuracy`: every registered row on both protocols, written to ACCURACY.md.

    python -m deepcf.study.accuracy                 # ML-100K, split seeds 0, 1, 2
    python -m deepcf.study.accuracy --quick         # split seed 0 only
    python -m deepcf.study.accuracy --data synthetic:tiny --side-data none --out /tmp/a.md
    python -m deepcf.study.accuracy --write-splits splits/   # the split files only
    python -m deepcf.study.accuracy --scale         # movies_full, ACCURACY.md's at-scale section

The study is data plus two programs: the rows are declarations (deepcf.study.rows, their fit
functions in deepcf.study.fits), the selection runner runs them on the protocols' splits
(deepcf.study.selection, deepcf.study.protocols), and the renderer writes ACCURACY.md from the
runner's report (deepcf.study.render). This module is the command line.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import deepcf.study.rows  # noqa: F401  (registers the rows)
from deepcf.data.matrix import load_matrix
from deepcf.data.sources import MovieLens100K, Synthetic
from deepcf.errors import ConfigError, one_line_errors
from deepcf.study.protocols import SEEDS, write_splits
from deepcf.study.render import (
    render,
    render_scale,
    scale_section,
    with_scale_section,
)
from deepcf.study.rows import SCALE_ROWS, USER_RUNS
from deepcf.study.scale import EVAL_USERS, run_scale
from deepcf.study.selection import build_report, describe


def load_data(spec: str, cache_dir: str):
    """`ml100k` or `synthetic:<scale>` as a RatingMatrix."""
    if spec == "ml100k":
        source = MovieLens100K()
    elif spec.startswith("synthetic:"):
        source = Synthetic(scale=spec.split(":", 1)[1])
    else:
        raise ConfigError(f"--data {spec!r} is not ml100k or synthetic:<scale>")
    m = load_matrix(source, cache_dir)
    if spec.startswith("synthetic:"):  # the generator named: its mode decides what top-N means
        m.source = f"Synthetic(scale={source.scale!r}, mode={source.params['mode']!r})"
    return m


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m deepcf.study.accuracy", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="split seed 0 only")
    p.add_argument("--out", type=Path, default=Path("ACCURACY.md"))
    p.add_argument("--data", default="ml100k", help="ml100k or synthetic:<scale>")
    p.add_argument("--side-data", default="synthetic:movies_small",
                   help="where the untuned defaults are reported (synthetic:<scale>, ml100k "
                        "or none)")
    p.add_argument("--write-splits", type=Path, metavar="DIR",
                   help="write each split of both protocols as train/test CSVs with raw ids "
                        "(DIR/rating/split<seed>/, DIR/topn/split<seed>/) and stop; train on "
                        "one with python -m deepcf.train data=ratings_csv "
                        "data.source.path=DIR/rating/split0/train.csv "
                        "data.source.test_path=DIR/rating/split0/test.csv")
    p.add_argument("--no-user-runs", action="store_true",
                   help="skip the recommended experiments trained by deepcf.train on the split "
                        "files (the section 'As a user trains them')")
    p.add_argument("--cache-dir", default=os.environ.get("DEEPCF_CACHE_DIR", "~/.cache/deepcf"))
    p.add_argument("--scale", action="store_true",
                   help="only the at-scale section: deepcf.study.rows.SCALE_ROWS on one split of "
                        "--data (default there: synthetic:movies_full), the rest of --out kept")
    p.add_argument("--eval-users", type=int, default=EVAL_USERS,
                   help="--scale: the top-N metrics over a seeded sample of this many users")
    args = p.parse_args(argv)
    with one_line_errors("deepcf.study.accuracy"):
        if args.scale:
            return _scale(args)
        seeds = [0] if args.quick else list(SEEDS)
        data = load_data(args.data, args.cache_dir)
        if args.write_splits is not None:
            paths = write_splits(data, args.write_splits, seeds)
            print(f"wrote {len(paths)} files under {args.write_splits} (split seeds "
                  f"{', '.join(map(str, seeds))})")
            return
        side = None if args.side_data == "none" else load_data(args.side_data, args.cache_dir)
        cmd = "python -m deepcf.study.accuracy" + (" --quick" if args.quick else "")
        if args.data != "ml100k":
            cmd += f" --data {args.data}"
        if args.side_data != "synthetic:movies_small":
            cmd += f" --side-data {args.side_data}"
        if args.no_user_runs:
            cmd += " --no-user-runs"
        report = build_report(data, seeds, side, command=cmd,
                              log=lambda s: print(s, flush=True),
                              user_runs=None if args.no_user_runs else USER_RUNS)
        old = args.out.read_text() if args.out.exists() else ""
        args.out.write_text(with_scale_section(render(report), scale_section(old)))
        print(f"wrote {args.out} ({report['seconds']:.0f} s)")


def _scale(args) -> None:
    spec = "synthetic:movies_full" if args.data == "ml100k" else args.data
    t0 = time.perf_counter()
    data = load_data(spec, args.cache_dir)
    print(f"data: {describe(data)} in {time.perf_counter() - t0:.0f} s (generated or read, "
          f"then cached)", flush=True)
    mode = (Synthetic(scale=spec.split(":", 1)[1]).params["mode"]
            if spec.startswith("synthetic:") else "file")
    report = run_scale(data, SCALE_ROWS, args.eval_users, log=lambda s: print(s, flush=True))
    cmd = "python -m deepcf.study.accuracy --scale"
    if spec != "synthetic:movies_full":
        cmd += f" --data {spec}"
    if args.eval_users != EVAL_USERS:
        cmd += f" --eval-users {args.eval_users}"
    report.update(command=cmd, mode=mode)
    old = args.out.read_text() if args.out.exists() else ""
    args.out.write_text(with_scale_section(old, render_scale(report)))
    print(f"wrote the at-scale section of {args.out} ({report['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
