"""One measurement of `deepcf.bench`, run in its own process (own allocator settings, own peak RSS).

`python -m deepcf.bench.runs '<json spec>'` prints one JSON line of results. Kinds:
- `data`: generate the synthetic ratings, write them as a CSV, read + compact + CSR (the CSV
  load), save the `.npz` cache;
- `reload`: load the `.npz` cache;
- `train`: timed training steps of one formulation on the data module's real batches (the loop
  Lightning runs: zero_grad, training_step, backward, step), optionally a torch.profiler summary;
- `family`: timed training steps of a model family (deepcf.bench.families) composed from
  deepcf.train overrides, on synthetic data;
- `epoch`: one full training epoch through `pytorch_lightning.Trainer` (the real thing), its
  wall time and the process's peak RSS;
- `gemm`: a plain fp32 GEMM, the machine's reference GFLOP/s;
- `copy`: a plain 256 MB copy, the machine's reference memory bandwidth.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path

from deepcf.memory import peak_rss_gb


def _data(spec: dict) -> dict:
    import numpy as np

    # start-up: each measurement process imports only what it measures (its peak RSS)
    from deepcf.data.matrix import build_matrix, save_matrix

    # start-up: each measurement process imports only what it measures (its peak RSS)
    from deepcf.data.readers import read_ratings

    # start-up: each measurement process imports only what it measures (its peak RSS)
    from deepcf.data.synthetic import SCALES, generate_ratings, write_csv

    out: dict = {}
    t = time.perf_counter()
    # the popularity generator by name: BENCHMARKS.md's figures stay comparable across
    # the default's change
    table = generate_ratings(**{**SCALES[spec["scale"]], "mode": "popularity"}, seed=0)
    out["generate_s"] = time.perf_counter() - t
    t = time.perf_counter()
    write_csv(table, spec["csv"])
    out["write_csv_s"] = time.perf_counter() - t
    out["csv_bytes"] = os.path.getsize(spec["csv"])
    del table
    t = time.perf_counter()
    table = read_ratings(spec["csv"], 0.5, 5.0)
    out["read_s"] = time.perf_counter() - t
    m = build_matrix(table, None, 0.5, 5.0)
    out["load_s"] = time.perf_counter() - t  # read + validate + compact ids + CSR
    out.update(n_ratings=int(m.ratings.nnz), shape=list(m.shape),
               max_item_id=int(np.max(m.item_ids)))
    del table
    # start-up: each measurement process imports only what it measures (its peak RSS)
    from deepcf.data.matrix import matrix_cache_path

    npz = matrix_cache_path(_source(spec), spec["cache_dir"])  # where the data module looks
    t = time.perf_counter()
    save_matrix(m, npz)
    out["save_npz_s"] = time.perf_counter() - t
    out["npz_bytes"] = os.path.getsize(npz)
    out["npz"] = str(npz)
    out["csr_bytes"] = int(m.ratings.data.nbytes + m.ratings.indices.nbytes
                           + m.ratings.indptr.nbytes)
    return out


def _reload(spec: dict) -> dict:
    # start-up: each measurement process imports only what it measures (its peak RSS)
    from deepcf.data.matrix import load_cached

    base = peak_rss_gb()
    t = time.perf_counter()
    m = load_cached(Path(spec["npz"]))
    return {"reload_s": time.perf_counter() - t, "n_ratings": int(m.ratings.nnz),
            "rss_gain_gb": peak_rss_gb() - base}


def _source(spec: dict):
    # start-up: each measurement process imports only what it measures (its peak RSS)
    from deepcf.data.sources import MovieLens100K, RatingsFile, Synthetic

    if spec.get("source", "file") == "file":
        return RatingsFile(spec["csv"], rating_min=0.5, rating_max=5.0)
    if spec["source"] == "synthetic":
        return Synthetic(scale=spec["scale"], mode="popularity")
    return MovieLens100K()


def _datamodule(spec: dict):
    # start-up: each measurement process imports only what it measures (its peak RSS)
    from deepcf.data.datamodule import RatingsDataModule

    dm = RatingsDataModule(_source(spec), batch_size=spec["batch_size"],
                           cache_dir=spec["cache_dir"], protocol={"seed": 42},
                           implicit=spec.get("implicit"))
    dm.setup("fit")
    return dm


# the autoencoder the training rows time: the study's shape, SELU, Glorot init (biases 0.01)
AUTOENCODER = ["init=xavier_uniform", "model.net.activation=selu"]


def _module(spec: dict, dm):
    """The module of `spec`'s config (deepcf.train overrides: `overrides`, else the autoencoder
    of `hidden` on `train_path`) through the run assembly, with `spec["optimizer"]` as the
    optimizer node."""
    from omegaconf import open_dict

    # start-up: each measurement process imports only what it measures (its peak RSS)
    from deepcf.training.assembly import build_module

    # start-up: each measurement process imports only what it measures (its peak RSS)
    from deepcf.training.config import compose

    overrides = spec.get("overrides") or [
        *AUTOENCODER, f"model.net.hidden=[{','.join(map(str, spec['hidden']))}]",
        f"model.objective.train_path={spec['train_path']}"]
    cfg = compose(overrides)
    with open_dict(cfg):
        cfg.model.optimizer = spec["optimizer"]
    return build_module(cfg, dm)


def _train(spec: dict) -> dict:
    import torch

    torch.manual_seed(0)
    dm = _datamodule(spec)
    module = _module(spec, dm)
    return _timed_steps(spec, dm, module)


def _timed_steps(spec: dict, dm, module) -> dict:
    """`spec["batches"]` timed training steps (after `warmup`) on the data module's batches."""
    import torch

    opt = module.configure_optimizers()
    opt = opt["optimizer"] if isinstance(opt, dict) else opt
    loader = dm.train_dataloader()
    n_batches = len(loader)
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if spec.get("bf16")
                else contextlib.nullcontext())
    times, nnz, touched = [], [], []

    def batches():
        while True:  # a small catalogue has fewer batches than the bench asks for: go round
            yield from loader

    it = batches()
    warm, steps = spec.get("warmup", 2), spec["batches"]
    phases = [0.0, 0.0, 0.0]  # forward (with zero_grad), backward, optimizer step
    for i in range(warm + steps):
        batch = next(it)
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with autocast:
            loss = module.training_step(batch, i)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        t3 = time.perf_counter()
        if i >= warm:
            times.append(t3 - t)
            for k, dt in enumerate((t1 - t, t2 - t1, t3 - t2)):
                phases[k] += dt
            nnz.append(len(batch["in_idx"]))
            touched.append(len(torch.unique(batch["in_idx"])))
    out = {"n_batches": n_batches, "measured": len(times), "s_per_batch": sum(times) / len(times),
           "nnz_per_batch": sum(nnz) / len(nnz), "n_items": dm.width,
           "movies_per_batch": sum(touched) / len(touched),
           "batch_size": dm.batch_size, "train_ratings": int(dm.split.train.nnz),
           "sparse_grad": module.objective.wants_sparse_grads(module.net),
           "dense_path": getattr(module.objective, "train_path", "sparse") == "dense",
           "loss": float(loss), "forward_s": phases[0] / len(times),
           "backward_s": phases[1] / len(times), "step_s": phases[2] / len(times)}
    out["epoch_s"] = out["s_per_batch"] * n_batches
    if spec.get("profile"):
        from torch.profiler import profile

        with profile() as prof:
            for i in range(spec["profile"]):
                batch = next(it)
                opt.zero_grad(set_to_none=True)
                module.training_step(batch, i).backward()
                opt.step()
        rows = []
        for e in sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:10]:
            rows.append([e.key, e.self_cpu_time_total / 1e3 / spec["profile"], e.count])
        out["profile"] = rows
    out["peak_rss_gb"] = peak_rss_gb()
    return out


def _family(spec: dict) -> dict:
    """Timed steps of a model family composed from deepcf.train overrides (deepcf.bench.families)
    on synthetic data at `scale`, or on a ratings file `csv` (deepcf.bench.full): the data
    module and model a user's run would build."""
    import torch
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    # start-up: each measurement process imports only what it measures (its peak RSS)
    from deepcf.training.assembly import assemble

    # start-up: each measurement process imports only what it measures (its peak RSS)
    from deepcf.training.config import compose

    # the synthetic rows name the popularity generator: BENCHMARKS.md's figures stay comparable
    data = (["data=ratings_csv", f"data.source.path={spec['csv']}"] if spec.get("csv") else
            ["data=synthetic", f"data.source.scale={spec['scale']}", "data.source.mode=popularity"])
    overrides = [*spec["overrides"], *data, f"paths.cache_dir={spec['cache_dir']}", "seed=0"]
    cfg = compose(overrides, return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.data.cache = bool(spec.get("csv"))  # a CSV's cached matrix is read, not re-parsed
    torch.manual_seed(0)
    t = time.perf_counter()
    dm, module = assemble(cfg)
    setup_s = time.perf_counter() - t
    out = _timed_steps(spec, dm, module)
    out.update(setup_s=setup_s, shape=list(dm.matrix.shape), orientation=dm.orientation,
               n_params=sum(p.numel() for p in module.parameters()))
    return out


def _epoch(spec: dict) -> dict:
    import pytorch_lightning as pl
    import torch

    torch.manual_seed(0)
    t0 = time.perf_counter()
    dm = _datamodule(spec)
    module = _module(spec, dm)
    setup_s = time.perf_counter() - t0
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=1, limit_val_batches=0,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0)
    t = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    epoch_s = time.perf_counter() - t
    return {"epoch_s": epoch_s, "setup_s": setup_s, "n_batches": trainer.num_training_batches,
            "train_ratings": int(dm.split.train.nnz), "peak_rss_gb": peak_rss_gb(),
            "loss": float(trainer.callback_metrics["train/loss"]),
            "sparse_grad": module.objective.wants_sparse_grads(module.net)}


def _gemm(spec: dict) -> dict:
    import torch

    n = spec.get("n", 2048)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    reps, t = 5, time.perf_counter()
    for _ in range(reps):
        a @ b
    s = (time.perf_counter() - t) / reps
    return {"n": n, "gflops": 2 * n**3 / s / 1e9}


def _copy(spec: dict) -> dict:
    """A plain 256 MB tensor copy: the machine's memory bandwidth as torch reaches it."""
    import torch

    n = spec.get("mb", 256) * 2**20 // 4
    src, dst = torch.randn(n), torch.empty(n)
    dst.copy_(src)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t)
    return {"mb": spec.get("mb", 256), "gb_per_s": 2 * n * 4 / best / 1e9}  # read + write


KINDS = {"data": _data, "reload": _reload, "train": _train, "family": _family, "epoch": _epoch,
         "gemm": _gemm, "copy": _copy}


def main() -> None:
    spec = json.loads(sys.argv[1])
    import torch

    torch.set_num_threads(spec.get("threads", torch.get_num_threads()))
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    out = KINDS[spec["kind"]](spec)
    out["threads"] = torch.get_num_threads()
    out["allocator_env"] = bool(os.environ.get("MALLOC_MMAP_MAX_"))
    print("BENCH_RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
