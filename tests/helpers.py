"""Plain helpers shared by tests (fixtures live in conftest.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

# the overrides of the session's tiny training run (conftest.py's tiny_run)
TINY_RUN = ["data=synthetic", "data.source.scale=tiny", "trainer.max_epochs=3", "logger=csv",
            "model.net.hidden=[32,16]", "data.batch_size=64"]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def heldout_by_hand(net, train: sp.csr_matrix, target: sp.csr_matrix, lo: float, hi: float,
                    fallback: float, with_pred: bool = False):
    """The held-out protocol in plain numpy: the dense forward of each training row read at the
    target ratings, clipped to [lo, hi], `fallback` where the row or column has no training
    rating. Returns (rmse, mae, n ratings, n fallback[, predictions])."""
    with torch.no_grad():
        dense = net.eval()(torch.from_numpy(train.toarray()).float()).numpy()
    rows, cols = target.nonzero()
    pred = np.clip(dense[rows, cols], lo, hi)
    cold = (np.bincount(train.indices, minlength=train.shape[1]) == 0)[cols] | \
        (np.diff(train.indptr) == 0)[rows]
    pred[cold] = fallback
    err = pred - np.asarray(target[rows, cols]).ravel()
    out = (float(np.sqrt(np.mean(err**2))), float(np.mean(np.abs(err))), len(err),
           int(cold.sum()))
    return (*out, pred) if with_pred else out


def wandb_offline_run(run_dir: Path) -> dict:
    """What an offline W&B run under `run_dir`/wandb recorded, read from its `run-ID.wandb` log
    (W&B's leveldb-style record log of protobuf Records; `wandb sync` uploads exactly these):
    {"runs": [{"id", "group", "job_type", "name", "config", "history", "summary", "files",
    "artifacts", "dir"}, ...]} one per offline run dir, oldest first."""
    import json
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    def records(path: Path):
        data = path.read_bytes()
        assert data[:4] == b":W&B", path
        pos, block, buf = 7, 32768, b""
        while pos + 7 <= len(data):
            if block - pos % block < 7:  # a block's tail too short for a header is padding
                pos += block - pos % block
                continue
            _, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
            buf += data[pos + 7:pos + 7 + n]
            pos += 7 + n
            if kind in (1, 4):  # FULL or LAST
                r = pb.Record()
                r.ParseFromString(buf)
                buf = b""
                yield r

    def value(item):
        key = "/".join(item.nested_key) if item.nested_key else item.key
        return key, json.loads(item.value_json)

    runs = []
    for d in sorted((run_dir / "wandb").glob("offline-run-*")):
        (log,) = d.glob("run-*.wandb")
        out = {"dir": d, "config": {}, "history": [], "summary": {}, "files": [], "artifacts": []}
        for r in records(log):
            kind = r.WhichOneof("record_type")
            if kind == "run":
                out.update(id=r.run.run_id, group=r.run.run_group, job_type=r.run.job_type,
                           name=r.run.display_name, project=r.run.project)
                out["config"].update(dict(value(u) for u in r.run.config.update))
            elif kind == "config":
                out["config"].update(dict(value(u) for u in r.config.update))
            elif kind == "history":
                out["history"].append(dict(value(i) for i in r.history.item))
            elif kind == "summary":
                out["summary"].update(dict(value(u) for u in r.summary.update))
            elif kind == "files":
                out["files"] += [f.path for f in r.files.files]
            elif kind == "artifact":
                out["artifacts"].append({"name": r.artifact.name, "type": r.artifact.type,
                                         "metadata": json.loads(r.artifact.metadata or "{}"),
                                         "files": {c.path: c.size
                                                   for c in r.artifact.manifest.contents}})
        assert "id" in out, f"{log}: no run record in {log.stat().st_size} bytes"
        runs.append(out)
    return {"runs": runs}


def assert_same_training_step(a, b, batch: dict, atol: float, rtol: float, seed: int = 5):
    """Two modules take one training step on `batch` from the same random state (the same noise
    draw): the same loss, and the same gradients (a row-sparse one compared densified)."""
    torch.manual_seed(seed)
    la = a.training_step(batch, 0)
    la.backward()
    torch.manual_seed(seed)
    lb = b.training_step(batch, 0)
    lb.backward()
    assert abs(la.item() - lb.item()) < atol
    for pa, pb in zip(a.parameters(), b.parameters()):
        ga = pa.grad.to_dense() if pa.grad.is_sparse else pa.grad
        torch.testing.assert_close(ga, pb.grad, atol=atol, rtol=rtol)


def flat_batch(X: sp.csr_matrix) -> dict:
    """A training batch (in_idx, in_val, in_off) of the rows of X, in X's dtype."""
    return {"in_idx": torch.from_numpy(X.indices.astype(np.int64)),
            "in_val": torch.from_numpy(X.data),
            "in_off": torch.from_numpy(X.indptr[:-1].astype(np.int64))}


def assert_predict_at_reads_the_dense_forward(net, X: sp.csr_matrix, targets: np.ndarray):
    """Held-out scoring (`predict_at` on X's rows) equals the dense forward at the non-zero
    positions of `targets` (a dense array of X's shape)."""
    rows, cols = np.nonzero(targets)
    batch = flat_batch(X)
    with torch.no_grad():
        dense = net(torch.from_numpy(X.toarray()))[rows, cols]
        at = net.predict_at(batch["in_idx"], batch["in_val"], batch["in_off"],
                            torch.from_numpy(rows), torch.from_numpy(cols))
    torch.testing.assert_close(at, dense, atol=1e-10, rtol=1e-10)


OBJECTIVES = {"masked_mse": "deepcf.training.objectives.masked_mse.MaskedMSE",
              "multinomial": "deepcf.training.objectives.multinomial.Multinomial",
              "refeed": "deepcf.training.objectives.refeed.Refeed",
              "closed_form": "deepcf.training.objectives.closed_form.ClosedForm"}


def make_module(width: int, net: str = "deepcf.models.autoencoder.AutoEncoder",
                objective: str = "masked_mse", objective_options: dict | None = None,
                train_rows=None, optimizer=None, scheduler=None, init=None, noise=None,
                l2: float = 0.0, metrics="auto", **net_options):
    """A RatingsModule built as the run assembly builds one: the net `net` with
    `net_options`, the objective `objective` (a name of conf/objective) with its options."""
    from deepcf.data.datamodule import DataFacts
    from deepcf.training.module import RatingsModule

    return RatingsModule(DataFacts(width, rows=train_rows), {"_target_": net, **net_options},
                         {"_target_": OBJECTIVES[objective], **(objective_options or {})},
                         optimizer, scheduler, init, noise, l2, metrics)
