"""Turn a checkpoint or a run dir into an ONNX model + sidecar: `python -m deepcf.export RUN`.

The graph has a dynamic batch axis and is checked with onnxruntime against PyTorch on real rows of
the run's training matrix (max abs diff <= --atol). The sidecar `model.deepcf.npz` next to it is
the same file the training run's OnnxExport callback writes (deepcf.serving.export).
`python -m deepcf.generate` is the same command under its earlier name.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from deepcf.errors import console_script, one_line_errors
from deepcf.serving.cli import add_allow_target
from deepcf.serving.export import export_run
from deepcf.serving.runs import allow_targets

PROG = "deepcf.export"


def main(argv: list[str] | None = None, prog: str = PROG) -> Path:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("target", help="a run dir (uses its best checkpoint) or a .ckpt file inside "
                   "RUN/checkpoints/")
    p.add_argument("-o", "--out", help="ONNX path (default RUN/model.onnx for a run dir, "
                   "CKPT.onnx for a checkpoint, replaced); the sidecar goes next to it; an "
                   "existing -o file or sidecar only with --force")
    p.add_argument("--force", action="store_true",
                   help="replace an existing -o model and its sidecar")
    p.add_argument("--atol", type=float, default=1e-4,
                   help="largest allowed |onnxruntime - PyTorch| (default 1e-4)")
    p.add_argument("--cache-dir", help="data cache dir instead of the run's")
    add_allow_target(p)
    args = p.parse_args(argv)
    with one_line_errors(prog):
        allow_targets(args.allow_target)
        path, diff = export_run(args.target, args.out, args.atol, cache_dir=args.cache_dir,
                                force=args.force)
        print(f"wrote {path} and {path.with_suffix('.deepcf.npz').name} "
              f"(onnxruntime vs PyTorch max abs diff {diff:.2g})")
        return path


# the console script (pyproject [project.scripts])
cli = console_script(main)


if __name__ == "__main__":
    sys.exit(cli())
