from deepcf.models.autoencoder import AutoEncoder, init_weights

__all__ = ["AutoEncoder", "init_weights"]
