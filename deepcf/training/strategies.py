"""Lightning's DDP strategy, for modules that may have nothing to learn by gradient.

torch's DistributedDataParallel refuses a module without a parameter that requires a gradient,
which is what a closed-form fit is (objective=closed_form: the ranks add their rows' statistics
through the strategy's reduce, there are no gradients to synchronise). Such a module is left
unwrapped; every other module is wrapped exactly as Lightning's DDPStrategy does.
"""

from __future__ import annotations

from pytorch_lightning.strategies import DDPStrategy as LightningDDP


class DDPStrategy(LightningDDP):
    def configure_ddp(self) -> None:
        if any(p.requires_grad for p in self.model.parameters()):
            super().configure_ddp()
