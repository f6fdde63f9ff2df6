"""Autoencoders for latent diffusion: KL- and VQ-regularized, their training, metrics, save and load."""

from diffusa.autoencoder.model import AUTOENCODERS, KLAutoencoder, VectorQuantizer, VQAutoencoder
from diffusa.autoencoder.nets import AutoencoderConfig
from diffusa.autoencoder.train import (
    build_autoencoder,
    decode_all,
    encode_all,
    load_autoencoder,
    reconstruction_metrics,
    train_autoencoder,
)

__all__ = ["AUTOENCODERS", "AutoencoderConfig", "KLAutoencoder", "VQAutoencoder", "VectorQuantizer",
           "build_autoencoder", "decode_all", "encode_all", "load_autoencoder", "reconstruction_metrics",
           "train_autoencoder"]
