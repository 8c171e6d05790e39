"""The accuracy protocols at the Movies-Dataset scale: `python -m deepcf.study.accuracy --scale`
(`make accuracy-scale`).

One split (seed 0) of each protocol of deepcf.study.protocols on the taste-driven synthetic
`movies_full` (270,896 users x 45,115 movies, 26.0M ratings), every row of
deepcf.study.rows.SCALE_ROWS at its declared defaults (no grid: a carve search at this size is a
run of its own), each fitted and scored in a child process of its own so that its wall time and
peak RSS (the child's VmHWM, the split it is sent included; the parent's RSS is reported next to
it) are the row's. The child is spawned, a fresh interpreter, not forked: a fork after the
parent ran parallel kernels inherits thread pools (GNU OpenMP's under torch) whose threads it
does not have, and a torch row then hung in its first parallel region. The top-N metrics are over a
seeded sample of the evaluated users (`eval_users`); every user's training row is fitted on.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import time
import traceback
from collections.abc import Callable
from datetime import datetime, timezone
from functools import partial

import numpy as np
import scipy.sparse as sp

from deepcf.memory import peak_rss_gb, rss_gb
from deepcf.serving.evaluate import topn_metrics
from deepcf.study.protocols import KS, rating_errors, rating_split, topn_split
from deepcf.study.selection import Row, Task, describe

EVAL_USERS = 30_000
SEED = 0


def _child(conn, fn: Callable[[], dict]) -> None:
    """The spawned child: run `fn`, send its result (or its error) and its peak RSS."""
    try:
        out = {"ok": fn()}
    except BaseException as e:  # a failing row is a measured failure, not a crash
        traceback.print_exc()
        out = {"error": f"{type(e).__name__}: " + " ".join(str(e).split())}
    out["peak_rss_gb"] = peak_rss_gb()
    conn.send(out)
    conn.close()


def in_child(fn: Callable[[], dict]) -> dict:
    """`fn()` in a spawned child process (`fn` and what it holds are pickled to it: functions of
    a module, not lambdas): its result, wall seconds (the interpreter's start included) and
    peak RSS (the child's VmHWM, GB)."""
    ctx = mp.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    t0 = time.perf_counter()
    proc = ctx.Process(target=_child, args=(send, fn))
    proc.start()
    send.close()
    try:
        out = recv.recv()
    except EOFError:
        out = None
    proc.join()
    if out is None:
        out = {"error": f"the row's process died (exit code {proc.exitcode})"}
    out["seconds"] = time.perf_counter() - t0
    out.setdefault("peak_rss_gb", math.nan)
    return out


def sample_users(test: sp.csr_matrix, n: int, seed: int = SEED) -> sp.csr_matrix:
    """`test` with only a seeded sample of `n` of its users with held-out entries kept."""
    users = np.flatnonzero(np.diff(test.indptr) > 0)
    if n and len(users) > n:
        users = np.sort(np.random.default_rng([seed, 2]).choice(users, n, replace=False))
    keep = np.zeros(test.shape[0], np.float32)
    keep[users] = 1.0
    out = sp.csr_matrix(sp.diags(keep) @ test)
    out.eliminate_zeros()
    return out


def fit_and_score(row: Row, train: sp.csr_matrix, test: sp.csr_matrix, task: Task) -> dict:
    """The row fitted on `train` at its defaults and scored on `test` by its protocol."""
    pred = row.fit(train, None, row.default_params, task)
    if row.protocol == "rating":
        return rating_errors(pred, train, test, task.rating_min, task.rating_max, row.fallback)
    return topn_metrics(pred, train, test, KS)


def run_scale(data, rows: list[Row], eval_users: int = EVAL_USERS,
              log: Callable[[str], None] = print) -> dict:
    """Every row of `rows` on one split of its protocol of `data` (a RatingMatrix)."""
    t_start = time.perf_counter()
    task = Task(data.rating_min, data.rating_max, SEED)
    results = []
    for protocol in ("rating", "topn"):
        todo = [r for r in rows if r.protocol == protocol]
        if not todo:
            continue
        t0 = time.perf_counter()
        if protocol == "rating":
            split = rating_split(data, SEED)
            train, test = split.train, split.test
        else:
            split = topn_split(data, SEED)
            train, test = split.train, sample_users(split.test, eval_users)
        del split
        log(f"{protocol}: split in {time.perf_counter() - t0:.0f} s "
            f"({train.nnz:,} training, {test.nnz:,} test entries)")
        parent_gb = rss_gb()
        for row in todo:
            res = in_child(partial(fit_and_score, row, train, test, task))
            res.update(row=row, parent_rss_gb=parent_gb)
            results.append(res)
            key = "rmse" if protocol == "rating" else "ndcg@10"
            shown = f"{key} {res['ok'][key]:.4f}" if "ok" in res else f"failed: {res['error']}"
            log(f"{protocol}: {row.name}: {shown} ({res['seconds']:.0f} s, peak RSS "
                f"{res['peak_rss_gb']:.2f} GB)")
        train = test = None  # the next protocol's split is made without this one
    return {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "seconds": time.perf_counter() - t_start, "cpus": os.cpu_count(),
            "data": describe(data), "eval_users": eval_users, "results": results,
            "self_peak_rss_gb": peak_rss_gb()}
