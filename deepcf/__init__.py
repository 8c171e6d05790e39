"""deepcf: autoencoder collaborative filtering with PyTorch Lightning and Hydra."""

import os
import secrets
import sys

from omegaconf import OmegaConf

__version__ = "0.1.0"

# this process's run id: pid and random hex, the same for every job of one process (a sweep's
# jobs share their sweep dir), different for two processes started in the same second
RUN_ID = f"{os.getpid()}-{secrets.token_hex(3)}"

if not OmegaConf.has_resolver("deepcf.isatty"):
    # `${deepcf.isatty:}`: True when stdout is a terminal (progress bars only for people)
    OmegaConf.register_new_resolver("deepcf.isatty", lambda: sys.stdout.isatty())
if not OmegaConf.has_resolver("deepcf.run_id"):
    # `${deepcf.run_id:}`: the suffix that keeps run dirs of concurrent processes apart
    OmegaConf.register_new_resolver("deepcf.run_id", lambda: RUN_ID)
