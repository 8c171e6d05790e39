"""Comparison plots and a table for any set of runs (`python -m deepcf.report`, its command).

Runs are found by their `metrics.json` (a run dir, or any dir above runs: a sweep dir, a task's
`runs/`); each run's per-epoch curves come from its CSV log (`csv/metrics.csv`). Runs are grouped
by experiment and by the overrides that differ between runs, the seed left out, so that a
group's runs differ only by seed; test metrics are shown as mean ± std over a group's seeds with
the table formatting of deepcf.study.experiments (a diverged seed is counted, not averaged).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deepcf.errors import DeepCFError
from deepcf.files import atomic_path, check_output, write_text
from deepcf.serving.paired import run_per_user
from deepcf.stats import paired_test
from deepcf.study.experiments import _value, mean_std

CURVES, BARS, TABLE = "curves.png", "test_metrics.png", "report.md"
# overrides that say where or how a run ran, not what it is
_NOT_CONFIG = ("seed=", "hydra", "paths.", "trainer.accelerator=", "logger", "+logger",
               "callbacks.progress", "ckpt_path=")


@dataclass
class Run:
    dir: Path
    metrics: dict
    overrides: list[str]
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    group: str = ""
    paired: dict | None = None  # per-user values of its test split (evaluate)

    @property
    def seed(self):
        return self.metrics.get("seed")


def find_runs(paths: list[str | Path]) -> list[Run]:
    """Every run at or below each path, in path order; one line for a path without runs."""
    runs, seen = [], set()
    for p in map(Path, paths):
        if not p.exists():
            raise DeepCFError(f"{p}: no such run or sweep dir")
        files = [p / "metrics.json"] if (p / "metrics.json").is_file() else \
            sorted(p.rglob("metrics.json"))
        files = [f for f in files if f.resolve() not in seen]
        if not files:
            raise DeepCFError(f"{p}: no run in it or below (no metrics.json); give a run dir or "
                              f"a sweep dir of `python -m deepcf.train -m`")
        for f in files:
            seen.add(f.resolve())
            runs.append(read_run(f.parent))
    label_groups(runs)
    return runs


def read_run(run_dir: Path) -> Run:
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError) as e:
        raise DeepCFError(f"{run_dir / 'metrics.json'}: not a deepcf metrics file ({e})") from None
    overrides: list[str] = []
    ov = run_dir / ".hydra" / "overrides.yaml"
    if ov.is_file():
        from omegaconf import OmegaConf

        overrides = [str(o) for o in OmegaConf.load(ov)]
    return Run(run_dir, metrics, overrides, read_curves(run_dir / "csv" / "metrics.csv"))


def read_curves(csv: Path) -> dict[str, list[tuple[int, float]]]:
    """Per-epoch train/loss and val/rmse of a CSV log (the last value logged in each epoch)."""
    if not csv.is_file():
        return {}
    import pandas as pd

    try:
        df = pd.read_csv(csv)
    except (OSError, ValueError, pd.errors.ParserError) as e:
        raise DeepCFError(f"{csv}: not a CSV log ({str(e).splitlines()[0]})") from None
    out = {}
    for key in ("train/loss", "val/rmse"):
        if key in df and "epoch" in df:
            s = df[["epoch", key]].dropna().groupby("epoch")[key].last()
            out[key] = [(int(e), float(v)) for e, v in s.items()]
    return out


def label_groups(runs: list[Run]) -> None:
    """A run's group: its experiment and the overrides that not every run shares, without the
    seed (and without where it ran: paths, loggers, the accelerator)."""
    def config(r: Run) -> list[str]:
        return [o for o in r.overrides if not o.startswith(_NOT_CONFIG)]

    common = set.intersection(*(set(config(r)) for r in runs)) if runs else set()
    for r in runs:
        own = [o for o in config(r) if o not in common and not o.startswith("experiment=")]
        exp = r.metrics.get("experiment") or "custom"
        r.group = " ".join([exp, *own]) if own or exp != "custom" else "custom"


def groups(runs: list[Run]) -> dict[str, list[Run]]:
    out: dict[str, list[Run]] = {}
    for r in runs:
        out.setdefault(r.group, []).append(r)
    return out


# the ranking columns of the table (test/<key>: what the run logged, or what `evaluate` gave)
RANKING_COLS = [("NDCG@10", "ndcg@10"), ("Precision@10", "precision@10"),
                ("Recall@10", "recall@10"), ("MAP@10", "map@10"), ("MRR@10", "mrr@10"),
                ("hit@10", "hit@10"), ("coverage@10", "coverage@10"), ("novelty@10", "novelty@10")]


def _p(p: float) -> str:
    return "–" if p != p else (f"{p:.2g}" if p >= 1e-4 else f"{p:.1e}")


def table(runs: list[Run], baseline: Run | None = None) -> str:
    """One line per group: test RMSE/MAE, the ranking metrics at 10, best val RMSE, epochs,
    seeds; with a `baseline` run (whose `paired` was set by `evaluate`), the paired test of
    each run of the group against it, seed by seed."""
    head = ["runs", "test RMSE", "test MAE", *(c for c, _ in RANKING_COLS), "best val RMSE",
            "epochs", "seeds"]
    if baseline is not None:
        head.append(f"vs `{baseline.group}` (seed {baseline.seed}): paired p")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def cell(m: list[dict], key: str) -> str:
        # a key no run recorded was not scored (test=false, as searches run), not diverged
        if not any(key in x for x in m):
            return "not scored"
        return mean_std([_value(x, key) for x in m])

    for name, rs in groups(runs).items():
        m = [r.metrics for r in rs]
        seeds = "/".join(str(r.seed) for r in rs)
        cells = [f"`{name}`", cell(m, "test/rmse"), cell(m, "test/mae"),
                 *(cell(m, f"test/{k}") for _, k in RANKING_COLS), cell(m, "val/rmse_best"),
                 "/".join(str(x.get("epochs")) for x in m), seeds]
        if baseline is not None:
            cells.append("; ".join(_versus(r, baseline) for r in rs))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _versus(run: Run, baseline: Run) -> str:
    if run.dir.resolve() == baseline.dir.resolve():
        return "baseline"
    c = paired(run, baseline)
    if "why" in c:
        return c["why"]
    return f"{c['metric']} {c['mean_diff']:+.4f}, p = {_p(c['p'])}"


def paired(run: Run, baseline: Run, test: str = "wilcoxon") -> dict:
    """The paired test of `run` against `baseline` over the users of their (same) test split:
    per-user squared error when both predict ratings, else per-user NDCG@10."""
    a, b = run.paired, baseline.paired
    if a is None or b is None:
        return {"why": "no model to evaluate"}
    if a["fingerprint"] != b["fingerprint"]:
        return {"why": "another test split: not paired"}
    key, label = ("se", "SE") if a["rates"] and b["rates"] else ("ndcg@10", "NDCG@10")
    return {"metric": label, **paired_test(a["per_user"][key], b["per_user"][key], test)}


def evaluate(runs: list[Run], cache_dir: str | None = None) -> None:
    """Score each run's exported model on its own test split (deepcf.serving.paired): its
    per-user values for the paired tests (`run.paired`), and the ranking metrics the run did
    not log itself (the top-N protocol of `deepcf.evaluate --protocol topn`) filled into its
    metrics. A run without a model.onnx keeps what it logged."""
    for r in runs:
        if not (r.dir / "model.onnx").is_file():
            continue
        r.paired = run_per_user(r.dir, cache_dir)
        for key, value in r.paired["metrics"].items():
            if key in {k for _, k in RANKING_COLS}:
                r.metrics.setdefault(f"test/{key}", value)


def plot_curves(runs: list[Run], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, rs) in enumerate(groups(runs).items()):
        for j, r in enumerate(rs):
            for ax, key in zip(axes, ("val/rmse", "train/loss")):
                pts = r.curves.get(key) or []
                if pts:
                    ax.plot([e + 1 for e, _ in pts], [v for _, v in pts],
                            ("o-", "s--", "^:", "d-.")[j % 4], ms=3,
                            color=colors[i % len(colors)], alpha=0.85,
                            label=f"{name} (seed {r.seed})" if len(rs) > 1 else name)
    for ax, key in zip(axes, ("val RMSE", "train loss (masked MSE)")):
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.grid(alpha=0.3)
    axes[1].set_yscale("log")
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_bars(runs: list[Run], path: Path) -> None:
    """Test RMSE and MAE per group: mean over the seeds that did not diverge, ± one std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gs = groups(runs)
    names = list(gs)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(names) + 2), 4.2))
    x = np.arange(len(names))
    for k, (key, label) in enumerate((("test/rmse", "test RMSE"), ("test/mae", "test MAE"))):
        means, stds = [], []
        for n in names:
            v = np.array([_value(r.metrics, key) for r in gs[n]])
            v = v[np.isfinite(v)]
            means.append(v.mean() if len(v) else math.nan)
            stds.append(v.std(ddof=1) if len(v) > 1 else 0.0)
        ax.bar(x + (k - 0.5) * 0.38, means, 0.38, yerr=stds, capsize=4, label=label)
    ax.set_xticks(x, [n if len(n) < 28 else n[:26] + "…" for n in names], rotation=20,
                  ha="right", fontsize=8)
    ax.set_ylabel("error (stars)")
    ax.set_title("test metrics, mean ± std over seeds")
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(paths: list[str | Path], out: Path, baseline: str | Path | None = None,
           evaluate_runs: bool = False, cache_dir: str | None = None,
           force: bool = False) -> dict[str, Path]:
    """Write curves.png, test_metrics.png and report.md (the table) into `out`; an existing one
    is refused unless `force` (each is written to a temporary file and renamed into place).
    `baseline`: a run dir (compared too when it is not among `paths`) every run is tested
    against (paired, over the users of the test split); it and `evaluate_runs` score every run's
    model on its test split (`evaluate`)."""
    runs = find_runs(paths)
    base = None
    if baseline is not None:
        bdir = Path(baseline)
        if not (bdir / "metrics.json").is_file():
            raise DeepCFError(f"--baseline {bdir}: not a run dir (no metrics.json)")
        base = next((r for r in runs if r.dir.resolve() == bdir.resolve()), None)
        if base is None:
            base = read_run(bdir)
            runs.append(base)
            label_groups(runs)
        if not (bdir / "model.onnx").is_file():
            raise DeepCFError(f"--baseline {bdir}: no model.onnx to evaluate (train it with "
                              f"the ONNX export on, or `python -m deepcf.export {bdir}`)")
    if base is not None or evaluate_runs:
        evaluate(runs, cache_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"curves": out / CURVES, "bars": out / BARS, "table": out / TABLE}
    for f in files.values():
        check_output(f, force, what="report file")
    with atomic_path(files["curves"]) as tmp:
        plot_curves(runs, tmp)
    with atomic_path(files["bars"]) as tmp:
        plot_bars(runs, tmp)
    text = table(runs, base)
    test = (" The p-values: scipy.stats.wilcoxon (two-sided) over the test users, paired on "
            "per-user squared error (SE, both models rate) or NDCG@10; the difference is "
            "run - baseline.") if base is not None else ""
    scored = (" Ranking metrics a run did not log: its model on its test split, every held-out "
              "rating relevant (`deepcf.evaluate --protocol topn`)."
              if base is not None or evaluate_runs else "")
    write_text(files["table"],
        f"{text}\n\n{len(runs)} runs from {', '.join(str(p) for p in paths)} (mean ± std over "
        f"the seeds that did not diverge).{scored}{test}\n\n![curves]({CURVES})\n\n"
        f"![test metrics]({BARS})\n")
    return files
