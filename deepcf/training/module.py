"""The LightningModule: a shell around a net of the model contract and its objective.

- The net (`model.net`: its class as `_target_` and its options, a
  deepcf.models.contract.RatingNet) is built for the data's input width; its spec is saved in the
  checkpoint's hyper-parameters, so export and serving rebuild it without this module.
- The objective (`model.objective`, the `objective` config group; deepcf.training.objectives)
  owns the training step, the optimizer and what it refuses. This module hands every training
  step and epoch boundary to it and never asks which family it holds.
- The output kind ("ratings" or "ranking": `objectives.output_kind` of net + objective) decides
  what is measured. Ratings: val/test log `*/rmse`, `*/mae`, `*/n_ratings`, `*/n_fallback` on the
  held-out protocol of deepcf.data.heldout (inputs are training rows, clipped predictions, the
  training-mean fallback where cold), RMSE accumulated over the whole split and across devices
  (not a mean of batch RMSEs), and `val/rmse_best`. Ranking: no RMSE (the outputs are scores).
- `model.metrics`: the ranking metrics val/test log (deepcf.serving.metrics specs, e.g.
  `[ndcg@10, recall@20]`; `auto`: `[ndcg@10]` for a ranking model, none for a rating model).
  Each row's unseen columns (those with a training entry that the row has not seen in training)
  are ranked by the net's dense forward, the row's held-out entries relevant. The first metric's
  best, `val/<metric>_best`, is what ranking runs early-stop, checkpoint and optimise on
  (`monitor`).
- `model.l2` (lambda, default 0): an L2 penalty on the weights only (every parameter with 2+
  dimensions; biases and fitted buffers excluded), as published for AutoRec. The paper minimises
  the summed squared error + lambda/2 * ||W||^2; deepcf's loss is the mean over the ratings, so
  the step adds lambda/2 * ||W||^2 / N (N: training ratings): with a full batch that is the
  paper's objective divided by N (same minimiser, same lambda), and the batch means of an epoch
  keep that ratio. The net's own regulariser (`net.penalty()`) is added in the same units.
- `data` (a deepcf.data.datamodule.DataFacts): the input width, rating range, training mean and
  the training rows (for nets that fit something from them, `net.fit_data`, e.g. the bias
  residual, for N above, and for the ranking candidates).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torchmetrics import MaxMetric, MeanAbsoluteError, MeanSquaredError, MinMetric, SumMetric

from deepcf.data.datamodule import DataFacts
from deepcf.data.heldout import clip_or_fallback
from deepcf.errors import ConfigError
from deepcf.models.contract import net_class
from deepcf.models.noise import check_noise
from deepcf.models.sparse_ops import entry_rows
from deepcf.serving.metrics import MetricSpec, RankingAccumulator, parse_metrics
from deepcf.training.objectives import Setup, build_objective, output_kind

DEFAULT_RANKING_METRICS = ["ndcg@10"]


def plain(conf: Any) -> Any:
    """DictConfig/ListConfig -> plain Python containers; anything else as it is."""
    if isinstance(conf, (DictConfig, ListConfig)):
        return OmegaConf.to_container(conf, resolve=True)
    return conf


def net_spec_of(net: Any) -> tuple[type, dict]:
    """(net class, its options) of a `model.net` node: `_target_` + options."""
    net = dict(plain(net) or {})
    target = net.pop("_target_", None)
    if target is None:
        raise ConfigError("model.net has no _target_ (the net's class, e.g. "
                          "deepcf.models.autoencoder.AutoEncoder; choose one with model=...)")
    return net_class(target), net


def ranking_metrics_of(metrics: Any, kind: str) -> list[MetricSpec]:
    """The ranking metrics a run logs: `model.metrics`, or its `auto` default."""
    if metrics == "auto" or metrics is None:
        metrics = list(DEFAULT_RANKING_METRICS) if kind == "ranking" else []
    if isinstance(metrics, str):
        metrics = [metrics]
    specs = parse_metrics(plain(metrics), "model.metrics")
    if kind == "ranking" and not specs:
        raise ConfigError("model.metrics=[]: a ranking model is measured by ranking metrics "
                          "only; name at least one (e.g. model.metrics=[ndcg@10])")
    return specs


def monitor_of(kind: str, metrics: list[str]) -> tuple[str, str]:
    """(metric, mode) that checkpoints, early stopping and schedulers follow."""
    return ("val/rmse", "min") if kind == "ratings" else (f"val/{metrics[0]}", "max")


class RatingsModule(pl.LightningModule):
    def __init__(
        self,
        data: DataFacts,
        net: Any,
        objective: Any = None,
        optimizer: Any = None,
        scheduler: Any = None,
        init: Any = None,
        noise: Any = None,
        l2: float = 0.0,
        metrics: Any = "auto",
    ):
        super().__init__()
        init, noise = plain(init) or {}, plain(noise) or {"kind": "none"}
        check_noise(**noise)
        l2 = float(l2)
        if not l2 >= 0:
            raise ConfigError(f"model.l2={l2} must be >= 0")
        net_cls, options = net_spec_of(net)
        self.objective = build_objective(plain(objective))
        self.output_kind = output_kind(net_cls, type(self.objective))
        self.rates = self.output_kind == "ratings"
        self.metric_specs = ranking_metrics_of(plain(metrics), self.output_kind)
        self.metric_keys = [s.key for s in self.metric_specs]
        self.monitor = monitor_of(self.output_kind, self.metric_keys)
        self.net = net_cls.build(data.width, **options)
        self.net.init_weights(**init)
        rows = data.rows
        if self.net.needs_train_rows and rows is None:
            raise ConfigError(f"{net_cls.__name__} with these options fits from the training "
                              f"rows: pass them in the module's data (deepcf.train does)")
        if self.net.needs_train_rows:
            self.net.fit_data(rows)
        if (l2 > 0 or self.net.penalty() is not None) and rows is None:
            raise ConfigError("model.l2 (or the net's own penalty) needs the training rows (N, "
                              "its scale): pass them in the module's data (deepcf.train does)")
        n_train = max(int(rows.nnz), 1) if rows is not None else 1
        optimizer, scheduler = plain(optimizer), plain(scheduler)
        self.objective.bind(self.net, Setup(optimizer, scheduler, noise, l2, n_train))
        self.automatic_optimization = not self.objective.manual
        # the ranking facts: the columns with a training entry (the candidates, the top-N
        # protocol's rule), their training counts and the number of training rows
        counts = (np.bincount(rows.indices, minlength=rows.shape[1]) if rows is not None
                  else np.ones(data.width, np.int64))
        self._catalog = (counts, int(rows.shape[0]) if rows is not None else 1)
        self.register_buffer("candidate", torch.from_numpy(counts > 0), persistent=False)
        # plain containers only: checkpoints then load with torch.load(weights_only=True)
        self.save_hyperparameters(
            dict(net=self.net.spec(), objective=self.objective.spec(),
                 output_kind=self.output_kind, metrics=plain(metrics), init=init, noise=noise,
                 optimizer=optimizer, scheduler=scheduler, l2=l2,
                 rating_min=float(data.rating_min), rating_max=float(data.rating_max),
                 train_mean=float(data.train_mean)),
            logger=False,
        )
        for split in ("val", "test"):
            setattr(self, f"{split}_rmse", MeanSquaredError(squared=False))
            setattr(self, f"{split}_mae", MeanAbsoluteError())
            setattr(self, f"{split}_n", SumMetric())
            setattr(self, f"{split}_fallback", SumMetric())
        self._ranking: dict[str, RankingAccumulator] = {}
        self.val_rmse_best = MinMetric()
        self.val_rank_best = MaxMetric()

    # -- training: the objective's ------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor | None:
        return self.objective.step(self, batch, batch_idx)

    def on_train_epoch_start(self) -> None:
        self.objective.epoch_start(self)

    def configure_optimizers(self):
        return self.objective.configure_optimizers(self)

    # -- held-out scoring -------------------------------------------------------------------
    def predict_targets(self, batch: dict) -> torch.Tensor:
        """Clipped predictions at the batch's held-out positions, fallback where cold."""
        pred = self.net.predict_at(batch["in_idx"], batch["in_val"], batch["in_off"],
                                   batch["tgt_row"], batch["tgt_idx"])
        hp = self.hparams
        return clip_or_fallback(pred, batch["tgt_cold"], hp.rating_min, hp.rating_max,
                                hp.train_mean)

    def _eval_step(self, split: str, batch: dict) -> None:
        if self.metric_keys:
            self._rank_step(split, batch)
        if not self.rates:
            return
        pred, target = self.predict_targets(batch), batch["tgt_val"]
        getattr(self, f"{split}_rmse").update(pred, target)
        getattr(self, f"{split}_mae").update(pred, target)
        getattr(self, f"{split}_n").update(target.new_tensor(float(len(target))))
        getattr(self, f"{split}_fallback").update(batch["tgt_cold"].sum().float())

    @torch.no_grad()
    def _rank_step(self, split: str, batch: dict) -> None:
        """The batch's rows ranked: every unseen candidate column by the net's scores of the
        row's training entries (`rank_rows`: the dense forward unless the net has a cheaper
        way), its held-out entries relevant (deepcf.serving.metrics)."""
        idx, val, off = batch["in_idx"], batch["in_val"], batch["in_off"]
        rows = entry_rows(off, len(idx))
        scores = self.net.rank_rows(idx, val, off).detach().float()
        scores[rows, idx] = -torch.inf
        scores[:, ~self.candidate] = -torch.inf
        acc = self._ranking.get(split)
        if acc is None:
            acc = self._ranking[split] = RankingAccumulator(self.net.width, self.metric_specs,
                                                            *self._catalog)
        vals, top = torch.topk(scores, min(acc.kmax, scores.shape[1]), dim=1)
        top = torch.where(torch.isneginf(vals), -1, top).cpu().numpy()
        rel = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
        rel[batch["tgt_row"], batch["tgt_idx"]] = True
        acc.add(top, rel.cpu().numpy())

    def _rank_log(self, split: str) -> dict[str, torch.Tensor]:
        """Log the split's ranking metrics (summed over DDP ranks); returns them."""
        acc = self._ranking.pop(split, None)
        if acc is None:
            acc = RankingAccumulator(self.net.width, self.metric_specs, *self._catalog)
        if self._trainer is not None and self.trainer.world_size > 1:
            reduce = self.trainer.strategy.reduce
            sums, counts, n = acc.state()
            acc.merge(*(reduce(torch.as_tensor(np.asarray(a, np.float64), device=self.device),
                               reduce_op="sum").cpu().numpy() for a in (sums, counts, n)))
        out = {}
        for key, value in acc.result().items():
            if key == "n_users":
                continue
            out[key] = torch.tensor(value, dtype=torch.float32)
            self.log(f"{split}/{key}", out[key], prog_bar=key == self.metric_keys[0])
        return out

    def _rating_log(self, split: str) -> torch.Tensor:
        rmse = getattr(self, f"{split}_rmse").compute()
        self.log(f"{split}/rmse", rmse, prog_bar=True)
        self.log(f"{split}/mae", getattr(self, f"{split}_mae").compute())
        self.log(f"{split}/n_ratings", getattr(self, f"{split}_n").compute())
        self.log(f"{split}/n_fallback", getattr(self, f"{split}_fallback").compute())
        for name in ("rmse", "mae", "n", "fallback"):
            getattr(self, f"{split}_{name}").reset()
        return rmse

    def logged_val_metrics(self) -> set[str]:
        """The val/ metrics this module logs (what a callback may monitor)."""
        out = {f"val/{k}" for k in self.metric_keys}
        if self.metric_keys:
            out.add(f"val/{self.metric_keys[0]}_best")
        if self.rates:
            out |= {"val/rmse", "val/mae", "val/rmse_best"}
        return out

    def on_train_start(self) -> None:
        self.val_rmse_best.reset()
        self.val_rank_best.reset()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step("val", batch)

    def on_validation_epoch_end(self) -> None:
        # the sanity-check value is dropped by the reset in on_train_start
        if self.metric_keys:
            first = self.metric_keys[0]
            self.val_rank_best.update(self._rank_log("val")[first])
            self.log(f"val/{first}_best", self.val_rank_best.compute(), prog_bar=True)
        if self.rates:
            self.val_rmse_best.update(self._rating_log("val"))
            self.log("val/rmse_best", self.val_rmse_best.compute(), prog_bar=True)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step("test", batch)

    def on_test_epoch_end(self) -> None:
        if self.metric_keys:
            self._rank_log("test")
        if self.rates:
            self._rating_log("test")
