"""deepcf: autoencoder collaborative filtering with PyTorch Lightning and Hydra."""

import warnings

__version__ = "0.1.0"

# conf/hydra/launcher/submitit_*.yaml carry deepcf's defaults under the plugin's own names (so
# that `hydra/launcher=submitit_slurm` is the documented command); Hydra validates them against
# the plugin's schema, as wanted, and warns about it
warnings.filterwarnings("ignore", "(?s).*is validated against ConfigStore schema")
