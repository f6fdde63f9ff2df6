"""Self-attention at 14x14 (196 tokens): ways to compute the same block, timed against each other.

    python benchmarks/attention.py [--channels 60] [--batch 64] [--repeats 7] [--out docs/results/attention.md]

The U-Net's AttentionBlock (GroupNorm, 1x1 QKV, softmax attention, 1x1 projection, residual) at the size where
speed.py's peer-architecture rows trail (issue 17, item 4): width 60 at 14x14, batch 64, 2 threads. Every
variant computes the same function from the same weights (checked to float tolerance before timing):

  conv     the block as it was: 1x1 convolutions, heads copied contiguous, fused SDPA
  tokens   one transpose to (B, HW, C), QKV and projection as matmuls on tokens (the 1x1 convolutions' weights),
           SDPA on strided views of the QKV output
  tokens+c the same with q, k, v copied contiguous for SDPA
  math     tokens, with attention as two batched matmuls and a softmax (no SDPA)

Rows: forward (inference mode), forward + backward; medians of alternating rounds.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from _tables import emit

from diffusa.nets.layers import AttentionBlock


def conv_path(m: AttentionBlock, x: torch.Tensor) -> torch.Tensor:
    """The block as it was before this benchmark: 1x1 convolutions and contiguous heads."""
    b, c, h, w = x.shape
    qkv = m.qkv(m.norm(x)).reshape(b, 3, m.heads, c // m.heads, h * w)
    q, k, v = qkv.permute(1, 0, 2, 4, 3).contiguous().unbind(0)
    out = F.scaled_dot_product_attention(q, k, v).transpose(-1, -2).reshape(b, c, h, w)
    return x + m.proj(out)


def _tokens(m: AttentionBlock, x: torch.Tensor, contiguous: bool, math_attention: bool) -> torch.Tensor:
    b, c, h, w = x.shape
    t = m.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
    qkv = F.linear(t, m.qkv.weight.view(3 * c, c), m.qkv.bias).view(b, h * w, 3, m.heads, c // m.heads)
    qkv = qkv.permute(2, 0, 3, 1, 4)  # (3, B, heads, HW, d)
    if contiguous:
        qkv = qkv.contiguous()
    q, k, v = qkv.unbind(0)
    if math_attention:
        out = torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, -1) @ v
    else:
        out = F.scaled_dot_product_attention(q, k, v)
    out = F.linear(out.transpose(1, 2).reshape(b, h * w, c), m.proj.weight.view(c, c), m.proj.bias)
    return x + out.transpose(1, 2).reshape(b, c, h, w)


VARIANTS: dict[str, Callable[[AttentionBlock, torch.Tensor], torch.Tensor]] = {
    "conv": conv_path,
    "block (diffusa now)": lambda m, x: m(x),
    "tokens": lambda m, x: _tokens(m, x, False, False),
    "tokens+c": lambda m, x: _tokens(m, x, True, False),
    "math": lambda m, x: _tokens(m, x, False, True),
}


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--channels", type=int, default=60)
    ap.add_argument("--size", type=int, default=14)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--inner", type=int, default=10, help="calls per timed round")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    m = AttentionBlock(args.channels)
    for p in m.parameters():  # the projection starts at zero; give every weight a value so outputs differ
        torch.nn.init.normal_(p, std=0.1)
    x = torch.randn(args.batch, args.channels, args.size, args.size)
    ref = conv_path(m, x)
    for name, fn in VARIANTS.items():
        err = (fn(m, x) - ref).abs().max().item()
        assert err < 1e-4, f"{name} differs from the convolution path by {err}"
    times: dict[str, dict[str, list[float]]] = {n: {"forward": [], "forward + backward": []} for n in VARIANTS}
    xg = x.clone().requires_grad_(True)

    def fwd(fn: Callable) -> None:
        with torch.inference_mode():
            for _ in range(args.inner):
                fn(m, x)

    def fwdbwd(fn: Callable) -> None:
        for _ in range(args.inner):
            fn(m, xg).square().mean().backward()

    for fn in VARIANTS.values():  # warm-up
        fwd(fn)
        fwdbwd(fn)
    for _ in range(args.repeats):
        for name, fn in VARIANTS.items():
            times[name]["forward"].append(timed(lambda fn=fn: fwd(fn)) / args.inner)
            times[name]["forward + backward"].append(timed(lambda fn=fn: fwdbwd(fn)) / args.inner)
    heads = m.heads
    lines = [f"AttentionBlock, width {args.channels} ({heads} head(s) of {args.channels // heads}), "
             f"{args.size}x{args.size} ({args.size ** 2} tokens), batch {args.batch}, {args.threads} threads; "
             f"median ms of {args.repeats} alternating rounds of {args.inner} calls; ratio: conv path / variant",
             "", "| variant | forward (ms) | ratio | forward + backward (ms) | ratio |", "|---|---|---|---|---|"]
    base = {k: statistics.median(v) for k, v in times["conv"].items()}
    for name in VARIANTS:
        f, fb = (statistics.median(times[name][k]) for k in ("forward", "forward + backward"))
        lines.append(f"| {name} | {1e3 * f:.2f} | {base['forward'] / f:.2f}x | {1e3 * fb:.2f} | "
                     f"{base['forward + backward'] / fb:.2f}x |")
    emit(lines, args.out)


if __name__ == "__main__":
    main()
