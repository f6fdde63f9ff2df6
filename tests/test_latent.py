"""Latent diffusion end to end: an autoencoder, diffusion on its cached, scaled latents, samples decoded to
images; the run loads its autoencoder with it; mismatches and missing pieces are one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DIGITS_OVERRIDES, train_run

from diffusa.autoencoder import AutoencoderConfig
from diffusa.data import load_dataset
from diffusa.latent import latent_dataset
from diffusa.runs import load_run
from diffusa.tasks.autoencoder import train_autoencoder


@pytest.fixture(scope="module")
def ae(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = AutoencoderConfig(kind="kl", channels=8, channel_mult=(1, 2), latent_channels=3)
    return train_autoencoder("digits", tmp_path_factory.mktemp("ae") / "kl", cfg, steps=30, progress=False)


@pytest.fixture(scope="module")
def ldm(ae: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_run(tmp_path_factory.mktemp("ldm") / "run", [*DIGITS_OVERRIDES, f"data.latent='{ae}'",
                                                              'model.conditioning="class"'])


def test_latents_are_cached_scaled_and_keep_labels(ae: Path):
    data = load_dataset("digits", "train")
    lat, info = latent_dataset(data, ae)
    assert lat.shape == (3, 2, 2) and info["latent_shape"] == [3, 2, 2] and info["image_shape"] == [1, 8, 8]
    assert float(lat.x.std()) == pytest.approx(1.0, rel=1e-4)
    assert torch.equal(lat.labels, data.labels)


def test_latent_run_trains_loads_both_and_samples_images(ldm: Path, ae: Path, cli, tmp_path: Path):
    meta = json.loads((ldm / "config.json").read_text())
    assert meta["data_shape"] == [3, 2, 2] and meta["latent"]["autoencoder"] == str(ae.resolve())
    run = load_run(ldm)
    assert run.decoder is not None and run.denoiser.clip_x0 is None  # latents are not clipped to [-1, 1]
    z = torch.randn(5, 3, 2, 2)
    img = run.to_data(z)
    assert img.shape == (5, 1, 8, 8) and float(img.abs().max()) <= 1.0
    r = cli("sample", ldm, "--n", 6, "--steps", 3, "--label", 4, "--guidance-scale", 2, "--out", tmp_path / "s.npz",
            "--trajectory", tmp_path / "t.png")
    assert r.code == 0, r.err
    assert np.load(tmp_path / "s.npz")["images"].shape == (6, 8, 8, 1)
    r = cli("eval", ldm, "--n", 20, "--steps", 2)
    assert r.code == 0 and json.loads(r.out)["fd"] > 0, r.err
    r = cli("eval", ldm, "--bpd")
    assert r.code == 2 and "latent model" in r.err


def test_latent_errors_are_one_line(ldm: Path, ae: Path, cli, tmp_path: Path):
    r = cli("train", "--data", "mnist5k", "--latent", ae, "--out", tmp_path / "x", "--steps", 1)
    assert r.code == 2 and "trained on images of shape [1, 8, 8]" in r.err and r.err.count("\n") == 1, r.err
    copy_run, copy_ae = tmp_path / "run", tmp_path / "ae"
    shutil.copytree(ae, copy_ae)
    shutil.copytree(ldm, copy_run)
    meta = json.loads((copy_run / "config.json").read_text())
    meta["latent"]["autoencoder"] = str(copy_ae)
    (copy_run / "config.json").write_text(json.dumps(meta))
    shutil.rmtree(copy_ae)
    r = cli("sample", copy_run, "--n", 2, "--steps", 2, "--out", tmp_path / "y.png")
    assert r.code == 2 and "config.json is missing" in r.err and "Traceback" not in r.err, r.err
