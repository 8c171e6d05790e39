"""Evaluate an ONNX model on held-out ratings: `python -m deepcf.evaluate RUN_DIR`.

Rating prediction, the protocol of training's `test/rmse`: each user's input is their training
row, the targets their held-out ratings; predictions are clipped to the rating range and a
held-out rating whose row or column has no training rating gets the training mean (counted as
`n_fallback`). The batches are the DataModule's RowBatches and the clip/fallback is the
protocol's `clip_or_fallback` (deepcf.data.heldout), with onnxruntime in place of the PyTorch net.

Top-K ranking on the same holdout (see deepcf.serving.metrics for the definitions): every movie
the user rated outside the holdout (training, and for a run dir validation too, as RecBole's
test phase) is set to -inf before the top K; users with no training ratings get the popularity
ranking.

`protocol="topn"` (`--protocol topn`): the metrics of the top-N protocol (`topn_metrics`, the
code `make accuracy` uses for deepcf.study.protocols) on the same holdout. A run was trained on
its own split, so its test part is the only honest holdout: every held-out rating is an
interaction (binary relevance, no threshold); every movie with a training interaction that the
user has not rated (in training, or for a run dir in validation) is ranked; Recall@K = hits /
min(K, |held-out|) (recall_capped), NDCG@K binary with the ideal over min(K, |held-out|),
coverage@K and Gini@K over the catalog, and the other metrics of deepcf.serving.metrics. Users
with no training rating are not ranked by popularity here: the model scores them from an empty
row, as the protocol does. The holdout is whatever the run's `data.protocol` split is (random,
per_user, leave_last, or its test file); a run trained with `data/protocol=per_user` and
`data.protocol.seed=0/1/2` has ACCURACY.md's top-N split of that seed, so its numbers compare
with that table's. A run that was refit (refit=true) is scored with its carve merged into the
inputs, as its model was trained. No RMSE: it is the protocol for ranking models (EDLAE's scores
are not ratings).

A model whose rows are movies (I-AutoRec) is scored from the item codes cached in its sidecar
(deepcf.serving.codes): a user's predictions are their output row against every movie's code,
with no pass of the movies through the dense graph; the codes were computed from the training
rows at export, which are the run's own inputs here (with `--input`, the input rows only decide
what is excluded from the ranking). A sidecar without codes falls back to the dense pass.

A ranking model (sidecar `score_kind` not "rating": objective=multinomial, EDLAE) outputs scores,
not ratings: its RMSE/MAE would mean nothing and are not computed (the report says why). On a run
trained on interactions (data.implicit) every held-out interaction is relevant (threshold 1),
and the inputs are interactions, as in training.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from deepcf.data.heldout import clip_or_fallback, heldout_set
from deepcf.data.orientation import orient, rows_are_items
from deepcf.data.split import implicit_matrix
from deepcf.errors import DataError, DeepCFError, ModelDataMismatch
from deepcf.serving.metrics import RankingAccumulator, expand_metrics
from deepcf.serving.runs import (
    Ratings,
    best_metrics,
    check_run_dir,
    check_same_movies,
    load_model,
    read_ratings_source,
    run_datamodule,
    run_model_path,
)
from deepcf.serving.scoring import (
    UserScores,
    densify_flat,
    popular_unseen,
    top_k_unseen,
)
from deepcf.serving.sidecar import ModelCard
from deepcf.stats import popularity_weights

PROTOCOLS = ("rating", "topn")


def heldout_errors(scorer, batches, card: ModelCard, chunk: int = 1024) -> dict[str, float]:
    """RMSE / MAE over every held-out rating of `batches` (a RowBatches with targets). An
    item-row model with cached codes is read at the held-out (movie, user) pairs from them: the
    inputs are then the training rows the codes were computed from (the run's own)."""
    import torch

    codes = card.codes if rows_are_items(card.orientation) else None

    sq = ab = 0.0
    n = cold = 0
    for s in range(0, len(batches), chunk):
        batch = batches[np.arange(s, min(s + chunk, len(batches)))]
        if codes is not None:  # an item-row model's cached codes: the (movie, user) pairs only
            out = codes.at(batch["rows"].numpy()[batch["tgt_row"].numpy()],
                           batch["tgt_idx"].numpy())
        else:
            off = batch["in_off"].numpy()
            dense = densify_flat(batch["in_idx"].numpy(), batch["in_val"].numpy(), off,
                                 len(off), scorer.width)
            out = scorer(dense)[batch["tgt_row"].numpy(), batch["tgt_idx"].numpy()]
        pred = clip_or_fallback(torch.from_numpy(out), batch["tgt_cold"], card.rating_min,
                                card.rating_max, card.train_mean).double()
        err = pred - batch["tgt_val"].double()
        sq += float((err * err).sum())
        ab += float(err.abs().sum())
        n += len(err)
        cold += int(batch["tgt_cold"].sum())
    return {"rmse": math.sqrt(sq / n) if n else float("nan"),
            "mae": ab / n if n else float("nan"), "n_ratings": n, "n_fallback": cold}


def heldout_batches(train: sp.csr_matrix, test: sp.csr_matrix, orientation: str):
    """RowBatches over `test` built as RatingsDataModule.setup builds its test set."""
    return heldout_set(*orient((train, test), orientation))


RATING_PROTOCOL_METRICS = ("precision", "recall", "ndcg", "map", "mrr", "hit", "coverage",
                           "gini", "novelty", "pop1%")
TOPN_METRICS = ("precision", "recall_capped", "recall", "ndcg", "map", "mrr", "hit", "coverage",
                "gini", "novelty", "pop1%")


def ranking_metrics(scorer, card: ModelCard, train: sp.csr_matrix, seen: sp.csr_matrix,
                    test: sp.csr_matrix, ks=(10, 20), threshold: float = 4.0,
                    chunk: int = 1024, metrics=None) -> dict[str, float]:
    """Per-user ranking metrics (`metrics`: names or specs, default RATING_PROTOCOL_METRICS at
    every K); all matrices users x movies in the model's id space."""
    users = np.flatnonzero(np.diff(test.indptr) > 0)
    acc = RankingAccumulator(train.shape[1], expand_metrics(metrics or RATING_PROTOCOL_METRICS,
                                                            ks),
                             card.item_train_count, len(card.user_ids))
    kmax = acc.kmax
    n_train = np.diff(train.indptr)
    n_popular = 0
    for part, scores in UserScores(scorer, train, card.orientation, chunk,
                                   card.codes).chunks(users):
        seen_part = seen[part]
        top, _ = top_k_unseen(scores, seen_part, kmax)
        for j in np.flatnonzero(n_train[part] == 0):  # nothing to go on: popularity fallback
            row = seen_part.indices[seen_part.indptr[j] : seen_part.indptr[j + 1]]
            pop = popular_unseen(card.item_train_count, row, kmax)
            top[j] = -1
            top[j, : len(pop)] = pop
            n_popular += 1
        relevant = test[part]
        relevant.data = (relevant.data >= threshold).astype(np.float32)
        acc.add(top, relevant.toarray() > 0)
    out = acc.result()
    out["n_users_popularity_fallback"] = float(n_popular)
    return out


def topn_metrics(score, train: sp.csr_matrix, test: sp.csr_matrix, ks=(10, 20),
                 chunk: int = 512, metrics=None, per_user: bool = False) -> dict:
    """The top-N protocol's ranking metrics of `score(users) -> (len(users), movies) scores` on
    the held-out `test` (users x movies; every stored entry relevant): each user with a held-out
    entry ranks every movie with a training interaction that is not in their `train` row
    (movies no one interacted with in training are never candidates; a held-out movie of that
    kind still counts in the user's |held-out|). `metrics`: names or specs, default
    TOPN_METRICS at every K. With `per_user`, the result's "per_user" holds each evaluated
    user's values (users in order), for paired significance tests."""
    n_movies = train.shape[1]
    item_n = np.bincount(train.indices, minlength=n_movies)
    candidate = item_n > 0
    users = np.flatnonzero(np.diff(test.indptr) > 0)
    acc = RankingAccumulator(n_movies, expand_metrics(metrics or TOPN_METRICS, ks), item_n,
                             int((np.diff(train.indptr) > 0).sum()), per_user=per_user)
    for s in range(0, len(users), chunk):
        part = users[s : s + chunk]
        scores = np.array(score(part), dtype=np.float64, copy=True)
        if scores.shape != (len(part), n_movies):
            raise DataError(f"a ranking model returned scores of shape {scores.shape} for "
                            f"{len(part)} users x {n_movies} movies")
        scores[~np.isfinite(scores)] = -np.inf  # a non-finite score is never recommended
        scores[:, ~candidate] = -np.inf
        top, _ = top_k_unseen(scores, train[part], acc.kmax)
        acc.add(top, test[part].toarray() != 0)
    out = acc.result()
    out["n_users"] = int(len(users))
    if per_user:
        out["per_user"] = acc.per_user_values()
    return out


def topn_protocol(scorer, card: ModelCard, train: sp.csr_matrix, seen: sp.csr_matrix,
                  test: sp.csr_matrix, ks=(10, 20), chunk: int = 1024,
                  pop_beta: float = 0.0, metrics=None, per_user: bool = False) -> dict:
    """The top-N protocol's metrics (`topn_metrics`) of the model on `test`, its inputs the
    `train` rows; movies in `seen` (a superset of train's pattern, e.g. train + validation) are
    never ranked; scores / popularity^pop_beta when pop_beta > 0; all matrices users x movies in
    the model's id space; `per_user`: as topn_metrics'."""
    rows = UserScores(scorer, train, card.orientation, chunk, card.codes)
    w = popularity_weights(card.item_train_count, pop_beta)
    known = sp.csr_matrix(seen, dtype=np.float32, copy=True)
    known.data[:] = 1.0

    def score(users: np.ndarray) -> np.ndarray:
        out = rows.block(users).astype(np.float64) * w
        part = known[users]
        out[np.repeat(np.arange(len(users)), np.diff(part.indptr)), part.indices] = -np.inf
        return out

    return topn_metrics(score, train, test, ks, chunk, metrics, per_user)


def evaluate_matrices(scorer, card: ModelCard, train: sp.csr_matrix, seen: sp.csr_matrix,
                      test: sp.csr_matrix, batches=None, ks=(10, 20), threshold: float = 4.0,
                      chunk: int = 1024, protocol: str = "rating", pop_beta: float = 0.0,
                      metrics=None) -> dict:
    if protocol not in PROTOCOLS:
        raise DeepCFError(f"--protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}")
    if pop_beta and protocol != "topn":
        raise DeepCFError("--pop-beta corrects a ranking: use it with --protocol topn")
    if protocol == "topn":
        return {"protocol": "topn", "ks": list(ks), "pop_beta": float(pop_beta),
                "score_kind": card.score_kind,
                "topn": topn_protocol(scorer, card, train, seen, test, ks, chunk, pop_beta,
                                      metrics)}
    if card.implicit:  # interactions (evaluate_run's split is, evaluate_files makes them so)
        threshold = min(threshold, 1.0)
    if batches is None and card.rates:
        batches = heldout_batches(train, test, card.orientation)
    out = {"score_kind": card.score_kind,
           "rating": heldout_errors(scorer, batches, card, chunk) if card.rates else None,
           "ranking": ranking_metrics(scorer, card, train, seen, test, ks, threshold, chunk,
                                      metrics),
           "threshold": threshold, "ks": list(ks), "protocol": "rating"}
    return out


def evaluate_run(run_dir, model=None, ks=(10, 20), threshold: float = 4.0, chunk: int = 1024,
                 cache_dir: str | None = None, protocol: str = "rating",
                 pop_beta: float = 0.0, metrics=None) -> dict:
    """Re-create the run's split and evaluate its model (or `model`) on the test ratings."""
    model = Path(model) if model else run_model_path(run_dir)
    check_run_dir(run_dir)
    scorer, card = load_model(model)
    dm = run_datamodule(run_dir, cache_dir)
    check_same_movies(card, dm.matrix.item_ids, dm.matrix.user_ids, str(model),
                      f"the data of {run_dir}")
    s = dm.split
    out = evaluate_matrices(scorer, card, s.train, (s.train + s.val).tocsr(), s.test,
                            dm.dataset("test") if protocol == "rating" else None, ks,
                            threshold, chunk, protocol, pop_beta, metrics)
    out.update(model=str(model), data=dm.matrix.source, run_dir=str(run_dir),
               shape=list(dm.matrix.shape), excluded="training and validation ratings")
    trained = best_metrics(run_dir).get("test/rmse") if card.rates else None
    if trained is not None:
        out["training_test_rmse"] = trained
    return out


def _aligned(r: Ratings, user_ids: np.ndarray) -> sp.csr_matrix:
    """r's matrix with its rows moved to the positions of a wider row space."""
    rows = Ratings(r.X, user_ids, r.source).rows_of(r.user_ids)
    X = r.X.tocoo()
    out = sp.csr_matrix((X.data, (rows[X.row], X.col)), shape=(len(user_ids), X.shape[1]),
                        dtype=np.float32)
    out.sort_indices()
    return out


def evaluate_files(model, input_path, target_path, ks=(10, 20), threshold: float = 4.0,
                   chunk: int = 1024, protocol: str = "rating", pop_beta: float = 0.0,
                   metrics=None) -> dict:
    """Evaluate with explicit inputs (training rows) and targets (held-out ratings)."""
    scorer, card = load_model(model)
    inp = read_ratings_source(input_path, card)
    tgt = read_ratings_source(target_path, card, extra_users=inp.user_ids)
    if Path(target_path).suffix == ".npz" or Path(input_path).suffix == ".npz":
        if inp.X.shape != tgt.X.shape:
            raise ModelDataMismatch(f"{input_path} is {inp.X.shape[0]} x {inp.X.shape[1]} but "
                                    f"{target_path} is {tgt.X.shape[0]} x {tgt.X.shape[1]}")
        train, test = inp.X, tgt.X
    else:
        train, test = _aligned(inp, tgt.user_ids), tgt.X
    if rows_are_items(card.orientation) and train.shape[0] != len(card.user_ids):
        raise ModelDataMismatch(f"{input_path}: {train.shape[0]} users, but the model's columns "
                                f"are its {len(card.user_ids)} training users")
    if card.implicit:  # the model's inputs are interactions, as in training

        train, test = (implicit_matrix(m, card.implicit) for m in (train, test))
    out = evaluate_matrices(scorer, card, train, train, test, None, ks, threshold, chunk,
                            protocol, pop_beta, metrics)
    out.update(model=str(model), input=str(input_path), target=str(target_path),
               shape=list(train.shape), excluded="input ratings")
    return out


def format_report(r: dict) -> str:
    lines = [f"model: {r['model']}"]
    if "run_dir" in r:
        lines.append(f"data:  {r['data']} ({r['shape'][0]} users x {r['shape'][1]} movies), "
                     f"the run's test split")
    else:
        lines.append(f"data:  input {r['input']}, held out {r['target']}")
    if r.get("protocol") == "topn":
        t = r["topn"]
        lines.append(f"top-N protocol: {t['n_users']} users with a held-out interaction (every "
                     f"held-out rating relevant; {r['excluded']} excluded; all other movies "
                     f"with a training interaction ranked"
                     + (f"; scores / popularity^{r['pop_beta']:g}" if r.get("pop_beta") else "")
                     + ")")
        lines += metric_table(t, r["ks"])
        return "\n".join(lines)
    rt, rk = r["rating"], r["ranking"]
    if rt is None:
        lines.append(f"held-out ratings: no RMSE/MAE: the model's outputs are {r['score_kind']}s "
                     f"(a ranking model), not ratings")
    else:
        lines.append(f"held-out ratings: RMSE {rt['rmse']:.4f}  MAE {rt['mae']:.4f}  "
                     f"({rt['n_ratings']} ratings, {rt['n_fallback']} by the training-mean "
                     f"fallback)")
    if "training_test_rmse" in r:
        lines.append(f"  training's test/rmse: {r['training_test_rmse']:.4f}")
    lines.append(f"ranking: {int(rk['n_users'])} users with a held-out rating >= "
                 f"{r['threshold']:g} ({r['excluded']} excluded; "
                 f"{int(rk['n_users_popularity_fallback'])} cold users ranked by popularity)")
    lines += metric_table(rk, r["ks"])
    return "\n".join(lines)




def metric_table(result: dict, ks) -> list[str]:
    """A markdown table of a ranking result: one row per K, one column per metric name."""
    names = []
    for key in result:
        name, at, k = key.rpartition("@")
        if at and k.isdigit() and name not in names:
            names.append(name)
    lines = ["| K | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for k in ks:
        cells = [f"{result[f'{n}@{k}']:.4f}" if f"{n}@{k}" in result else "–" for n in names]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return lines
