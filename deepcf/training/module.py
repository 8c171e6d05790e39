"""The LightningModule: any net of the model contract, its loss, and honest held-out metrics.

- The net (`model.net`, a deepcf.models.contract.RatingNet class; its options are the other keys
  of the `model` config) is built for the data's input width; its spec is saved in the
  checkpoint's hyper-parameters, so export and serving rebuild it without this module.
- Training loss (`model.loss`, the `loss` config group): `mse` (default), masked MSE over the
  observed ratings of the batch only (`deepcf.training.loss.masked_mse`); `multinomial`, the
  multinomial log-likelihood of each row's entries under a softmax over every column (Mult-DAE,
  `deepcf.training.loss.multinomial_nll`), on the dense logits of the batch that the net computes
  from the sparse input (`net.train_logits`), plus the net's own penalty (Mult-VAE's annealed
  KL). A multinomial model's outputs are scores, not ratings: no RMSE/MAE is logged for it.
- `model.eval_topn` (default false): val/test also log `*/ndcg@10`, each row's unseen columns
  (those with a training entry that the row has not seen in training) ranked by the net's dense
  forward, the row's held-out entries relevant, binary NDCG@10 with the ideal over
  min(10, |held-out|) (deepcf.serving.metrics, the top-N protocol's metric), averaged over rows;
  and `val/ndcg@10_best`, what ranking experiments early-stop, checkpoint and optimise on.
- Training path (`model.train_path`): `sparse` asks the net for its predictions at the observed
  entries (`predict_observed`; the autoencoder computes on the U movies a batch touches only);
  `dense` builds the (batch, width) rows and reads the full-width forward at the observed
  entries, the textbook masked-MSE computation (`contract.dense_observed`).
- Gradients of the width-indexed weights (`model.sparse_grad`): row-sparse when the net supports
  it and the optimizer can take them (`deepcf.training.optim.takes_sparse_grads`: LazyAdam, plain
  SGD), so that the update also costs O(rows touched); dense otherwise (RMSprop, Adam, SGD with
  momentum), automatically with `auto`, and a ConfigError with `true`.
- `model.l2` (lambda, default 0): an L2 penalty on the weights only (every parameter with 2+
  dimensions; biases and fitted buffers excluded), as published for AutoRec. The paper minimises
  the summed squared error + lambda/2 * ||W||^2; deepcf's loss is the mean over the ratings, so
  the step adds lambda/2 * ||W||^2 / N (N: training ratings): with a full batch that is the
  paper's objective divided by N (same minimiser, same lambda), and the batch means of an epoch
  keep that ratio. Its gradient is dense, so l2 > 0 means dense gradients.
- the net's own regulariser (`net.penalty()`, e.g. the kernel net's sparsity) is added in the
  same units, divided by N.
- `model.refeed` (DeepRecommender's dense re-feeding, Kuchaiev & Ginsburg 2017): after the
  masked step on the batch x, a second optimizer step feeds the dense output y = f(x) (computed
  after the first step, no gradient) back as input with target y at every entry. The noise group
  corrupts y's input as it corrupts x (target y stays whole: deepcf's denoising convention;
  DeepRecommender's masked loss on the dropped-out y differs there). The refeed step is dense by
  nature (y has every entry), whatever `train_path`; it needs manual optimisation, hence no
  scheduler and no closure optimizer (L-BFGS), and dense gradients.
- `train_rows` (not a config key): the training rows (a rows x width CSR) for nets that fit
  something from them (`net.fit_data`, e.g. the bias residual) and for N above.
- closed-form nets (`net.closed_form`, e.g. EDLAE): `fit_data` has set the weights when the
  module is built; there is no optimizer and `training_step` does nothing, so an epoch is a
  validation pass and a checkpoint (their experiments run one epoch), and the ONNX export,
  evaluate and recommend follow as for any net.
- val/test follow the held-out protocol of deepcf.data.heldout (inputs are training rows,
  clipped predictions, the training-mean fallback where cold, counted as `*/n_fallback`); RMSE is
  accumulated over the whole split and across devices (not a mean of batch RMSEs).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from torchmetrics import MaxMetric, MeanAbsoluteError, MeanSquaredError, MinMetric, SumMetric

from deepcf.data.heldout import clip_or_fallback
from deepcf.errors import ConfigError
from deepcf.models.contract import dense_observed, dense_rows, net_class
from deepcf.models.noise import check_noise, corrupt
from deepcf.models.sparse_ops import Pattern, entry_rows
from deepcf.serving.metrics import hits_matrix, ndcg_at
from deepcf.training.loss import check_loss, masked_mse, multinomial_nll
from deepcf.training.optim import takes_sparse_grads

log = logging.getLogger(__name__)

TRAIN_PATHS = ("sparse", "dense")
TOPN_K = 10


@torch.no_grad()
def row_ndcg(scores: torch.Tensor, seen: tuple[torch.Tensor, torch.Tensor],
             relevant: tuple[torch.Tensor, torch.Tensor], candidate: torch.Tensor | None = None,
             k: int = TOPN_K):
    """Binary NDCG@k of each row of dense `scores` (rows, width): the (row, column) pairs in
    `seen` are never ranked, nor the columns where `candidate` is False; the pairs in `relevant`
    are the hits (deepcf.serving.metrics: the ideal over min(k, |relevant|)). Returns
    (ndcg of each row with a relevant entry, number of such rows) as numpy."""
    scores = scores.detach().float().clone()
    scores[seen] = -torch.inf
    if candidate is not None:
        scores[:, ~candidate] = -torch.inf
    vals, top = torch.topk(scores, min(k, scores.shape[1]), dim=1)
    top = torch.where(torch.isneginf(vals), -1, top).cpu().numpy()
    rel = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    rel[relevant] = True
    rel = rel.cpu().numpy()
    n_rel = rel.sum(1)
    keep = n_rel > 0
    return ndcg_at(hits_matrix(top[keep], rel[keep]), n_rel[keep], k), int(keep.sum())


def _plain(conf: Any) -> Any:
    """DictConfig/ListConfig -> plain Python containers; anything else as it is."""
    if isinstance(conf, (DictConfig, ListConfig)):
        return OmegaConf.to_container(conf, resolve=True)
    return conf


def weight_norm2(net) -> torch.Tensor:
    """||W||^2 over the net's weights (`l2_weights`: every parameter with 2+ dimensions unless
    the net says otherwise; a tied weight once)."""
    return sum(p.pow(2).sum() for p in net.l2_weights())


def l2_penalty(net, lam: float) -> torch.Tensor:
    """lambda/2 * ||W||^2, AutoRec's regulariser (biases excluded)."""
    return lam / 2.0 * weight_norm2(net)


class RatingsModule(pl.LightningModule):
    def __init__(
        self,
        width: int,
        net: str = "deepcf.models.autoencoder.AutoEncoder",
        init: dict | None = None,
        noise: dict | None = None,
        optimizer: Any = None,
        scheduler: Any = None,
        rating_min: float = 1.0,
        rating_max: float = 5.0,
        train_mean: float = 3.5,
        train_path: str = "sparse",
        sparse_grad: Any = "auto",
        l2: float = 0.0,
        loss: str = "mse",
        eval_topn: bool = False,
        refeed: bool = False,
        train_rows: Any = None,
        **net_options: Any,
    ):
        super().__init__()
        init, noise = _plain(init) or {}, _plain(noise) or {"kind": "none"}
        check_noise(**noise)
        if train_path not in TRAIN_PATHS:
            hint = " (auto was sparse: use sparse)" if train_path == "auto" else ""
            raise ConfigError(f"model.train_path={train_path!r} is not one of "
                              f"{', '.join(TRAIN_PATHS)}{hint}")
        if sparse_grad not in ("auto", True, False):
            raise ConfigError(f"model.sparse_grad={sparse_grad!r} must be auto, true or false")
        check_loss(loss)
        if eval_topn not in (True, False):
            raise ConfigError(f"model.eval_topn={eval_topn!r} must be true or false")
        optimizer = _plain(optimizer)
        l2 = float(l2)
        if not l2 >= 0:
            raise ConfigError(f"model.l2={l2} must be >= 0")
        if refeed not in (True, False):
            raise ConfigError(f"model.refeed={refeed!r} must be true or false")
        if refeed and _plain(scheduler):
            raise ConfigError("model.refeed=true takes two optimizer steps per batch by hand: "
                              "use scheduler=none")
        if refeed and "LBFGS" in str((optimizer or {}).get("_target_", "")):
            raise ConfigError("model.refeed=true does not combine with optimizer=lbfgs (its "
                              "closure steps): use another optimizer")
        can, why = takes_sparse_grads(optimizer)
        net_cls = net_class(net)
        if can and not net_cls.supports_sparse_grad:
            can, why = False, f"{net_cls.__name__} computes dense gradients"
        if can and l2 > 0:
            can, why = False, "model.l2 penalises every weight: its gradient is dense"
        if can and refeed:
            can, why = False, "model.refeed's step is dense"
        if sparse_grad is True and not can:
            raise ConfigError(f"model.sparse_grad=true needs a net and an optimizer that take "
                              f"row-sparse gradients ({why}); use optimizer=lazy_adam, or sgd "
                              f"without momentum/weight decay, or model.sparse_grad=auto")
        if can and loss != "mse":
            can, why = False, "the multinomial loss has dense logits: dense gradients"
        self.dense_train = train_path == "dense"
        self.sparse_grad = bool(can and sparse_grad is not False and not self.dense_train)
        log.info("training path: %s, width-indexed gradients %s (%s)",
                 "dense masked" if self.dense_train else "sparse",
                 "row-sparse" if self.sparse_grad else "dense",
                 "dense path" if self.dense_train else why)
        if net_cls.closed_form and l2 > 0:
            raise ConfigError(f"model.l2={l2} does nothing for {net_cls.__name__}, which is "
                              f"fitted in closed form (its own regularisation: model.lam)")
        if net_cls.closed_form and noise.get("kind", "none") != "none":
            raise ConfigError(f"noise.kind={noise['kind']} does nothing for {net_cls.__name__}, "
                              f"which is fitted in closed form (its dropout: model.dropout)")
        self.net = net_cls.build(width, **{k: _plain(v) for k, v in net_options.items()})
        self.net.init_weights(**init)
        if self.net.needs_train_rows and train_rows is None:
            raise ConfigError(f"{net_cls.__name__} with these options fits from the training "
                              f"rows: pass train_rows to the module (deepcf.train does)")
        if train_rows is not None:
            self.net.fit_data(train_rows)
        if (l2 > 0 or self.net.penalty() is not None) and train_rows is None:
            raise ConfigError("model.l2 (or the net's own penalty) needs the training rows (N, "
                              "its scale): pass train_rows to the module (deepcf.train does)")
        self.l2 = l2
        self.n_train = max(int(train_rows.nnz), 1) if train_rows is not None else 1
        self.loss_kind, self.eval_topn = loss, bool(eval_topn)
        self.rates = loss == "mse"  # the outputs are ratings (RMSE/MAE mean something)
        # top-N candidates: the columns with a training entry (the top-N protocol's rule)
        cand = None
        if train_rows is not None:
            cand = torch.from_numpy(np.bincount(train_rows.indices,
                                                minlength=train_rows.shape[1]) > 0)
        self.register_buffer("candidate", cand, persistent=False)
        self.noise = noise
        self.refeed = bool(refeed)
        self.automatic_optimization = not self.refeed  # two steps per batch: by hand
        # plain containers only: checkpoints then load with torch.load(weights_only=True)
        self.save_hyperparameters(
            dict(net=self.net.spec(), init=init, noise=noise, optimizer=optimizer,
                 scheduler=_plain(scheduler), rating_min=float(rating_min),
                 rating_max=float(rating_max), train_mean=float(train_mean),
                 train_path=train_path, sparse_grad=sparse_grad, l2=l2, loss=loss,
                 eval_topn=bool(eval_topn), refeed=self.refeed),
            logger=False,
        )
        for split in ("val", "test"):
            setattr(self, f"{split}_rmse", MeanSquaredError(squared=False))
            setattr(self, f"{split}_mae", MeanAbsoluteError())
            setattr(self, f"{split}_n", SumMetric())
            setattr(self, f"{split}_fallback", SumMetric())
            setattr(self, f"{split}_ndcg", SumMetric())
            setattr(self, f"{split}_ndcg_rows", SumMetric())
        self.val_rmse_best = MinMetric()
        self.val_ndcg_best = MaxMetric()

    # -- training ---------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor | None:
        if self.net.closed_form:
            return None  # fitted in closed form by fit_data; nothing to step
        idx, val, off = batch["in_idx"], batch["in_val"], batch["in_off"]
        targets = Pattern.from_offsets(off, idx, self.net.width)
        c_idx, c_val, c_off = corrupt(idx, val, off, **self.noise)
        inputs = targets if c_idx is idx else Pattern.from_offsets(c_off, c_idx, self.net.width)
        if self.loss_kind == "multinomial":
            logits, penalty = self.net.train_logits(inputs, c_val, self.global_step)
            loss = multinomial_nll(logits, targets, val)
            self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True,
                     batch_size=targets.n_rows)  # epoch value: mean over rows
            if penalty is not None:
                self.log("train/penalty", penalty, on_step=False, on_epoch=True,
                         batch_size=targets.n_rows)
                loss = loss + penalty
        else:
            if self.dense_train:
                pred = dense_observed(self.net, inputs, c_val, targets)
            else:
                pred = self.net.predict_observed(inputs, c_val, targets, self.sparse_grad)
            loss = masked_mse(pred, val)
            self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True,
                     batch_size=len(idx))  # epoch value = sum sq err / number of ratings
        for name, term in self._regularisers().items():
            self.log(f"train/{name}", term, on_step=False, on_epoch=True, batch_size=len(idx))
            loss = loss + term
        if self.refeed:
            self._refeed_steps(loss, targets, val)
        return loss

    def _regularisers(self) -> dict[str, torch.Tensor]:
        """The step's regularisers over N, by name: "l2" (lambda/2 ||W||^2, when model.l2 > 0)
        and "penalty" (the net's own, e.g. the kernel net's sparsity, same units)."""
        out = {}
        if self.l2 > 0:
            out["l2"] = l2_penalty(self.net, self.l2) / self.n_train
        own = self.net.penalty()
        if own is not None:
            out["penalty"] = own / self.n_train
        return out

    def refeed_loss(self, rows: Pattern, values: torch.Tensor) -> torch.Tensor:
        """The refeed step's objective: y = f(x) of the batch's rows x (no gradient), fed back
        (through the noise) with target y at every entry; plus the step's regularisers."""
        with torch.no_grad():
            y = self.net(dense_rows(self.net.width, rows, values))
        width, n = self.net.width, y.shape[0]
        flat_idx = torch.arange(width, device=y.device).repeat(n)
        flat_off = torch.arange(n, device=y.device) * width
        c_idx, c_val, c_off = corrupt(flat_idx, y.reshape(-1), flat_off, **self.noise)
        y_in = y.new_zeros(n, width)
        y_in[entry_rows(c_off, len(c_idx)), c_idx] = c_val
        return F.mse_loss(self.net(y_in), y) + sum(self._regularisers().values())

    def _refeed_steps(self, loss: torch.Tensor, rows: Pattern, values: torch.Tensor) -> None:
        """Manual optimisation: the masked step on x, then the refeed step."""
        opt = self.optimizers()
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()
        opt.zero_grad()
        refeed = self.refeed_loss(rows, values)
        self.manual_backward(refeed)
        opt.step()
        self.log("train/refeed_loss", refeed, on_step=False, on_epoch=True,
                 batch_size=rows.n_rows * self.net.width)

    # -- held-out scoring -------------------------------------------------------------------
    def predict_targets(self, batch: dict) -> torch.Tensor:
        """Clipped predictions at the batch's held-out positions, fallback where cold."""
        pred = self.net.predict_at(batch["in_idx"], batch["in_val"], batch["in_off"],
                                   batch["tgt_row"], batch["tgt_idx"])
        hp = self.hparams
        return clip_or_fallback(pred, batch["tgt_cold"], hp.rating_min, hp.rating_max,
                                hp.train_mean)

    def _eval_step(self, split: str, batch: dict) -> None:
        if self.eval_topn:
            self._topn_step(split, batch)
        if not self.rates:
            return
        pred, target = self.predict_targets(batch), batch["tgt_val"]
        getattr(self, f"{split}_rmse").update(pred, target)
        getattr(self, f"{split}_mae").update(pred, target)
        getattr(self, f"{split}_n").update(target.new_tensor(float(len(target))))
        getattr(self, f"{split}_fallback").update(batch["tgt_cold"].sum().float())

    def _topn_step(self, split: str, batch: dict) -> None:
        """NDCG@10 of the batch's rows: every unseen candidate column ranked by the dense
        forward of the row's training entries, its held-out entries relevant."""
        idx, val, off = batch["in_idx"], batch["in_val"], batch["in_off"]
        rows = entry_rows(off, len(idx))
        x = val.new_zeros(len(off), self.net.width)
        x[rows, idx] = val
        ndcg, n = row_ndcg(self.net(x), (rows, idx), (batch["tgt_row"], batch["tgt_idx"]),
                           self.candidate)
        getattr(self, f"{split}_ndcg").update(x.new_tensor(float(ndcg.sum())))
        getattr(self, f"{split}_ndcg_rows").update(x.new_tensor(float(n)))

    def _topn_log(self, split: str) -> torch.Tensor:
        total, n = (getattr(self, f"{split}_ndcg{s}").compute() for s in ("", "_rows"))
        ndcg = total / n.clamp(min=1)
        self.log(f"{split}/ndcg@{TOPN_K}", ndcg, prog_bar=True)
        for name in ("ndcg", "ndcg_rows"):
            getattr(self, f"{split}_{name}").reset()
        return ndcg

    def _eval_log(self, split: str) -> torch.Tensor | None:
        if not self.rates:
            return None
        rmse = getattr(self, f"{split}_rmse").compute()
        self.log(f"{split}/rmse", rmse, prog_bar=True)
        self.log(f"{split}/mae", getattr(self, f"{split}_mae").compute())
        self.log(f"{split}/n_ratings", getattr(self, f"{split}_n").compute())
        self.log(f"{split}/n_fallback", getattr(self, f"{split}_fallback").compute())
        for name in ("rmse", "mae", "n", "fallback"):
            getattr(self, f"{split}_{name}").reset()
        return rmse

    def on_train_start(self) -> None:
        self.val_rmse_best.reset()
        self.val_ndcg_best.reset()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step("val", batch)

    def on_validation_epoch_end(self) -> None:
        # the sanity-check value is dropped by the reset in on_train_start
        if self.eval_topn:
            self.val_ndcg_best.update(self._topn_log("val"))
            self.log(f"val/ndcg@{TOPN_K}_best", self.val_ndcg_best.compute(), prog_bar=True)
        if self.rates:
            self.val_rmse_best.update(self._eval_log("val"))
            self.log("val/rmse_best", self.val_rmse_best.compute(), prog_bar=True)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step("test", batch)

    def on_test_epoch_end(self) -> None:
        if self.eval_topn:
            self._topn_log("test")
        self._eval_log("test")

    # -- optimisation -----------------------------------------------------------------------
    def configure_optimizers(self):
        if self.net.closed_form:
            return None  # no optimizer: Lightning runs the (empty) epoch without one
        opt_cfg = self.hparams.optimizer or {"_target_": "torch.optim.Adam", "lr": 1e-3}
        # plain lists (Rprop's etas): the optimizer's state goes into weights_only checkpoints
        optimizer = instantiate(opt_cfg, params=self.parameters(), _convert_="all")
        if not self.hparams.scheduler:
            return optimizer
        scheduler = instantiate(self.hparams.scheduler, optimizer=optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler,
                             "interval": "epoch", "frequency": 1, "monitor": "val/rmse"},
        }
