"""Where a scorer's model and ratings come from: run dirs, ratings files, scipy `.npz` matrices.

Every ratings source ends up as a users x movies CSR in the model's id space: columns in the
sidecar's movie order, rows the sidecar's users first (so row i is the model's user i) followed
by users the model never saw, who can still be scored from their ratings when rows are users.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from deepcf.data.orientation import entries_name, rows_are_items
from deepcf.data.sources import upgrade_data_config
from deepcf.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    DeepCFError,
    ModelDataMismatch,
    UnknownMovieError,
    UnknownUserError,
)
from deepcf.serving.scoring import OnnxScorer
from deepcf.serving.sidecar import ModelCard, read_sidecar, sidecar_path


@dataclass
class Ratings:
    """Users x movies ratings in the model's id space, with the raw id of each row."""

    X: sp.csr_matrix
    user_ids: np.ndarray
    source: str

    def rows_of(self, raw_ids) -> np.ndarray:
        """Row index of each raw user id; an id nobody knows is an error."""
        raw = np.asarray(raw_ids, np.int64)
        order = np.argsort(self.user_ids, kind="stable")
        pos = np.searchsorted(self.user_ids[order], raw)
        pos = np.minimum(pos, len(order) - 1)
        found = self.user_ids[order][pos] == raw
        if not found.all():
            bad = raw[~found]
            raise UnknownUserError(
                f"unknown user id {bad[0]}" + (f" (and {len(bad) - 1} more)" if len(bad) > 1
                                                 else "")
                + f": not in the model's users nor in {self.source}")
        return order[pos]


def load_model(model: str | Path) -> tuple[OnnxScorer, ModelCard]:
    """The ONNX scorer and its sidecar, checked against each other."""
    path = Path(model)
    if not path.is_file():
        raise DeepCFError(f"{path}: no such ONNX model (train one with `make train` or create it "
                          f"with `python -m deepcf.export RUN_DIR`)")
    card = read_sidecar(path)
    scorer = OnnxScorer(path)
    if scorer.width != card.width:
        what = entries_name(card.orientation)
        raise ModelDataMismatch(f"{path}: the model takes {scorer.width} {what} but its sidecar "
                                f"{sidecar_path(path).name} lists {card.width}")
    return scorer, card


def check_run_dir(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DeepCFError(f"{run_dir}: no such run dir")
    if not (run_dir / "config_resolved.yaml").exists():
        raise DeepCFError(f"{run_dir}: not a deepcf run dir (no config_resolved.yaml)")
    return run_dir


def run_model_path(run_dir: str | Path) -> Path:
    return check_run_dir(run_dir) / "model.onnx"


def run_datamodule(run_dir: str | Path, cache_dir: str | None = None, setup: bool = True):
    """The RatingsDataModule of a training run, from its config_resolved.yaml: same data,
    same split (the split is a pure function of data, seed and fractions)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    conf = check_run_dir(run_dir) / "config_resolved.yaml"
    cfg = OmegaConf.load(conf)
    if "data" not in cfg:
        raise ConfigError(f"{conf}: has no data section")
    data = upgrade_data_config(OmegaConf.to_container(cfg.data))
    if cache_dir is not None:
        data["cache_dir"] = cache_dir
    dm = instantiate(data)
    if setup:
        dm.setup("test")
    else:
        dm.prepare_data()
    return dm


def check_same_movies(card: ModelCard, item_ids: np.ndarray, user_ids: np.ndarray,
                      model: str, data: str) -> None:
    """The model's movies (and, for item models, users) must be the data's, in the same order."""
    if len(card.item_ids) != len(item_ids) or not np.array_equal(card.item_ids, item_ids):
        raise ModelDataMismatch(f"{model}: the model scores {len(card.item_ids)} movies but "
                                f"{data} has {len(item_ids)} (or other movie ids); use the "
                                f"model trained on this data")
    if rows_are_items(card.orientation) and not np.array_equal(card.user_ids, user_ids):
        raise ModelDataMismatch(f"{model}: the model's {len(card.user_ids)} user columns are not "
                                f"the {len(user_ids)} users of {data}")


def best_metrics(run_dir: str | Path) -> dict:
    path = Path(run_dir) / "metrics.json"
    return json.loads(path.read_text()) if path.exists() else {}


def read_ratings_source(path: str | Path, card: ModelCard,
                        extra_users: np.ndarray | None = None) -> Ratings:
    """A ratings file (raw ids) or a scipy `.npz` matrix as a users x movies CSR.

    `.npz` (sp.save_npz of a CSR): users x movies in the model's movie order; its rows are the
    model's users when the counts match, else they are labelled by row number. `extra_users`
    adds rows for raw user ids (to align several files on one row space).
    """
    path = Path(path)
    n_movies = len(card.item_ids)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if path.suffix == ".npz":
        try:
            X = sp.load_npz(path).tocsr()
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: not a scipy sparse .npz matrix ({e})") from None
        if X.shape[1] != n_movies:
            raise ModelDataMismatch(f"{path}: the matrix has {X.shape[1]} movie columns but the "
                                    f"model scores {n_movies} movies")
        ids = card.user_ids if X.shape[0] == len(card.user_ids) else np.arange(X.shape[0])
        X.sort_indices()
        return Ratings(X.astype(np.float32), np.asarray(ids, np.int64), str(path))

    from deepcf.data.readers import dedupe_latest, read_ratings

    table, _ = dedupe_latest(read_ratings(path, card.rating_min, card.rating_max))
    cols = np.searchsorted(card.item_ids, table.item)
    cols = np.minimum(cols, n_movies - 1)
    unknown = card.item_ids[cols] != table.item
    if unknown.any():
        bad = np.unique(table.item[unknown])
        raise UnknownMovieError(f"{path}: movie id {bad[0]} was never seen by the model"
                                + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""))
    known = card.user_ids
    new = np.setdiff1d(np.concatenate([table.user, extra_users if extra_users is not None
                                       else np.empty(0, np.int64)]), known)
    if len(new) and rows_are_items(card.orientation):
        raise UnknownUserError(f"{path}: user id {new[0]} is unknown to the model (its columns "
                               f"are the training users; rows=items models cannot take new "
                               f"users)")
    user_ids = np.concatenate([known, new])
    rows = Ratings(sp.csr_matrix((0, 0)), user_ids, str(path)).rows_of(table.user)
    X = sp.csr_matrix((table.rating, (rows, cols)), shape=(len(user_ids), n_movies),
                      dtype=np.float32)
    X.sort_indices()
    return Ratings(X, user_ids, str(path))


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
    """The trained net of a deepcf checkpoint, rebuilt through the model contract (no
    Lightning, no LightningModule)."""
    import pickle

    import torch

    from deepcf.models.contract import net_from_checkpoint

    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError) as e:
        raise CheckpointError(f"{ckpt}: not a deepcf checkpoint "
                              f"({str(e).splitlines()[0] if str(e) else type(e).__name__})"
                              ) from None
    return net_from_checkpoint(state, str(ckpt))
