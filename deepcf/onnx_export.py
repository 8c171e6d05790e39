"""Export the autoencoder to ONNX and prove that onnxruntime computes what PyTorch computes.

The graph is the dense full-width forward: input `ratings` (batch, n_items) with unrated entries
0, output `predictions` (batch, n_items), the batch axis dynamic. Facts a scorer needs (rating
range, training mean, orientation, sizes) are stored as ONNX metadata properties.
"""

from __future__ import annotations

import copy
import logging
import warnings
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)
INPUT, OUTPUT = "ratings", "predictions"


def export_onnx(net: torch.nn.Module, path: str | Path, example: torch.Tensor,
                metadata: dict | None = None) -> Path:
    """Write `net` (dense forward) to `path`; returns the path."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    net = copy.deepcopy(net).cpu().float().eval()
    example = example.detach().cpu().float()
    if example.shape[0] < 2:  # torch.export specialises a batch of 1
        example = example.repeat(2, 1)
    for name in ("torch.onnx._internal.exporter._registration", "onnx_ir", "onnxscript"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net, (example,), str(path), input_names=[INPUT], output_names=[OUTPUT],
            dynamic_shapes={"x": {0: torch.export.Dim("batch")}}, dynamo=True,
            external_data=False, verbose=False,
        )
    if metadata:
        model = onnx.load(str(path))
        onnx.helper.set_model_props(model, {k: str(v) for k, v in metadata.items()})
        onnx.save(model, str(path))
    return path


def onnx_session(path: str | Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def parity(path: str | Path, net: torch.nn.Module, rows: np.ndarray) -> float:
    """Max |onnxruntime - PyTorch| over the dense `rows`."""
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    ours = onnx_session(path).run([OUTPUT], {INPUT: rows})[0]
    net = copy.deepcopy(net).cpu().float().eval()
    with torch.no_grad():
        ref = net(torch.from_numpy(rows)).numpy()
    return float(np.abs(ours - ref).max())
