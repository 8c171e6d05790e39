"""`python -m deepcf.train experiment=scheduler_lr`: train one run (or `-m` a sweep).

The command line of deepcf.training.train: overrides are checked before Hydra runs (one line
naming a wrong key), and a DeepCFError ends the run with one line and exit status 2.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

import deepcf  # noqa: F401  (registers config resolvers)
from deepcf.errors import one_line_errors
from deepcf.training.config import CONF_DIR, check_overrides


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    with one_line_errors("deepcf.train"):
        from deepcf.training.train import train

        metrics = train(cfg)
        value = metrics.get(cfg.get("optimized_metric") or "")
        return None if value is None else float(value)


if __name__ == "__main__":
    with one_line_errors("deepcf.train"):
        check_overrides(sys.argv[1:])
    sys.exit(main())
