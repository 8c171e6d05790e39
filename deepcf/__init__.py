"""deepcf: autoencoder collaborative filtering with PyTorch Lightning and Hydra."""

import sys

from omegaconf import OmegaConf

__version__ = "0.1.0"

if not OmegaConf.has_resolver("deepcf.isatty"):
    # `${deepcf.isatty:}`: True when stdout is a terminal (progress bars only for people)
    OmegaConf.register_new_resolver("deepcf.isatty", lambda: sys.stdout.isatty())
