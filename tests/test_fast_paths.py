"""The speed-ups keep the numbers: every fast path agrees with a plain reference within a stated tolerance."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from diffusa.config import TrainConfig
from diffusa.engine.loop import make_optimizer
from diffusa.nets import build_network
from diffusa.nets.layers import AttentionBlock, ResBlock


def _reference_attention(block: AttentionBlock, x: torch.Tensor) -> torch.Tensor:
    """Self-attention written out: softmax(q k^T / sqrt(d)) v per head, no fused kernel."""
    b, c, h, w = x.shape
    d = c // block.heads
    qkv = block.qkv(block.norm(x)).reshape(b, 3, block.heads, d, h * w)
    q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]  # (b, heads, d, hw)
    att = torch.softmax(torch.einsum("bhdi,bhdj->bhij", q, k) / math.sqrt(d), dim=-1)
    out = torch.einsum("bhij,bhdj->bhdi", att, v).reshape(b, c, h, w)
    return x + block.proj(out)


@pytest.mark.parametrize("channels,size", [(64, 7), (32, 14)])
def test_fused_attention_matches_the_written_out_formula(channels: int, size: int) -> None:
    torch.manual_seed(0)
    block = AttentionBlock(channels)
    torch.nn.init.normal_(block.proj.weight, std=0.2)  # the zero init would hide the attention path
    x = torch.randn(3, channels, size, size)
    with torch.no_grad():
        torch.testing.assert_close(block(x), _reference_attention(block, x), atol=2e-5, rtol=1e-5)


def test_inplace_activations_without_autograd_match_the_autograd_path() -> None:
    torch.manual_seed(0)
    block = ResBlock(16, 32, 64)
    torch.nn.init.normal_(block.conv2.weight, std=0.1)
    x, emb = torch.randn(2, 16, 8, 8), torch.randn(2, 64)
    with_grad = block(x, emb)
    with torch.no_grad():
        no_grad = block(x, emb)
    with torch.inference_mode():
        inference = block(x, emb)
    torch.testing.assert_close(no_grad, with_grad.detach(), atol=0, rtol=0)
    torch.testing.assert_close(inference, with_grad.detach(), atol=0, rtol=0)


def test_channels_last_input_gives_the_same_output() -> None:
    torch.manual_seed(0)
    net = build_network("unet", {"channels": 16, "attention_resolutions": [7], "image_size": 28}).eval()
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.05)
    x, c = torch.randn(2, 1, 28, 28), torch.tensor([10.0, 500.0])
    with torch.no_grad():
        plain = net(x, c, None)
        fast = net(x.to(memory_format=torch.channels_last), c, None)
    torch.testing.assert_close(fast, plain, atol=1e-5, rtol=1e-4)


def test_fused_adamw_follows_the_reference_loop() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.SiLU(), torch.nn.Linear(16, 4))
    ref_net = copy.deepcopy(net)
    fused = make_optimizer(net.parameters(), TrainConfig(lr=1e-2, weight_decay=0.01), torch.device("cpu"))
    assert fused.defaults["fused"] is True
    ref = torch.optim.AdamW(ref_net.parameters(), lr=1e-2, weight_decay=0.01, foreach=False)
    x, y = torch.randn(32, 8), torch.randn(32, 4)
    for _ in range(10):
        for m, opt in ((net, fused), (ref_net, ref)):
            opt.zero_grad()
            torch.nn.functional.mse_loss(m(x), y).backward()
            opt.step()
    for a, b in zip(net.parameters(), ref_net.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
