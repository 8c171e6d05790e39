"""Top-K ranking and popularity-bias metrics, per user then averaged (RecBole style).

- relevant: a held-out rating >= `threshold` (binary relevance); users with no relevant held-out
  movie are left out of the averages (and counted).
- Recall@K = hits in the top K / number of relevant movies; with `recall="capped"` (the top-N
  protocol of deepcf.study.protocols) hits / min(K, number of relevant movies), so a user with
  more relevant movies than K can still reach 1.
- NDCG@K = sum over hits of 1/log2(rank + 1) / the same sum for an ideal list of
  min(K, relevant) hits.
- coverage@K: distinct movies in any user's top K / all movies.
- Gini@K: Gini index of how often each movie (all movies, zeros included) is recommended.
- pop1%@K: share of all top-K slots taken by the 1% most popular movies (ceil(1% of movies),
  by training rating count; ties by movie order).
"""

from __future__ import annotations

import math

import numpy as np


def hits_matrix(top: np.ndarray, relevant_dense: np.ndarray) -> np.ndarray:
    """(users, K) bool: is the movie at each rank relevant? Index -1 (no movie) never is."""
    rows = np.arange(len(top))[:, None]
    return relevant_dense[rows, np.maximum(top, 0)] & (top >= 0)


def recall_at(hits: np.ndarray, n_relevant: np.ndarray, k: int,
              capped: bool = False) -> np.ndarray:
    """hits@K / |relevant|, or hits@K / min(K, |relevant|) when `capped`."""
    denom = np.minimum(n_relevant, k) if capped else n_relevant
    return hits[:, :k].sum(1) / np.maximum(denom, 1)


def ndcg_at(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = (hits[:, :k] * disc[: hits[:, :k].shape[1]]).sum(1)
    ideal = np.concatenate([[0.0], np.cumsum(disc)])[np.minimum(n_relevant, k)]
    return np.where(ideal > 0, dcg / np.where(ideal > 0, ideal, 1.0), 0.0)


def gini(counts: np.ndarray) -> float:
    """Gini index of non-negative counts: 0 all equal, -> 1 all on one movie."""
    x = np.sort(np.asarray(counts, np.float64))
    n, total = len(x), x.sum()
    if n == 0 or total == 0:
        return 0.0
    i = np.arange(1, n + 1)
    return float(((2 * i - n - 1) * x).sum() / (n * total))


def top_popular(item_count: np.ndarray, share: float = 0.01) -> np.ndarray:
    n = max(1, math.ceil(share * len(item_count)))
    return np.argsort(-np.asarray(item_count), kind="stable")[:n]


class RankingAccumulator:
    """Collects per-user metrics and recommendation counts chunk by chunk."""

    def __init__(self, n_movies: int, ks: list[int], item_count: np.ndarray,
                 recall: str = "relevant"):
        if recall not in ("relevant", "capped"):
            raise ValueError(f"recall={recall!r} is not 'relevant' or 'capped'")
        self.ks, self.n_movies = sorted(ks), n_movies
        self.capped = recall == "capped"
        self.popular = top_popular(item_count)
        self.per_user = {f"{m}@{k}": [] for k in self.ks for m in ("recall", "ndcg")}
        self.rec_counts = {k: np.zeros(n_movies, np.int64) for k in self.ks}
        self.n_users = 0

    def add(self, top: np.ndarray, relevant_dense: np.ndarray) -> None:
        """top: (users, max K) movie indices best first; relevant_dense: (users, movies) bool."""
        n_rel = relevant_dense.sum(1)
        keep = n_rel > 0
        top, n_rel = top[keep], n_rel[keep]
        hits = hits_matrix(top, relevant_dense[keep])
        for k in self.ks:
            self.per_user[f"recall@{k}"].append(recall_at(hits, n_rel, k, self.capped))
            self.per_user[f"ndcg@{k}"].append(ndcg_at(hits, n_rel, k))
            shown = top[:, :k]
            self.rec_counts[k] += np.bincount(shown[shown >= 0], minlength=self.n_movies)
        self.n_users += int(keep.sum())

    def result(self) -> dict[str, float]:
        out: dict[str, float] = {"n_users": float(self.n_users)}
        for name, parts in self.per_user.items():
            out[name] = float(np.concatenate(parts).mean()) if self.n_users else float("nan")
        for k, counts in self.rec_counts.items():
            slots = counts.sum()
            out[f"coverage@{k}"] = float((counts > 0).sum() / self.n_movies)
            out[f"gini@{k}"] = gini(counts)
            out[f"pop1%@{k}"] = float(counts[self.popular].sum() / slots) if slots else 0.0
        return out
