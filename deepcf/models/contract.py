"""The model contract: what every deepcf net provides, and how a checkpoint rebuilds it.

A net is an `nn.Module` subclass of `RatingNet` built from one config dataclass (its `Config`,
whose first field is `width`, the input width: movies for rows=users, users for rows=movies).
The checkpoint stores `net.spec()`, `{"target": "module.Class", "config": {...}}`, so export and
serving rebuild it with `build_net(spec)` (nanoGPT's `GPT(GPTConfig(**model_args))`): nothing
re-spells its arguments.

What a net provides (RecBole's calculate_loss / predict / full_sort_predict, for ratings rows):

- `forward(x)`: dense rows (batch, width) with 0 for unrated -> predictions for every column.
  The ONNX graph is this method; full ranking uses it.
- `predict_observed(inputs, values, targets, sparse_grad)`: the training predictions, at the
  observed entries `targets` of a batch whose (possibly corrupted) inputs are `inputs`/`values`
  (`deepcf.models.sparse_ops.Pattern`s). The default densifies the batch and calls `forward`; a
  net whose cost should follow the ratings, not the width, overrides it (the autoencoder does).
- `predict_at(idx, val, off, tgt_row, tgt_idx)`: predictions at given (row, column) positions for
  rows given as flat (column ids, ratings, offsets): held-out scoring. Default: densify + forward.
- `train_logits(inputs, values, step)`: (dense logits (batch, width), penalty or None) of a
  batch's (possibly corrupted) inputs, for the multinomial objective (`objective=multinomial`),
  whose softmax is over every column; `step` is the optimizer step (Mult-VAE anneals its KL
  penalty with it). Default: densify + forward, no penalty.
- `output_norms(inputs, values, targets, target_values)`: per row <f(x), t> and |f(x)|^2, what
  the normalised MSE (`objective=normalized_mse`) needs. Default: from `train_logits`; ELSA
  states both from its rank-r code, never a dense row.
- `rank_rows(idx, val, off)`: the dense outputs of flat rows, what validation ranks. Default:
  densify + forward.
- `init_weights(scheme, bias, nonlinearity)`: the `init` config group.
- `fit_data(train_rows)`: what the net fits from the training rows before training (buffers,
  saved with the weights; the autoencoder's bias residual); `needs_train_rows` says it does.
- `l2_weights()`: what `model.l2` penalises (default: every parameter with 2+ dims);
  `penalty()`: a term the net adds to the objective, in the summed-error units of l2 (default:
  None, nothing); the kernelised net's kernel sparsity.
- `closed_form_stats(rows, values)` and `solve(stats)`: a net fitted in closed form (EDLAE) states
  the sufficient statistics of a batch of rows (a dict of tensors that add up over batches and
  processes) and sets its weights from their sums (`objective=closed_form`); `fits_closed_form`
  says a net has them, `fit_closed_form(train_rows)` does both over a whole CSR.
- `selection_stages()` and `set_options(**values)`: options a closed-form net leaves to the
  validation carve (`lam=auto`): stages of (option -> grid, the carve coverage@10 floor: a
  number, or a function of the (setting, carve NDCG@10, carve coverage@10) scored before), tried
  by deepcf.training.objectives.closed_form.select_options, the chosen values fixed in the config
  (so the spec and a re-fit use them). Default: none.
- `scores`: "ratings" (the default: outputs on the rating scale, clipped to it when served) or
  "ranking" (outputs only order the movies, e.g. EDLAE's; `recommend` shows no predicted rating).
  The run's output kind follows from it and the objective (deepcf.training.objectives).
- `supports_sparse_grad`: True when `predict_observed` can give row-sparse gradients of the
  width-indexed weights (what LazyAdam and plain SGD update lazily).

Adding a net is one file (a `RatingNet` with its `Config` and `forward`) and one yaml in
`conf/model/` naming it (`net: {_target_: deepcf.models.mynet.MyNet, ...its options}`).
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from typing import Any, ClassVar

import torch
from torch import nn

from deepcf.errors import CheckpointError, ConfigError, TargetNotAllowed
from deepcf.files import allowed_target
from deepcf.models.sparse_ops import Pattern, entry_rows

INIT_SCHEMES = ("default", "xavier_uniform", "xavier_normal", "kaiming")


class RatingNet(nn.Module):
    """Base class of deepcf's nets; see the module docstring for the contract."""

    Config: ClassVar[type]
    supports_sparse_grad: ClassVar[bool] = False
    needs_train_rows: bool = False  # fit_data must see the training rows before training
    scores: ClassVar[str] = "ratings"  # or "ranking": outputs that only order the movies

    def __init__(self, config):
        super().__init__()
        if int(config.width) < 1:
            raise ConfigError(f"the input width must be >= 1, got {config.width}")
        self.config = config
        self.width = int(config.width)

    @classmethod
    def build(cls, width: int, **options) -> RatingNet:
        """The net for input `width` from config options; an unknown option is one line."""
        names = [f.name for f in dataclasses.fields(cls.Config) if f.init]
        unknown = sorted(set(options) - set(names))
        if unknown:
            raise ConfigError(f"model.net.{unknown[0]} is not an option of {cls.__name__} "
                              f"(its options: {', '.join(n for n in names if n != 'width')})")
        return cls(cls.Config(width=int(width), **options))

    def spec(self) -> dict[str, Any]:
        """What a checkpoint stores to rebuild this net: plain containers only."""
        cls = type(self)
        return {"target": f"{cls.__module__}.{cls.__qualname__}",
                "config": dataclasses.asdict(self.config)}

    # -- the contract -------------------------------------------------------------------------
    def fit_data(self, train_rows) -> None:
        """Fit whatever the net takes from the training rows (a rows x width CSR) rather than
        learns, e.g. the biases of a bias residual; stored as buffers. Default: nothing."""
    # forward(x): each net defines it (nn.Module refuses to run without one)

    def l2_weights(self) -> list[torch.Tensor]:
        """The weights `model.l2` penalises: every parameter with 2+ dimensions."""
        return [p for p in self.parameters() if p.dim() >= 2]

    def penalty(self) -> torch.Tensor | None:
        """A regulariser of the net's own, in the summed objective's units (the module divides
        it by the number of training ratings, as l2); None: none."""
        return None

    # -- closed form (objective=closed_form) ----------------------------------------------------
    @property
    def fits_closed_form(self) -> bool:
        return type(self).closed_form_stats is not RatingNet.closed_form_stats

    def closed_form_stats(self, rows: Pattern, values: torch.Tensor) -> dict[str, torch.Tensor]:
        """The sufficient statistics of a batch of rows, summed over batches by the objective."""
        raise ConfigError(f"{type(self).__name__} has no closed form: train it by gradient")

    def solve(self, stats: dict[str, torch.Tensor]) -> None:
        """Set the weights from the summed statistics of every training row."""
        raise ConfigError(f"{type(self).__name__} has no closed form: train it by gradient")

    def selection_stages(self) -> list[tuple[dict[str, list], float]]:
        """Options left to the validation carve ("auto"), as stages; see the module docstring."""
        return []

    def set_options(self, **values) -> None:
        """Fix options chosen on the validation carve in the config."""
        for name, value in values.items():
            setattr(self.config, name, value)

    def fit_closed_form(self, train_rows) -> None:
        """`solve` on the statistics of every row of a rows x width CSR."""
        X = train_rows.tocsr()
        rows = Pattern.from_offsets(torch.from_numpy(X.indptr[:-1].astype("int64")),
                                    torch.from_numpy(X.indices.astype("int64")), self.width)
        self.solve(self.closed_form_stats(rows, torch.from_numpy(X.data)))

    def predict_observed(self, inputs: Pattern, values: torch.Tensor, targets: Pattern,
                         sparse_grad: bool = False) -> torch.Tensor:
        return dense_observed(self, inputs, values, targets)

    def train_logits(self, inputs: Pattern, values: torch.Tensor, step: int = 0
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self(dense_rows(self.width, inputs, values)), None

    def output_norms(self, inputs: Pattern, values: torch.Tensor, targets: Pattern,
                     target_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(<f(x), t>, |f(x)|^2) per row: the output of the (possibly corrupted) inputs against
        the targets, for the normalised MSE (`objective=normalized_mse`). Default: the dense
        logits of `train_logits`; a net whose outputs are low-rank states both without them
        (ELSA)."""
        logits, _ = self.train_logits(inputs, values)
        rows = entry_rows(targets.off, len(targets.idx))
        dot = logits.new_zeros(targets.n_rows).index_add(
            0, rows, logits[rows, targets.idx] * target_values.to(logits.dtype))
        return dot, (logits * logits).sum(1)

    def rank_rows(self, idx: torch.Tensor, val: torch.Tensor, off: torch.Tensor) -> torch.Tensor:
        """The dense (rows, width) outputs of rows given as flat (column ids, values, offsets):
        what validation ranks. Default: densify + forward; a net whose first layer is a sum
        over the row's entries may skip the dense product (ELSA)."""
        x = val.new_zeros(len(off), self.width)
        x[entry_rows(off, len(idx)), idx] = val
        return self(x)

    def predict_at(self, idx: torch.Tensor, val: torch.Tensor, off: torch.Tensor,
                   tgt_row: torch.Tensor, tgt_idx: torch.Tensor) -> torch.Tensor:
        x = val.new_zeros(len(off), self.width)
        x[entry_rows(off, len(idx)), idx] = val
        return self(x)[tgt_row, tgt_idx]

    @torch.no_grad()
    def init_weights(self, scheme: str = "default", bias: float | None = None,
                     nonlinearity: str = "relu") -> None:
        """Weights (every parameter with 2+ dims, as (out, in)) under `scheme`, the others set
        to `bias`; `default` keeps the net's own initialisation."""
        check_init(scheme)
        if scheme == "default":
            return
        for p in self.parameters():
            if p.dim() >= 2:
                init_matrix(p, scheme, nonlinearity)
            else:
                nn.init.constant_(p, 0.0 if bias is None else bias)


def dense_rows(width: int, inputs: Pattern, values: torch.Tensor) -> torch.Tensor:
    """The dense (batch, width) rows of a batch's entries, 0 elsewhere."""
    x = values.new_zeros(inputs.n_rows, width)
    x[entry_rows(inputs.off, len(inputs.idx)), inputs.idx] = values
    return x


def dense_observed(net: RatingNet, inputs: Pattern, values: torch.Tensor,
                   targets: Pattern) -> torch.Tensor:
    """The textbook computation: dense (batch, width) input rows, the full-width forward, read
    at the observed target entries (the masked loss then counts those only)."""
    x = dense_rows(net.width, inputs, values)
    return net(x)[entry_rows(targets.off, len(targets.idx)), targets.idx]


def check_init(scheme: str) -> None:
    if scheme not in INIT_SCHEMES:
        raise ConfigError(f"init.scheme={scheme!r} is not one of {', '.join(INIT_SCHEMES)}")


def init_matrix(w: torch.Tensor, scheme: str, nonlinearity: str = "relu") -> None:
    """One (out, in) weight under `scheme`, as nn.Linear(in, out) would be initialised."""
    if scheme == "default":
        nn.init.kaiming_uniform_(w, a=math.sqrt(5))
    elif scheme == "xavier_uniform":
        nn.init.xavier_uniform_(w)
    elif scheme == "xavier_normal":
        nn.init.xavier_normal_(w)
    else:
        nn.init.kaiming_normal_(w, nonlinearity=nonlinearity)


def net_class(target: str) -> type[RatingNet]:
    """The RatingNet class named by a dotted path."""
    module, _, name = target.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise ConfigError(f"model.net._target_={target!r}: no such class") from None
    if not (isinstance(cls, type) and issubclass(cls, RatingNet)):
        raise ConfigError(f"model.net._target_={target!r} is not a "
                          f"deepcf.models.contract.RatingNet")
    return cls


NET_PACKAGE = "deepcf.models."


def build_net(spec: dict, allow: tuple[str, ...] = ()) -> RatingNet:
    """The net of a checkpoint's `spec` (see RatingNet.spec). A checkpoint is data: its target
    must be one of deepcf's nets (deepcf.models.*), a prefix in `allow` or the allow-list
    (DEEPCF_ALLOW_TARGETS, --allow-target), checked before anything is imported."""
    target = spec["target"]
    if not isinstance(target, str) or not (target.startswith(NET_PACKAGE)
                                           or allowed_target(target, allow)):
        raise TargetNotAllowed(f"model.net._target_={target!r} is not a net of deepcf's "
                               f"({NET_PACKAGE}*); refused before importing it: if you trust "
                               f"this checkpoint, allow it with --allow-target {target} (or "
                               f"DEEPCF_ALLOW_TARGETS={target})")
    cls = net_class(target)
    return cls(cls.Config(**spec["config"]))


NET_PREFIX = "net."


def net_state(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The net's own entries of a LightningModule state dict (which holds it as `net`)."""
    return {k[len(NET_PREFIX):]: v for k, v in state_dict.items() if k.startswith(NET_PREFIX)}


def net_from_checkpoint(state: dict, source: str = "checkpoint",
                        allow: tuple[str, ...] = ()) -> RatingNet:
    """The trained net of a loaded Lightning checkpoint dict, in eval mode (`allow`: see
    build_net)."""
    try:
        net = build_net(state["hyper_parameters"]["net"], allow)
    except TargetNotAllowed as e:
        raise TargetNotAllowed(f"{source}: {e}") from None
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{source}: not a deepcf checkpoint "
                              f"({str(e).splitlines()[0] if str(e) else type(e).__name__})"
                              ) from None
    try:
        net.load_state_dict(net_state(state["state_dict"]))
    except (KeyError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"{source}: not a deepcf checkpoint "
                              f"({str(e).splitlines()[0] if str(e) else type(e).__name__})"
                              ) from None
    return net.eval()
