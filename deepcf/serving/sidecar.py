"""The sidecar of an ONNX model: what a scorer needs besides the graph.

`model.onnx` -> `model.deepcf.npz` (plain numpy arrays, loads with `allow_pickle=False`): the raw
user and movie ids of the training matrix, titles when the source has them, rating range,
training mean, orientation, each movie's training rating count (popularity), and what the
model's outputs are (`score_kind`: "rating" for rating models; "<Net> score" for ranking models,
trained with objective=multinomial or ranking by nature such as EDLAE, whose outputs rank movies but
are not ratings) and the data's
`implicit` setting (the model's input is then interactions, data.implicit), and the model's
fingerprint (`model_sha256`, the sha256 of the ONNX file it was written with): a sidecar beside
another model (another run's, or a model replaced without its sidecar) is refused.
The sidecar is written to a temporary file and renamed into place (deepcf.files.atomic_open).
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deepcf.data.orientation import input_width
from deepcf.errors import DeepCFError
from deepcf.files import atomic_open, sha256
from deepcf.serving.codes import ItemCodes, ItemItem

SIDECAR_SUFFIX = ".deepcf.npz"
SIDECAR_VERSION = 1
# an item-row model's cached codes, stored as codes_<field> (optional: other models have none)
CODE_KEYS = ("items", "item_base", "user_weights", "user_bias", "ridge", "user_bias_reg")
# a user-row linear model's cached weights (ItemItem), stored as linear_<field>
LINEAR_KEYS = ("items", "weight", "scale")


@dataclass
class ModelCard:
    """What a scorer needs besides the graph; users x movies terms whatever the orientation."""

    user_ids: np.ndarray  # raw user id of each training-matrix row
    item_ids: np.ndarray  # raw movie id of each training-matrix column (the model's movie order)
    titles: np.ndarray | None  # title per movie ("" when unknown), None when the source has none
    rating_min: float
    rating_max: float
    train_mean: float
    orientation: str  # "user": model rows are users; "item": model rows are movies
    item_train_count: np.ndarray  # training ratings per movie (popularity)
    score_kind: str = "rating"  # "rating", or "<Net> score" for a ranking model (not a rating)
    implicit: str = ""  # the data.implicit the model was trained on ("": ratings as they are)
    # an item-row model's cached movie codes and output layer, or a user-row linear model's
    # cached item-item weights (deepcf.serving.codes), or None
    codes: ItemCodes | ItemItem | None = None

    @property
    def rates(self) -> bool:
        """Whether the model's outputs are ratings (else ranking scores)."""
        return self.score_kind == "rating"

    @property
    def width(self) -> int:
        """The model's input width: movies for orientation=user, users for orientation=item."""
        return input_width(len(self.user_ids), len(self.item_ids), self.orientation)


def sidecar_path(model_path: str | Path) -> Path:
    return Path(model_path).with_suffix(SIDECAR_SUFFIX)


def score_kind(output_kind: str, net) -> str:
    """The sidecar's label of a model's outputs from its output kind: "rating" for "ratings",
    else "<Net> score" (ranking scores, e.g. EDLAE's, or a net trained with the multinomial
    objective)."""
    return "rating" if output_kind == "ratings" else f"{type(net).__name__} score"


def card_from_datamodule(dm, kind: str = "rating") -> ModelCard:
    """The card of a set-up RatingsDataModule (its matrix and split); `kind`: score_kind."""
    m, train = dm.matrix, dm.split.train
    implicit = getattr(dm, "implicit", None)
    return ModelCard(
        user_ids=np.asarray(m.user_ids, np.int64), item_ids=np.asarray(m.item_ids, np.int64),
        titles=None if m.titles is None else np.asarray(m.titles, dtype=str),
        rating_min=float(m.rating_min), rating_max=float(m.rating_max),
        train_mean=float(dm.train_mean), orientation=dm.orientation,
        item_train_count=np.bincount(train.indices, minlength=train.shape[1]).astype(np.int64),
        score_kind=kind, implicit="" if implicit is None else str(implicit),
    )


def write_sidecar(model_path: str | Path, card: ModelCard, fingerprint: str | None = None,
                  path: str | Path | None = None) -> Path:
    """The sidecar of `model_path` (at `path`, default beside it); `fingerprint`: the model
    file's sha256 (default: computed from `model_path`)."""
    path = sidecar_path(model_path) if path is None else Path(path)
    arrays = {
        "model_sha256": np.array(fingerprint or sha256(model_path)),
        "version": np.array(SIDECAR_VERSION), "user_ids": card.user_ids,
        "item_ids": card.item_ids,
        "rating_range": np.array([card.rating_min, card.rating_max], np.float64),
        "train_mean": np.array(card.train_mean, np.float64),
        "orientation": np.array(card.orientation), "item_train_count": card.item_train_count,
        "score_kind": np.array(card.score_kind), "implicit": np.array(card.implicit),
    }
    if card.titles is not None:
        arrays["titles"] = np.asarray(card.titles, dtype=str)
    if isinstance(card.codes, ItemCodes):
        arrays.update({f"codes_{k}": np.asarray(getattr(card.codes, k)) for k in CODE_KEYS})
    elif isinstance(card.codes, ItemItem):
        arrays.update({f"linear_{k}": np.asarray(getattr(card.codes, k)) for k in LINEAR_KEYS})
    with atomic_open(path, "wb") as f:  # a file object: np.savez would append .npz to a str
        np.savez(f, **arrays)
    return path


def read_sidecar(model_path: str | Path) -> ModelCard:
    path = sidecar_path(model_path)
    if not path.exists():
        raise DeepCFError(f"{path}: no such file (the sidecar of {model_path}; recreate both "
                          f"with `python -m deepcf.export RUN_DIR`)")
    try:
        with np.load(path, allow_pickle=False) as z:
            lo, hi = (float(x) for x in z["rating_range"])
            _check_fingerprint(str(z["model_sha256"]), Path(model_path), path)
            return ModelCard(
                user_ids=z["user_ids"], item_ids=z["item_ids"],
                titles=z.get("titles"), rating_min=lo, rating_max=hi,
                train_mean=float(z["train_mean"]), orientation=str(z["orientation"]),
                item_train_count=z["item_train_count"],
                score_kind=str(z["score_kind"]), implicit=str(z["implicit"]),
                codes=_read_codes(z, path),
            )
    except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise DeepCFError(f"{path}: not a deepcf sidecar, truncated or corrupt ({e}); recreate "
                          f"it and the model with `python -m deepcf.export RUN_DIR`") from None


def _check_fingerprint(expected: str, model: Path, path: Path) -> None:
    if model.is_file() and sha256(model) != expected:
        raise DeepCFError(f"{path}: this sidecar belongs to another model (its fingerprint is "
                          f"not the sha256 of {model}); recreate both with `python -m "
                          f"deepcf.export RUN_DIR`")


def _read_codes(z, path: Path) -> ItemCodes | ItemItem | None:
    """The cached codes of an item-row model, or the cached weights of a user-row linear one,
    checked against the sidecar's ids."""
    if "linear_items" in z:
        n_movies = len(z["item_ids"])
        items, weight, scale = (z[f"linear_{k}"] for k in LINEAR_KEYS)
        k = len(items)
        if (weight.shape != (k, k) or scale.shape != (k,) or k > n_movies
                or (k and (items.min() < 0 or items.max() >= n_movies))):
            raise ValueError(f"its cached item weights do not fit its {n_movies} movies")
        return ItemItem(items=items.astype(np.int64), weight=weight, scale=scale,
                        width=n_movies)
    if "codes_items" not in z:
        return None
    codes = ItemCodes(
        items=z["codes_items"], item_base=z["codes_item_base"],
        user_weights=z["codes_user_weights"], user_bias=z["codes_user_bias"],
        ridge=float(z["codes_ridge"]), user_bias_reg=float(z["codes_user_bias_reg"]))
    n_movies, n_users = len(z["item_ids"]), len(z["user_ids"])
    if (codes.items.shape[0] != n_movies or codes.item_base.shape != (n_movies,)
            or codes.user_weights.shape != (n_users, codes.k)
            or codes.user_bias.shape != (n_users,)):
        raise ValueError(f"its item codes do not fit its {n_users} users x {n_movies} movies")
    return codes


