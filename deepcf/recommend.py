"""Top-N movies a user has not rated, with predicted rating and title: `python -m deepcf.recommend`.

A user's known ratings (every rating of the run's data, or of --ratings) are the model input, and
those movies are set to -inf before the top N (as RecBole), so a recommendation is never a movie
the user rated. Movies are ranked by the model's raw output (`score`); the predicted rating is
that output clipped to the rating range. A user known to the model but with no ratings in the
data gets the N most popular movies (training rating count), labelled `popularity` instead of
`model`.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from deepcf.errors import DeepCFError, one_line_errors
from deepcf.inputs import (
    Ratings,
    check_same_movies,
    load_model,
    read_ratings_source,
    run_datamodule,
    run_model_path,
)
from deepcf.onnx_export import ModelCard
from deepcf.scoring import UserScores, popular_unseen, top_k_unseen

PROG = "deepcf.recommend"
FIELDS = ["user_id", "n_ratings", "rank", "movie_id", "title", "predicted_rating", "score",
          "basis"]


def load_ratings(run_dir=None, model=None, ratings=None,
                 cache_dir: str | None = None) -> tuple[object, ModelCard, Ratings]:
    """(scorer, card, ratings) from a run dir and/or an explicit model and ratings source."""
    if model is None and run_dir is None:
        raise DeepCFError("give a RUN_DIR, or --model with --ratings")
    model = Path(model) if model else run_model_path(run_dir)
    scorer, card = load_model(model)
    if ratings is not None:
        return scorer, card, read_ratings_source(ratings, card)
    if run_dir is None:
        raise DeepCFError("--model needs --ratings (or a RUN_DIR whose data to use)")
    dm = run_datamodule(run_dir, cache_dir, setup=False)
    m = dm.matrix
    check_same_movies(card, m.item_ids, m.user_ids, str(model), f"the data of {run_dir}")
    return scorer, card, Ratings(m.ratings, np.asarray(m.user_ids, np.int64), m.source)


def recommend(scorer, card: ModelCard, data: Ratings, users: np.ndarray, n: int = 10,
              chunk: int = 1024) -> Iterator[dict]:
    """One dict per (user, rank), users in the given order (raw ids)."""
    rows = data.rows_of(users)
    counts = np.diff(data.X.indptr)
    for part, scores in UserScores(scorer, data.X, card.orientation, chunk).chunks(rows):
        seen = data.X[part]
        top, vals = top_k_unseen(scores, seen, n)
        for j, row in enumerate(part):
            base = {"user_id": int(data.user_ids[row]), "n_ratings": int(counts[row])}
            if counts[row] == 0:
                picks, preds, basis = popular_unseen(card.item_train_count, [], n), None, \
                    "popularity"
            else:
                keep = top[j] >= 0
                picks, preds, basis = top[j][keep], vals[j][keep], "model"
            for r, movie in enumerate(picks):
                raw = "" if preds is None else round(float(preds[r]), 4)
                pred = "" if preds is None else round(
                    float(np.clip(preds[r], card.rating_min, card.rating_max)), 3)
                yield {**base, "rank": r + 1, "movie_id": int(card.item_ids[movie]),
                       "title": "" if card.titles is None else str(card.titles[movie]),
                       "predicted_rating": pred, "score": raw, "basis": basis}


def format_table(recs: list[dict]) -> str:
    """A block per user: header line, then rank / movie id / predicted rating / title."""
    lines: list[str] = []
    for uid in dict.fromkeys(r["user_id"] for r in recs):
        mine = [r for r in recs if r["user_id"] == uid]
        head = mine[0]
        how = ("predicted by the model" if head["basis"] == "model" else
               "POPULARITY FALLBACK: the user has no ratings, most-rated movies shown")
        lines.append(f"user {uid} ({head['n_ratings']} ratings): top {len(mine)} unseen movies, "
                     f"{how}")
        lines.append(f"{'rank':>4}  {'movie':>7}  {'rating':>6}  {'score':>6}  title")
        for r in mine:
            pred = "-" if r["predicted_rating"] == "" else f"{r['predicted_rating']:.2f}"
            raw = "-" if r["score"] == "" else f"{r['score']:.2f}"
            lines.append(f"{r['rank']:>4}  {r['movie_id']:>7}  {pred:>6}  {raw:>6}  "
                         f"{r['title']}")
        lines.append("")
    return "\n".join(lines).rstrip()


def parse_ids(values: list[str]) -> np.ndarray:
    ids = []
    for v in values:
        for part in v.replace(",", " ").split():
            try:
                ids.append(int(part))
            except ValueError:
                raise DeepCFError(f"user id {part!r} is not an integer") from None
    return np.asarray(ids, np.int64)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description=__doc__.split("\n\n")[0],
        epilog="examples:\n  python -m deepcf.recommend outputs/train/runs/RUN --user 196\n"
               "  python -m deepcf.recommend RUN --user 1 2 3 -n 5 --csv recs.csv\n"
               "  python -m deepcf.recommend --model model.onnx --ratings ratings.csv --all "
               "--csv recs.csv",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", nargs="?", help="a training run dir: its model.onnx and its data")
    p.add_argument("--model", help="ONNX model (sidecar .deepcf.npz next to it); "
                   "default RUN_DIR/model.onnx")
    p.add_argument("--ratings", help="the users' ratings: ratings file with raw ids or scipy "
                   ".npz users x movies (default: the run's data)")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", nargs="+", help="raw user id(s), as in the ratings file")
    who.add_argument("--all", action="store_true", help="every user of the ratings (needs --csv)")
    p.add_argument("-n", type=int, default=10, help="movies per user (default 10)")
    p.add_argument("--csv", help="write user_id,n_ratings,rank,movie_id,title,predicted_rating,"
                   "score,basis rows here")
    p.add_argument("--show", type=int, default=20,
                   help="print the table only for up to this many users (default 20)")
    p.add_argument("--chunk", type=int, default=256,
                   help="users scored at a time (default 256, see deepcf.bench_scoring)")
    p.add_argument("--cache-dir", help="data cache dir instead of the run's")
    return p


def main(argv: list[str] | None = None) -> list[dict]:
    args = parser().parse_args(argv)
    with one_line_errors(PROG):
        if args.n < 1 or args.chunk < 1:
            raise DeepCFError("-n and --chunk must be >= 1")
        if args.all and not args.csv:
            raise DeepCFError("--all needs --csv FILE (a table for every user is not readable)")
        scorer, card, data = load_ratings(args.run_dir, args.model, args.ratings,
                                          args.cache_dir)
        users = data.user_ids if args.all else parse_ids(args.user)
        data.rows_of(users)  # every unknown id is reported before any scoring
        stream = recommend(scorer, card, data, users, args.n, args.chunk)
        shown: list[dict] = []
        with ExitStack() as stack:
            writer = None
            if args.csv:
                f = stack.enter_context(open(args.csv, "w", newline="", encoding="utf-8"))
                writer = csv.DictWriter(f, FIELDS)
                writer.writeheader()
            for rec in stream:
                if writer:
                    writer.writerow(rec)
                if len(users) <= args.show:
                    shown.append(rec)
        if shown:
            print(format_table(shown), flush=True)
        else:
            print(f"{len(users)} users (more than --show {args.show}; not printed)")
        if args.csv:
            print(f"csv: {args.csv}")
        return shown


if __name__ == "__main__":
    main(sys.argv[1:])
