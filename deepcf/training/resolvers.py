"""The config resolvers deepcf's yaml uses (`${deepcf.isatty:}`, `${deepcf.run_id:}`, ...),
registered when this module is imported (deepcf.training.config imports it, so every composed
config has them)."""

import os
import secrets
import sys

from omegaconf import OmegaConf

from deepcf.training.loggers import run_name, sweep_group

# this process's run id: pid and random hex, the same for every job of one process (a sweep's
# jobs share their sweep dir), different for two processes started in the same second
RUN_ID = f"{os.getpid()}-{secrets.token_hex(3)}"

if not OmegaConf.has_resolver("deepcf.isatty"):
    # `${deepcf.isatty:}`: True when stdout is a terminal (progress bars only for people)
    OmegaConf.register_new_resolver("deepcf.isatty", lambda: sys.stdout.isatty())
if not OmegaConf.has_resolver("deepcf.run_id"):
    # `${deepcf.run_id:}`: the suffix that keeps run dirs of concurrent processes apart
    # cached: a sweep's jobs that submitit runs in other processes get the launching process's
    # value with the config (Hydra copies the resolver cache into each job's config)
    OmegaConf.register_new_resolver("deepcf.run_id", lambda: RUN_ID, use_cache=True)


def _gpus_per_node(accelerator, devices):
    """GPUs a SLURM job asks for per node: trainer.devices for a GPU trainer, else none."""
    if str(accelerator) not in ("gpu", "cuda"):
        return None
    return devices if isinstance(devices, int) and devices > 0 else None


if not OmegaConf.has_resolver("deepcf.gpus_per_node"):
    # `${deepcf.gpus_per_node:${trainer.accelerator},${trainer.devices}}` (conf/hydra/launcher)
    OmegaConf.register_new_resolver("deepcf.gpus_per_node", _gpus_per_node)


if not OmegaConf.has_resolver("deepcf.wandb_group"):
    # `${deepcf.wandb_group:}`: one W&B group per multirun (conf/logger/wandb.yaml)
    OmegaConf.register_new_resolver("deepcf.wandb_group", sweep_group)

if not OmegaConf.has_resolver("deepcf.wandb_name"):
    OmegaConf.register_new_resolver("deepcf.wandb_name", lambda name: run_name(str(name)))
