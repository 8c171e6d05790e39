"""A closed-form fit in one pass over the training rows (EDLAE, EASE; Steck 2019, 2020).

The net states its sufficient statistics of a batch of rows (`RatingNet.closed_form_stats`,
e.g. the binary Gram matrix X_b^T X_b) and how to solve for its weights from their sums
(`RatingNet.solve`). The epoch is that pass: every training batch adds its statistics, the last
batch sums them over the DDP ranks and solves, and training stops there; validation, the
checkpoint and the ONNX export then follow as for any run. There is no optimizer and nothing is
learned by gradient, so `model.l2` and the noise group are refused (the net's own options
regularise it, e.g. EDLAE's `model.net.lam` and `model.net.dropout`).

Options left to the validation carve (`model.net.lam=auto` ...; `net.selection_stages()`) are
chosen at the solve, before the final one: `select_options` solves at each setting of a stage's
grid from the training rows' statistics and ranks the DataModule's validation rows (inputs: the
users' training rows; relevant: their validation entries), keeping the best carve NDCG@10 among
the settings whose carve coverage@10 reaches the stage's floor (none does: the best coverage).
The chosen values are fixed in the net's config (so the checkpoint's net spec holds them, and a
re-fit at them is a plain closed-form fit), logged as `select/<option>` and kept in the
objective's `chosen`. A grid of a few dozen solves of a movies x movies system: seconds on
ML-100K's 1,682 movies.
"""

from __future__ import annotations

import itertools
import logging

import numpy as np
import scipy.sparse as sp
import torch

from deepcf.errors import ConfigError
from deepcf.models.contract import RatingNet
from deepcf.models.sparse_ops import Pattern
from deepcf.serving.evaluate import topn_metrics
from deepcf.training.objectives import Objective, Setup

log = logging.getLogger(__name__)

SELECT_METRIC, SELECT_COVERAGE = "ndcg@10", "coverage@10"


def sparse_rows_scores(net: RatingNet, rows: sp.csr_matrix) -> np.ndarray:
    """The net's (n, width) float32 scores of the rows of a CSR, from the sparse rows
    (`rank_rows`: a dense forward unless the net has a cheaper way, as EDLAE and ELSA do)."""
    rows = sp.csr_matrix(rows)
    device = next(itertools.chain(net.parameters(), net.buffers())).device
    idx, val, off = (torch.from_numpy(a).to(device) for a in (
        rows.indices.astype(np.int64), rows.data.astype(np.float32),
        rows.indptr[:-1].astype(np.int64)))
    with torch.no_grad():
        return net.rank_rows(idx, val, off).float().cpu().numpy()


def carve_scores(net: RatingNet, train_rows: sp.csr_matrix, val_rows: sp.csr_matrix
                 ) -> dict[str, float]:
    """NDCG@10 and coverage@10 of the net ranking the carve: each row with validation entries
    ranks its unseen candidate columns by the net's scores of its training row."""
    X = train_rows.tocsr()
    m = topn_metrics(lambda rows: sparse_rows_scores(net, X[rows]), X, val_rows.tocsr(), (10,),
                     metrics=["ndcg", "coverage"])
    return {SELECT_METRIC: float(m[SELECT_METRIC]), SELECT_COVERAGE: float(m[SELECT_COVERAGE])}


def select_options(net: RatingNet, stats: dict[str, torch.Tensor], train_rows: sp.csr_matrix,
                   val_rows: sp.csr_matrix) -> tuple[dict, list[dict]]:
    """Choose the net's carve options (`net.selection_stages()`) stage by stage; returns (the
    chosen values, every setting tried with its carve scores). The net's config then holds the
    chosen values; solve again to fit at them."""
    chosen, tried = {}, []
    if val_rows is None or val_rows.nnz == 0:
        names = sorted(n for grid, _ in net.selection_stages() for n in grid)
        raise ConfigError(f"model.net.{names[0]}=auto: chosen on the validation carve, but the "
                          f"run has no validation ratings (data.protocol.val_fraction > 0)")
    for stage, floor in net.selection_stages():
        if callable(floor):  # a floor read from the earlier stages (EDLAE's coverage of EASE)
            floor = float(floor([(t, t[SELECT_METRIC], t[SELECT_COVERAGE]) for t in tried]))
            log.info("closed form: the carve %s floor of %s is %.4f", SELECT_COVERAGE,
                     "/".join(stage), floor)
        results = []
        for combo in itertools.product(*stage.values()):
            setting = dict(zip(stage, combo))
            net.set_options(**setting)
            net.solve(stats)
            m = carve_scores(net, train_rows, val_rows)
            tried.append({**chosen, **setting, **m})
            results.append((m[SELECT_COVERAGE] >= floor, m[SELECT_METRIC], m[SELECT_COVERAGE],
                            setting))
        eligible = [r for r in results if r[0]]
        best = (max(eligible, key=lambda r: r[1]) if eligible
                else max(results, key=lambda r: r[2]))
        if not eligible:
            log.warning("closed form: no setting of %s reaches the carve coverage@10 floor %g; "
                        "the best coverage kept", "/".join(stage), floor)
        net.set_options(**best[3])
        chosen.update(best[3])
        log.info("closed form: chosen on the carve %s (carve %s %.4f, %s %.4f; %d settings)",
                 ", ".join(f"{k}={v:g}" for k, v in best[3].items()), SELECT_METRIC, best[1],
                 SELECT_COVERAGE, best[2], len(results))
    return chosen, tried


def carve_of(trainer) -> tuple[sp.csr_matrix | None, sp.csr_matrix | None]:
    """(training rows, validation rows) of the trainer's DataModule, net-oriented."""
    dm = getattr(trainer, "datamodule", None)
    if dm is None or getattr(dm, "split", None) is None:
        return None, None
    train, val, _ = dm.oriented(dm.split)
    return train, val


class ClosedForm(Objective):
    by_gradient = False
    manual = True  # no optimizer steps: the step accumulates, the last one solves
    takes_noise = False
    takes_scheduler = False

    def __init__(self):
        super().__init__()
        self._stats: dict[str, torch.Tensor] = {}
        self.chosen: dict = {}  # the options chosen on the carve (none: {})

    def bind(self, net: RatingNet, setup: Setup) -> None:
        if not net.fits_closed_form:
            raise ConfigError(f"objective=closed_form: {type(net).__name__} has no closed "
                              f"form; train it by gradient (objective=masked_mse)")
        super().bind(net, setup)

    def configure_optimizers(self, module):
        return []  # nothing to optimise

    def epoch_start(self, module) -> None:
        self._stats = {}

    def step(self, module, batch: dict, batch_idx: int) -> None:
        net = module.net
        rows = Pattern.from_offsets(batch["in_off"], batch["in_idx"], net.width)
        for name, value in net.closed_form_stats(rows, batch["in_val"]).items():
            self._stats[name] = value if name not in self._stats else self._stats[name] + value
        trainer = module._trainer  # None when stepped by hand (tests): solve at the end
        if trainer is not None and batch_idx + 1 >= trainer.num_training_batches:
            stats = {name: trainer.strategy.reduce(value, reduce_op="sum")
                     for name, value in self._stats.items()}
            if net.selection_stages():
                self.select(module, net, stats, *carve_of(trainer))
            net.solve(stats)
            self._stats = {}
            # the solve is the fit's one optimisation step: count it as Lightning counts a
            # manual optimizer step (the checkpoint callback skips a run that took none)
            progress = trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress
            progress.increment_ready()
            progress.increment_completed()
            trainer.should_stop = True  # the fit is complete after one pass
        return None

    def select(self, module, net: RatingNet, stats: dict, train_rows, val_rows) -> None:
        if train_rows is None:
            raise ConfigError("model.net options set to auto are chosen on the DataModule's "
                              "validation rows: train through deepcf.train (or give numbers)")
        self.chosen, _ = select_options(net, stats, train_rows, val_rows)
        for name, value in self.chosen.items():
            module.log(f"select/{name}", float(value), on_step=False, on_epoch=True,
                       batch_size=1)
        if "net" in getattr(module, "hparams", {}):  # the checkpoint's spec: the chosen values
            module.hparams["net"] = net.spec()
