"""deepcf: autoencoder collaborative filtering with PyTorch Lightning and Hydra."""

import os
import secrets
import sys
import warnings

from omegaconf import OmegaConf

__version__ = "0.1.0"

# this process's run id: pid and random hex, the same for every job of one process (a sweep's
# jobs share their sweep dir), different for two processes started in the same second
RUN_ID = f"{os.getpid()}-{secrets.token_hex(3)}"

# conf/hydra/launcher/submitit_*.yaml carry deepcf's defaults under the plugin's own names (so
# that `hydra/launcher=submitit_slurm` is the documented command); Hydra validates them against
# the plugin's schema, as wanted, and warns about it
warnings.filterwarnings("ignore", "(?s).*is validated against ConfigStore schema")

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
    def _wandb_group():
        from deepcf.training.loggers import sweep_group

        return sweep_group()

    OmegaConf.register_new_resolver("deepcf.wandb_group", _wandb_group)

if not OmegaConf.has_resolver("deepcf.wandb_name"):
    def _wandb_name(task_name):
        from deepcf.training.loggers import run_name

        return run_name(str(task_name))

    OmegaConf.register_new_resolver("deepcf.wandb_name", _wandb_name)
