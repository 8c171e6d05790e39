"""Serving latency and throughput over loopback HTTP: `python -m deepcf.bench.serving`.

For each model below it trains a short run (latency does not depend on how far training went),
starts `deepcf-serve` on 127.0.0.1 (a free port) in its own process, and sends `POST /recommend`
requests (a known user of the data, n=10) from an asyncio client in this process, over
keep-alive connections, at concurrency 1, 8 and 32: each level a bounded number of requests
(and at most `--seconds` seconds) after a warm-up. Latency is the client's, from sending the
request to the last byte of the answer; users/s = answered requests / wall time of the level.
A level of new users (20 ratings each, folded in or fed forward) at concurrency 8 follows. Next
to it, the batch command: `deepcf.recommend RUN --all --csv` as a whole process (start-up
included), and its `recommend()` over every user once loaded, in users/s.

The client shares the CPUs with the server (on 2 cores it takes a good part of one): the
figures are what one machine does serving and asking at once, a lower bound for a server with
the machine to itself. The server's resident memory after the run is read from /proc.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from deepcf.bench.__main__ import Load
from deepcf.serving.recommend import load_ratings, recommend

HOST = "127.0.0.1"
LEVELS = (1, 8, 32)
# (name, data label, training overrides)
MODELS = [
    ("I-AutoRec + residual target (rows = movies, cached item codes)", "ML-100K",
     ["experiment=i_autorec_target", "trainer.max_epochs=5"]),
    ("I-AutoRec + residual target (rows = movies, cached item codes)",
     "synthetic `movies_small` (671 users x 9,066 movies)",
     ["experiment=i_autorec_target", "data=synthetic", "data.source.scale=movies_small",
      "data.source.mode=popularity",
      "trainer.max_epochs=3"]),
    ("EDLAE (rows = users, onnxruntime)", "ML-100K", ["experiment=edlae"]),
]


def _run(cmd: list[str]) -> str:
    """A command's stdout; its stderr's tail in the error when it fails."""
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if p.returncode != 0:
        raise SystemExit(f"deepcf.bench.serving: `{' '.join(cmd)}` failed:\n{p.stderr[-3000:]}")
    return p.stdout


def train(overrides: list[str], out: Path, cache: Path) -> Path:
    _run([sys.executable, "-m", "deepcf.train", *overrides, f"paths.output_dir={out}",
          f"paths.cache_dir={cache}", "logger=none", "trainer.enable_progress_bar=false"])
    if not (out / "model.onnx").exists():
        raise SystemExit(f"deepcf.bench.serving: training wrote no {out / 'model.onnx'}")
    return out


class Server:
    """`python -m deepcf.serve RUN --port 0` in its own process."""

    def __init__(self, run: Path, log: Path, cache: Path):
        self.log = open(log, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "deepcf.serve", str(run), "--port",
                                      "0", "--cache-dir", str(cache)], stdout=subprocess.PIPE,
                                     stderr=self.log, text=True)
        self.port = None
        for line in self.proc.stdout:  # the start-up lines, then nothing
            if "listening on http://" in line:
                self.port = int(line.rsplit(":", 1)[1].split()[0])
                break
        if self.port is None:
            self.stop()
            raise SystemExit(f"deepcf.bench.serving: the server did not start (log: {log})")

    def cpu_s(self) -> float:
        """CPU seconds (user + system) the server has used so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024 / 1e6
        return float("nan")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


async def _ask(reader, writer, path: str, body: bytes) -> tuple[int, bytes]:
    writer.write(b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % (path.encode(), len(body)) + body)
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return int(head[9:12]), await reader.readexactly(length)


async def _level(port: int, bodies: list[bytes], concurrency: int, n: int,
                 seconds: float) -> dict:
    lat: list[float] = []
    errors, first = 0, []
    count = [0]
    deadline = time.perf_counter() + seconds

    async def client(k: int):
        nonlocal errors
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            while count[0] < n and time.perf_counter() < deadline:
                i = count[0]
                count[0] += 1
                t0 = time.perf_counter()
                status, answer = await _ask(reader, writer, "/recommend",
                                            bodies[i % len(bodies)])
                lat.append(time.perf_counter() - t0)
                if status != 200:
                    errors += 1
                    first.append(f"{status} {answer[:200].decode('utf-8', 'replace')}")
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(concurrency)))
    wall = time.perf_counter() - t0
    if errors:  # a bench of error answers would time the wrong thing
        raise SystemExit(f"deepcf.bench.serving: {errors} of {len(lat)} answers were errors, "
                         f"the first: {first[0]}")
    ms = np.array(lat) * 1000
    return {"concurrency": concurrency, "requests": len(lat), "errors": errors,
            "p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)),
            "users_s": len(lat) / wall}


def _get(port: int, path: str) -> dict:
    import http.client

    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    try:
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def bench_model(name: str, data: str, run: Path, work: Path, cache: Path, n: int,
                seconds: float) -> dict:
    with np.load(run / "model.deepcf.npz", allow_pickle=False) as z:
        users, movies = z["user_ids"], z["item_ids"]
        lo, hi = (float(x) for x in z["rating_range"])
    rng = np.random.default_rng(0)
    known = [json.dumps({"user": int(u), "n": 10}).encode() for u in rng.permutation(users)]
    steps = np.arange(lo, hi + 1e-9, 0.5)  # half stars within the model's range
    new = [json.dumps({"n": 10, "ratings": [
        {"movie_id": int(m), "rating": float(rng.choice(steps))}
        for m in rng.choice(movies, 20, replace=False)]}).encode() for _ in range(200)]
    server = Server(run, work / f"serve-{run.name}.log", cache)
    rows = []
    try:
        info = _get(server.port, "/model")
        asyncio.run(_level(server.port, known, 4, 200, seconds))  # warm-up
        for kind, bodies, levels in (("known user", known, LEVELS), ("new user", new, (8,))):
            for c in levels:
                before, cpu0 = _get(server.port, "/model"), server.cpu_s()
                with Load() as load:
                    r = asyncio.run(_level(server.port, bodies, c, n * (1 if c == 1 else 3),
                                           seconds))
                cpu = server.cpu_s() - cpu0
                after = _get(server.port, "/model")
                scored = after["requests_scored"] - before["requests_scored"]
                batches = max(after["batches"] - before["batches"], 1)
                wall = r["requests"] / r["users_s"]
                # Load counts the server (a running child) as other load: take it out
                r.update(kind=kind, mean_batch=scored / batches,
                         other_cores=max(load.other_cores - cpu / wall, 0.0),
                         cpu_ms=1000 * cpu / max(r["requests"], 1))
                rows.append(r)
                print(f"  {name}, {data}, {kind}, concurrency {c}: p50 {r['p50']:.1f} ms, "
                      f"p99 {r['p99']:.1f} ms, {r['users_s']:,.0f} users/s, "
                      f"{r['errors']} errors", file=sys.stderr, flush=True)
        rss = server.rss_mb()
    finally:
        server.stop()
    t0 = time.perf_counter()
    # one CSV per model: recommend never replaces a file it did not create
    _run([sys.executable, "-m", "deepcf.recommend", str(run), "--all", "--csv",
          str(work / f"{run.name}-all.csv"), "--cache-dir", str(cache)])
    cli_s = time.perf_counter() - t0
    inproc = json.loads(_run([sys.executable, "-m", "deepcf.bench.serving", "--score-all",
                              str(run), "--cache-dir", str(cache)]).strip().splitlines()[-1])
    return {"name": name, "data": data, "rows": rows, "rss_mb": rss, "info": info,
            "cli_users_s": len(users) / cli_s, "cli_s": cli_s, **inproc}


def score_all(run: str, cache: str | None) -> dict:
    """`recommend()` over every user of the run's data, once loaded (the batch CLI's work)."""
    scorer, card, data = load_ratings(run, None, None, cache)
    list(recommend(scorer, card, data, data.user_ids[:64], 10))  # warm-up
    t0 = time.perf_counter()
    for _ in recommend(scorer, card, data, data.user_ids, 10):
        pass
    return {"recommend_users_s": len(data.user_ids) / (time.perf_counter() - t0),
            "n_users": len(data.user_ids)}


def report(results: list[dict], cmd: str, n: int, seconds: float) -> str:
    import onnxruntime

    lines = [
        f"`{cmd}` (`make bench`): `POST /recommend` (n=10) over loopback HTTP to `deepcf-serve` "
        f"in its own process, from an asyncio client in the bench's process on the same "
        f"{os.cpu_count()} CPUs (keep-alive connections, one request in flight per "
        f"connection); up to {n} requests at concurrency 1 and {3 * n} above, each level "
        f"at most {seconds:g} s, after 200 warm-up requests; latency from sending to the last "
        f"byte of the answer. `mean batch`: requests scored per scoring call; `server CPU`: the "
        f"server process's user + system time over the level, per request (what bounds "
        f"users/s: a core does at most 1000 / that many per second). Models trained "
        f"for a few epochs only (speed does not depend on it); onnxruntime "
        f"{onnxruntime.__version__}, Python {platform.python_version()}.",
        "",
        "| model | data | users | concurrency | requests | p50 ms | p99 ms | users/s | "
        "mean batch | server CPU ms / request | other load (cores) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for res in results:
        for r in res["rows"]:
            lines.append(f"| {res['name']} | {res['data']} | {r['kind']} | {r['concurrency']} "
                         f"| {r['requests']:,} | {r['p50']:.1f} | {r['p99']:.1f} | "
                         f"{r['users_s']:,.0f} | {r['mean_batch']:.1f} | {r['cpu_ms']:.2f} | "
                         f"{r['other_cores']:.2f} |")
    lines += ["", "The batch command on the same runs, and what the server holds:", "",
              "| model | data | users | `recommend --all --csv` (whole command) | "
              "`recommend()` once loaded | server RSS | item codes cached |",
              "|---|---|---:|---:|---:|---:|---:|"]
    for res in results:
        codes = res["info"].get("item_codes_bytes")
        lines.append(f"| {res['name']} | {res['data']} | {res['n_users']:,} | "
                     f"{res['cli_users_s']:,.0f} users/s ({res['cli_s']:.1f} s) | "
                     f"{res['recommend_users_s']:,.0f} users/s | {res['rss_mb']:,.0f} MB | "
                     + ("-" if codes is None else f"{codes / 1e6:.1f} MB") + " |")
    target = results[0]
    by_c = {r["concurrency"]: r for r in target["rows"] if r["kind"] == "known user"}
    if 8 not in by_c or "ML-100K" not in target["data"] or "movies" not in target["name"]:
        return "\n".join(lines)
    p99, best = by_c[8]["p99"], max(r["users_s"] for r in by_c.values())
    lines += ["", f"Targets ({target['name'].split(' (')[0]}, {target['data']}): p99 at "
              f"concurrency 8 {p99:.1f} ms (target <= 25 ms: "
              f"{'met' if p99 <= 25 else 'not met'}); {best:,.0f} users/s at the best "
              f"concurrency (target >= 1,000: {'met' if best >= 1000 else 'not met'})."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str | None:
    p = argparse.ArgumentParser(prog="deepcf.bench.serving", description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=1000,
                   help="requests at concurrency 1 (3x that above; default 1000)")
    p.add_argument("--seconds", type=float, default=20.0,
                   help="at most this long per level (default 20)")
    p.add_argument("--only", type=int, nargs="+", help="only these MODELS rows (0, 1, 2)")
    p.add_argument("--workdir", help="for the runs (default: a temp dir)")
    p.add_argument("--cache-dir", default="~/.cache/deepcf")
    p.add_argument("--out", help="also write the markdown here")
    p.add_argument("--score-all", metavar="RUN", help=argparse.SUPPRESS)  # the in-process timing
    args = p.parse_args(argv)
    cache = Path(args.cache_dir).expanduser()
    if args.score_all:
        print(json.dumps(score_all(args.score_all, str(cache))))
        return None
    cmd = "python -m deepcf.bench.serving " + " ".join(argv if argv is not None else sys.argv[1:])
    tmp = tempfile.TemporaryDirectory(prefix="deepcf-bench-serving-") if not args.workdir \
        else None
    work = Path(args.workdir or tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    results = []
    for i, (name, data, overrides) in enumerate(MODELS):
        if args.only is not None and i not in args.only:
            continue
        print(f"deepcf.bench.serving: training {name} on {data}", file=sys.stderr, flush=True)
        run = train(overrides, work / f"run{i}", cache)
        results.append(bench_model(name, data, run, work, cache, args.requests, args.seconds))
    text = report(results, cmd.strip(), args.requests, args.seconds)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return text


if __name__ == "__main__":
    main(sys.argv[1:])
