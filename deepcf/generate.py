"""Turn a checkpoint or a run dir into an ONNX model + sidecar: `python -m deepcf.generate RUN`.

The graph has a dynamic batch axis and is checked with onnxruntime against PyTorch on real rows of
the run's training matrix (max abs diff <= --atol). The sidecar `model.deepcf.npz` next to it
carries the raw-id maps, titles, rating range, training mean, orientation and movie popularity;
it is the same file the training run's OnnxExport callback writes (deepcf.onnx_export).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from deepcf.errors import DeepCFError, one_line_errors
from deepcf.inputs import best_metrics, run_datamodule

PROG = "deepcf.generate"


def find_checkpoint(target: Path) -> tuple[Path, Path]:
    """(checkpoint, run dir) for a run dir (its best checkpoint, else last) or a .ckpt file."""
    if target.is_dir():
        best = best_metrics(target).get("best_checkpoint")
        for ckpt in (Path(best) if best else None, target / "checkpoints" / "last.ckpt"):
            if ckpt is not None and ckpt.is_file():
                return ckpt, target
        raise DeepCFError(f"{target}: no checkpoint (looked for metrics.json's best_checkpoint "
                          f"and checkpoints/last.ckpt)")
    if target.is_file():
        return target, target.resolve().parent.parent  # RUN/checkpoints/x.ckpt
    raise DeepCFError(f"{target}: no such run dir or checkpoint")


def load_net(ckpt: Path):
    """The AutoEncoder of a deepcf checkpoint, without Lightning."""
    import torch

    from deepcf.models.autoencoder import AutoEncoder

    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        hp = state["hyper_parameters"]
        net = AutoEncoder(hp["n_items"], hp["hidden"], hp["activation"], hp["tied"],
                          hp["dropout"], hp["linear_last"])
        net.load_state_dict({k[4:]: v for k, v in state["state_dict"].items()
                             if k.startswith("net.")})
    except (KeyError, RuntimeError, OSError) as e:
        raise DeepCFError(f"{ckpt}: not a deepcf checkpoint ({str(e).splitlines()[0]})") from None
    return net.eval()


def generate(target, out=None, atol: float = 1e-4, n_rows: int = 256,
             cache_dir: str | None = None) -> tuple[Path, float]:
    """Write the ONNX model and its sidecar; returns (model path, max abs diff)."""
    from deepcf.onnx_export import card_from_datamodule, export_checked

    ckpt, run_dir = find_checkpoint(Path(target))
    net = load_net(ckpt)
    dm = run_datamodule(run_dir, cache_dir)
    if net.n_items != dm.n_cols:
        raise DeepCFError(f"{ckpt}: the model takes {net.n_items} columns but the data of "
                          f"{run_dir} has {dm.n_cols}")
    if out is None:
        out = run_dir / "model.onnx" if Path(target).is_dir() else ckpt.with_suffix(".onnx")
    diff = export_checked(net, out, dm.dataset("train").inputs, card_from_datamodule(dm),
                          str(ckpt), atol, n_rows)
    return Path(out), diff


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("target", help="a run dir (uses its best checkpoint) or a .ckpt file inside "
                   "RUN/checkpoints/")
    p.add_argument("-o", "--out", help="ONNX path (default RUN/model.onnx for a run dir, "
                   "CKPT.onnx for a checkpoint); the sidecar goes next to it")
    p.add_argument("--atol", type=float, default=1e-4,
                   help="largest allowed |onnxruntime - PyTorch| (default 1e-4)")
    p.add_argument("--cache-dir", help="data cache dir instead of the run's")
    args = p.parse_args(argv)
    with one_line_errors(PROG):
        try:
            path, diff = generate(args.target, args.out, args.atol, cache_dir=args.cache_dir)
        except RuntimeError as e:  # the parity check's failure is the user's one-line news
            if not str(e).startswith("ONNX export"):
                raise
            raise DeepCFError(str(e)) from None
        print(f"wrote {path} and {path.with_suffix('.deepcf.npz').name} "
              f"(onnxruntime vs PyTorch max abs diff {diff:.2g})")
        return path


if __name__ == "__main__":
    main(sys.argv[1:])
