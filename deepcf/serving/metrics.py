"""Top-K ranking and popularity-bias metrics: one registry for training, `evaluate` and the study.

A metric is named by a spec `NAME@K` (`ndcg@10`, `recall_capped@20`); the registry `METRICS` maps
NAME to a `Metric`. Two kinds:

- per-user: `per_user(hits, n_relevant, k) -> (users,)`, from the (users, K) bool matrix of
  "the movie at rank r is relevant" (best first) and each user's number of relevant held-out
  movies; averaged over the users with a relevant movie (the others are left out and counted);
- catalog: `catalog(counts, catalog) -> float`, from how often each movie was recommended in
  the users' top K (`counts`, every movie, zeros included) and the training facts (`Catalog`:
  each movie's training interactions, the number of training users).

The metrics (relevant: a held-out movie; binary relevance):
- precision@K = hits in the top K / K;
- recall@K = hits / |relevant|; recall_capped@K = hits / min(K, |relevant|) (the top-N protocol's
  Recall, so that a user with more relevant movies than K can still reach 1);
- ndcg@K = sum over hits of 1/log2(rank + 1) / the same for an ideal list of min(K, |relevant|)
  hits;
- map@K = sum over the ranks r <= K that hold a hit of precision@r, / min(K, |relevant|);
- mrr@K = 1 / the rank of the first hit within the top K (0 without one);
- hit@K = 1 when the top K holds a hit (hit rate);
- coverage@K: distinct movies in any user's top K / all movies;
- gini@K: Gini index of how often each movie is recommended (0: evenly, -> 1: one movie);
- novelty@K: mean self-information -log2(p_i) of the recommended movies, p_i the share of
  training users who interacted with movie i (at least 1 user), over every recommended slot;
- pop1%@K: share of the top-K slots taken by the 1% most popular movies (ceil(1% of movies), by
  training interactions; ties by movie order).

Adding a metric is one new file: a `Metric` object, named in a spec as `module.path:NAME@K`
(imported on first use, e.g. `model.metrics=[ndcg@10,mypkg.metrics:hit2@10]`), or registered
with `register_metric` by a module deepcf imports.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from deepcf.errors import ConfigError


@dataclass(frozen=True)
class Catalog:
    """The training facts a catalog metric may use."""

    item_count: np.ndarray  # training interactions of each movie
    n_users: int  # training users


@dataclass(frozen=True)
class Metric:
    name: str
    per_user: Callable[[np.ndarray, np.ndarray, int], np.ndarray] | None = None
    catalog: Callable[[np.ndarray, Catalog], float] | None = None
    doc: str = ""

    def __post_init__(self) -> None:
        if (self.per_user is None) == (self.catalog is None):
            raise ConfigError(f"metric {self.name!r}: give exactly one of per_user, catalog")


METRICS: dict[str, Metric] = {}


def register_metric(metric: Metric) -> Metric:
    if metric.name in METRICS and METRICS[metric.name] is not metric:
        raise ConfigError(f"a ranking metric named {metric.name!r} is already registered")
    METRICS[metric.name] = metric
    return metric


@dataclass(frozen=True)
class MetricSpec:
    metric: Metric
    k: int

    @property
    def key(self) -> str:
        return f"{self.metric.name}@{self.k}"


def parse_metric(spec: str, key: str = "metric") -> MetricSpec:
    """`NAME@K` or `module.path:NAME@K` (a Metric object NAME of that module) as a MetricSpec;
    anything else is one line naming `key`."""
    text = str(spec).strip()
    name, at, k = text.rpartition("@")
    if not at or not k.isdigit() or int(k) < 1:
        raise ConfigError(f"{key}={text!r}: a ranking metric is NAME@K with K >= 1 (e.g. "
                          f"ndcg@10); metrics: {', '.join(METRICS)}")
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            metric = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError, ValueError):
            raise ConfigError(f"{key}={text!r}: no metric {attr!r} in module {module!r}") from None
        if not isinstance(metric, Metric):
            raise ConfigError(f"{key}={text!r}: {module}:{attr} is not a "
                              f"deepcf.serving.metrics.Metric")
    elif name in METRICS:
        metric = METRICS[name]
    else:
        raise ConfigError(f"{key}={text!r}: no ranking metric {name!r} (metrics: "
                          f"{', '.join(METRICS)}; or module.path:NAME@K)")
    return MetricSpec(metric, int(k))


BUILTIN = ("precision", "recall", "recall_capped", "ndcg", "map", "mrr", "hit", "coverage", "gini",
           "novelty", "pop1%")


def expand_metrics(names, ks) -> list[str]:
    """Specs from metric names and cutoffs: a name without `@K` is taken at every K of `ks`
    (`ndcg` -> ndcg@10, ndcg@20); a spec with `@K` stays as it is. None: every built-in."""
    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]
    out = []
    for name in (BUILTIN if names is None else names):
        name = str(name).strip()
        out += [name] if "@" in name else [f"{name}@{int(k)}" for k in ks]
    return out


def parse_metrics(specs, key: str = "metrics") -> list[MetricSpec]:
    """A list (or comma-separated string) of specs; duplicates are dropped, order kept."""
    if isinstance(specs, str):
        specs = [s for s in specs.split(",") if s.strip()]
    out: dict[str, MetricSpec] = {}
    for s in specs or []:
        m = s if isinstance(s, MetricSpec) else parse_metric(s, key)
        out.setdefault(m.key, m)
    return list(out.values())


# -- the per-user and catalog formulas ---------------------------------------------------------
def hits_matrix(top: np.ndarray, relevant_dense: np.ndarray) -> np.ndarray:
    """(users, K) bool: is the movie at each rank relevant? Index -1 (no movie) never is."""
    rows = np.arange(len(top))[:, None]
    return relevant_dense[rows, np.maximum(top, 0)] & (top >= 0)


def precision_at(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    return hits[:, :k].sum(1) / k


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


def map_at(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    h = hits[:, :k].astype(np.float64)
    prec = np.cumsum(h, 1) / np.arange(1, h.shape[1] + 1)
    return (prec * h).sum(1) / np.maximum(np.minimum(n_relevant, k), 1)


def mrr_at(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    h = hits[:, :k]
    first = h.argmax(1)
    return np.where(h.any(1), 1.0 / (first + 1), 0.0)


def hit_at(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    return hits[:, :k].any(1).astype(np.float64)


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


def coverage(counts: np.ndarray, catalog: Catalog) -> float:
    return float((counts > 0).sum() / max(len(counts), 1))


def novelty(counts: np.ndarray, catalog: Catalog) -> float:
    slots = counts.sum()
    if not slots:
        return 0.0
    p = np.maximum(np.asarray(catalog.item_count, np.float64), 1.0) / max(catalog.n_users, 1)
    return float((counts * -np.log2(np.minimum(p, 1.0))).sum() / slots)


def popular_share(counts: np.ndarray, catalog: Catalog) -> float:
    slots = counts.sum()
    return float(counts[top_popular(catalog.item_count)].sum() / slots) if slots else 0.0


for _m in (
    Metric("precision", per_user=precision_at, doc="hits / K"),
    Metric("recall", per_user=recall_at, doc="hits / |relevant|"),
    Metric("recall_capped", per_user=lambda h, n, k: recall_at(h, n, k, capped=True),
           doc="hits / min(K, |relevant|)"),
    Metric("ndcg", per_user=ndcg_at, doc="binary NDCG, ideal over min(K, |relevant|)"),
    Metric("map", per_user=map_at, doc="average precision, / min(K, |relevant|)"),
    Metric("mrr", per_user=mrr_at, doc="1 / rank of the first hit"),
    Metric("hit", per_user=hit_at, doc="1 when the top K holds a hit"),
    Metric("coverage", catalog=coverage, doc="distinct movies recommended / all movies"),
    Metric("gini", catalog=lambda c, cat: gini(c), doc="Gini index of recommendation counts"),
    Metric("novelty", catalog=novelty, doc="mean -log2(share of users with the movie)"),
    Metric("pop1%", catalog=popular_share, doc="share of slots of the 1% most popular movies"),
):
    register_metric(_m)


class RankingAccumulator:
    """Collects per-user metric sums and recommendation counts chunk by chunk.

    `metrics`: specs (strings or MetricSpecs). `item_count`: training interactions per movie,
    `n_train_users`: training users (catalog metrics). The state is three arrays (`state`), so
    accumulators of several processes add up (`merge`). With `per_user=True` each evaluated
    user's values are kept too (`per_user_values`), for paired significance tests."""

    def __init__(self, n_movies: int, metrics, item_count: np.ndarray,
                 n_train_users: int = 1, per_user: bool = False):
        self.specs = parse_metrics(metrics)
        if not self.specs:
            raise ConfigError("a ranking evaluation needs at least one metric")
        self.n_movies = n_movies
        self.catalog = Catalog(np.asarray(item_count), int(n_train_users))
        self.user_specs = [s for s in self.specs if s.metric.per_user is not None]
        self.ks = sorted({s.k for s in self.specs})
        self.kmax = self.ks[-1]
        self.sums = np.zeros(len(self.user_specs))
        self.counts = np.zeros((len(self.ks), n_movies), np.int64)
        self.n_users = 0
        self._per_user: list[np.ndarray] | None = [] if per_user else None

    def add(self, top: np.ndarray, relevant_dense: np.ndarray) -> None:
        """top: (users, >= max K) movie indices best first (-1: none); relevant_dense:
        (users, movies) bool."""
        n_rel = relevant_dense.sum(1)
        keep = n_rel > 0
        top, n_rel = top[keep], n_rel[keep]
        hits = hits_matrix(top, relevant_dense[keep])
        values = np.stack([s.metric.per_user(hits, n_rel, s.k) for s in self.user_specs], 1) \
            if self.user_specs else np.zeros((len(top), 0))
        self.sums += values.sum(0)
        if self._per_user is not None:
            self._per_user.append(values)
        for i, k in enumerate(self.ks):
            shown = top[:, :k]
            self.counts[i] += np.bincount(shown[shown >= 0], minlength=self.n_movies)
        self.n_users += int(keep.sum())

    def state(self) -> tuple[np.ndarray, np.ndarray, int]:
        return self.sums, self.counts, self.n_users

    def merge(self, sums: np.ndarray, counts: np.ndarray, n_users: int) -> None:
        """Replace the state by the given totals (e.g. summed over DDP ranks)."""
        self.sums, self.counts, self.n_users = np.asarray(sums), np.asarray(counts), int(n_users)

    def per_user_values(self) -> dict[str, np.ndarray]:
        if self._per_user is None:
            raise ConfigError("per-user values were not kept (per_user=False)")
        v = np.concatenate(self._per_user) if self._per_user else np.zeros((0, len(self.sums)))
        return {s.key: v[:, i] for i, s in enumerate(self.user_specs)}

    def result(self) -> dict[str, float]:
        out: dict[str, float] = {"n_users": float(self.n_users)}
        for i, s in enumerate(self.user_specs):
            out[s.key] = float(self.sums[i] / self.n_users) if self.n_users else float("nan")
        for s in self.specs:
            if s.metric.catalog is not None:
                out[s.key] = float(s.metric.catalog(self.counts[self.ks.index(s.k)],
                                                    self.catalog))
        return out
