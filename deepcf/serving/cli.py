"""What the serving commands (evaluate, recommend) share on their command line: a run dir or an
explicit ONNX model, the scoring chunk and the data cache."""

from __future__ import annotations

import argparse


def serving_parser(prog: str, doc: str, examples: list[str],
                   run_dir_help: str) -> argparse.ArgumentParser:
    """A parser with RUN_DIR and --model; `add_scoring_options` adds --chunk / --cache-dir."""
    p = argparse.ArgumentParser(
        prog=prog, description=doc.split("\n\n")[0],
        epilog="examples:\n" + "".join(f"  {e}\n" for e in examples)
               + "the sidecar format and the metrics are described in docs/serving.md",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", nargs="?", help=run_dir_help)
    p.add_argument("--model", help="ONNX model (its sidecar .deepcf.npz next to it); "
                   "default RUN_DIR/model.onnx")
    return p


def add_scoring_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--chunk", type=int, default=256,
                   help="users scored at a time (default 256, see deepcf.bench.scoring)")
    p.add_argument("--cache-dir", help="data cache dir instead of the run's")
    p.add_argument("--pop-beta", type=float, default=0.0, metavar="B",
                   help="popularity correction of the ranking: scores / popularity^B "
                        "(popularity: the movie's training ratings, from the sidecar; on top "
                        "of a model's own model.net.pop_beta); default 0, none")


def add_allow_target(p: argparse.ArgumentParser) -> None:
    """A run dir's config is data: only deepcf's own classes are built from it unless allowed."""
    p.add_argument("--allow-target", action="append", metavar="PREFIX", default=[],
                   help="instantiate _target_s from the run dir's config that start with "
                        "PREFIX (default: deepcf's own data classes only; repeatable; "
                        "also DEEPCF_ALLOW_TARGETS=p1,p2)")
