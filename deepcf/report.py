"""Compare runs: `python -m deepcf.report RUN_OR_SWEEP_DIR... [--out DIR]`.

Draws the val RMSE and train loss curves of every run into one PNG (curves.png), a bar chart of
the test metrics with error bars over seeds (test_metrics.png), and writes the same numbers as a
markdown table (report.md, also printed). The command line of deepcf.study.report.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from deepcf.errors import console_script, one_line_errors
from deepcf.study.report import report

PROG = "deepcf.report"


def main(argv: list[str] | None = None) -> dict[str, Path]:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                epilog="e.g. python -m deepcf.report "
                                       "outputs/train/multiruns/2026-01-01_12-00-00_123-abcdef")
    p.add_argument("dirs", nargs="+", help="run dirs, sweep dirs, or any dir above runs")
    p.add_argument("--out", type=Path, default=Path("outputs/report"),
                   help="where the PNGs and report.md go (default outputs/report)")
    p.add_argument("--baseline", metavar="RUN", default=None,
                   help="a run dir every run is tested against: a paired Wilcoxon test over "
                        "the users of the test split (per-user squared error, or NDCG@10 for "
                        "ranking models), its p-value in the table; scores every run's model")
    p.add_argument("--evaluate", action="store_true",
                   help="score every run's model on its test split for the ranking metrics it "
                        "did not log (precision, MAP, MRR, hit rate, novelty, ...)")
    p.add_argument("--cache-dir", default=None, help="the data cache of the runs' data")
    p.add_argument("--force", action="store_true",
                   help="replace curves.png, test_metrics.png and report.md if --out has them")
    args = p.parse_args(argv)
    with one_line_errors(PROG):
        files = report(args.dirs, args.out, args.baseline, args.evaluate, args.cache_dir,
                       force=args.force)
        print(files["table"].read_text().split("\n\n")[0], flush=True)
        print(f"curves: {files['curves']}\ntest metrics: {files['bars']}\n"
              f"table: {files['table']}")
        return files


# the console script (pyproject [project.scripts])
cli = console_script(main)


if __name__ == "__main__":
    sys.exit(cli())
