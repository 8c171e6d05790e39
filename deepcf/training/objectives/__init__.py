"""Training objectives: how a net is trained, one class per family.

An objective owns the training step (the loss and the terms it logs from a batch) and says what
it needs and allows; invalid combinations are refused in `bind`, in one line, where the
objective is defined. The LightningModule (deepcf.training.module) is a shell that hands every
step to its objective and never asks which family it holds.

Chosen by config, `model.objective` (the `objective` group, `# @package model.objective`): a
node with the class as `_target_` and the objective's own options, e.g.

    objective=masked_mse        masked MSE on the observed ratings (the sparse path; default)
    objective=multinomial       the multinomial likelihood over every movie (Mult-DAE/VAE)
    objective=refeed            masked MSE + DeepRecommender's dense re-feeding step
    objective=closed_form       a closed-form fit in one pass over the rows (EDLAE, EASE)
    objective=alternating       the multinomial likelihood in alternating block phases (RecVAE)

    objective=normalized_mse    the normalised MSE of each row's output direction (ELSA)

Adding an objective is one file with an `Objective` subclass and one yaml in
`conf/objective/` naming it; nothing else changes (tests/test_plugins.py adds one).

What an objective declares:
- `outputs`: "ranking" when the objective makes every net's outputs ranking scores (the
  multinomial likelihood), None to keep the net's own (`RatingNet.scores`). `output_kind` derives
  the run's output kind once from net + objective; the logged metrics, the monitor, the sidecar's
  score kind, the train summary and `recommend`'s labels follow from it.
- `by_gradient`: False for an objective that fits without an optimizer (no optimizer is built).
- `manual`: True when the objective steps the optimizer itself (Lightning's manual
  optimisation: re-feeding's two steps per batch, the closed form's accumulation).
"""

from __future__ import annotations

import abc
import dataclasses
import importlib
from typing import Any, ClassVar

import torch
from hydra.utils import get_class, instantiate

from deepcf.errors import ConfigError
from deepcf.kernels import sum_squares
from deepcf.models.contract import RatingNet
from deepcf.models.noise import corrupt
from deepcf.models.sparse_ops import Pattern

OUTPUT_KINDS = ("ratings", "ranking")


@dataclasses.dataclass
class Setup:
    """What the run gives an objective to check and to step with (`Objective.bind`)."""

    optimizer: dict | None  # the optimizer config (`_target_` + kwargs), None: Adam's default
    scheduler: dict | None  # the scheduler config, None: none
    noise: dict  # the noise group: {"kind": ..., "p"/"std": ...}
    l2: float  # model.l2, lambda/2 ||W||^2 over N (see deepcf.training.module)
    n_train: int  # N, the number of training ratings (the regularisers' scale)


class Objective(abc.ABC):
    """Base class of deepcf's objectives; see the module docstring."""

    outputs: ClassVar[str | None] = None
    by_gradient: ClassVar[bool] = True
    manual: ClassVar[bool] = False
    takes_noise: ClassVar[bool] = True
    takes_scheduler: ClassVar[bool] = True

    def __init__(self, **options: Any):
        if options:
            key = sorted(options)[0]
            raise ConfigError(f"model.objective.{key} is not an option of "
                              f"{type(self).__name__}")
        self.setup: Setup | None = None
        # model.l2 applied by the optimizer (its fuses_l2: the gradient wd * W added in its
        # update) instead of differentiating the penalty; set by configure_optimizers
        self.l2_fused = False

    @property
    def name(self) -> str:
        return type(self).__name__

    def spec(self) -> dict[str, Any]:
        """What a checkpoint stores: the class and its options (plain containers)."""
        cls = type(self)
        return {"_target_": f"{cls.__module__}.{cls.__qualname__}", **self.options()}

    def options(self) -> dict[str, Any]:
        return {}

    # -- checks -------------------------------------------------------------------------------
    def bind(self, net: RatingNet, setup: Setup) -> None:
        """Check that `net` can be trained this way with `setup`; remember both. A combination
        that cannot work (or would silently do nothing) is one ConfigError."""
        if self.by_gradient and not any(p.requires_grad for p in net.parameters()):
            raise ConfigError(f"{type(net).__name__} has no weights to learn by gradient "
                              f"(objective={self.name}): it is fitted in closed form, use "
                              f"objective=closed_form")
        if not self.takes_noise and setup.noise.get("kind", "none") != "none":
            raise ConfigError(f"noise.kind={setup.noise['kind']} does nothing for "
                              f"objective={self.name}: use noise=none")
        if not self.takes_scheduler and setup.scheduler:
            raise ConfigError(f"objective={self.name} steps the optimizer itself: use "
                              f"scheduler=none")
        if not self.by_gradient and setup.l2 > 0:
            raise ConfigError(f"model.l2={setup.l2} does nothing for objective={self.name} "
                              f"(no gradient steps; {type(net).__name__} has its own "
                              f"regularisation options under model.net)")
        self.setup = setup

    def wants_sparse_grads(self, net: RatingNet) -> bool:
        """Whether the step asks the net for row-sparse gradients (see MaskedMSE)."""
        return False

    # -- the step -----------------------------------------------------------------------------
    @abc.abstractmethod
    def step(self, module, batch: dict, batch_idx: int) -> torch.Tensor | None:
        """The training step on `batch` (in_idx, in_val, in_off): returns the loss to minimise
        (automatic optimisation) or None when the objective has stepped by itself (`manual`).
        Logs its terms through `module.log`."""

    def configure_optimizers(self, module):
        """The optimizer of the `optimizer` group over the module's parameters, with the
        `scheduler` group's scheduler (stepped each epoch, on the module's monitor)."""
        s = self.setup
        opt_cfg = s.optimizer or {"_target_": "torch.optim.Adam", "lr": 1e-3}
        params = list(module.parameters())
        self.l2_fused = s.l2 > 0 and getattr(get_class(opt_cfg["_target_"]), "fuses_l2", False)
        if self.l2_fused:  # lambda/2 ||W||^2 / N: the gradient (lambda / N) W, in the update
            decayed = {id(p) for p in module.net.l2_weights()}
            wd = float(opt_cfg.get("weight_decay", 0.0) or 0.0)
            params = [{"params": [p for p in params if id(p) in decayed],
                       "weight_decay": wd + s.l2 / s.n_train},
                      {"params": [p for p in params if id(p) not in decayed]}]
            params = [g for g in params if g["params"]]
        # plain lists (Rprop's etas): the optimizer's state goes into weights_only checkpoints
        optimizer = instantiate(opt_cfg, params=params, _convert_="all")
        if not s.scheduler:
            return optimizer
        scheduler = instantiate(s.scheduler, optimizer=optimizer)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "epoch", "frequency": 1,
                                 "monitor": module.monitor[0]}}

    def epoch_start(self, module) -> None:
        """Called at the start of each training epoch (nothing to do by default)."""
        return None

    # -- shared pieces ------------------------------------------------------------------------
    def regularisers(self, net: RatingNet) -> dict[str, torch.Tensor]:
        """The step's regularisers over N, by name: "l2" (lambda/2 ||W||^2, when model.l2 > 0)
        and "penalty" (the net's own, e.g. the kernel net's sparsity, in the same units)."""
        s, out = self.setup, {}
        if s.l2 > 0 and self.l2_fused:  # its gradient is the optimizer's: the value only
            value = s.l2 / 2.0 * sum(sum_squares(p) for p in net.l2_weights()) / s.n_train
            out["l2"] = torch.tensor(value)
        elif s.l2 > 0:
            out["l2"] = l2_penalty(net, s.l2) / s.n_train
        own = net.penalty()
        if own is not None:
            out["penalty"] = own / s.n_train
        return out

    def add_regularisers(self, module, loss: torch.Tensor, batch_size: int) -> torch.Tensor:
        for name, term in self.regularisers(module.net).items():
            module.log(f"train/{name}", term, on_step=False, on_epoch=True,
                       batch_size=batch_size)
            loss = loss + term
        return loss

    def corrupted(self, batch: dict, width: int) -> tuple[Pattern, Pattern, torch.Tensor]:
        """(targets, inputs, input values) of a batch: the targets are the batch's entries, the
        inputs their corruption by the noise group (the same object without noise)."""
        idx, val, off = batch["in_idx"], batch["in_val"], batch["in_off"]
        targets = Pattern.from_offsets(off, idx, width)
        c_idx, c_val, c_off = corrupt(idx, val, off, **self.setup.noise)
        inputs = targets if c_idx is idx else Pattern.from_offsets(c_off, c_idx, width)
        return targets, inputs, c_val


def weight_norm2(net: RatingNet) -> torch.Tensor:
    """||W||^2 over the net's weights (`l2_weights`: every parameter with 2+ dimensions unless
    the net says otherwise; a tied weight once)."""
    return sum(p.pow(2).sum() for p in net.l2_weights())


def l2_penalty(net: RatingNet, lam: float) -> torch.Tensor:
    """lambda/2 * ||W||^2, AutoRec's regulariser (biases excluded)."""
    return lam / 2.0 * weight_norm2(net)


def objective_class(target: str) -> type[Objective]:
    """The Objective class named by a dotted path, or one line."""
    module, _, name = str(target).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise ConfigError(f"model.objective._target_={target!r}: no such class (the objective "
                          f"group: objective=masked_mse, multinomial, refeed, closed_form, "
                          f"alternating, normalized_mse)"
                          ) from None
    if not (isinstance(cls, type) and issubclass(cls, Objective)):
        raise ConfigError(f"model.objective._target_={target!r} is not a "
                          f"deepcf.training.objectives.Objective")
    return cls


def build_objective(conf: dict | None) -> Objective:
    """The objective of a `model.objective` node (`_target_` + options); None: masked MSE."""
    conf = dict(conf or {"_target_": "deepcf.training.objectives.masked_mse.MaskedMSE"})
    target = conf.pop("_target_", None)
    if target is None:
        raise ConfigError("model.objective has no _target_ (choose one with objective=...)")
    return objective_class(target)(**conf)


def output_kind(net_cls: type[RatingNet], objective_cls: type[Objective]) -> str:
    """What the run's outputs are, "ratings" or "ranking": the objective's word if it has one,
    else the net's (`RatingNet.scores`)."""
    kind = objective_cls.outputs or net_cls.scores
    if kind not in OUTPUT_KINDS:
        raise ConfigError(f"{net_cls.__name__}/{objective_cls.__name__}: output kind {kind!r} "
                          f"is not one of {', '.join(OUTPUT_KINDS)}")
    return kind
