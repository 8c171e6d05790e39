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

from deepcf.compat import check_run_config
from deepcf.data.orientation import entries_name, rows_are_items
from deepcf.data.readers import dedupe_latest, read_ratings
from deepcf.data.sources import RatingsSource
from deepcf.errors import (
    ConfigError,
    DataError,
    DeepCFError,
    ModelDataMismatch,
    TargetNotAllowed,
    UnknownMovieError,
    UnknownUserError,
)
from deepcf.files import ALLOW_ENV as FILES_ALLOW_ENV
from deepcf.files import check_input, safe_load
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


def load_model(model: str | Path, threads: int = 0) -> tuple[OnnxScorer, ModelCard]:
    """The ONNX scorer and its sidecar, checked against each other; `threads`: onnxruntime's
    intra-op threads (0: its default, one per core)."""
    path = Path(model)
    if not path.exists():
        raise DeepCFError(f"{path}: no such ONNX model (train one with `make train` or create it "
                          f"with `python -m deepcf.export RUN_DIR`)")
    check_input(path, "model")
    card = read_sidecar(path)
    scorer = OnnxScorer(path, threads)
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
    check_input(run_dir / "config_resolved.yaml", "run config")
    return run_dir


def run_model_path(run_dir: str | Path) -> Path:
    return check_run_dir(run_dir) / "model.onnx"


# A run dir's config is data, not code: its `_target_`s are instantiated only when they are
# deepcf's own data classes, or start with a prefix the user allows (--allow-target PREFIX on
# evaluate/recommend/export, or DEEPCF_ALLOW_TARGETS=prefix1,prefix2 in the environment).
ALLOW_ENV = FILES_ALLOW_ENV


def allow_targets(prefixes: list[str] | None) -> None:
    """Add `--allow-target` prefixes for this process (kept in DEEPCF_ALLOW_TARGETS)."""
    import os

    if prefixes:
        old = [p for p in os.environ.get(ALLOW_ENV, "").split(",") if p.strip()]
        os.environ[ALLOW_ENV] = ",".join([*old, *prefixes])


def _deepcf_data_class(target: str) -> bool:
    """A class of deepcf's own data package that is a ratings source or the DataModule."""
    if not target.startswith("deepcf.data."):
        return False
    from hydra._internal.utils import _locate

    # start-up: Lightning and torch, which the ONNX scoring commands do not need
    from deepcf.data.datamodule import RatingsDataModule

    try:
        obj = _locate(target)  # imports deepcf's own modules only (checked above)
    except Exception:
        return False
    return isinstance(obj, type) and issubclass(obj, (RatingsSource, RatingsDataModule))


def check_targets(node, conf: Path, key: str = "data") -> None:
    """Refuse (one line) any `_target_` under `node` that is not allowed."""
    import os

    if isinstance(node, dict):
        target = node.get("_target_")
        if target is not None:
            allowed = [p.strip() for p in os.environ.get(ALLOW_ENV, "").split(",") if p.strip()]
            t = str(target)
            if not (_deepcf_data_class(t) or any(t.startswith(p) for p in allowed)):
                raise TargetNotAllowed(
                    f"{conf}: {key}._target_={t} is not one of deepcf's data classes; a run "
                    f"dir's config is read as data, so it is refused: if you trust this run "
                    f"dir, allow it with --allow-target {t} (or {ALLOW_ENV}={t})")
        for k, v in node.items():
            check_targets(v, conf, f"{key}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            check_targets(v, conf, f"{key}[{i}]")
    elif isinstance(node, str) and "${" in node:
        raise TargetNotAllowed(f"{conf}: {key}={node!r}: an interpolation in a resolved config "
                               f"is refused (a run dir's config is read as data)")


def run_datamodule(run_dir: str | Path, cache_dir: str | None = None, setup: bool = True):
    """The RatingsDataModule of a training run, from its config_resolved.yaml: same data,
    same split (the split is a pure function of data, seed and fractions); for a run that was
    refit (metrics.json) its carve merged into training, as that model was trained. Only
    deepcf's own data classes are instantiated unless more are allowed (`check_targets`)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    conf = check_run_dir(run_dir) / "config_resolved.yaml"
    try:
        cfg = OmegaConf.load(conf)
    except Exception as e:
        raise ConfigError(f"{conf}: not a readable config ({str(e).splitlines()[0]})") from None
    if not hasattr(cfg, "keys") or "data" not in cfg:
        raise ConfigError(f"{conf}: has no data section")
    try:  # not resolved: an interpolation (${oc.env:...}) is refused below, never evaluated
        data = OmegaConf.to_container(cfg.data, resolve=False)
    except Exception as e:
        raise ConfigError(f"{conf}: data: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{conf}: data is not a section of keys")
    check_run_config({"data": data}, str(conf))
    check_targets(data, conf)
    if cache_dir is not None:
        data["cache_dir"] = cache_dir
    from hydra.errors import InstantiationException

    try:
        dm = instantiate(data)
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, DeepCFError):
            raise cause from None
        why = str(cause if cause is not None else e).splitlines()[0]
        raise ConfigError(f"{conf}: data: cannot build it from this config ({why})") from None
    if setup:
        dm.setup("test")
        if best_metrics(run_dir).get("refit"):  # the run's model was fitted on train + carve
            dm = dm.merged()
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
    """The run's metrics.json ({} when it has none yet); an unreadable or truncated one is one
    line."""
    path = Path(run_dir) / "metrics.json"
    if not path.exists():
        return {}
    try:
        check_input(path, "metrics file")
        with open(path, "rb") as f:
            found = json.loads(f.read(64 << 20).decode("utf-8"))
    except (OSError, ValueError) as e:
        raise DeepCFError(f"{path}: not a readable deepcf metrics file, truncated or corrupt "
                          f"({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                          f"re-run the test with `python -m deepcf.train ckpt_path="
                          f"{Path(run_dir)}` or remove it") from None
    if not isinstance(found, dict):
        raise DeepCFError(f"{path}: not a deepcf metrics file (not a JSON object)")
    return found


def read_ratings_source(path: str | Path, card: ModelCard,
                        extra_users: np.ndarray | None = None) -> Ratings:
    """A ratings file (raw ids) or a scipy `.npz` matrix as a users x movies CSR.

    `.npz` (sp.save_npz of a CSR): users x movies in the model's movie order; its rows are the
    model's users when the counts match, else they are labelled by row number. `extra_users`
    adds rows for raw user ids (to align several files on one row space).
    """
    path = Path(path)
    n_movies = len(card.item_ids)
    check_input(path, "ratings file")
    if path.suffix == ".npz":
        try:
            X = sp.load_npz(path).tocsr()
        except (OSError, ValueError, KeyError, EOFError) as e:
            raise DataError(f"{path}: not a scipy sparse .npz matrix ({e})") from None
        bad = ~np.isfinite(X.data) | (X.data < card.rating_min) | (X.data > card.rating_max)
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            row = int(np.searchsorted(X.indptr, k, side="right") - 1)
            raise DataError(f"{path}: row {row}, column {int(X.indices[k])}: rating "
                            f"{X.data[k]:g} is outside the model's range [{card.rating_min:g}, "
                            f"{card.rating_max:g}] (an unrated entry is left out, not 0)")
        if X.shape[1] != n_movies:
            raise ModelDataMismatch(f"{path}: the matrix has {X.shape[1]} movie columns but the "
                                    f"model scores {n_movies} movies")
        if rows_are_items(card.orientation) and X.shape[0] != len(card.user_ids):
            raise ModelDataMismatch(f"{path}: {X.shape[0]} user rows, but the model's columns "
                                    f"are its {len(card.user_ids)} training users, in order "
                                    f"(new users go in a ratings file with raw ids)")
        ids = card.user_ids if X.shape[0] == len(card.user_ids) else np.arange(X.shape[0])
        X.sort_indices()
        return Ratings(X.astype(np.float32), np.asarray(ids, np.int64), str(path))


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
    if len(new) and rows_are_items(card.orientation) and card.codes is None:
        raise UnknownUserError(f"{path}: user id {new[0]} is unknown to the model (its columns "
                               f"are the training users, and its sidecar has no item codes to "
                               f"fold new users in: re-export it with `python -m deepcf.export "
                               f"RUN_DIR`)")
    user_ids = np.concatenate([known, new])
    rows = Ratings(sp.csr_matrix((0, 0)), user_ids, str(path)).rows_of(table.user)
    X = sp.csr_matrix((table.rating, (rows, cols)), shape=(len(user_ids), n_movies),
                      dtype=np.float32)
    X.sort_indices()
    return Ratings(X, user_ids, str(path))


def find_checkpoint(target: Path) -> tuple[Path, Path]:
    """(checkpoint, run dir) for a run dir (its refit model, else its best checkpoint, else
    last) or a .ckpt file."""
    if target.is_dir():
        found = best_metrics(target)
        best = found.get("refit/checkpoint") or found.get("best_checkpoint")
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
    Lightning, no LightningModule); only tensors and plain data are read from the file."""
    # start-up: torch, which the ONNX scoring commands do not need
    from deepcf.models.contract import net_from_checkpoint

    return net_from_checkpoint(safe_load(ckpt), str(ckpt))
