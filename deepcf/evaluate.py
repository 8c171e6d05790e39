"""Evaluate an ONNX model on held-out ratings: `python -m deepcf.evaluate RUN_DIR`.

The command line of deepcf.serving.evaluate (the protocol and metrics are described there).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from deepcf.errors import DeepCFError, console_script, one_line_errors
from deepcf.files import check_output, write_text
from deepcf.serving.cli import add_allow_target, add_scoring_options, serving_parser
from deepcf.serving.evaluate import evaluate_files, evaluate_run, format_report
from deepcf.serving.runs import allow_targets
from deepcf.training.loggers import log_eval_run, mode_now

PROG = "deepcf.evaluate"


def parser() -> argparse.ArgumentParser:
    p = serving_parser(PROG, __doc__, [
        "python -m deepcf.evaluate outputs/train/runs/2026-01-01_12-00-00",
        "python -m deepcf.evaluate --model model.onnx --input train.npz --target test.npz",
        "python -m deepcf.evaluate outputs/edlae/runs/2026-01-01_12-00-00 --protocol topn"],
        "a training run dir: its model.onnx on its own test split, re-created from "
        "config_resolved.yaml")
    p.add_argument("--input", help="without RUN_DIR: the training ratings (ratings file with "
                   "raw ids, or scipy .npz users x movies)")
    p.add_argument("--target", help="without RUN_DIR: the held-out ratings, same format")
    p.add_argument("-k", "--k", type=int, nargs="+", default=[10, 20], help="ranking cutoffs")
    p.add_argument("--metrics", default=None, metavar="M1,M2",
                   help="ranking metrics, comma-separated: names taken at every --k (ndcg, map, "
                        "recall_capped, ...; deepcf.serving.metrics) or NAME@K, or a plug-in "
                        "module.path:NAME[@K]; default: every built-in one")
    p.add_argument("--threshold", type=float, default=4.0,
                   help="relevant = held-out rating >= this (default 4)")
    p.add_argument("--protocol", choices=["rating", "topn"], default="rating",
                   help="rating (default): RMSE/MAE and ranking with relevance >= --threshold; "
                        "topn: the top-N protocol of make accuracy on the same holdout (every "
                        "held-out rating relevant, capped recall, coverage, Gini; for ranking "
                        "models such as experiment=edlae)")
    p.add_argument("--out", help="write the metrics as JSON here "
                   "(default RUN_DIR/eval_metrics.json with a run dir, replaced each time; an "
                   "existing --out file only with --force)")
    p.add_argument("--force", action="store_true", help="replace an existing --out file")
    p.add_argument("--wandb", action="store_true",
                   help="with RUN_DIR: log the metrics as a W&B run of its own, in the training "
                        "run's group with job type eval")
    p.add_argument("--wandb-mode", choices=["auto", "online", "offline", "disabled"],
                   default="auto", help="auto (default): online only with an API key, else "
                   "offline into RUN_DIR/wandb")
    add_scoring_options(p)
    add_allow_target(p)
    return p


def main(argv: list[str] | None = None) -> dict:
    args = parser().parse_args(argv)
    with one_line_errors(PROG):
        allow_targets(args.allow_target)
        if args.wandb and not args.run_dir:
            raise DeepCFError("--wandb needs a RUN_DIR (the eval run joins its training run's "
                              "W&B group)")
        if min(args.k) < 1 or args.chunk < 1:
            raise DeepCFError("--k and --chunk must be >= 1")
        if args.out:  # before any scoring
            model = args.model or (Path(args.run_dir) / "model.onnx" if args.run_dir else None)
            inputs = [args.input, args.target, model,
                      Path(model).with_suffix(".deepcf.npz") if model else None]
            check_output(args.out, args.force, inputs, what="metrics JSON")
        if args.run_dir:
            r = evaluate_run(args.run_dir, args.model, args.k, args.threshold, args.chunk,
                             args.cache_dir, args.protocol, args.pop_beta, args.metrics)
            out = args.out or str(Path(args.run_dir) / "eval_metrics.json")
        elif args.model and args.input and args.target:
            r = evaluate_files(args.model, args.input, args.target, args.k, args.threshold,
                               args.chunk, args.protocol, args.pop_beta, args.metrics)
            out = args.out
        else:
            raise DeepCFError("give a RUN_DIR, or --model with --input and --target")
        print(format_report(r), flush=True)
        if out:
            write_text(out, json.dumps(r, indent=2) + "\n")
            print(f"metrics: {out}")
        if args.wandb:
            run_id = log_eval_run(Path(args.run_dir), r, args.wandb_mode)
            print(f"wandb: eval run {run_id} ({mode_now()}) in {args.run_dir}/wandb")
        return r


# the console script (pyproject [project.scripts])
cli = console_script(main)


if __name__ == "__main__":
    sys.exit(cli())
