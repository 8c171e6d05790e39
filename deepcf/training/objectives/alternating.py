"""The multinomial likelihood trained in alternating phases over a net's blocks (RecVAE,
Shenbin et al. WSDM 2020).

The loss is the multinomial objective's (deepcf.training.objectives.multinomial: -sum_j x_j
log softmax(f(x))_j per row plus the net's penalty, RecVAE's KL to its composite prior). The net
names its parameter blocks (`param_blocks()`: e.g. encoder, decoder), each with its own
optimizer of the `optimizer` group; the epochs cycle through them, `phases` epochs per block
(the paper: 3 encoder epochs, then 1 decoder epoch), and only the block of the current epoch is
stepped. At a block's phase start the net is told (`begin_block`: RecVAE's input dropout is on
for the encoder only) and at its end (`end_block`: RecVAE's prior takes the trained encoder).
Each epoch is validated as usual, so early stopping and the refit's replayed epoch count are in
epochs (passes over the rows) of this cycle.
"""

from __future__ import annotations

from hydra.utils import instantiate

from deepcf.errors import ConfigError
from deepcf.models.contract import RatingNet
from deepcf.training.objectives import Objective, Setup
from deepcf.training.objectives.multinomial import multinomial_nll


class Alternating(Objective):
    outputs = "ranking"
    manual = True  # one optimizer per block, the step picks the current one
    takes_noise = False  # the net's own input dropout
    takes_scheduler = False

    def __init__(self, phases: dict | None = None):
        super().__init__()
        phases = dict(phases or {"encoder": 3, "decoder": 1})
        for name, n in phases.items():
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ConfigError(f"model.objective.phases.{name}={n!r} must be an integer >= 1")
        self.phases = phases
        self._current: str | None = None

    def options(self) -> dict:
        return {"phases": dict(self.phases)}

    def bind(self, net: RatingNet, setup: Setup) -> None:
        blocks = getattr(net, "param_blocks", None)
        if blocks is None:
            raise ConfigError(f"objective=alternating: {type(net).__name__} names no parameter "
                              f"blocks to alternate over (use objective=multinomial)")
        missing = sorted(set(self.phases) - set(blocks()))
        if missing:
            raise ConfigError(f"model.objective.phases.{missing[0]}: {type(net).__name__} has "
                              f"no such block (its blocks: {', '.join(blocks())})")
        super().bind(net, setup)

    def block_of(self, epoch: int) -> str:
        """The block epoch `epoch` (0-based) trains."""
        k = epoch % sum(self.phases.values())
        for name, n in self.phases.items():
            if k < n:
                return name
            k -= n
        raise AssertionError("unreachable")

    def configure_optimizers(self, module):
        opt_cfg = self.setup.optimizer or {"_target_": "torch.optim.Adam", "lr": 5e-4}
        blocks = module.net.param_blocks()
        return [instantiate(opt_cfg, params=blocks[name], _convert_="all")
                for name in self.phases]

    def epoch_start(self, module) -> None:
        block = self.block_of(module.current_epoch)
        if self._current is not None and self._current != block:
            module.net.end_block(self._current)
        module.net.begin_block(block)
        self._current = block

    def step(self, module, batch: dict, batch_idx: int) -> None:
        net = module.net
        block = self._current or self.block_of(module.current_epoch)
        targets, inputs, values = self.corrupted(batch, net.width)
        logits, penalty = net.train_logits(inputs, values, module.global_step)
        nll = multinomial_nll(logits, targets, batch["in_val"])
        loss = nll if penalty is None else nll + penalty
        loss = self.add_regularisers(module, loss, len(batch["in_idx"]))
        rows = targets.n_rows
        module.log("train/loss", nll, on_step=False, on_epoch=True, prog_bar=True,
                   batch_size=rows)
        if penalty is not None:
            module.log("train/penalty", penalty, on_step=False, on_epoch=True, batch_size=rows)
        opts = module.optimizers()
        opts = opts if isinstance(opts, (list, tuple)) else [opts]
        opt = opts[list(self.phases).index(block)]
        opt.zero_grad()
        module.manual_backward(loss)
        opt.step()
        return None

