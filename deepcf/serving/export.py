"""Export the autoencoder to ONNX and prove that onnxruntime computes what PyTorch computes.

The graph is the dense full-width forward: input `ratings` (batch, width) with unrated entries
0, output `predictions` (batch, width), the batch axis dynamic. Facts a scorer needs (rating
range, training mean, orientation, sizes) are stored as ONNX metadata properties.

Everything a scorer needs later travels in a sidecar next to the model, `model.onnx` ->
`model.deepcf.npz` (plain numpy arrays, loads with `allow_pickle=False`): the raw user and movie
ids of the training matrix, titles when the source has them, rating range, training mean,
orientation, and each movie's training rating count (popularity). `export_checked` writes model and
sidecar together; the training callback and `python -m deepcf.export` both call it. Both files
are written to temporary names beside their final ones and renamed into place only once the
parity checks pass (a kill or a full disk leaves no partial model.onnx); the sidecar carries the
model's sha256, so a model and a sidecar of two different exports are refused together.

An item-row model (rows are movies) with a linear output layer also gets its cached item codes
in the sidecar (`item_codes`, deepcf.serving.codes): every movie's code computed from the
training rows, the output layer's per-user rows and the residual's biases, checked against
onnxruntime on the same rows as the graph, so that serving scores known users and folds in new
ones without a pass over the movies and without the checkpoint.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import warnings
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from deepcf.data.orientation import rows_are_items
from deepcf.errors import DivergedModel, ExportParityError, ModelDataMismatch
from deepcf.files import atomic_path, check_output, safe_load, sha256
from deepcf.models.contract import net_from_checkpoint
from deepcf.serving.codes import ItemCodes, ItemItem
from deepcf.serving.runs import find_checkpoint, run_datamodule
from deepcf.serving.scoring import INPUT, OUTPUT
from deepcf.serving.sidecar import (
    ModelCard,
    card_from_datamodule,
    score_kind,
    sidecar_path,
    write_sidecar,
)

log = logging.getLogger(__name__)


@contextlib.contextmanager
def scoring_net(net: torch.nn.Module):
    """`net` in eval mode on the CPU in float32: the net itself (its mode restored after) when it
    is there already, else a copy. At the Movies Dataset's scale a net is a GB: the export and
    its checks must not hold copies of it."""
    if any(p.device.type != "cpu" or p.dtype != torch.float32 for p in net.parameters()):
        yield copy.deepcopy(net).cpu().float().eval()
        return
    was_training = net.training
    net.eval()
    try:
        yield net
    finally:
        net.train(was_training)


def export_onnx(net: torch.nn.Module, path: str | Path, example: torch.Tensor,
                metadata: dict | None = None) -> Path:
    """Write `net` (dense forward) to `path`; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = example.detach().cpu().float()
    if example.shape[0] < 2:  # torch.export specialises a batch of 1
        example = example.repeat(2, 1)
    for name in ("torch.onnx._internal.exporter._registration", "onnx_ir", "onnxscript"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with scoring_net(net) as net, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            net, (example,), None, input_names=[INPUT], output_names=[OUTPUT],
            dynamic_shapes={"x": {0: torch.export.Dim("batch")}}, dynamo=True, verbose=False,
        )
    # the metadata set on the program's model before its one write (a load and a second save
    # of a GB-sized graph would hold it twice more)
    program.model.metadata_props.update({k: str(v) for k, v in (metadata or {}).items()})
    program.save(str(path), external_data=False)
    return path


def onnx_session(path: str | Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def onnx_outputs(path: str | Path, rows: np.ndarray) -> np.ndarray:
    """onnxruntime's predictions for dense `rows`."""
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    return onnx_session(path).run([OUTPUT], {INPUT: rows})[0]


def gap(ours: np.ndarray, ref: np.ndarray, rtol: float = 1e-5) -> float:
    """max |ours - ref| - rtol * max |ref| (see `parity`), at least 0. Entries where `ref` is
    the lowest float32 (the movies a pruned catalogue never scores) must be that in `ours` too
    (else inf) and are left out of both maxima, which they would swamp."""
    low = np.finfo(np.float32).min
    floor = ref == low
    if floor.any():
        if not (ours[floor] == low).all():
            return float("inf")
        ours, ref = ours[~floor], ref[~floor]
        if ref.size == 0:
            return 0.0
    return float(max(np.abs(ours - ref).max() - rtol * np.abs(ref).max(), 0.0))


def parity(path: str | Path, net: torch.nn.Module, rows: np.ndarray,
           rtol: float = 1e-5) -> float:
    """max |onnxruntime - PyTorch| - rtol * max |PyTorch| over the dense `rows`.

    For outputs on the rating scale this is the plain max abs difference (to ~5e-5); the rtol
    term only forgives the float32 rounding of a model whose outputs are huge (a diverged run's
    outputs of 1e5 carry rounding of ~1e-2), which no absolute bound can hold.
    """
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    ours = onnx_outputs(path, rows)
    with scoring_net(net) as net, torch.no_grad():
        ref = net(torch.from_numpy(rows)).numpy()
    return gap(ours, ref, rtol)


@torch.no_grad()
def item_codes(net: torch.nn.Module, train_rows: sp.csr_matrix, l2: float = 0.0,
               chunk: int = 2048) -> ItemCodes | None:
    """The cached codes of an item-row net (deepcf.serving.codes) from its training rows
    (movies x users); None for a net without a separable linear output layer. `l2`: the
    model's model.l2 (the fold-in's ridge is l2 / 2, the objective's weight on one row)."""
    if not (hasattr(net, "codes_at") and hasattr(net, "output_layer")):
        return None
    with scoring_net(net) as net:
        head = net.output_layer()
        if head is None:
            return None
        X = train_rows.tocsr()
        parts, bases = [], []
        for s in range(0, X.shape[0], chunk):
            sub = X[s : s + chunk]
            off = torch.from_numpy(sub.indptr[:-1].astype(np.int64))
            h, base = net.codes_at(torch.from_numpy(sub.indices.astype(np.int64)),
                                   torch.from_numpy(sub.data.astype(np.float32)), off)
            parts.append(h.numpy())
            bases.append(base.reshape(-1).numpy())
        W, b, col = head
    residual = bool(getattr(net, "residual", False))
    return ItemCodes(
        items=np.ascontiguousarray(np.concatenate(parts), np.float32),
        item_base=np.concatenate(bases).astype(np.float32),
        user_weights=np.ascontiguousarray(W.detach().numpy(), np.float32),
        user_bias=(b + col).detach().numpy().astype(np.float32), ridge=float(l2) / 2.0,
        user_bias_reg=float(net.config.col_bias_reg) if residual else float("nan"))


def export_checked(net: torch.nn.Module, path: str | Path, train_rows: sp.csr_matrix,
                   card: ModelCard, checkpoint: str = "last", atol: float = 1e-4,
                   n_rows: int = 256, l2: float = 0.0) -> float:
    """Export `net` to `path` with its sidecar; fail if onnxruntime and PyTorch differ.

    The check runs on up to `n_rows` real rows of `train_rows` (the model-oriented training
    matrix). An item-row model's cached codes (`item_codes`, `l2` its model.l2) go into the
    sidecar, checked against onnxruntime on the same rows. Returns the max abs difference.
    """
    rows = train_rows[: min(n_rows, train_rows.shape[0])].toarray()
    with scoring_net(net) as scorer, torch.no_grad():  # PyTorch's side of the parity check
        probe = scorer(torch.from_numpy(rows).float())
    if not torch.isfinite(probe).all():
        # a diverged run: its outputs are NaN/inf, so there is nothing to serve or compare
        raise DivergedModel(f"{path}: not exported: the model's outputs are NaN or inf "
                            f"(training diverged)")
    meta = {"deepcf.width": net.width, "deepcf.rating_min": card.rating_min,
            "deepcf.rating_max": card.rating_max, "deepcf.train_mean": card.train_mean,
            "deepcf.orientation": card.orientation, "deepcf.checkpoint": checkpoint,
            "deepcf.sidecar": sidecar_path(path).name}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:  # renamed onto `path` once every check has passed
        diff = _export_into(tmp, net, rows, probe.numpy(), meta, train_rows, card, atol, l2,
                            path)
    return diff


def _export_into(tmp: Path, net, rows: np.ndarray, ref: np.ndarray, meta: dict, train_rows,
                 card: ModelCard, atol: float, l2: float, path: Path) -> float:
    """The model into `tmp` and, once checked, its sidecar beside `path` (fingerprinted);
    `ref`: PyTorch's outputs of `rows` (`parity`'s reference, computed once by the caller)."""
    export_onnx(net, tmp, torch.from_numpy(rows[:8]), meta)
    ours = onnx_outputs(tmp, rows)
    diff = gap(ours, ref)
    if not diff <= atol:
        raise ExportParityError(f"ONNX export {path}: onnxruntime differs from PyTorch by "
                           f"{diff:.3g} > {atol:g} on {len(rows)} rows")
    if rows_are_items(card.orientation) and card.rates:
        codes = item_codes(net, train_rows, l2)
        if codes is not None:
            cdiff = gap(codes.model_rows(np.arange(len(rows))), ours)
            if not cdiff <= atol:
                raise ExportParityError(f"ONNX export {path}: the cached item codes' "
                                        f"predictions differ from onnxruntime's by {cdiff:.3g} "
                                        f"> {atol:g} on {len(rows)} rows")
            card = dataclasses.replace(card, codes=codes)
    elif not rows_are_items(card.orientation) and hasattr(net, "item_weights"):
        cache = ItemItem(*net.item_weights(), width=net.width)
        cdiff = gap(cache.scores(sp.csr_matrix(rows)), ours)
        if not cdiff <= atol:
            raise ExportParityError(f"ONNX export {path}: the cached item-item weights' scores "
                                    f"differ from onnxruntime's by {cdiff:.3g} > {atol:g} on "
                                    f"{len(rows)} rows")
        card = dataclasses.replace(card, codes=cache)
    write_sidecar(path, card, fingerprint=sha256(tmp))
    return diff


def export_run(target, out=None, atol: float = 1e-4, n_rows: int = 256,
             cache_dir: str | None = None, force: bool = False) -> tuple[Path, float]:
    """Write the ONNX model and its sidecar; returns (model path, max abs diff).

    The default model path (RUN/model.onnx for a run dir, CKPT.onnx beside a checkpoint) is the
    run's own artifact and is replaced; an explicit `out` (or its sidecar) that exists is
    refused unless `force`, and neither may be the checkpoint itself."""
    ckpt, run_dir = find_checkpoint(Path(target))
    if out is not None:
        for p in (Path(out), sidecar_path(out)):
            check_output(p, force, inputs=[ckpt, run_dir / "config_resolved.yaml"],
                         what="ONNX model" if p == Path(out) else "sidecar")
    state = safe_load(ckpt)
    net = net_from_checkpoint(state, str(ckpt))
    hparams = state.get("hyper_parameters") or {}
    kind, l2 = hparams.get("output_kind", "ratings"), float(hparams.get("l2") or 0.0)
    del state
    dm = run_datamodule(run_dir, cache_dir)
    if net.width != dm.width:
        raise ModelDataMismatch(f"{ckpt}: the model takes {net.width} columns but the data of "
                                f"{run_dir} has {dm.width}")
    if out is None:
        out = run_dir / "model.onnx" if Path(target).is_dir() else ckpt.with_suffix(".onnx")
    diff = export_checked(net, out, dm.dataset("train").inputs,
                          card_from_datamodule(dm, score_kind(kind, net)), str(ckpt), atol, n_rows,
                          l2)
    return Path(out), diff
