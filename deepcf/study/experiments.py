"""Run named experiments over several seeds and tabulate test RMSE next to the baselines.

    python -m deepcf.study.experiments                       # the five study experiments + beyond
    python -m deepcf.study.experiments --seeds 1 2 3 --update-readme   # -> docs/experiments.md

Each (experiment, seed) is one job of a Hydra multirun of `python -m deepcf.train`, so the
numbers are exactly what that command produces; the seed also picks the random 80/10/10 split,
and the baselines are scored on the same splits.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from deepcf.errors import EXIT_DIVERGED, one_line_errors
from deepcf.study.baselines import baseline_scores
from deepcf.training.config import compose

STUDY = ["first_test_run", "RMSprop_test_tied", "better_init_tied", "scheduler_lr",
         "denoising_test"]
BEYOND = ["item_autorec"]
BEGIN, END = "<!-- experiments:begin -->", "<!-- experiments:end -->"


def run_sweep(experiments: list[str], seeds: list[int], out: Path, extra: list[str]) -> None:
    cmd = [sys.executable, "-m", "deepcf.train", "-m", f"experiment={','.join(experiments)}",
           f"seed={','.join(map(str, seeds))}", f"hydra.sweep.dir={out}", *extra]
    print("+", " ".join(cmd[1:]), flush=True)
    # exit status 3: every job ran and some diverged (reported in the table); else a failure
    # one W&B group per table (with logger=wandb or many): the jobs' sweep dir is always --out
    group = os.environ.get("DEEPCF_WANDB_GROUP") or \
        f"experiments-{time.strftime('%Y-%m-%d_%H-%M-%S')}"
    r = subprocess.run(cmd, env={**os.environ, "DEEPCF_WANDB_GROUP": group})
    if r.returncode not in (0, EXIT_DIVERGED):
        raise SystemExit(r.returncode)  # deepcf.train has said why


def collect(out: Path) -> dict[str, list[dict]]:
    runs: dict[str, list[dict]] = {}
    for f in sorted(out.glob("*/metrics.json")):
        m = json.loads(f.read_text())
        runs.setdefault(m["experiment"], []).append(m)
    return runs


def baselines(seeds: list[int], data_overrides: list[str]) -> dict[str, list[dict]]:
    """Baseline scores on the same data and splits as the runs (one per seed)."""
    from hydra.utils import instantiate

    out: dict[str, list[dict]] = {}
    for seed in seeds:
        cfg = compose([f"seed={seed}", *data_overrides])
        dm = instantiate(cfg.data)
        dm.setup()
        lo, hi = dm.rating_range
        for name, s in baseline_scores(dm.split.train, dm.split.test, lo, hi).items():
            out.setdefault(name, []).append({"test/rmse": s["rmse"], "test/mae": s["mae"]})
    return out


def _value(run: dict, key: str) -> float:
    """A metric of a run's metrics.json; NaN where it is null (not finite: the run's status
    is "diverged") or missing, so that the table counts it as diverged."""
    v = run.get(key)
    return float("nan") if v is None else float(v)


def mean_std(values, bad: str = "diverged") -> str:
    """mean ± std (ddof=1) over the finite values (the value alone for one); the others are
    counted as `bad`. One formatting for every table of the study."""
    v = np.asarray(values, dtype=float)
    if len(v) == 0:
        return "–"
    ok = v[np.isfinite(v)]
    note = f" ({len(v) - len(ok)}/{len(v)} {bad})" if len(ok) < len(v) else ""
    if len(ok) == 0:
        return f"{bad} ({len(v)}/{len(v)})"
    return (f"{ok.mean():.4f} ± {ok.std(ddof=1):.4f}" if len(ok) > 1 else f"{ok[0]:.4f}") + note


def table(runs: dict[str, list[dict]], base: dict[str, list[dict]], order: list[str]) -> str:
    lines = ["| experiment | test RMSE | test MAE | best val RMSE | epochs | seeds |",
             "|---|---|---|---|---|---|"]
    for name in [*base, *order]:
        rs = base.get(name) or runs.get(name)
        if not rs:
            continue
        label = f"*{name}* (baseline)" if name in base else f"`{name}`"
        val = "" if name in base else mean_std([_value(r, "val/rmse_best") for r in rs])
        epochs = "" if name in base else "/".join(str(r["epochs"]) for r in rs)
        lines.append(f"| {label} | {mean_std([_value(r, 'test/rmse') for r in rs])} | "
                     f"{mean_std([_value(r, 'test/mae') for r in rs])} | {val} | {epochs} | "
                     f"{len(rs)} |")
    return "\n".join(lines)


def table_block(readme: Path) -> str:
    """The markdown file's text; it must hold the experiments markers (checked before any run,
    so that a wrong file is known before the sweep, not after it)."""
    if not readme.is_file():
        raise SystemExit(f"{readme}: no such file")
    body = readme.read_text()
    if BEGIN not in body or END not in body:
        raise SystemExit(f"{readme}: no {BEGIN} ... {END} block to replace")
    return body


def update_readme(readme: Path, text: str) -> None:
    """Replace the table between the experiments markers of the markdown file `readme`."""
    body = table_block(readme)
    new = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END),
                 lambda _: f"{BEGIN}\n{text}\n{END}", body, flags=re.S)
    readme.write_text(new)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m deepcf.study.experiments", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiments", nargs="+", default=STUDY + BEYOND)
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument("--out", type=Path, default=Path("outputs/experiments"))
    p.add_argument("--data", nargs="*", default=[],
                   help="data overrides for runs and baselines, e.g. data=ratings_csv "
                        "data.source.path=ratings_small.csv")
    p.add_argument("--reuse", action="store_true", help="tabulate existing runs in --out")
    p.add_argument("--update-readme", type=Path, nargs="?", const=Path("docs/experiments.md"),
                   metavar="FILE", help="rewrite the table between the experiments:begin and "
                   "experiments:end markers of FILE (default docs/experiments.md)")
    p.add_argument("overrides", nargs="*", help="more overrides for every run")
    args = p.parse_args(argv)
    with one_line_errors("deepcf.study.experiments"):
        if args.update_readme:
            table_block(args.update_readme)
        if not args.reuse:
            if args.out.exists() and any(args.out.glob("*/metrics.json")):
                raise SystemExit(f"{args.out} already holds runs: pass --reuse to tabulate "
                                 f"them, or choose another --out")
            run_sweep(args.experiments, args.seeds, args.out.resolve(),
                      [*args.data, *args.overrides])
        runs = collect(args.out)
        seeds = sorted({r["seed"] for rs in runs.values() for r in rs}) or args.seeds
        text = table(runs, baselines(seeds, args.data), args.experiments)
        cmd = "python -m deepcf.study.experiments " + " ".join(
            ["--seeds", *map(str, seeds)] + (["--data", *args.data] if args.data else [])
            + args.overrides)
        text = f"{text}\n\nProduced by `{cmd.strip()}` (mean ± std over the seeds that did not " \
               f"diverge; each seed is also the split seed)."
        (args.out / "table.md").write_text(text + "\n")
        print(text)
        if args.update_readme:
            update_readme(args.update_readme, text)


if __name__ == "__main__":
    main()
