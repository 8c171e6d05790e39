"""Top-N movies a user has not rated, with predicted rating and title: `python -m deepcf.recommend`.

The command line of deepcf.serving.recommend (how movies are ranked is described there).
"""

from __future__ import annotations

import argparse
import csv
import sys
from contextlib import ExitStack
from pathlib import Path

from deepcf.errors import DeepCFError, console_script, one_line_errors
from deepcf.files import atomic_open, check_output
from deepcf.serving.cli import add_allow_target, add_scoring_options, serving_parser
from deepcf.serving.recommend import (
    FIELDS,
    format_table,
    load_ratings,
    parse_ids,
    ranked_by,
    recommend,
)
from deepcf.serving.runs import allow_targets, run_model_path
from deepcf.serving.sidecar import sidecar_path

PROG = "deepcf.recommend"


def parser() -> argparse.ArgumentParser:
    p = serving_parser(PROG, __doc__, [
        "python -m deepcf.recommend outputs/train/runs/RUN --user 196",
        "python -m deepcf.recommend RUN --user 1 2 3 -n 5 --csv recs.csv",
        "python -m deepcf.recommend --model model.onnx --ratings ratings.csv --all --csv r.csv"],
        "a training run dir: its model.onnx and its data")
    p.add_argument("--ratings", help="the users' ratings: ratings file with raw ids or scipy "
                   ".npz users x movies (default: the run's data)")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", nargs="+", help="raw user id(s), as in the ratings file")
    who.add_argument("--all", action="store_true", help="every user of the ratings (needs --csv)")
    p.add_argument("-n", type=int, default=10, help="movies per user (default 10)")
    p.add_argument("--csv", help="write user_id,n_ratings,rank,movie_id,title,predicted_rating,"
                   "score,basis rows here (an existing file only with --force; never the "
                   "--ratings input)")
    p.add_argument("--force", action="store_true", help="replace an existing --csv file")
    p.add_argument("--show", type=int, default=20,
                   help="print the table only for up to this many users (default 20)")
    add_scoring_options(p)
    add_allow_target(p)
    return p


def main(argv: list[str] | None = None) -> list[dict]:
    args = parser().parse_args(argv)
    with one_line_errors(PROG):
        allow_targets(args.allow_target)
        if args.n < 1 or args.chunk < 1:
            raise DeepCFError("-n and --chunk must be >= 1")
        if args.all and not args.csv:
            raise DeepCFError("--all needs --csv FILE (a table for every user is not readable)")
        if args.csv:  # before any scoring: a refused output costs nothing
            model = Path(args.model) if args.model else (
                run_model_path(args.run_dir) if args.run_dir else None)
            inputs = [args.ratings, model, sidecar_path(model) if model else None]
            check_output(args.csv, args.force, inputs, what="csv")
        scorer, card, data = load_ratings(args.run_dir, args.model, args.ratings,
                                          args.cache_dir)
        users = data.user_ids if args.all else parse_ids(args.user)
        data.rows_of(users)  # every unknown id is reported before any scoring
        stream = recommend(scorer, card, data, users, args.n, args.chunk, args.pop_beta)
        shown: list[dict] = []
        with ExitStack() as stack:
            writer = None
            if args.csv:
                # a temporary file renamed onto --csv at the end: no partial csv, ever
                f = stack.enter_context(atomic_open(args.csv, "w", newline="",
                                                    encoding="utf-8"))
                writer = csv.DictWriter(f, FIELDS)
                writer.writeheader()
            for rec in stream:
                if writer:
                    writer.writerow(rec)
                if len(users) <= args.show:
                    shown.append(rec)
        if shown:
            print(format_table(shown, card, args.pop_beta), flush=True)
        else:
            print(f"{len(users)} users (more than --show {args.show}; not printed)")
        if args.csv:
            print(f"csv: {args.csv} ({ranked_by(card)})")
        return shown


# the console script (pyproject [project.scripts])
cli = console_script(main)


if __name__ == "__main__":
    sys.exit(cli())
