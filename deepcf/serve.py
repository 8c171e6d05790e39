"""Serve a trained run over HTTP: `python -m deepcf.serve RUN_DIR` (console script deepcf-serve).

A JSON service (FastAPI on uvicorn) over the run's ONNX model and sidecar: GET /health,
GET /model, POST /recommend, POST /predict, answered by the serving functions of
deepcf.recommend (deepcf.serving.service describes the API and its errors; docs/serving.md
shows it at work). It listens on 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from deepcf.errors import DeepCFError, console_script, one_line_errors
from deepcf.serving.cli import add_allow_target, serving_parser
from deepcf.serving.runs import allow_targets

PROG = "deepcf.serve"
TOKEN_ENV = "DEEPCF_SERVE_TOKEN"


def parser() -> argparse.ArgumentParser:
    p = serving_parser(PROG, __doc__, [
        "python -m deepcf.serve outputs/i_autorec_target/runs/RUN",
        "deepcf-serve RUN --port 8080 --token-file /run/secrets/deepcf_token",
        "deepcf-serve --model model.onnx --ratings ratings.csv --host 0.0.0.0"],
        "a training run dir: its model.onnx and its data")
    p.add_argument("--ratings", help="the users' ratings to answer for: ratings file with raw "
                   "ids or scipy .npz users x movies (default: the run's data)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 "
                        "for every interface, e.g. in a container behind a proxy)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: a free one, "
                   "printed at start-up)")
    p.add_argument("--token-file", help="require `Authorization: Bearer TOKEN` on every "
                   f"request but /health, TOKEN read from this file (or ${TOKEN_ENV})")
    p.add_argument("--max-n", type=int, default=1000,
                   help="largest n a /recommend may ask for (default 1000)")
    p.add_argument("--max-body", type=int, default=1 << 20,
                   help="largest request body in bytes (default 1 MiB; larger: 413)")
    p.add_argument("--body-timeout", type=float, default=10.0,
                   help="seconds a client has to send its request body (default 10; then 408)")
    p.add_argument("--batch-window-ms", type=float, default=2.0,
                   help="how long a batch waits for requests still being read (default 2 ms; "
                        "0: only what is already queued)")
    p.add_argument("--max-batch", type=int, default=64,
                   help="most requests scored in one call (default 64)")
    p.add_argument("--threads", type=int, default=1,
                   help="onnxruntime and BLAS threads per scoring call (default 1: a request's "
                        "products are small; 0: one per core)")
    p.add_argument("--cache-dir", help="data cache dir instead of the run's")
    add_allow_target(p)
    return p


def read_token(path: str | None) -> str | None:
    if path:
        try:
            token = Path(path).read_text().strip()
        except OSError as e:
            raise DeepCFError(f"--token-file {path}: {e.strerror or e}") from None
        if not token:
            raise DeepCFError(f"--token-file {path}: the file is empty")
        return token
    return os.environ.get(TOKEN_ENV) or None


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    with one_line_errors(PROG):
        allow_targets(args.allow_target)
        if not 0 <= args.port <= 65535:
            raise DeepCFError(f"--port {args.port} must be in 0..65535")
        if min(args.max_n, args.max_body, args.max_batch) < 1 or args.body_timeout <= 0 \
                or args.batch_window_ms < 0 or args.threads < 0:
            raise DeepCFError("--max-n, --max-body, --max-batch and --body-timeout must be > 0, "
                              "--batch-window-ms and --threads >= 0")
        token = read_token(args.token_file)
        # start-up: FastAPI and the model load only after the arguments are checked
        from deepcf.serving import service

        served = service.load_served(args.run_dir, args.model, args.ratings, args.cache_dir,
                                     args.threads)
        sock = service.bind(args.host, args.port)
        app = service.asgi_app(served, token=token, max_body=args.max_body,
                               body_timeout=args.body_timeout, max_n=args.max_n,
                               batch_window=args.batch_window_ms / 1000.0,
                               max_batch=args.max_batch)
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        info = served.info
        what = info["experiment"] or info["net"] or "model"
        print(f"deepcf-serve: {info['model']} ({what}, rows={info['rows']}, "
              f"{info['ranked_by']}; {service.memory_note(served)})", flush=True)
        print(f"deepcf-serve: listening on http://{shown}:{port}"
              + (" (bearer token required)" if token else ""), flush=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s",
                        stream=sys.stderr)
    service.server(app).run(sockets=[sock])


# the console script (pyproject [project.scripts])
cli = console_script(main)


if __name__ == "__main__":
    sys.exit(cli())
