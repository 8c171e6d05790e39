"""LazyAdam: Adam whose cost per step follows the movies a batch touches.

Dense gradients (the middle layers, biases of width h) get exactly `torch.optim.Adam`'s update
(the same functional kernel, fused on CPU). Row-sparse gradients (the movie-indexed `item_in`,
`item_out`, `out_b` in deepcf's sparse training step) update only their rows, the way
`torch.optim.SparseAdam` does:

    m[r] = b1 m[r] + (1 - b1) g[r];  v[r] = b2 v[r] + (1 - b2) g[r]^2
    p[r] -= lr * (m[r] / (1 - b1^t)) / (sqrt(v[r] / (1 - b2^t)) + eps)      for touched rows r

with t the parameter's step count. On the CPU the touched rows are updated in place by a native
kernel (`deepcf.kernels.row_adam_`); elsewhere they are gathered, updated by Adam's own fused
kernel and scattered back. How it differs from dense Adam, exactly: a row a batch does
not touch (its gradient is 0) keeps its parameters *and* its moments. Dense Adam would decay
that row's moments (m *= b1, v *= b2) and still move it by lr * m_hat / (sqrt(v_hat) + eps),
momentum carried over from earlier batches. `weight_decay` (L2, added to the gradient as
torch.optim.Adam does) likewise reaches touched rows only. On a step where every row is
touched, or with dense gradients, the update is dense Adam's, bit for bit up to kernel rounding.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch.optim import Optimizer
from torch.optim.adam import adam as adam_functional

from deepcf.errors import ConfigError
from deepcf.kernels import row_adam_, rprop_

log = logging.getLogger(__name__)


def closure_loss(closure) -> torch.Tensor | None:
    """The loss a step's closure re-evaluates (with gradients on), None without one."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


class LazyAdam(Optimizer):
    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, fused: bool | None = None):
        if not lr >= 0.0:
            raise ConfigError(f"model.optimizer.lr={lr} must be >= 0")
        if not eps >= 0.0:
            raise ConfigError(f"model.optimizer.eps={eps} must be >= 0")
        betas = tuple(float(b) for b in betas)
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ConfigError(f"model.optimizer.betas={list(betas)} must be two values in [0, 1)")
        if not weight_decay >= 0.0:
            raise ConfigError(f"model.optimizer.weight_decay={weight_decay} must be >= 0")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      fused=fused))

    def _workspace(self, p: torch.Tensor, n_rows: int) -> list[torch.Tensor]:
        """Three reused (n_rows, ...) buffers for the gathered rows of p, exp_avg, exp_avg_sq:
        gathering into fresh allocations of tens of MB each step costs as much as the copy.
        Grown by 25% when a batch touches more rows; not part of the state_dict."""
        work = self.__dict__.setdefault("_work", {})
        bufs = work.get(p)
        if bufs is None or bufs[0].shape[0] < n_rows:
            size = min(p.shape[0], int(n_rows * 1.25) + 16)
            bufs = [p.new_empty((size, *p.shape[1:])) for _ in range(3)]
            work[p] = bufs
        return [b[:n_rows] for b in bufs]

    def _state(self, p: torch.Tensor) -> dict:
        state = self.state[p]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure_loss(closure)
        for group in self.param_groups:
            b1, b2 = group["betas"]
            fused = group["fused"]
            if fused is None:
                fused = all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point
                            for p in group["params"])
            dense: dict[str, list] = {k: [] for k in "pgmvt"}
            sparse: dict[str, list] = {k: [] for k in "pgmvtro"}  # o: the parameter itself
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self._state(p)
                m, v, t = state["exp_avg"], state["exp_avg_sq"], state["step"]
                if not p.grad.is_sparse:
                    for k, x in zip("pgmvt", (p, p.grad, m, v, t)):
                        dense[k].append(x)
                    continue
                rows, g = _rows_and_values(p.grad)
                if _native(p, m, v):
                    t += 1  # the native kernel: in place, each touched row read and written once
                    row_adam_(p, g, m, v, rows, int(t), group["lr"], b1, b2, group["eps"],
                              group["weight_decay"])
                    continue
                # elsewhere Adam's own kernel on the touched rows, gathered; scattered back below
                bp, bm, bv = self._workspace(p, len(rows))
                for k, x in zip("pgmvtro", (torch.index_select(p, 0, rows, out=bp), g,
                                            torch.index_select(m, 0, rows, out=bm),
                                            torch.index_select(v, 0, rows, out=bv), t, rows,
                                            p)):
                    sparse[k].append(x)
            for part in (dense, sparse):
                if part["p"]:
                    adam_functional(part["p"], part["g"], part["m"], part["v"], [], part["t"],
                                    foreach=None if fused else True, fused=fused, amsgrad=False,
                                    beta1=b1, beta2=b2, lr=group["lr"],
                                    weight_decay=group["weight_decay"], eps=group["eps"],
                                    maximize=False)
            for p, p_r, m_r, v_r, rows in zip(sparse["o"], sparse["p"], sparse["m"],
                                              sparse["v"], sparse["r"]):
                state = self.state[p]
                p.index_copy_(0, rows, p_r)
                state["exp_avg"].index_copy_(0, rows, m_r)
                state["exp_avg_sq"].index_copy_(0, rows, v_r)
        return loss


class Rprop(Optimizer):
    """torch.optim.Rprop's update (the same arguments and arithmetic), in place and small.

    torch's Rprop keeps the previous gradient as a full float tensor and allocates several
    parameter-sized temporaries per step (sign, masks, a gradient clone): at I-AutoRec's
    Movies-Dataset scale (271M weights) that was ~8 GB above the weights. Here the state is the
    step size (the parameter's dtype) and the previous gradient's sign (int8: all the update
    reads of it); on the CPU a native kernel reads and writes each element once
    (`deepcf.kernels.rprop_`), elsewhere torch's own functional Rprop runs. One difference in
    the rounding corner: the sign of prev * grad is taken from the signs, so a product that
    underflows to 0 in float does not count as "no sign change".

    `weight_decay` (per parameter group, default 0): the step's gradient is grad +
    weight_decay * p, an L2 term's gradient added inside the update's one pass. The training
    objectives put `model.l2` there (`fuses_l2`) instead of differentiating lambda/2 ||W||^2:
    the same steps, without the parameter-sized temporaries of the penalty's autograd."""

    fuses_l2 = True  # takes model.l2 as weight_decay (deepcf.training.objectives)

    def __init__(self, params, lr: float = 1e-2, etas: tuple[float, float] = (0.5, 1.2),
                 step_sizes: tuple[float, float] = (1e-6, 50.0), weight_decay: float = 0.0):
        etas, step_sizes = tuple(float(e) for e in etas), tuple(float(s) for s in step_sizes)
        if not lr > 0.0:
            raise ConfigError(f"model.optimizer.lr={lr} must be > 0")
        if len(etas) != 2 or not 0.0 < etas[0] < 1.0 < etas[1]:
            raise ConfigError(f"model.optimizer.etas={list(etas)} must be [minus, plus] with "
                              f"0 < minus < 1 < plus")
        if len(step_sizes) != 2 or not 0.0 <= step_sizes[0] <= step_sizes[1]:
            raise ConfigError(f"model.optimizer.step_sizes={list(step_sizes)} must be [min, max] "
                              f"with 0 <= min <= max")
        if not weight_decay >= 0.0:
            raise ConfigError(f"model.optimizer.weight_decay={weight_decay} must be >= 0")
        super().__init__(params, dict(lr=float(lr), etas=etas, step_sizes=step_sizes,
                                      weight_decay=float(weight_decay)))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure_loss(closure)
        for group in self.param_groups:
            (eta_minus, eta_plus), (lo, hi) = group["etas"], group["step_sizes"]
            wd = group.get("weight_decay", 0.0)
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise ConfigError("optimizer=rprop takes dense gradients only")
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["prev"] = torch.zeros_like(p, dtype=torch.int8)
                    state["step_size"] = torch.full_like(p, group["lr"])
                state["step"] += 1
                grad, prev, size = p.grad, state["prev"], state["step_size"]
                if _native(p, grad, size) and prev.is_contiguous():
                    rprop_(p, grad, size, prev, eta_minus, eta_plus, lo, hi, wd)
                    continue
                if wd:
                    grad = grad.add(p, alpha=wd)
                sign = grad.sign().mul_(prev)  # elsewhere: torch's arithmetic on the sign
                factor = torch.where(sign > 0, eta_plus, torch.where(sign < 0, eta_minus, 1.0))
                size.mul_(factor.to(size.dtype)).clamp_(lo, hi)
                g = grad.masked_fill(sign < 0, 0)
                p.addcmul_(g.sign(), size, value=-1)
                prev.copy_(g.sign())
        return loss


def _native(*tensors: torch.Tensor) -> bool:
    """Whether `deepcf.kernels.row_adam_` can update these in place."""
    return all(x.device.type == "cpu" and x.is_contiguous()
               and x.dtype in (torch.float32, torch.float64) for x in tensors)


def _rows_and_values(grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row ids (unique) and their gradient rows of a row-sparse gradient."""
    if grad.sparse_dim() != 1:  # e.g. a fully sparse COO: make it row-sparse
        grad = grad.coalesce().to_dense().to_sparse(1)
    rows = grad._indices()[0]
    if not grad.is_coalesced() and not bool((rows[1:] > rows[:-1]).all()):
        grad = grad.coalesce()  # repeated or unsorted rows; deepcf's own grads never are
        rows = grad._indices()[0]
    return rows, grad._values()


# Optimizers whose update with a row-sparse gradient equals their dense update, or that are
# defined on row-sparse gradients (LazyAdam). Anything else gets dense gradients.
def takes_sparse_grads(opt_cfg: dict[str, Any] | None) -> tuple[bool, str]:
    """(can it take row-sparse gradients, why) for an optimizer config (`_target_` + kwargs)."""
    opt_cfg = opt_cfg or {}
    target = str(opt_cfg.get("_target_", "torch.optim.Adam"))
    name = target.rsplit(".", 1)[-1]
    if target in ("deepcf.training.optim.LazyAdam",):
        return True, "LazyAdam updates the rows a batch touches"
    if target == "torch.optim.SGD":
        plain = (not opt_cfg.get("momentum") and not opt_cfg.get("weight_decay")
                 and not opt_cfg.get("nesterov"))
        if plain:
            return True, "plain SGD: a row-sparse step equals the dense step exactly"
        return False, "SGD with momentum or weight decay moves untouched rows too"
    return False, f"{name} takes dense gradients only"
