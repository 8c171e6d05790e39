"""`python -m deepcf.bench.multinomial`: what the multinomial loss costs at scale.

Mult-DAE (`experiment=mult_dae`'s net and loss: a softmax over every movie, so the output layer
is dense over the catalogue for every row of a batch) next to the MSE autoencoder of the study
(sparse path: only the batch's movies are touched), on the same synthetic data and batch size,
one subprocess each (deepcf.bench.runs, `train` kind: timed steps on the data module's real
batches, after 2 warm-up steps; peak RSS of the process, data included). A fixed number of
batches is timed, not a full epoch: the epoch time is that per-batch time x the epoch's batches
(an estimate, labelled as one). `make bench` appends its table to BENCHMARKS.md.

    python -m deepcf.bench.multinomial --scale movies_full --batches 10 --out outputs/mult.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import tempfile
from pathlib import Path

import torch

from deepcf.bench.__main__ import ADAM, HIDDEN, run

DAE = {"overrides": ["model=mult_dae", "init=default"], "implicit": "all"}
MSE = {"hidden": HIDDEN, "train_path": "sparse"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m deepcf.bench.multinomial", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", default="movies_full", help="synthetic scale (movies_full: "
                   "270,896 users x 45,115 movies, 26M ratings)")
    p.add_argument("--batches", type=int, default=10, help="timed batches per model")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--cache-dir", default=None, help="default: a temporary dir")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        base = {"kind": "train", "source": "synthetic", "scale": args.scale,
                "cache_dir": args.cache_dir or tmp, "batch_size": args.batch_size,
                "batches": args.batches, "threads": args.threads, "optimizer": ADAM}
        rows = [("Mult-DAE, multinomial over all movies (dense logits)", run({**base, **DAE,
                                                                             "label": "dae"})),
                ("autoencoder 512-256-128, masked MSE (sparse path)", run({**base, **MSE,
                                                                         "label": "mse"}))]
    lines = [
        f"## The multinomial loss at scale (`python -m deepcf.bench.multinomial --scale "
        f"{args.scale} --batches {args.batches}`)",
        "",
        f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC}, {args.threads} threads, "
        f"{os.cpu_count()} CPUs; synthetic `{args.scale}`, batch {args.batch_size} users, Adam; "
        f"{args.batches} timed batches each after 2 warm-up steps. *Epoch* is time per batch x "
        "the epoch's batches: an estimate, not a timed epoch. Peak RSS is the process's, data "
        "included.",
        "",
        "| model | s / batch | forward | backward | optimizer step | est. epoch | peak RSS | "
        "other load (cores) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, r in rows:
        lines.append(f"| {label} | {r['s_per_batch']:.3f} | {r['forward_s']:.3f} | "
                     f"{r['backward_s']:.3f} | {r['step_s']:.3f} | "
                     f"{r['epoch_s'] / 60:.1f} min ({r['n_batches']:,} batches) | "
                     f"{r['peak_rss_gb']:.2f} GB | {r['other_cores']:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
