"""Training: the LightningModule, the losses, the optimizers, callbacks, loggers, and the run."""
