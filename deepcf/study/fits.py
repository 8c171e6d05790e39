"""The fit functions of `make accuracy`'s rows: `fit(train, val, params, task) -> predictor`.

A predictor is what a protocol scores (deepcf.study.protocols): a rating predictor
`predict(rows, cols) -> ratings` (numpy arrays of user and movie indices), a top-N predictor
`score(users) -> (len(users), movies)` scores, higher is better. It may carry an `info` dict (the
epochs early stopping chose, a blend's weights), reported with the chosen parameters and given
back to the refit.

- the baselines are plain functions of deepcf.study.baselines and deepcf.stats; EASE is EDLAE at
  dropout 0, deepcf's net (one piece of math);
- `contender(overrides)` and `ranker(overrides)`: a `python -m deepcf.train` config trained by
  deepcf's own run (deepcf.study.contenders);
- `blend`, `popularity_corrected` and the EASE + Mult-DAE ensemble combine other fits.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from functools import partial

import numpy as np
import scipy.sparse as sp
import torch
from omegaconf import OmegaConf

from deepcf.errors import ConfigError
from deepcf.models.edlae import EDLAE, top_items
from deepcf.models.sparse_ops import Pattern
from deepcf.serving.evaluate import topn_metrics
from deepcf.stats import fit_biases, item_popularity, popularity_weights
from deepcf.study import baselines as bl
from deepcf.study.contenders import fit_contender, fit_ranker, fit_run, predict_rows
from deepcf.study.glocal import fine_tune
from deepcf.study.protocols import KS
from deepcf.training.config import compose
from deepcf.training.objectives.closed_form import select_options, sparse_rows_scores

# appended to every contender's overrides, after its params (the tests shrink the nets and
# epochs with it)
CONTENDER_EXTRA: list[str] = []
MULT_DAE = ["experiment=mult_dae"]
RECVAE = ["experiment=recvae"]


class _Fitted:
    """A predictor (a callable) with an `info` dict for the report."""

    def __init__(self, fn: Callable, info: dict | None = None):
        self.fn, self.info = fn, info or {}

    def __call__(self, *args):
        return self.fn(*args)


def global_mean(train, val, params, task):
    mu = float(train.data.mean())
    return _Fitted(lambda rows, cols: np.full(len(rows), mu))


def bias(train, val, params, task):
    b = fit_biases(train, **params)
    return _Fitted(lambda rows, cols: bl.predict_biases(*b, rows, cols))


def mf(train, val, params, task):
    return _Fitted(bl.fit_mf(train, seed=task.seed, **params).predict)


def mf_rank(train, val, params, task):
    return _Fitted(bl.fit_mf(train, seed=task.seed, **params).scores)


def popularity(train, val, params, task):
    pop = item_popularity(train)
    return _Fitted(lambda users: np.broadcast_to(pop, (len(users), len(pop))))


def _item_item(train: sp.csr_matrix, W) -> _Fitted:
    """The scores of an item-item model W (movies x movies): each user's binary training
    interactions times W."""
    X = train.copy()
    X.data = np.ones_like(X.data, dtype=np.float64)
    return _Fitted(lambda users: np.asarray(X[users] @ W))


def itemknn(train, val, params, task):
    return _item_item(train, bl.fit_itemknn(train, **params))


def ease(train, val, params, task):
    """EASE (Steck 2019): EDLAE at dropout 0 with `params["lam"]`."""
    return edlae(train, val, {"dropout": 0.0, "lam": params["lam"]}, task)


def popularity_corrected(fit: Callable) -> Callable:
    """The fit function of `fit`'s row with the popularity correction of
    deepcf.stats.popularity_weights: scores / max(popularity, 1)^pop_beta, the
    popularity a movie's training interactions; `pop_beta` is a grid key."""

    def wrapped(train, val, params, task):
        params = dict(params)
        w = popularity_weights(item_popularity(train), float(params.pop("pop_beta")))
        pred = fit(train, val, params, task)
        return _Fitted(lambda users: pred(users) * w, pred.info)

    return wrapped


def grid(**axes) -> list[dict]:
    """Every combination of the axes' values, as grid entries."""
    return [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]


def _overrides(overrides: list[str], params: dict) -> list[str]:
    """A train-config fit's deepcf.train overrides: the row's, its params, CONTENDER_EXTRA."""
    return [*overrides, *(f"{k}={v}" for k, v in params.items()), *CONTENDER_EXTRA]


# The train-config fit functions are partials of module functions, not closures: they pickle,
# so `accuracy --scale` can send a row to the spawned process that fits it.
def contender(overrides: list[str]) -> Callable:
    """The fit function of the train config `overrides` (see deepcf.study.contenders)."""
    return partial(_contender_fit, list(overrides))


def _contender_fit(overrides, train, val, params, task):
    params = dict(params)
    epochs = params.pop("epochs", None)
    net, orientation, info = fit_contender(_overrides(overrides, params), train, val,
                                           (task.rating_min, task.rating_max), task.seed, epochs)
    return _Fitted(lambda rows, cols: predict_rows(net, orientation, train, rows, cols), info)


def glocal_k(overrides: list[str]) -> Callable:
    """GLocal-K's two stages: the local kernel net of the train config `overrides` (rows are
    movies; early-stopped on the carve, or `epochs` epochs), then its global-kernel fine-tuning
    (deepcf.study.glocal; early-stopped on the carve, or `ft_epochs` epochs)."""
    return partial(_glocal_k_fit, list(overrides))


def _glocal_k_fit(overrides, train, val, params, task):
    params = dict(params)
    epochs, ft_epochs = params.pop("epochs", None), params.pop("ft_epochs", None)
    net, cfg, info = fit_run(_overrides(overrides, params), train, val,
                             (task.rating_min, task.rating_max), task.seed, epochs)
    if cfg.data.orientation != "item":
        raise ConfigError(f"{' '.join(overrides)}: the global kernel convolves the movies x "
                          f"users matrix: data.orientation must be item")
    P, ft_info = fine_tune(net, sp.csr_matrix(train, dtype=np.float32).T.tocsr(),
                           None if val is None else sp.csr_matrix(val).T.tocsr(),
                           (task.rating_min, task.rating_max), float(cfg.model.l2),
                           epochs=ft_epochs)
    return _Fitted(lambda rows, cols: P[cols, rows].astype(np.float64), {**info, **ft_info})


def blend(members: dict[str, tuple[Callable, dict]]) -> Callable:
    """The fit function of a least-squares blend of rows' fits: r = w0 + sum_m w_m * clip(m).

    `members`: name -> (a row's fit function, its params). On the carve every member is fitted
    on the carve's `fit` part (contenders early-stop on the carve) and the weights are fitted by
    least squares on the carve's ratings; the info holds the weights (`w0`, `w_<name>`) and each
    member's own info as `<name>:<key>` (its epochs), which the refit gets back as params."""

    def fit(train, val, params, task):
        lo, hi = task.rating_min, task.rating_max
        preds, info = [], {}
        for name, (member, member_params) in members.items():
            own = {k.split(":", 1)[1]: v for k, v in params.items()
                   if k.startswith(f"{name}:")}
            pred = member(train, val, {**member_params, **own}, task)
            preds.append(pred)
            info.update({f"{name}:{k}": v for k, v in pred.info.items()})

        def features(rows, cols):
            return np.column_stack([np.ones(len(rows)),
                                    *(np.clip(p(rows, cols), lo, hi) for p in preds)])

        if val is not None:
            V = val.tocoo()
            A = features(V.row.astype(np.int64), V.col.astype(np.int64))
            w = np.linalg.lstsq(A, V.data.astype(np.float64), rcond=None)[0]
        else:
            w = np.array([params["w0"], *(params[f"w_{n}"] for n in members)], dtype=np.float64)
        info.update({"w0": float(w[0]), **{f"w_{n}": float(x) for n, x in zip(members, w[1:])}})
        return _Fitted(lambda rows, cols: features(rows, cols) @ w, info)

    return fit


def ranker(overrides: list[str]) -> Callable:
    """The top-N fit function of the ranking train config `overrides`
    (deepcf.study.contenders.fit_ranker): early-stopped on the carve's NDCG@10."""
    return partial(_ranker_fit, list(overrides))


def _ranker_fit(overrides, train, val, params, task):
    params = dict(params)
    epochs = params.pop("epochs", None)
    score, info = fit_ranker(_overrides(overrides, params), train, val, task.seed, epochs)
    return _Fitted(score, info)


def edlae(train, val, params, task):
    """deepcf's EDLAE net (deepcf.models.edlae) fitted in closed form on the training rows;
    a user's scores are its forward on the user's training row, as served. Options set to
    `auto` are chosen on the carve `val` (deepcf.training.objectives.closed_form.select_options,
    as `deepcf.train` does); the info holds the chosen values, which the refit gets back."""
    net = EDLAE.build(train.shape[1], **params)
    if net.needs_train_rows:  # max_items: which movies to model
        net.fit_data(train)
    info = {}
    if net.selection_stages():
        X = train.tocsr()
        rows = Pattern.from_offsets(torch.from_numpy(X.indptr[:-1].astype("int64")),
                                    torch.from_numpy(X.indices.astype("int64")), net.width)
        chosen, _ = select_options(net, net.closed_form_stats(rows, torch.from_numpy(X.data)),
                                   X, val)
        info = {**chosen, "lam_unit": net.config.lam_unit}
    net.fit_closed_form(train)
    X = sp.csr_matrix(train)
    return _Fitted(lambda users: sparse_rows_scores(net, X[np.asarray(users)]), info)


def shipped_model(experiment: str) -> dict:
    """The net options of `conf/experiment/<experiment>.yaml` over its model group's defaults
    (the keys the net takes; the module's own keys dropped)."""

    net = OmegaConf.to_container(compose([f"experiment={experiment}"]).model.net)
    net.pop("_target_")
    return net


def edlae_shipped(train, val, params, task):
    """`experiment=edlae` as shipped: its auto options chosen on the carve, then refitted at
    the chosen values (`params`: what the carve fit chose)."""
    shipped = {**shipped_model("edlae"), **params}
    pred = edlae(train, val, shipped, task)
    if not pred.info:
        pred.info = {k: v for k, v in shipped.items() if not k.endswith("_grid")}
    return pred


def _standardised(S: np.ndarray) -> np.ndarray:
    """Each row of scores shifted and scaled to mean 0, std 1 (over every movie)."""
    S = np.asarray(S, np.float64)
    return (S - S.mean(1, keepdims=True)) / np.maximum(S.std(1, keepdims=True), 1e-12)


BLEND_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 0.8, 0.85, 0.9, 1.0)
# the EASE + Mult-DAE row's carve coverage@10 floor: 0, the best carve NDCG@10. With a floor of
# 0.30 every split of ML-100K chose w = 1 (Mult-DAE alone: carve coverage@10 runs below test
# coverage, 0.29 vs 0.32 at w = 0.9 on split 0), a copy of the Mult-DAE row.
BLEND_MIN_COVERAGE = 0.0


def blend_weight(score_a, score_b, fit, val, weights=BLEND_WEIGHTS,
                 min_coverage: float | None = None) -> float:
    """The weight w of (1 - w) * a + w * b (standardised scores) with the best carve NDCG@10
    among those whose carve coverage@10 >= `min_coverage` (default 0: no floor; the best
    NDCG@10 if none reaches it)."""
    min_coverage = 0.0 if min_coverage is None else min_coverage
    scored = []
    for w in weights:
        m = topn_metrics(lambda u, w=w: (1 - w) * _standardised(score_a(u))
                         + w * _standardised(score_b(u)), fit, val, KS)
        scored.append((m["coverage@10"] >= min_coverage, m["ndcg@10"], w))
    return max(scored)[2]


def ease_dae_blend(train, val, params, task):
    """EASE and Mult-DAE, their standardised scores blended (1 - w) * EASE + w * Mult-DAE; w
    chosen on the carve (blend_weight's rule), the refit keeps it and the DAE's epochs."""
    params = dict(params)
    w, lam = params.pop("w", None), params.pop("lam")
    dae = ranker(MULT_DAE)(train, val, params, task)
    ease_fit = ease(train, val, {"lam": lam}, task)
    if val is not None:
        w = blend_weight(ease_fit, dae, train, val, min_coverage=BLEND_MIN_COVERAGE)
    info = {"epochs": dae.info["epochs"], "w": float(w)}
    return _Fitted(lambda users: (1 - w) * _standardised(ease_fit(users))
                   + w * _standardised(dae(users)), info)


def ease_top(train, val, params, task):
    """EASE in float32 (deepcf.study.baselines.fit_ease_f32) on the `max_items` movies with the
    most training interactions (all when 0 or absent); the other movies score -inf (never
    recommended): the EASE baseline where a movies x movies matrix of the whole catalogue does
    not fit in memory."""
    items = top_items(train, int(params.get("max_items", 0) or 0))
    items, B = bl.fit_ease_f32(train, float(params["lam"]), items,
                               float(params.get("dropout", 0.0)))
    X = sp.csr_matrix(train[:, items], dtype=np.float32, copy=True)
    X.data[:] = 1.0

    def score(users):
        out = np.full((len(users), train.shape[1]), -np.inf, np.float32)
        out[:, items] = X[users] @ B
        return out

    return _Fitted(score, {"movies": len(items)})
