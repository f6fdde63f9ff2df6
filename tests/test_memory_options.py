"""Memory options keep the numbers: gradient checkpointing is exact, bf16/fp16 autocast stays close to fp32."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from diffusa.config import load_config
from diffusa.errors import DiffusaError
from diffusa.nets import UNet, UNetConfig
from diffusa.train import diffusion_engine


def _net() -> UNet:
    torch.manual_seed(0)
    net = UNet(UNetConfig(channels=16, image_size=28, patch_size=2, attention_resolutions=(7,)))
    for p in net.parameters():  # zero-initialised output layers would make every gradient trivially equal
        p.data.normal_(0, 0.05)
    return net.train()


def test_grad_checkpoint_gives_the_same_loss_and_gradients() -> None:
    net = _net()
    x, c = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(1)), torch.tensor([1.0, 50, 400, 999])
    loss = net(x, c).square().mean()
    loss.backward()
    plain = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    net.grad_checkpoint = True
    loss_ckpt = net(x, c).square().mean()
    loss_ckpt.backward()
    # recomputation replays the same kernels on the same inputs: identical up to float rounding
    assert torch.allclose(loss, loss_ckpt, rtol=0, atol=1e-7)
    for a, b in zip(plain, (p.grad for p in net.parameters()), strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_forward_is_close_to_fp32(dtype: torch.dtype) -> None:
    net = _net().eval()
    x, c = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(2)), torch.linspace(0, 999, 8)
    with torch.no_grad():
        ref = net(x, c)
        with torch.autocast("cpu", dtype=dtype):
            low = net(x, c).float()
    # bf16 keeps 8 mantissa bits (relative error ~4e-3 per op), fp16 11 bits; a few layers compound it
    tol = 0.05 if dtype == torch.bfloat16 else 0.01
    rel = (low - ref).norm() / ref.norm()
    assert rel < tol, float(rel)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_training_in_low_precision_matches_fp32_loss_curve(tmp_path: Path, precision: str) -> None:
    common = ["data.name='moons'", "train.steps=60", "train.log_every=20", "train.sample_every=0",
              "train.checkpoint_every=0"]
    logs = {}
    for prec in ("fp32", precision):
        cfg = load_config(overrides=[*common, f"train.precision={prec!r}"])
        diffusion_engine(cfg, tmp_path / prec, progress=False).fit()
        logs[prec] = [json.loads(line)["loss"] for line in (tmp_path / prec / "log.jsonl").read_text().splitlines()]
    assert len(logs["fp32"]) == len(logs[precision]) == 3
    for a, b in zip(logs["fp32"], logs[precision], strict=True):
        assert abs(a - b) / a < 0.1, (logs["fp32"], logs[precision])
    state = json.loads((tmp_path / precision / "train_state.json").read_text())
    assert ("grad_scaler" in state) == (precision == "fp16")


def test_grad_checkpoint_on_a_network_without_it_is_a_clear_error(tmp_path: Path) -> None:
    cfg = load_config(overrides=["data.name='moons'", "train.steps=2", "train.grad_checkpoint=true"])
    with pytest.raises(DiffusaError, match="needs the U-Net"):
        diffusion_engine(cfg, tmp_path / "run", progress=False)


def test_training_with_grad_checkpoint_follows_the_plain_run(tmp_path: Path) -> None:
    common = ["data.name='digits'", "model.net={channels=8}", "train.steps=6", "train.log_every=2",
              "train.sample_every=0", "train.checkpoint_every=0", "train.batch_size=16"]
    losses = {}
    for flag in ("false", "true"):
        cfg = load_config(overrides=[*common, f"train.grad_checkpoint={flag}"])
        diffusion_engine(cfg, tmp_path / flag, progress=False).fit()
        losses[flag] = [json.loads(x)["loss"] for x in (tmp_path / flag / "log.jsonl").read_text().splitlines()]
    # same seed, same batches, gradients equal to float rounding: the loss curves agree to rounding
    assert losses["false"] == pytest.approx(losses["true"], rel=1e-4)
