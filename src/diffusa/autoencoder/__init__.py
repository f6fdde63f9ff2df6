"""Autoencoders for latent diffusion: KL- and VQ-regularized, their metrics, save and load (training:
`diffusa.tasks.autoencoder`)."""

from diffusa.autoencoder.io import (
    build_autoencoder,
    decode_all,
    encode_all,
    load_autoencoder,
    reconstruction_metrics,
)
from diffusa.autoencoder.model import AUTOENCODERS, KLAutoencoder, VectorQuantizer, VQAutoencoder
from diffusa.autoencoder.nets import AutoencoderConfig

__all__ = ["AUTOENCODERS", "AutoencoderConfig", "KLAutoencoder", "VQAutoencoder", "VectorQuantizer",
           "build_autoencoder", "decode_all", "encode_all", "load_autoencoder", "reconstruction_metrics"]
