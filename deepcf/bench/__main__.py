"""`make bench` / `python -m deepcf.bench`: deepcf's sparse training next to the dense masked
formulation of the same model, at Movies-Dataset and ML-100K scale; writes BENCHMARKS.md.

Every measurement runs in its own subprocess (`deepcf.bench.runs`): its own allocator settings
(the dense "out of the box" baseline runs without them) and its own peak RSS. The machine's load
from other processes is measured (/proc/stat busy time minus the bench's own CPU time) and
printed next to the figures. `--scale` runs the same bench on a smaller synthetic catalogue.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from string import Template

import torch

from deepcf.bench.families import FAMILIES

ALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000"}
HIDDEN = [512, 256, 128]
ADAM = {"_target_": "torch.optim.Adam", "lr": 1e-3}
ADAM_FUSED = {**ADAM, "fused": True}
LAZY = {"_target_": "deepcf.training.optim.LazyAdam", "lr": 1e-3}
SGD = {"_target_": "torch.optim.SGD", "lr": 0.01}


def _cpu_busy() -> tuple[float, float]:
    """(busy jiffies of all CPUs, total jiffies) from /proc/stat."""
    try:
        f = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    except OSError:
        return 0.0, 0.0
    idle = f[3] + (f[4] if len(f) > 4 else 0)
    return float(sum(f) - idle), float(sum(f))


class Load:
    """CPU time other processes used while a phase ran, in cores."""

    def __enter__(self):
        self.busy0, self.tot0 = _cpu_busy()
        self.own0 = self._own()
        self.t0 = time.perf_counter()
        return self

    @staticmethod
    def _own() -> float:
        r = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
        return sum(x.ru_utime + x.ru_stime for x in r)

    def __exit__(self, *exc):
        busy1, tot1 = _cpu_busy()
        wall = time.perf_counter() - self.t0
        hz = os.sysconf("SC_CLK_TCK")
        other = (busy1 - self.busy0) / hz - (self._own() - self.own0)
        self.other_cores = max(0.0, other / wall) if wall > 0 else 0.0
        return False


def run(spec: dict, alloc: bool = True, timeout: int = 900) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ALLOC_ENV}
    if alloc:
        env.update(ALLOC_ENV)
    with Load() as load:
        p = subprocess.run([sys.executable, "-m", "deepcf.bench.runs", json.dumps(spec)],
                           env=env, capture_output=True, text=True, timeout=timeout)
    line = next((x for x in p.stdout.splitlines() if x.startswith("BENCH_RESULT ")), None)
    if p.returncode != 0 or line is None:
        raise SystemExit(f"deepcf.bench: {spec['kind']} run failed:\n{p.stderr[-3000:]}")
    out = json.loads(line[len("BENCH_RESULT "):])
    out["other_cores"] = load.other_cores
    print(f"  {spec.get('label', spec['kind'])}: "
          + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                      for k, v in out.items() if k != "profile"), flush=True)
    return out


def step_flops(r: dict, hidden: list[int]) -> float:
    """Useful arithmetic of one training step (forward + backward = 3x the forward's GEMMs)."""
    mid = sum(a * b for a, b in zip(hidden[:-1], hidden[1:])) * 2  # encoder + decoder middles
    if r["dense_path"]:
        fwd = 2 * r["batch_size"] * (2 * r["n_items"] * hidden[0] + mid)
    else:
        fwd = 2 * (2 * r["nnz_per_batch"] * hidden[0] + r["batch_size"] * mid)
    return 3 * fwd


def machine(threads: int) -> dict:
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cores": os.cpu_count(), "cpu": model, "torch": torch.__version__,
            "threads": threads, "python": platform.python_version(),
            "date": dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
            "loadavg": Path("/proc/loadavg").read_text().split()[:3]
            if Path("/proc/loadavg").exists() else ["?"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="deepcf.bench", description=__doc__.splitlines()[0])
    ap.add_argument("--scale", default="movies_full",
                    help="synthetic scale of the large run (movies_full, movies_small, ...)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--dense-batches", type=int, default=6)
    ap.add_argument("--sparse-batches", type=int, default=150)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--workdir", default=None, help="for the CSV and cache (default: a temp dir)")
    ap.add_argument("--out", default="BENCHMARKS.md")
    ap.add_argument("--only", choices=("all", "families"), default="all",
                    help="families: only the model-family rows (deepcf.bench.families)")
    ap.add_argument("--family-scale", default=None,
                    help="time every family at this synthetic scale (default: each its own)")
    ap.add_argument("--family-steps", type=int, default=None,
                    help="timed steps per family (default: each its own)")
    ap.add_argument("--family", default=None,
                    help="only the families whose name contains this (checking a new entry)")
    args = ap.parse_args(argv)
    cmd = "python -m deepcf.bench " + " ".join(argv if argv is not None else sys.argv[1:])
    tmp = tempfile.TemporaryDirectory(prefix="deepcf-bench-") if not args.workdir else None
    work = Path(args.workdir or tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    csv, cache = work / f"ratings-{args.scale}.csv", work / "cache"
    info = machine(args.threads)
    print(f"deepcf.bench: {info}", flush=True)
    base = {"threads": args.threads}
    res: dict = {}
    if args.only == "families":
        fams = run_families(args, base, cache)
        text = "\n".join(header(cmd, info) + [""] + families_report(fams, info))
        return write(args, text, tmp)

    print("data", flush=True)
    csv.parent.mkdir(parents=True, exist_ok=True)
    res["data"] = run({**base, "kind": "data", "scale": args.scale, "csv": str(csv),
                       "cache_dir": str(cache)})
    res["reload"] = run({**base, "kind": "reload", "npz": res["data"]["npz"]})
    res["gemm"] = run({**base, "kind": "gemm", "n": 2048})
    res["copy"] = run({**base, "kind": "copy", "mb": 256})

    big = {**base, "kind": "train", "source": "file", "csv": str(csv), "cache_dir": str(cache),
           "batch_size": args.batch_size, "hidden": HIDDEN}
    print(f"training, {args.scale}, batch {args.batch_size}", flush=True)
    rows = [
        ("dense", "dense masked fp32, out of the box (Adam, default allocator)", ADAM, False,
         False, args.dense_batches),
        ("dense_tuned", "dense masked fp32, fused Adam + allocator settings", ADAM_FUSED, True,
         False, args.dense_batches),
        ("dense_bf16", "dense masked, same, bf16 autocast", ADAM_FUSED, True, True,
         args.dense_batches),
        ("sparse_adam", "deepcf sparse step, dense fused Adam update", ADAM_FUSED, True, False,
         args.sparse_batches),
        ("sparse_sgd", "deepcf sparse step, plain SGD on row-sparse grads (exact)", SGD, True,
         False, args.sparse_batches),
        ("sparse_lazy", "**deepcf sparse step, LazyAdam (row-sparse grads)**", LAZY, True, False,
         args.sparse_batches),
        ("sparse_lazy_plain", "deepcf sparse step, LazyAdam, default allocator", LAZY, False,
         False, args.sparse_batches),
    ]
    big_rows = []
    for key, label, opt, alloc, bf16, n in rows:
        path = "dense" if key.startswith("dense") else "sparse"
        spec = {**big, "label": key, "train_path": path, "optimizer": opt, "bf16": bf16,
                "batches": n}
        if key in ("sparse_lazy", "sparse_sgd"):
            spec["profile"] = 5
        res[key] = run(spec, alloc=alloc)
        big_rows.append((key, label))
    res["epoch"] = run({**big, "train_path": "sparse", "optimizer": LAZY, "kind": "epoch",
                        "label": "full epoch (Lightning)"})

    print("training, ML-100K (real), batch 32", flush=True)
    small = {**base, "kind": "train", "source": "ml100k",
             "cache_dir": str(Path("~/.cache/deepcf").expanduser()), "batch_size": 32,
             "hidden": HIDDEN, "batches": 200, "warmup": 3}
    small_rows = [
        ("ml_dense", "dense masked fp32, out of the box (Adam)", ADAM, "dense", False),
        ("ml_dense_tuned", "dense masked fp32, fused Adam + allocator settings", ADAM_FUSED,
         "dense", True),
        ("ml_sparse_adam", "deepcf sparse step, dense fused Adam update", ADAM_FUSED, "sparse",
         True),
        ("ml_sparse_lazy", "deepcf sparse step, LazyAdam", LAZY, "sparse", True),
    ]
    for key, _label, opt, path, alloc in small_rows:
        res[key] = run({**small, "label": key, "optimizer": opt, "train_path": path},
                       alloc=alloc)

    fams = run_families(args, base, cache)
    text = report(args, cmd, info, res, big_rows, small_rows)
    text += "\n" + "\n".join(families_report(fams, info))
    return write(args, text, tmp)


def write(args, text: str, tmp) -> int:
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)  # e.g. outputs/ on a fresh clone
    Path(args.out).write_text(text)
    print(f"deepcf.bench: wrote {args.out}", flush=True)
    if tmp is not None:
        tmp.cleanup()
    return 0


def run_families(args, base: dict, cache: Path) -> list[tuple]:
    """(family, scale, result) for every registered family, each in its own process."""
    print("model families", flush=True)
    out = []
    for f in [f for f in FAMILIES if args.family is None or args.family in f.name]:
        scale = args.family_scale or f.scale
        spec = {**base, "kind": "family", "label": f"{f.name} @ {scale}",
                "overrides": list(f.overrides), "scale": scale, "cache_dir": str(cache),
                "batches": args.family_steps or f.steps}
        out.append((f, scale, run(spec)))
    return out


def families_report(fams: list[tuple], info: dict) -> list[str]:
    """The model-family table, and where a dense width x width net stops fitting."""
    lines = [
        "## Model families side by side",
        "",
        "Each family's own config (`python -m deepcf.train` overrides, deepcf.bench.families) on "
        "synthetic data at the scale shown; the optimizer steps Lightning runs (zero_grad, "
        "training_step, backward, step) timed on the data module's real batches after 2 "
        "warm-up steps, each family in its own process (peak RSS: its VmHWM, data included). "
        "s/epoch = s/step x steps per epoch.",
        "",
        "| family | overrides | scale (users x movies, rows) | steps/epoch | s/step | s/epoch "
        "| parameters | peak RSS GB | other load |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for f, scale, r in fams:
        users, movies = r["shape"]
        lines.append(
            f"| {f.name} | `{' '.join(f.overrides) or '(defaults)'}` | `{scale}` ({users:,} x "
            f"{movies:,}, {r['orientation']}s) | {r['n_batches']} | {_fmt_s(r['s_per_batch'])} "
            f"| {_fmt_s(r['epoch_s'])} | {r['n_params']:,} | {r['peak_rss_gb']:.2f} "
            f"| {r['other_cores']:.2f} |")
    notes = [f"- {f.name}: {f.note}" for f, _, _ in fams if f.note]
    lines += ["", *dict.fromkeys(notes)] if notes else []
    lines += square_fit(fams, info)
    return lines + [""]


def square_fit(fams: list[tuple], info: dict) -> list[str]:
    """Peak RSS = a + b x width^2 through the rows of a dense-square family at two widths:
    b is its memory per weight, and the width where a + b x width^2 reaches this machine's
    RAM is where it stops fitting (an extrapolation from the two measurements, stated so)."""
    out = []
    by_name: dict[str, list] = {}
    for f, _, r in fams:
        if f.dense_square:
            by_name.setdefault(f.name, []).append(r)
    ram = _ram_gb()
    for name, rs in by_name.items():
        rs = sorted(rs, key=lambda r: r["n_items"])
        if len(rs) < 2 or rs[0]["n_items"] == rs[-1]["n_items"] or ram is None:
            continue
        (w0, m0), (w1, m1) = [(r["n_items"], r["peak_rss_gb"]) for r in (rs[0], rs[-1])]
        b = (m1 - m0) / (w1**2 - w0**2)
        if b <= 0:
            continue
        a = m0 - b * w0**2
        limit = ((ram - a) / b) ** 0.5
        out += ["", f"**{name}: where it stops fitting.** Peak RSS {m0:.2f} GB at width "
                f"{w0:,} and {m1:.2f} GB at {w1:,}: {b * 1e9:.0f} bytes per weight of the "
                f"width x width matrix (the weight, its gradient, the optimizer's state and "
                f"the masked copy of the forward) over a {a:.2f} GB base. This machine's "
                f"{ram:.0f} GB of RAM holds it up to a width of about {limit:,.0f} movies "
                f"(extrapolated from those two measurements); the Movies Dataset's 45,115 "
                f"would need about {(a + b * 45_115**2):,.0f} GB."]
    return out


def _ram_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def _fmt_s(x: float) -> str:
    return f"{x:.3f}" if x < 1 else f"{x:.1f}"


def header(cmd: str, info: dict) -> list[str]:
    return [
        "# deepcf benchmarks",
        "",
        "Written by `make bench` (`" + cmd.strip() + "`); every figure below is from that run.",
        "Whole runs of the recommended models at the Movies Dataset's scale (26M ratings, train to "
        "early stopping, export, evaluate, recommend) are in [BENCHMARKS-full.md]"
        "(BENCHMARKS-full.md), which `make bench-full` writes.",
        "",
        f"- date: {info['date']}",
        f"- machine: {info['cores']} cores, {info['cpu']}; torch {info['torch']}, "
        f"{info['threads']} threads, Python {info['python']}",
        f"- load average at start: {' '.join(info['loadavg'])}",
    ]


TEMPLATE = Path(__file__).with_name("templates") / "benchmarks.md"


def _table(head: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
                      *("| " + " | ".join(r) + " |" for r in rows)])


def targets(res: dict, big_rows) -> list[tuple[str, bool, str]]:
    """(target, holds, measured) of the sparse step against the dense rows, and at scale."""
    d, e = res["data"], res["epoch"]
    checks = []
    for key, name in (("sparse_sgd", "deepcf + SGD"), ("sparse_lazy", "deepcf + LazyAdam"),
                      ("epoch", "deepcf + LazyAdam, the real epoch through Lightning")):
        r = {k: res[k]["epoch_s"] / res[key]["epoch_s"] for k, _ in big_rows}
        checks += [
            (f"{name}: >= 30x faster than dense fp32 out of the box", r["dense"] >= 30,
             f"{r['dense']:.1f}x"),
            (f"{name}: >= 15x faster than dense with fused Adam + allocator settings",
             r["dense_tuned"] >= 15, f"{r['dense_tuned']:.1f}x"),
            (f"{name}: faster than dense with bf16 autocast", r["dense_bf16"] > 1,
             f"{r['dense_bf16']:.1f}x"),
        ]
    return checks + [
        ("peak RSS <= 4 GB for a full-scale training epoch", e["peak_rss_gb"] <= 4,
         f"{e['peak_rss_gb']:.2f} GB"),
        ("CSV load <= 30 s", d["load_s"] <= 30, f"{d['load_s']:.1f} s"),
        ("cached reload <= 3 s", res["reload"]["reload_s"] <= 3,
         f"{res['reload']['reload_s']:.2f} s"),
    ]


def report(args, cmd, info, res, big_rows, small_rows) -> str:
    """BENCHMARKS.md: the figures computed here, the prose in templates/benchmarks.md."""
    d, lazy, sgd, e = res["data"], res["sparse_lazy"], res["sparse_sgd"], res["epoch"]
    ratio = {k: res[k]["epoch_s"] / lazy["epoch_s"] for k, _ in big_rows}
    gemm = res["gemm"]["gflops"]
    loaded = [k for k, v in res.items() if isinstance(v, dict) and v.get("other_cores", 0) > 0.25]
    load = ("**The machine was loaded**: other processes used "
            + ", ".join(f"{res[k]['other_cores']:.1f} cores during `{k}`" for k in loaded)
            + f" (of {info['cores']}). Ratios within one run still compare like with like, "
            "absolute times are pessimistic." if loaded else
            "Other processes used under 0.25 cores during every measurement.")
    training = _table(
        ["formulation", "s/batch", "s/epoch", "vs deepcf", "ratings/s", "GFLOP/s",
         "peak RSS GB", "other load (cores)"],
        [[label, _fmt_s(r["s_per_batch"]), _fmt_s(r["epoch_s"]), f"{ratio[k]:.1f}x",
          f"{r['nnz_per_batch'] / r['s_per_batch']:,.0f}",
          f"{step_flops(r, HIDDEN) / r['s_per_batch'] / 1e9:.1f}", f"{r['peak_rss_gb']:.2f}",
          f"{r['other_cores']:.2f}"] for k, label in big_rows for r in [res[k]]])
    data = _table(["step", "time", "notes"], [
        [f"generate synthetic `{args.scale}`", f"{d['generate_s']:.1f} s", ""],
        ["write CSV", f"{d['write_csv_s']:.1f} s", f"{d['csv_bytes'] / 1e6:,.0f} MB"],
        ["**load CSV** (read + validate + compact ids + CSR)", f"{d['load_s']:.1f} s",
         f"read alone {d['read_s']:.1f} s"],
        ["save `.npz` cache", f"{d['save_npz_s']:.1f} s",
         f"{d['npz_bytes'] / 1e6:,.0f} MB; CSR arrays {d['csr_bytes'] / 1e6:,.0f} MB"],
        ["**reload `.npz` cache** (fresh process)", f"{res['reload']['reload_s']:.2f} s",
         f"RSS +{res['reload']['rss_gain_gb']:.2f} GB"]])
    ml = _table(["formulation", "s/batch", "s/epoch", "ratings/s", "other load"],
                [[label, f"{r['s_per_batch'] * 1e3:.2f} ms", f"{r['epoch_s']:.2f}",
                  f"{r['nnz_per_batch'] / r['s_per_batch']:,.0f}", f"{r['other_cores']:.2f}"]
                 for k, label, *_ in small_rows for r in [res[k]]])
    ml_dense = min(res["ml_dense_tuned"]["epoch_s"], res["ml_dense"]["epoch_s"])
    ml_sparse = min(res["ml_sparse_adam"]["epoch_s"], res["ml_sparse_lazy"]["epoch_s"])
    checks = targets(res, big_rows)
    u, h0 = lazy["movies_per_batch"], HIDDEN[0]
    opt_mb = 7 * 2 * u * h0 * 4 / 1e6  # p, m, v read + written, g read; item_in and item_out
    sparse_gf = step_flops(sgd, HIDDEN) / 1e9
    profiles = "\n\n".join(_table([f"{name}: op", "ms/step", "calls (5 steps)"],
                                   [[f"`{k}`", f"{ms:.2f}", str(n)]
                                    for k, ms, n in res[key].get("profile", [])])
                            for key, name in (("sparse_sgd", "SGD"), ("sparse_lazy", "LazyAdam")))
    figures = dict(
        header="\n".join(header(cmd, info)), batch_size=args.batch_size, scale=args.scale,
        n_ratings=f"{d['n_ratings']:,}", n_users=f"{d['shape'][0]:,}",
        n_movies=f"{d['shape'][1]:,}", max_item_id=f"{d['max_item_id']:,}", load=load,
        dense_batches=args.dense_batches, sparse_batches=args.sparse_batches,
        training_table=training, gemm=f"{gemm:.1f}", epoch_ratings=f"{e['train_ratings']:,}",
        epoch_batches=e["n_batches"], epoch_s=f"{e['epoch_s']:.1f}",
        epoch_rate=f"{e['train_ratings'] / e['epoch_s']:,.0f}",
        vs_dense=f"{res['dense']['epoch_s'] / e['epoch_s']:.1f}",
        vs_tuned=f"{res['dense_tuned']['epoch_s'] / e['epoch_s']:.1f}",
        epoch_setup=f"{e['setup_s']:.1f}", epoch_rss=f"{e['peak_rss_gb']:.2f}",
        epoch_load=f"{e['other_cores']:.2f}", data_table=data, ml_table=ml,
        ml_faster="dense" if ml_dense < ml_sparse else "sparse",
        ml_best=f"{min(ml_dense, ml_sparse):.2f}", ml_worst=f"{max(ml_dense, ml_sparse):.2f}",
        ml_dense_plain=f"{res['ml_dense']['epoch_s']:.2f}",
        big_movies=f"{lazy['n_items']:,}", big_ratio=f"{ratio['dense_tuned']:.0f}",
        touched=f"{u:,.0f}", touched_share=f"{u / lazy['n_items']:.0%}",
        batch_nnz=f"{sgd['nnz_per_batch']:,.0f}", fwd_ms=f"{sgd['forward_s'] * 1e3:.1f}",
        bwd_ms=f"{sgd['backward_s'] * 1e3:.1f}", sparse_gf=f"{sparse_gf:.2f}",
        sparse_rate=f"{sparse_gf / (sgd['forward_s'] + sgd['backward_s']):.0f}",
        sgd_step_ms=f"{sgd['step_s'] * 1e3:.1f}", lazy_step_ms=f"{lazy['step_s'] * 1e3:.1f}",
        opt_mb=f"{opt_mb:,.0f}", opt_rate=f"{opt_mb / 1e3 / lazy['step_s']:.0f}",
        copy_rate=f"{res['copy']['gb_per_s']:.0f}",
        arith_ratio=f"{step_flops(res['dense_tuned'], HIDDEN) / step_flops(lazy, HIDDEN):.0f}",
        targets_table=_table(["target", "measured", "holds"],
                             [[t, m, "yes" if ok else "**no**"] for t, ok, m in checks]),
        reduced=(f"\n(Reduced scale `{args.scale}`: the targets are meant for movies_full.)"
                 if args.scale != "movies_full" else ""),
        profiles=profiles)
    for t, ok, m in checks:
        print(f"  target {'HOLDS' if ok else 'MISSED'}: {t} ({m})")
    return Template(TEMPLATE.read_text()).substitute(figures).rstrip("\n") + "\n"


if __name__ == "__main__":
    sys.exit(main())
