"""The recommended experiments as a user trains them, against their ACCURACY.md rows.

`make accuracy` writes its split files (deepcf.study.protocols.write_splits) and runs
`python -m deepcf.train experiment=<name> data=ratings_csv data.source.path=.../train.csv
data.source.test_path=.../test.csv` on each split, in a process of its own, exactly as the
README says; the run's test figure (its metrics.json) is compared with the study row's figure on
the same split. The run draws its own carve (a random share of the training ratings, with the
run's seed) where the study draws the protocol's; cold test ratings get the training mean where
the rating protocol gives the bias fallback: the tolerance, PARITY_TOLERANCE, says how close
"the same model" must come despite that.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from deepcf.study.protocols import write_splits

PARITY_TOLERANCE = 0.003


@dataclass
class UserRun:
    """An experiment of the README and the study row it must reproduce."""

    experiment: str  # conf/experiment/<experiment>.yaml
    protocol: str  # "rating" or "topn": which split files it trains on
    row: str  # the study row's name (deepcf.study.rows)
    metric: str  # the test metric compared: "rmse" or "ndcg@10"


@dataclass
class ParityResult:
    run: UserRun
    user: list[float] = field(default_factory=list)  # per split, deepcf.train's test figure
    seconds: list[float] = field(default_factory=list)  # per split, the whole command
    error: str | None = None


def train_command(experiment: str, split_dir: Path, out: Path, data) -> list[str]:
    """The README's command on one split's files (the data's rating range passed on)."""
    return [sys.executable, "-m", "deepcf.train", f"experiment={experiment}", "data=ratings_csv",
            f"data.source.path={split_dir / 'train.csv'}",
            f"data.source.test_path={split_dir / 'test.csv'}",
            f"data.source.rating_min={data.rating_min:g}",
            f"data.source.rating_max={data.rating_max:g}",
            f"paths.output_dir={out}", "logger=none"]


def run_parity(data, seeds, runs: list[UserRun], log=print) -> list[ParityResult]:
    """Each run's test figure per split of `seeds`, from `deepcf.train` on the split files."""
    results = [ParityResult(r) for r in runs]
    with tempfile.TemporaryDirectory(prefix="deepcf-parity-") as tmp:
        root = Path(tmp)
        write_splits(data, root / "splits", seeds)
        for res in results:
            for seed in seeds:
                split_dir = root / "splits" / res.run.protocol / f"split{seed}"
                out = root / f"{res.run.experiment}-{seed}"
                t0 = time.perf_counter()
                p = subprocess.run(train_command(res.run.experiment, split_dir, out, data),
                                   capture_output=True, text=True)
                res.seconds.append(time.perf_counter() - t0)
                if p.returncode != 0:
                    tail = (p.stderr or p.stdout).strip().splitlines()[-1:] or ["no output"]
                    res.error = f"split {seed}: exit {p.returncode}: {tail[0]}"
                    break
                metrics = json.loads((out / "metrics.json").read_text())
                res.user.append(float(metrics[f"test/{res.run.metric}"]))
            log(f"parity: experiment={res.run.experiment}: "
                + (res.error or ", ".join(f"{v:.4f}" for v in res.user))
                + f" ({sum(res.seconds):.1f} s)")
    return results


def parity_rows(parity: list[ParityResult], topn, rating) -> list[dict]:
    """Per user run: its figures, the row's, the differences and whether every split is within
    PARITY_TOLERANCE (False when the run or the row failed)."""
    by_name = {(r.row.protocol, r.row.name): r for r in [*rating, *topn]}
    out = []
    for p in parity:
        row = by_name.get((p.run.protocol, p.run.row))
        study = [m[p.run.metric] for m in row.metrics] if row and not row.error else []
        diffs = [u - s for u, s in zip(p.user, study)]
        ok = (not p.error and len(diffs) == len(study) == len(p.user) > 0
              and all(abs(d) <= PARITY_TOLERANCE for d in diffs))
        out.append({"experiment": p.run.experiment, "row": p.run.row, "metric": p.run.metric,
                    "user": p.user, "study": study, "diffs": diffs, "seconds": p.seconds,
                    "error": p.error or (None if study else f"the row {p.run.row!r} failed or "
                                         f"did not run"), "ok": ok})
    return out
