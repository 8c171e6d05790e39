"""The selection runner of `make accuracy`: every row of a protocol on its splits.

A row (`Row`, registered in `ROWS` by deepcf.study.rows) is a name, its protocol ("rating" or
"topn"), a fit function (deepcf.study.fits), a grid of hyper-parameters tried on the protocol's
validation carve, and the defaults used untuned on other data sets.

Selection (deepcf.study.protocols): with more than one grid entry, each is fitted on the
carve's `fit` part (`val` passed, for early stopping) and scored on `val` (rating: RMSE; top-N:
NDCG@10); the best is refitted on all of the training part (`val=None`) when the row's `refit`
is true, else its fit on the carve is kept. A row with `select_epochs` is always fitted on the
carve first, and its refit gets that fit's `info` (the epochs early stopping chose, a blend's
weights) as parameters. Rows of kind "contender" (the autoencoders and deepcf's nets) and
"ensemble" (never counted as a single model) follow the baselines. The renderer of ACCURACY.md
is deepcf.study.render.
"""

from __future__ import annotations

import math
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import scipy.sparse as sp

from deepcf.errors import ConfigError, DeepCFError
from deepcf.serving.evaluate import topn_metrics
from deepcf.stats import paired_test
from deepcf.study.experiments import mean_std
from deepcf.study.parity import PARITY_TOLERANCE, parity_rows, run_parity
from deepcf.study.protocols import KS, SEEDS, rating_errors, rating_split, topn_split

# the targets (single models, selection on validation only): RMSE, and NDCG@10 with coverage
RATING_TARGET = 0.878
NDCG_TARGET = 0.46
EASE_ROW = "EASE"  # the ranking targets' reference row
# the top-N rows' carve rule: only settings whose carve coverage@10 reaches a row's
# `min_coverage` are eligible. COVERAGE_TARGET as a row's min_coverage is the floor "at least
# EASE's": on each split, the carve coverage@10 of the setting the EASE row chose there
COVERAGE_TARGET = "EASE"
# the paired test over the users of a test set (deepcf.stats.paired_test) and what it pairs:
# per-user NDCG@10 (top-N), per-user mean squared error (rating)
SIGNIFICANCE_TEST = "wilcoxon"
PAIRED_METRIC = {"topn": "ndcg@10", "rating": "se"}


@dataclass
class Task:
    """What a fit function may need besides the matrices."""

    rating_min: float
    rating_max: float
    seed: int  # the split seed; a row's own randomness should derive from it
    # the carve coverage@10 of the EASE row's choice on this split (top-N; None until it ran)
    ease_coverage: float | None = None

    def coverage_floor(self, min_coverage: float | str | None) -> float | None:
        """A row's `min_coverage` as a number on this split (COVERAGE_TARGET: EASE's)."""
        if min_coverage != COVERAGE_TARGET:
            return min_coverage
        if self.ease_coverage is None:
            raise ConfigError(f"a coverage floor of {COVERAGE_TARGET}'s needs the {EASE_ROW} "
                              f"row to run first on the split")
        return self.ease_coverage


@dataclass
class Row:
    name: str
    protocol: str  # "rating" or "topn"
    fit: Callable  # fit(train, val | None, params, task) -> predictor
    grid: list[dict] = field(default_factory=lambda: [{}])
    defaults: dict | None = None  # untuned settings for other data (None: the first grid entry)
    kind: str = "baseline"  # baseline | contender | ensemble (ensembles never count as single)
    refit: bool = True  # refit the chosen settings on all of the training part
    # fit on the carve even for one grid entry, and refit with what that fit chose: the
    # predictor's info (its "epochs", a blend's weights) is added to the refit's params
    select_epochs: bool = False
    fallback: bool = True  # rating rows: cold ratings by the protocol's declared fallback
    # top-N rows: only settings whose carve coverage@10 reaches this are eligible (a number, or
    # COVERAGE_TARGET: the EASE row's carve coverage@10 on the split); none eligible: the best
    # carve NDCG@10 of all
    min_coverage: float | str | None = None
    note: str = ""

    def __post_init__(self) -> None:
        if self.protocol not in ("rating", "topn"):
            raise ConfigError(f"row {self.name!r}: protocol {self.protocol!r} is not rating or "
                              f"topn")
        if self.kind not in ("baseline", "contender", "ensemble"):
            raise ConfigError(f"row {self.name!r}: kind {self.kind!r} is not baseline, "
                              f"contender or ensemble")
        if not self.grid:
            raise ConfigError(f"row {self.name!r}: empty grid")

    def fits_on_carve(self, tune: bool = True) -> bool:
        """Whether `run_row` fits (some of) the grid on the validation carve."""
        return (tune and len(self.grid) > 1) or not self.refit or self.select_epochs

    @property
    def default_params(self) -> dict:
        return dict(self.grid[0] if self.defaults is None else self.defaults)


ROWS: dict[str, Row] = {}


def register(row: Row) -> Row:
    """Add a row to what `make accuracy` runs (one name per protocol)."""
    key = f"{row.protocol}:{row.name}"
    if key in ROWS:
        raise ConfigError(f"a {row.protocol} row named {row.name!r} is already registered")
    ROWS[key] = row
    return row


def rows_of(protocol: str, rows: dict[str, Row] | None = None) -> list[Row]:
    return [r for r in (ROWS if rows is None else rows).values() if r.protocol == protocol]


@dataclass
class RowResult:
    row: Row
    metrics: list[dict] = field(default_factory=list)  # per split, test metrics
    params: list[dict] = field(default_factory=list)  # per split, chosen settings
    info: list[dict] = field(default_factory=list)  # per split, the predictor's info
    val: list[float] = field(default_factory=list)  # per split, the chosen entry's val score
    # per split, the chosen entry's carve coverage@10 (top-N rows fitted on the carve, else nan)
    val_coverage: list[float] = field(default_factory=list)
    # per split, each test user's values ({"ndcg@10": ...} / {"se": ...}, users in order)
    per_user: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None


def _val_score(row: Row, predictor, fit: sp.csr_matrix, val: sp.csr_matrix, task: Task
               ) -> tuple[float, bool, float]:
    """(the carve's score, whether the setting is eligible under the row's min_coverage, the
    carve coverage@10: nan for rating rows)."""
    if row.protocol == "rating":
        return rating_errors(predictor, fit, val, task.rating_min, task.rating_max,
                             row.fallback)["rmse"], True, float("nan")
    m = topn_metrics(predictor, fit, val, KS)
    floor = task.coverage_floor(row.min_coverage)
    return m["ndcg@10"], floor is None or m["coverage@10"] >= floor, float(m["coverage@10"])


def run_row(row: Row, split, task: Task, tune: bool = True) -> tuple[dict, dict, dict, float]:
    """(test metrics, chosen params, predictor info, val score of the choice) on one split. The
    test metrics hold the choice's carve coverage@10 too, as "val_coverage@10" (top-N rows
    fitted on the carve; else nan)."""
    better = (lambda a, b: a < b) if row.protocol == "rating" else (lambda a, b: a > b)
    grid = row.grid if tune else [row.default_params]
    best, best_val, best_ok, best_pred = dict(grid[0]), float("nan"), False, None
    best_cov = float("nan")
    if row.fits_on_carve(tune):
        for params in grid:
            pred = row.fit(split.fit, split.val, dict(params), task)
            v, ok, cov = _val_score(row, pred, split.fit, split.val, task)
            if best_pred is None or (ok and not best_ok) or (
                    ok == best_ok and math.isfinite(v)
                    and (not math.isfinite(best_val) or better(v, best_val))):
                best, best_val, best_ok, best_pred, best_cov = dict(params), v, ok, pred, cov
    if row.refit:
        params = dict(best)
        if row.select_epochs:  # the epochs (and what else the carve fit chose, e.g. blend
            params.update(best_pred.info)  # weights) carry over to the refit
        pred, fitted_on = row.fit(split.train, None, params, task), split.train
    else:
        pred, fitted_on = best_pred, split.fit
    if row.protocol == "rating":
        metrics = rating_errors(pred, fitted_on, split.test, task.rating_min, task.rating_max,
                                row.fallback, per_user=True)
    else:
        metrics = topn_metrics(pred, fitted_on, split.test, KS, per_user=True)
    metrics["val_coverage@10"] = best_cov
    return metrics, best, dict(getattr(pred, "info", {}) or {}), best_val


def run_protocol(protocol: str, data, seeds, rows: list[Row], tune: bool = True,
                 log: Callable[[str], None] = print) -> list[RowResult]:
    """Every row of one protocol on the splits of `seeds` of `data` (a RatingMatrix). The EASE
    row's carve coverage@10 on each split is the floor of the rows whose min_coverage is
    COVERAGE_TARGET (their selection needs the EASE row to come before them)."""
    split_fn = rating_split if protocol == "rating" else topn_split
    splits = [split_fn(data, s) for s in seeds]
    tasks = [Task(data.rating_min, data.rating_max, int(s)) for s in seeds]
    results = [RowResult(r) for r in rows]
    for res in results:
        t0 = time.perf_counter()
        try:
            for task, split in zip(tasks, splits):
                m, p, info, v = run_row(res.row, split, task, tune)
                res.val_coverage.append(m.pop("val_coverage@10", float("nan")))
                if res.row.name == EASE_ROW and protocol == "topn":
                    task.ease_coverage = res.val_coverage[-1]
                res.per_user.append(m.pop("per_user", {}))
                res.metrics.append(m)
                res.params.append(p)
                res.info.append(info)
                res.val.append(v)
        except DeepCFError as e:  # a row that cannot run is a measured failure, not a crash
            res.error = " ".join(str(e).split())
        except Exception as e:  # a bug in one row: shown as its failure, the others still run
            traceback.print_exc()
            res.error = f"{type(e).__name__}: " + " ".join(str(e).split())
        res.seconds = time.perf_counter() - t0
        log(f"{protocol}: {res.row.name}: {_summary(res)} ({res.seconds:.1f} s)")
    return results


def _summary(res: RowResult) -> str:
    if res.error:
        return f"failed: {res.error}"
    key = "rmse" if res.row.protocol == "rating" else "ndcg@10"
    return f"{key} {ms([m[key] for m in res.metrics])}"


def ms(values) -> str:
    return mean_std(values, bad="not finite")


def _mean(res: RowResult, key: str) -> float:
    v = np.array([m[key] for m in res.metrics], dtype=float)
    return float(v.mean()) if len(v) and np.isfinite(v).all() else float("nan")


def _std(res: RowResult, key: str) -> float:
    v = np.array([m[key] for m in res.metrics], dtype=float)
    return float(v.std(ddof=1)) if len(v) > 1 and np.isfinite(v).all() else 0.0


def targets(rating: list[RowResult], topn: list[RowResult], parity: list[dict] | None = None
            ) -> list[dict]:
    """The targets' status from the computed rows (ensembles never count as single models;
    the ranking targets are relative to the EASE row: above its mean NDCG@10 by more than its
    std over splits, with at least its coverage@10), and with `parity` (deepcf.study.parity
    .parity_rows) whether the recommended experiments as a user trains them reproduce their
    rows split by split."""
    out = _parity_targets(parity) if parity else []
    single = [r for r in rating if not r.error and r.row.kind != "ensemble"]
    best = min(single, key=lambda r: (np.nan_to_num(_mean(r, "rmse"), nan=np.inf)),
               default=None)
    rmse = _mean(best, "rmse") if best else float("nan")
    out.append({"target": f"best single rating model: RMSE <= {RATING_TARGET} (mean of splits)",
                "best": best.row.name if best else "–",
                "value": f"RMSE {rmse:.4f}" if best else "–",
                "met": bool(best) and rmse <= RATING_TARGET})
    ok = [r for r in topn if not r.error and r.row.kind != "ensemble"]
    ease = next((r for r in ok if r.row.name == EASE_ROW), None)
    if ease is None:
        return out
    bar, cov = _mean(ease, "ndcg@10") + _std(ease, "ndcg@10"), _mean(ease, "coverage@10")
    rivals = [r for r in ok if r is not ease and _mean(r, "coverage@10") >= cov]
    best = max(rivals, key=lambda r: np.nan_to_num(_mean(r, "ndcg@10"), nan=-np.inf),
               default=None)
    value = (f"NDCG@10 {_mean(best, 'ndcg@10'):.4f} ± {_std(best, 'ndcg@10'):.4f}, coverage@10 "
             f"{_mean(best, 'coverage@10'):.4f}") if best else "–"
    out.append({"target": f"a single ranking model above EASE by more than its std (NDCG@10 > "
                          f"{bar:.4f}) with coverage@10 >= EASE's ({cov:.4f})",
                "best": best.row.name if best else "–", "value": value,
                "met": bool(best) and _mean(best, "ndcg@10") > bar})
    out.append({"target": f"stretch: a single ranking model with NDCG@10 >= {NDCG_TARGET} and "
                          f"coverage@10 >= EASE's",
                "best": best.row.name if best else "–", "value": value,
                "met": bool(best) and _mean(best, "ndcg@10") >= NDCG_TARGET})
    return out


def _parity_targets(parity: list[dict]) -> list[dict]:
    out = []
    for p in parity:
        worst = max((abs(d) for d in p["diffs"]), default=float("nan"))
        out.append({"target": f"`deepcf.train experiment={p['experiment']}` on the split files "
                              f"within {PARITY_TOLERANCE} of its row ({p['metric']}), split by "
                              f"split",
                    "best": p["row"],
                    "value": p["error"] or f"largest difference {worst:.4f}",
                    "met": p["ok"]})
    return out


def compare(a: RowResult, b: RowResult, test: str = SIGNIFICANCE_TEST) -> dict:
    """Whether rows `a` and `b` differ beyond noise, split by split: the paired test over the
    test users of each split on the protocol's per-user metric (PAIRED_METRIC)."""
    key = PAIRED_METRIC[a.row.protocol]
    splits = [paired_test(pa[key], pb[key], test) for pa, pb in zip(a.per_user, b.per_user)
              if key in pa and key in pb]
    return {"protocol": a.row.protocol, "a": a.row.name, "b": b.row.name,
            "metric": "per-user NDCG@10" if key == "ndcg@10" else "per-user squared error",
            "splits": splits}


def significance(rating: list[RowResult], topn: list[RowResult]) -> list[dict]:
    """The paired tests ACCURACY.md shows: the best single ranking row (by mean NDCG@10; the
    best with coverage@10 >= EASE's too when that is another row) against EASE, and the best
    single rating row (by mean RMSE) against the runner-up."""
    out = []

    def ok(rs):
        return [r for r in rs if not r.error and r.row.kind != "ensemble" and r.per_user]

    ranked = sorted(ok(rating), key=lambda r: np.nan_to_num(_mean(r, "rmse"), nan=np.inf))
    if len(ranked) >= 2:
        out.append(compare(ranked[0], ranked[1]))
    single = ok(topn)
    ease = next((r for r in single if r.row.name == EASE_ROW), None)
    if ease is not None:
        rivals = sorted((r for r in single if r is not ease),
                        key=lambda r: -np.nan_to_num(_mean(r, "ndcg@10"), nan=-np.inf))
        cov = _mean(ease, "coverage@10")
        covered = [r for r in rivals if _mean(r, "coverage@10") >= cov]
        for r in rivals[:1] + [r for r in covered[:1] if r is not rivals[0]]:
            out.append(compare(r, ease))
    return out


def describe(m) -> str:
    return (f"{m.source or 'ratings'} ({m.shape[0]:,} users x {m.shape[1]:,} movies, "
            f"{m.ratings.nnz:,} ratings, {m.rating_min:g}..{m.rating_max:g})")


def build_report(data, seeds=SEEDS, side_data=None, side_seeds=None,
                 rows: dict[str, Row] | None = None, command: str = "",
                 log: Callable[[str], None] = print, user_runs=None) -> dict:
    """Run every row on both protocols (and the untuned rating rows on `side_data`); with
    `user_runs` (deepcf.study.parity.UserRun), each of those experiments trained by
    `deepcf.train` on the split files, against its row split by split."""
    t0 = time.perf_counter()
    selected = list((ROWS if rows is None else rows).values())
    rating = run_protocol("rating", data, seeds, rows_of("rating", rows), log=log)
    topn = run_protocol("topn", data, seeds, rows_of("topn", rows), log=log)
    parity = None
    if user_runs:
        parity = parity_rows(run_parity(data, seeds, user_runs, log=log), topn, rating)
    side = None
    if side_data is not None:
        side_seeds = list(side_seeds if side_seeds is not None else seeds)
        side = {"data": describe(side_data), "seeds": side_seeds,
                "rating": run_protocol("rating", side_data, side_seeds,
                                       rows_of("rating", rows), tune=False, log=log)}
    return {"command": command, "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "seconds": time.perf_counter() - t0, "cpus": os.cpu_count(), "data": describe(data),
            "seeds": list(seeds), "rating": rating, "topn": topn, "side": side,
            "rows": selected, "targets": targets(rating, topn, parity), "parity": parity,
            "significance": significance(rating, topn)}
