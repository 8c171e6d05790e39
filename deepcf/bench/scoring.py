"""Scoring speed, onnxruntime vs PyTorch eager, side by side: `python -m deepcf.bench.scoring`.

Both run the same work the way evaluate/recommend do: a chunk of users is cut from the CSR and
densified, the dense forward (n -> 512 -> 256 -> 128 -> 256 -> 512 -> n) scores every movie, and
the top 10 unseen movies are taken. Same chunk size and thread count for both; one warm-up chunk
each; the best of --repeats timings. Weights are untrained (speed does not depend on them).

Scales:
- ML-100K: the real MovieLens-100K, all 943 users x 1,682 movies.
- Movies-Dataset: 10,000 users of the synthetic generator at the `movies_full` scale
  (45,115 movies with raw ids up to 176,275, half stars), with the ratings count scaled to the
  users (26,024,289 x 10,000 / 270,896 = 960,681 ratings, about 96 per user as in the full set);
  generating all 270,896 users only to score 10,000 would take minutes for nothing.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from deepcf.data.matrix import build_matrix, load_matrix
from deepcf.data.sources import MovieLens100K
from deepcf.data.synthetic import SCALES, generate_ratings
from deepcf.models.autoencoder import AutoEncoder
from deepcf.serving.export import export_onnx
from deepcf.serving.scoring import OnnxScorer, TorchScorer, UserScores, top_k_unseen

FULL_USERS, FULL_RATINGS = 270_896, 26_024_289


def ml100k_matrix(cache_dir: str):
    return load_matrix(MovieLens100K(), cache_dir).ratings


def movies_matrix(n_users: int):
    p = dict(SCALES["movies_full"], mode="popularity")  # the benchmarks' generator
    # the full file's ratings per user; the generator gives every user and movie one rating,
    # so a small sample needs at least n_users + n_items of them
    p.update(n_users=n_users, n_ratings=max(round(FULL_RATINGS * n_users / FULL_USERS),
                                            n_users + p["n_items"]))
    table = generate_ratings(**p, seed=0)
    X = build_matrix(table, rating_min=0.5, rating_max=5.0).ratings
    # users and movies the sample left without a rating are still rows / columns to score
    X.resize(n_users, p["n_items"])
    return X


def time_scoring(scorer, X, chunk: int, repeats: int, k: int = 10) -> float:
    """Users per second for scoring + top-k unseen of every row of X."""
    users = np.arange(X.shape[0])
    scores = UserScores(scorer, X, "user", chunk)
    _, warm = next(scores.chunks(users[:chunk]))
    top_k_unseen(warm, X[users[:chunk]], k)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for part, block in scores.chunks(users):
            top_k_unseen(block, X[part], k)
        best = min(best, time.perf_counter() - t0)
    return len(users) / best


def bench(name: str, X, chunks: list[int], threads: int, repeats: int, tmp: Path) -> list[dict]:
    import torch

    torch.manual_seed(0)
    net = AutoEncoder.build(X.shape[1], hidden=[512, 256, 128]).eval()
    path = export_onnx(net, tmp / f"{name.split()[0]}.onnx", torch.zeros(2, X.shape[1]))
    torch.set_num_threads(threads)
    ort, eager = OnnxScorer(path, threads=threads), TorchScorer(net)
    rows = []
    for chunk in chunks:
        rows.append({"name": name, "users": X.shape[0], "movies": X.shape[1], "chunk": chunk,
                     "repeats": repeats, "ort": time_scoring(ort, X, chunk, repeats),
                     "eager": time_scoring(eager, X, chunk, repeats)})
        print(f"{name}, chunk {chunk}: onnxruntime {rows[-1]['ort']:,.0f} users/s, "
              f"eager {rows[-1]['eager']:,.0f} users/s", file=sys.stderr, flush=True)
    return rows


def table(rows: list[dict], threads: int) -> str:
    import onnxruntime
    import torch

    lines = [
        (f"Scoring speed (`python -m deepcf.bench.scoring`): users/second for densify + dense "
         f"forward + top-10 unseen, {threads} thread(s) each, best of `repeats` timed passes; "
         f"onnxruntime {onnxruntime.__version__}, torch {torch.__version__}, "
         f"{platform.machine()}, {os.cpu_count()} CPUs."),
        "",
        ("| data | users | movies | chunk | repeats | onnxruntime users/s | "
         "PyTorch eager users/s | onnxruntime / eager |"),
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['name']} | {r['users']:,} | {r['movies']:,} | {r['chunk']} | "
                     f"{r['repeats']} | {r['ort']:,.0f} | {r['eager']:,.0f} | "
                     f"{r['ort'] / r['eager']:.2f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    import torch

    p = argparse.ArgumentParser(prog="deepcf.bench.scoring", description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=10_000,
                   help="users at Movies-Dataset scale (default 10000)")
    p.add_argument("--chunks", type=int, nargs="+", default=[256, 1024],
                   help="chunk sizes to try at each scale")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(),
                   help="intra-op threads for both backends (on a shared machine use 1: "
                        "spinning thread pools of a loaded CPU slow both down)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cache-dir", default="~/.cache/deepcf")
    p.add_argument("--out", help="also write the markdown table here")
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, X, repeats in (
            ("ML-100K", ml100k_matrix(args.cache_dir), args.repeats),
            ("Movies-Dataset scale (synthetic)", movies_matrix(args.users), 1),
        ):
            rows += bench(name, X, args.chunks, args.threads, repeats, Path(tmp))
    text = table(rows, args.threads)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)  # e.g. outputs/ on a fresh clone
        Path(args.out).write_text(text + "\n")
    return text


if __name__ == "__main__":
    main(sys.argv[1:])
