"""`make bench-full` / `python -m deepcf.bench.full`: whole runs of the recommended models at
the Movies Dataset's scale, through a `ratings.csv`; writes BENCHMARKS-full.md.

A whole run is what docs/full-scale.md tells a user to type: `deepcf.train` on the CSV (read,
compacted and cached on the first run, trained to early stopping, tested, exported to ONNX with
the parity check), then `deepcf.evaluate` and `deepcf.recommend` on the run dir. Each command
runs in its own process; its wall time and peak RSS (the child's `ru_maxrss` from `wait4`, the
figure `/usr/bin/time -v` prints) are measured here. Then, on the run's model:

- scoring throughput in users/s: onnxruntime's dense graph over every movie row (one pass scores
  every user: users/s = users / the pass' time, timed on a few chunks of movie rows), and the
  cached item codes that `evaluate` and `recommend` score from (deepcf.serving.codes);
- the training step against the dense masked formulation of the same model, in the same
  bench (deepcf.bench.runs, kind `family` on the CSV's cached matrix): the dense one builds
  (batch, n_users) rows of movies and reads the full-width output at the observed ratings; an
  epoch of it is its timed batches scaled to the epoch's batches.

A new model is one `WholeRun` in `WHOLE_RUNS`. Every row's results, with the command and date
that measured them, are kept in BENCHMARKS-full.json beside the page: a run with `--only`
measures the rows it names and keeps the others' recorded results, each labelled with its own
command.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp


@dataclass(frozen=True)
class WholeRun:
    name: str                       # the table's label
    train: tuple[str, ...]          # deepcf.train overrides (besides the data)
    # overrides of the dense masked formulation's timed batches (None: no dense counterpart)
    dense: tuple[str, ...] | None = None
    dense_batches: int = 2          # timed dense batches (after one warm-up)
    note: str = ""
    evaluate: tuple[str, ...] = ()  # deepcf.evaluate's options besides the run dir
    # deepcf.recommend's options besides the run dir (--all: a CSV for every user, in the work
    # dir)
    recommend: tuple[str, ...] = ("--user", "1", "-n", "10")


# EDLAE at The Movies Dataset's scale (docs/full-scale.md): the settings chosen on a carve of
# the at-scale top-N split's training part (deepcf.study.rows)
EDLAE_AT_SCALE = ("model.net.max_items=10000", "model.net.dropout=0.85", "model.net.lam=500",
                  "model.net.lam_unit=absolute", "model.net.emphasis=true",
                  "model.net.pop_beta=0", "data.batch_size=32768", "data.eval_batch_size=2048")

# I-AutoRec + residual target at The Movies Dataset's scale (docs/full-scale.md): Rprop's first
# step size chosen on the validation curves of deepcf.train's own split (0.003 against 0.001 and
# 0.01), a validation every 2nd epoch, stopped once two checks in a row gain under 0.001 RMSE
I_AUTOREC_AT_SCALE = ("model.optimizer.lr=0.003", "trainer.check_val_every_n_epoch=2",
                      "callbacks.early_stopping.min_delta=0.001",
                      "callbacks.early_stopping.patience=2")

WHOLE_RUNS: list[WholeRun] = [
    WholeRun("rating: I-AutoRec + residual target",
             ("experiment=i_autorec_target", *I_AUTOREC_AT_SCALE),
             dense=("model.objective.train_path=dense", "data.batch_size=256"),
             note="full-batch Rprop on movie rows, the column-major path"),
    WholeRun("ranking: ELSA", ("experiment=elsa", "model.net.rank=1024", "data.batch_size=4096",
                               "data.eval_batch_size=2048", "model.optimizer.lr=0.01",
                               "+trainer.limit_val_batches=8", "trainer.max_epochs=1"),
             evaluate=("--protocol", "topn"), recommend=("--all", "-n", "10"),
             note="rank 1024 on user rows, Adam, batches of 4,096 users, one epoch"),
    WholeRun("ranking: EDLAE on the 10,000 most popular movies",
             ("experiment=edlae", *EDLAE_AT_SCALE),
             evaluate=("--protocol", "topn"), recommend=("--all", "-n", "10"),
             note="closed form in float32 on user rows, batches of 32,768 users"),
]

EPOCH = re.compile(r"^epoch (\d+)(?:/\d+)?\s.*\(([\d.]+) s\)\s*$", re.M)
SUMMARY = re.compile(r"^deepcf: .*, (\d+) epochs\s*$", re.M)
REFIT = re.compile(r"^  refit on all .*: ([\d.]+) s \(the carve's fit", re.M)


def timed(cmd: list[str], log: Path) -> dict:
    """Run `cmd` (stdout + stderr to `log`); its wall time, peak RSS and exit status."""
    t = time.perf_counter()
    with open(log, "w") as f:
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    return {"wall_s": time.perf_counter() - t, "peak_rss_gb": usage.ru_maxrss / 2**20,
            "rc": p.returncode, "cpu_s": usage.ru_utime + usage.ru_stime,
            "cmd": " ".join(cmd[1:] if cmd[0] == sys.executable else cmd)}


def _train_facts(text: str) -> dict:
    """What the train command's output says: epochs to the early stop (the summary's count;
    a refit's epochs, printed after them, are not counted), their mean seconds, the refit's
    seconds, the test figures and the export's parity."""
    epochs = [(int(e), float(s)) for e, s in EPOCH.findall(text)]
    summary = SUMMARY.search(text)
    if summary:
        epochs = epochs[: int(summary.group(1))]
    out = {"epochs": len(epochs), "epoch_s": float(np.mean([s for _, s in epochs]))
           if epochs else float("nan")}
    refit = REFIT.search(text)
    out["refit_s"] = float(refit.group(1)) if refit else None
    for key, pat in (("test_rmse", r"test RMSE ([\d.]+)"), ("best_val_rmse",
                                                            r"best val RMSE ([\d.]+)"),
                     ("test_ndcg", r"  test .*?ndcg@10 ([\d.]+)"),
                     ("parity", r"onnxruntime parity ([\deE.+-]+)")):
        m = re.search(pat, text)
        out[key] = m.group(1) if m else None
    return out


def scoring(run: Path, threads: int, cache_dir: str, chunk: int = 32, chunks: int = 3) -> dict:
    """users/s of onnxruntime's dense graph and of the model's serving cache (a model on movie
    rows: its cached item codes; a user-row linear model: its cached item-item weights, on
    8,192 users' rows in chunks of 1,024, as serving scores them). Movie rows: one pass of
    every movie row scores every user, so users/s = users / the pass' time, timed on `chunks`
    chunks of `chunk` movie rows. User rows: a user per row, timed on `chunks` chunks of
    8 x `chunk` users."""
    # start-up: the bench's own process imports serving only for this measurement
    from deepcf.serving.codes import ItemItem
    from deepcf.serving.runs import load_model, run_datamodule
    from deepcf.serving.scoring import densify

    scorer, card = load_model(run / "model.onnx", threads=threads)
    dm = run_datamodule(run, cache_dir=cache_dir)
    X = dm.train_rows  # the rows the model was trained on
    n_rows, width = X.shape
    by_movie = dm.orientation == "item"
    n_users = width if by_movie else n_rows
    out = {"n_users": int(n_users), "rows": "movies" if by_movie else "users"}
    size = chunk if by_movie else 8 * chunk
    scorer(densify(X, np.arange(size)))  # warm-up
    t = time.perf_counter()
    for c in range(1, chunks + 1):
        scorer(densify(X, np.arange(c * size, (c + 1) * size)))
    rows_per_s = chunks * size / (time.perf_counter() - t)
    out["onnx_users_per_s"] = n_users * rows_per_s / n_rows if by_movie else rows_per_s
    codes = card.codes
    if isinstance(codes, ItemItem):  # a user-row linear model: its users' sparse rows
        users = np.arange(min(8 * 1024, n_rows))  # in serving's chunks of 1,024 users
        codes.scores(X[users[:256]])
        t = time.perf_counter()
        for s in range(0, len(users), 1024):
            codes.scores(X[users[s : s + 1024]])
        out["codes_users_per_s"] = len(users) / (time.perf_counter() - t)
    elif codes is not None:
        users = np.arange(min(2048, codes.n_users))
        W, b = codes.user_rows(sp.csr_matrix((n_users, n_rows)), users, users)  # all known
        codes.scores(W[:64], b[:64])
        t = time.perf_counter()
        codes.scores(W, b)
        out["codes_users_per_s"] = len(users) / (time.perf_counter() - t)
    return out


def dense_ratio(row: WholeRun, csv: str, cache_dir: str, threads: int, env: dict) -> dict:
    """Seconds per epoch of the deepcf path and of the dense masked formulation, timed on the
    CSV's cached matrix in processes of their own (deepcf.bench.runs, kind `family`)."""
    out = {}
    for name, extra, steps in (("ours", (), 1), ("dense", row.dense, row.dense_batches)):
        spec = {"kind": "family", "overrides": [*row.train, *extra], "csv": csv,
                "cache_dir": cache_dir, "batches": steps, "warmup": 1, "threads": threads}
        p = subprocess.run([sys.executable, "-m", "deepcf.bench.runs", json.dumps(spec)],
                           capture_output=True, text=True, env=env)
        line = next((x for x in p.stdout.splitlines() if x.startswith("BENCH_RESULT ")), None)
        if line is None:
            out[name] = {"error": (p.stderr.strip().splitlines() or ["no output"])[-1]}
            continue
        out[name] = json.loads(line[len("BENCH_RESULT "):])
    return out


def run_row(row: WholeRun, csv: str, work: Path, threads: int, env: dict) -> dict:
    run, cache = work / "run", work / "cache"
    py = sys.executable
    train = [py, "-m", "deepcf.train", *row.train, "data=ratings_csv",
             f"data.source.path={csv}", f"paths.output_dir={run}", f"paths.cache_dir={cache}",
             "logger=none"]
    out = {"row": row.name, "steps": {}}
    out["steps"]["train"] = t = timed(train, work / "train.log")
    t.update(_train_facts((work / "train.log").read_text()))
    if t["rc"] != 0:
        return out
    recommend = [*row.recommend, *(["--csv", str(work / "recs.csv")] if "--all" in
                                   row.recommend else [])]
    for name, cmd in (("evaluate", [py, "-m", "deepcf.evaluate", str(run), *row.evaluate]),
                      ("recommend", [py, "-m", "deepcf.recommend", str(run), *recommend])):
        out["steps"][name] = timed(cmd, work / f"{name}.log")
    out["scoring"] = scoring(run, threads, str(cache))
    if row.dense is not None:
        out["dense"] = dense_ratio(row, csv, str(cache), threads, env)
    return out


def _ndcg(x) -> str:
    return "n/a" if x is None else f"NDCG@10 {x}"


def _gb(x) -> str:
    return f"{x:.2f}"


def _written_by(meta: dict) -> str:
    return (f"`{meta['command']}` on {meta['date']} ({meta['machine']}; load average "
            f"{meta['load_before']} before, {meta['load_after']} after: other processes share "
            f"the cores)")


def render(results: list[dict], meta: dict) -> str:
    """The page; a result with a "meta" of its own (a row kept from an earlier run, `carry`)
    names the command and date that measured it."""
    runs: dict[str, list[str]] = {}
    for r in results:
        runs.setdefault(_written_by(r.get("meta", meta)), []).append(r["row"])
    if len(runs) == 1:
        written = f"Written by {next(iter(runs))}."
    else:
        written = "Rows measured by " + "; ".join(
            f"{who}: {', '.join(rows)}" for who, rows in runs.items()) + "."
    lines = ["# deepcf benchmarks: whole runs at the Movies Dataset's scale", "",
             f"{written} Linked from [BENCHMARKS.md](BENCHMARKS.md); the commands are "
             f"[docs/full-scale.md](docs/full-scale.md)'s.", "",
             "## Whole runs at movies_full", "",
             f"Data: `{meta['csv']}` ({meta['csv_mb']:.0f} MB; the synthetic `movies_full` "
             f"written as a `ratings.csv`), read through `data=ratings_csv`; a fresh cache, so "
             f"the train command includes parsing the CSV. Peak RSS: each process' own "
             f"(`wait4` ru_maxrss, as `/usr/bin/time -v` reports it).", "",
             "| model | epochs to the early stop | s / epoch (with validation) | train: wall, "
             "peak RSS | evaluate: wall, peak RSS | recommend: wall, peak RSS | whole run: wall, "
             "peak RSS | test RMSE or NDCG@10 |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        s = r["steps"]
        t = s["train"]
        cells = []
        for k in ("train", "evaluate", "recommend"):
            x = s.get(k)
            cells.append("failed" if x is None or x["rc"] != 0 else
                         f"{x['wall_s']:.0f} s, {_gb(x['peak_rss_gb'])} GB")
        ok = [x for x in s.values() if x["rc"] == 0]
        whole = (f"{sum(x['wall_s'] for x in ok):.0f} s ({sum(x['wall_s'] for x in ok) / 60:.1f}"
                 f" min), {_gb(max(x['peak_rss_gb'] for x in ok))} GB")
        epochs = f"{t.get('epochs')}" + (f" (then the refit, {t['refit_s']:.0f} s)"
                                         if t.get("refit_s") else "")
        lines.append(f"| {r['row']} | {epochs} | {t.get('epoch_s', float('nan')):.1f} "
                     f"| {cells[0]} | {cells[1]} | {cells[2]} | {whole} | "
                     f"{t.get('test_rmse') or _ndcg(t.get('test_ndcg'))} |")
    lines += ["", "Commands (each row):", ""]
    for r in results:
        lines.append(f"- {r['row']}:")
        for k, x in r["steps"].items():
            lines.append(f"  - {k}: `python {x['cmd']}` (CPU {x['cpu_s']:.0f} s)")
    lines += ["", "### Scoring throughput (onnxruntime and the serving caches)", "",
              "| model | rows | onnxruntime, the dense graph: users/s | the sidecar's cache "
              "(what evaluate / recommend use): users/s | recommend --all: users/s "
              "(the whole command) |", "|---|---|---|---|---|"]
    for r in results:
        sc = r.get("scoring", {})
        rec = r["steps"].get("recommend")
        whole = (f"{sc['n_users'] / rec['wall_s']:,.0f}" if rec and rec["rc"] == 0 and "n_users"
                 in sc and "--all" in rec["cmd"] else "")
        codes = (f"{sc['codes_users_per_s']:,.0f}" if "codes_users_per_s" in sc else
                 "n/a (no cache: the graph)")
        lines.append(f"| {r['row']} | {sc.get('rows', '')} | "
                     f"{sc.get('onnx_users_per_s', float('nan')):,.0f} | "
                     f"{codes} | {whole} |")
    lines += ["", "onnxruntime on movie rows: one pass of every movie row through the graph "
              "scores every user at once, so users/s = users / (the pass' seconds), the pass "
              "timed on 3 chunks of 32 movie rows; on user rows, 3 chunks of 256 users. Caches: "
              "movie rows' item codes, 2,048 model users' scores over every movie, `codes @ W_u "
              "+ b_u + base`; a linear model's item-item weights, 8,192 users' sparse rows "
              "against B in chunks of 1,024. "
              "recommend --all: every user's top 10 written to a CSV, the process' wall time "
              "(start-up and loading included).", ""]
    if not any(r.get("dense") for r in results):
        return "\n".join(lines)
    lines += ["### The training step against the dense masked formulation", "",
              "| model | path | s / epoch | peak RSS | ratio |", "|---|---|---|---|---|"]
    for r in results:
        d = r.get("dense")
        if not d:
            continue
        ours, dense = d.get("ours", {}), d.get("dense", {})
        ratio = (dense["epoch_s"] / ours["epoch_s"]) if "epoch_s" in ours and \
            "epoch_s" in dense else float("nan")
        for name, x in (("deepcf (this row's config)", ours), ("dense masked", dense)):
            if "error" in x:
                lines.append(f"| {r['row']} | {name} | failed: {x['error']} | | |")
                continue
            note = (f" ({x['measured']} timed batches of {x['batch_size']} rows, x "
                    f"{x['n_batches']} batches)" if name == "dense masked" else
                    f" (forward {x['forward_s']:.1f}, backward {x['backward_s']:.1f}, step "
                    f"{x['step_s']:.1f})")
            lines.append(f"| {r['row']} | {name}{note} | {x['epoch_s']:.1f} | "
                         f"{_gb(x['peak_rss_gb'])} GB | "
                         f"{'1' if name != 'dense masked' else f'{ratio:.1f}x slower'} |")
    lines += ["", "Training steps only (no validation), after one warm-up step, on the same "
              "cached matrix; the dense masked epoch is its timed batches' mean times the "
              "number of batches of an epoch.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m deepcf.bench.full", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--csv", required=True, help="a Movies-Dataset-sized ratings.csv (see "
                   "docs/full-scale.md for writing the synthetic one)")
    p.add_argument("--out", type=Path, default=Path("BENCHMARKS-full.md"))
    p.add_argument("--work", type=Path, default=None, help="run dirs and logs (default: temp)")
    p.add_argument("--only", action="append", default=None, help="rows whose name contains it")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    if not Path(args.csv).is_file():
        print(f"deepcf.bench.full: {args.csv}: no such file", file=sys.stderr)
        raise SystemExit(2)
    rows = [r for r in WHOLE_RUNS if not args.only or any(o in r.name for o in args.only)]
    work = args.work or Path(tempfile.mkdtemp(prefix="deepcf-bench-full-"))
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    meta = {"command": "python -m deepcf.bench.full " + " ".join(argv or sys.argv[1:]),
            "date": dt.date.today().isoformat(), "csv": args.csv,
            "csv_mb": Path(args.csv).stat().st_size / 1e6,
            "machine": f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}",
            "load_before": f"{os.getloadavg()[0]:.1f}"}
    results = []
    for i, row in enumerate(rows):
        d = work / f"row{i}"
        d.mkdir(parents=True, exist_ok=True)
        results.append(run_row(row, args.csv, d, args.threads, env))
        (work / "results.json").write_text(json.dumps(results, indent=1))
        print(json.dumps(results[-1]), flush=True)
    meta["load_after"] = f"{os.getloadavg()[0]:.1f}"
    for r in results:
        r["meta"] = meta
    record = args.out.with_suffix(".json")
    results = carry(results, json.loads(record.read_text()) if record.exists() else [])
    record.write_text(json.dumps(results, indent=1) + "\n")
    args.out.write_text(render(results, meta))
    print(f"wrote {args.out} and {record} (work dir {work})")


def carry(new: list[dict], old: list[dict]) -> list[dict]:
    """This run's results, plus the recorded ones of the WHOLE_RUNS rows it did not run (each
    with the meta of the run that measured it), in WHOLE_RUNS order; rows no longer in
    WHOLE_RUNS are dropped."""
    by_row = {r["row"]: r for r in old if "meta" in r}
    by_row.update({r["row"]: r for r in new})
    return [by_row[w.name] for w in WHOLE_RUNS if w.name in by_row]


if __name__ == "__main__":
    main()
