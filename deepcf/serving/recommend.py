"""Top-N movies a user has not rated, with predicted rating and title: `python -m deepcf.recommend`.

A user's known ratings (every rating of the run's data, or of --ratings) are the model input, and
those movies are set to -inf before the top N (as RecBole), so a recommendation is never a movie
the user rated. Movies are ranked by the model's raw output (`score`); the predicted rating is
that output clipped to the rating range. A user known to the model but with no ratings in the
data gets the N most popular movies (training rating count), labelled `popularity` instead of
`model`.

A ranking model (its sidecar's `score_kind` is not "rating": Mult-DAE/VAE trained with
objective=multinomial, EDLAE) ranks by its score, which is not a rating: no predicted rating is
shown, and the output says "ranked by <model> score (not a rating)"; a rating model's says
"ranked by predicted rating". With `pop_beta` (`--pop-beta B`) movies are ranked by
score / popularity^B (deepcf.stats.popularity_weights), `score` is that corrected score and the
predicted rating still the model's output. A model trained on interactions (data.implicit) gets
the user's ratings as interactions as its input, the same rule as in training; every rated
movie stays excluded.

New users (ids the model never saw, with ratings in --ratings or a service request): a model
whose rows are users scores them by its forward pass over their ratings, as any user; a model
whose rows are movies (I-AutoRec) folds them in from their ratings with the movies' cached
codes (deepcf.serving.codes), and scores its known users by their trained output rows against
the same codes (so their ratings outside training decide only what is excluded).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from deepcf.data.split import implicit_matrix
from deepcf.errors import DeepCFError
from deepcf.serving.runs import (
    Ratings,
    check_same_movies,
    load_model,
    read_ratings_source,
    run_datamodule,
    run_model_path,
)
from deepcf.serving.scoring import (
    UserScores,
    popular_unseen,
    top_k_unseen_fast,
)
from deepcf.serving.sidecar import ModelCard
from deepcf.stats import popularity_weights

FIELDS = ["user_id", "n_ratings", "rank", "movie_id", "title", "predicted_rating", "score",
          "basis"]


def load_ratings(run_dir=None, model=None, ratings=None, cache_dir: str | None = None,
                 threads: int = 0) -> tuple[object, ModelCard, Ratings]:
    """(scorer, card, ratings) from a run dir and/or an explicit model and ratings source;
    `threads`: onnxruntime's intra-op threads (0: one per core)."""
    if model is None and run_dir is None:
        raise DeepCFError("give a RUN_DIR, or --model with --ratings")
    model = Path(model) if model else run_model_path(run_dir)
    scorer, card = load_model(model, threads)
    if ratings is not None:
        return scorer, card, read_ratings_source(ratings, card)
    if run_dir is None:
        raise DeepCFError("--model needs --ratings (or a RUN_DIR whose data to use)")
    dm = run_datamodule(run_dir, cache_dir, setup=False)
    m = dm.matrix
    check_same_movies(card, m.item_ids, m.user_ids, str(model), f"the data of {run_dir}")
    return scorer, card, Ratings(m.ratings, np.asarray(m.user_ids, np.int64), m.source)


def recommend(scorer, card: ModelCard, data: Ratings, users: np.ndarray, n: int = 10,
              chunk: int = 1024, pop_beta: float = 0.0) -> Iterator[dict]:
    """One dict per (user, rank), users in the given order (raw ids)."""
    rows = data.rows_of(users)
    X = implicit_matrix(data.X, card.implicit or None)  # the model's input, as in training
    scores = UserScores(scorer, X, card.orientation, chunk, card.codes)
    for part, block in scores.chunks(rows):
        for recs in ranked(card, block, data.X[part], data.user_ids[part], n, pop_beta):
            yield from recs


def ranked(card: ModelCard, scores: np.ndarray, seen, user_ids, n: int = 10,
           pop_beta: float = 0.0) -> Iterator[list[dict]]:
    """The top-n dicts of each scored user (one list per user): `scores` (users, movies) the
    model's outputs (changed in place), `seen` their known ratings (users x movies CSR, never
    recommended; a user with none gets the popularity fallback), `user_ids` their raw ids
    (None: a user without one)."""
    output = scores
    if pop_beta:
        scores = scores * popularity_weights(card.item_train_count, pop_beta)
    counts = np.diff(seen.indptr)
    top, vals = top_k_unseen_fast(scores, seen, n)
    for j, uid in enumerate(user_ids):
        base = {"user_id": None if uid is None else int(uid), "n_ratings": int(counts[j])}
        if counts[j] == 0:
            picks, preds, basis = popular_unseen(card.item_train_count, [], n), None, \
                "popularity"
        else:
            keep = top[j] >= 0
            picks, preds, basis = top[j][keep], vals[j][keep], "model"
            rated = output[j, picks]  # the model's own output (vals: corrected if pop_beta)
        recs = []
        for r, movie in enumerate(picks):
            raw = "" if preds is None else round(float(preds[r]), 4)
            pred = "" if preds is None or not card.rates else round(
                min(max(float(rated[r]), card.rating_min), card.rating_max), 3)
            recs.append({**base, "rank": r + 1, "movie_id": int(card.item_ids[movie]),
                         "title": "" if card.titles is None else str(card.titles[movie]),
                         "predicted_rating": pred, "score": raw, "basis": basis})
        yield recs


def ranked_by(card: ModelCard) -> str:
    """What the model's ranking is by, for the output's label."""
    return ("ranked by predicted rating" if card.rates else
            f"ranked by {card.score_kind} (not a rating)")


def format_table(recs: list[dict], card: ModelCard | None = None, pop_beta: float = 0.0) -> str:
    """A block per user: header line, then rank / movie id / predicted rating / title."""
    lines: list[str] = []
    by = "" if card is None else f", {ranked_by(card)}"
    for uid in dict.fromkeys(r["user_id"] for r in recs):
        mine = [r for r in recs if r["user_id"] == uid]
        head = mine[0]
        how = (f"predicted by the model{by}" if head["basis"] == "model" else
               "POPULARITY FALLBACK: the user has no ratings, most-rated movies shown")
        if pop_beta and head["basis"] == "model":
            how += f", scores / popularity^{pop_beta:g}"
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
                uid = int(part)
            except ValueError:
                raise DeepCFError(f"user id {part!r} is not an integer") from None
            if not -(2**63) <= uid < 2**63:
                raise DeepCFError(f"user id {part} is beyond the 64-bit id range (no model "
                                  f"knows it: ids lie within +-(2^63 - 1))")
            ids.append(uid)
    return np.asarray(ids, np.int64)


