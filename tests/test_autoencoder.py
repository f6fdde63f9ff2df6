"""Autoencoders for latent diffusion: shapes and the downsampling factor, the KL term against torch's closed
form, the VQ straight-through gradient and EMA codebook update against their formulas, the scale factor, a
briefly trained KL autoencoder beating the mean image, and save / load with one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from diffusa.autoencoder import (
    AutoencoderConfig,
    KLAutoencoder,
    VectorQuantizer,
    VQAutoencoder,
    encode_all,
    load_autoencoder,
)
from diffusa.errors import DiffusaError
from diffusa.tasks.autoencoder import train_autoencoder


@pytest.mark.parametrize("size,mult,latent", [(28, (1, 2), 7), (28, (1,), 14), (8, (1, 2), 2), (28, (1, 2, 2), 4)])
@pytest.mark.parametrize("cls", [KLAutoencoder, VQAutoencoder])
def test_shapes_and_factor(size: int, mult: tuple, latent: int, cls):
    cfg = AutoencoderConfig(channels=8, channel_mult=mult, latent_channels=3, image_size=size, codebook_size=16)
    model = cls(cfg).eval()
    x = torch.randn(2, 1, size, size)
    z = model.encode(x)
    assert z.shape == (2, 3, latent, latent) and cfg.factor == 2 ** len(mult)
    assert model.decode(z).shape == x.shape
    recon, reg, _ = model.train()(x)
    assert recon.shape == x.shape and reg.ndim == 0


def test_kl_term_matches_the_closed_form():
    model = KLAutoencoder(AutoencoderConfig(channels=8, kl_weight=1.0))
    x = torch.randn(4, 1, 28, 28)
    mean, logvar = model.moments(x)
    _, reg, _ = model(x)
    q = torch.distributions.Normal(mean, (0.5 * logvar).exp())
    expect = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).mean()
    assert torch.allclose(reg, expect, rtol=1e-5)


def test_vq_nearest_code_and_straight_through_gradient():
    vq = VectorQuantizer(5, 3, commitment=0.25, ema_decay=0.0).train()
    vq.initialized.fill_(True)
    z = torch.randn(2, 3, 4, 4, requires_grad=True)
    zq, loss, idx = vq(z)
    flat = z.detach().permute(0, 2, 3, 1).reshape(-1, 3)
    assert torch.equal(idx.flatten(), torch.cdist(flat, vq.codebook.detach()).argmin(1))
    assert torch.allclose(zq, vq.codebook.detach()[idx].permute(0, 3, 1, 2), atol=1e-6)
    w = torch.randn_like(zq)
    (zq * w).sum().backward()
    assert torch.allclose(z.grad, w)  # d z_q / d z_e = identity
    # the codebook learns by ||sg(z_e) - e||^2 (no EMA), the encoder by beta ||z_e - sg(e)||^2
    vq.codebook.grad = None
    z2 = z.detach().clone().requires_grad_(True)
    _, loss, _ = vq(z2)
    loss.backward()
    assert vq.codebook.grad is not None and vq.codebook.grad.abs().sum() > 0
    expect = 2 * 0.25 * (z2.detach() - vq.codebook.detach()[idx].permute(0, 3, 1, 2)) / z2.numel()
    assert torch.allclose(z2.grad, expect, atol=1e-7)


def test_vq_ema_update_follows_its_formula():
    vq = VectorQuantizer(3, 2, commitment=0.25, ema_decay=0.9).train()
    vq.initialized.fill_(True)
    vq.codebook.data = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    vq.ema_sum.copy_(vq.codebook.data)
    z = torch.tensor([[1.0, 1.0], [9.0, 1.0], [11.0, -1.0], [0.5, 0.0]]).t().reshape(1, 2, 2, 2)
    _, _, idx = vq(z)
    assert idx.flatten().tolist() == [0, 1, 1, 0]
    count = 0.9 * torch.ones(3) + 0.1 * torch.tensor([2.0, 2.0, 0.0])
    total = count.sum()
    smoothed = (count + 1e-5) / (total + 3e-5) * total
    sums = 0.9 * torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]]) + 0.1 * torch.tensor(
        [[1.5, 1.0], [20.0, 0.0], [0.0, 0.0]])
    assert torch.allclose(vq.codebook.data, sums / smoothed[:, None], atol=1e-5)


@pytest.fixture(scope="module")
def kl_digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = AutoencoderConfig(kind="kl", channels=16, channel_mult=(1, 2), latent_channels=4)
    return train_autoencoder("digits", tmp_path_factory.mktemp("ae") / "kl", cfg, steps=150, progress=False)


def test_kl_autoencoder_beats_the_mean_image_and_scales_latents(kl_digits: Path):
    meta = json.loads((kl_digits / "config.json").read_text())
    held = meta["held_out"]
    assert held["mse"] < 0.75 * held["mean_image_mse"], held
    model, meta = load_autoencoder(kl_digits)
    from diffusa.data import load_dataset

    z = encode_all(model, load_dataset("digits", "train").x)
    assert float((z * meta["scale_factor"]).std()) == pytest.approx(1.0, rel=1e-4)
    assert meta["latent_shape"] == [4, 2, 2]


def test_vq_autoencoder_trains_and_reports_codebook_usage(tmp_path: Path):
    cfg = AutoencoderConfig(kind="vq", channels=8, channel_mult=(1, 2), latent_channels=4, codebook_size=32)
    out = train_autoencoder("digits", tmp_path / "vq", cfg, steps=30, progress=False)
    held = json.loads((out / "config.json").read_text())["held_out"]
    assert 1 <= held["codebook_used"] <= 32 and 1 <= held["codebook_perplexity"] <= 32
    model, _ = load_autoencoder(out)
    z = model.encode(torch.zeros(1, 1, 8, 8))
    q = model.quantize(z)
    assert any(torch.allclose(q[0, :, 0, 0], e) for e in model.quantizer.codebook.detach())


def test_load_errors_are_one_line(tmp_path: Path, kl_digits: Path):
    with pytest.raises(DiffusaError, match=r"config\.json is missing"):
        load_autoencoder(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"format": "diffusa-run"}))
    with pytest.raises(DiffusaError, match="not an autoencoder config"):
        load_autoencoder(bad)
    with pytest.raises(DiffusaError, match="already holds an autoencoder"):
        train_autoencoder("digits", kl_digits, AutoencoderConfig(), steps=1, progress=False)
