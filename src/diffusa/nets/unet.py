"""A U-Net for images (Ronneberger et al. 2015, as adapted by Ho et al. 2020 and Dhariwal & Nichol 2021).

It knows no diffusion maths: `net(x, c_noise, cond) -> tensor`, cond a diffusa.Cond (or what `as_cond` reads).
- cond.labels (B,) long: embedded and added to the noise-level embedding; label `num_classes` is the null label.
- cond.image (B, cond_channels, H', W'): resized to the input and concatenated to it as extra channels (SR3,
  Saharia et al. 2021; inpainting models, Rombach et al. 2022).
- cond.image_level (B,) in [0, 1], with `image_level`: the noise level the condition image was augmented to,
  embedded like the noise level and added to its embedding (cascaded diffusion's conditioning augmentation, Ho et
  al. 2022, Sec. 4.2); absent, it is 0 (a clean condition).
- With `context_dim > 0` the caller passes token features, `context=(features (B, L, context_dim), mask (B, L))`
  (diffusa.nets.text.TextUNet does): every attention resolution (and the middle block) gains cross-attention to
  the tokens, and their masked mean is added to the noise-level embedding (Rombach et al. 2022; Nichol et al. 2022).
- cond.guidance (B,), with `guidance_embed`: the classifier-free guidance scale w as an input, embedded like the
  noise level and added to its embedding through a zero-initialised last layer, so that a student built from a
  teacher's weights starts as the teacher (guided distillation: Meng et al. 2023; Luo et al. 2023, LCM's w-embedding).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from diffusa.cond import Cond, as_cond, resized_condition
from diffusa.errors import DiffusaError
from diffusa.nets.inputs import labels_or_null, read_cond
from diffusa.nets.layers import (
    AttentionBlock,
    CrossAttentionBlock,
    Downsample,
    ResBlock,
    Upsample,
    group_norm,
    timestep_embedding,
)
from diffusa.nets.registry import (
    NetRequest,
    NetworkKind,
    check_float,
    check_int,
    check_ints,
    check_keys,
    label_conditioning,
)

# The default image network: 2x2 patches folded into channels first (28x28 -> 14x14), then a 3-level U-Net
# (14, 7, 4) with 32/64/64 channels and attention at 7x7 and 4x4. At ~100 MFLOP per image it is ~4x cheaper
# than a full-resolution U-Net of the same width and drew better digits per CPU-minute (docs/demo.md).
DEFAULT_UNET: dict[str, Any] = {"channels": 32, "channel_mult": [1, 2, 2], "num_res_blocks": 1,
                                "attention_resolutions": [7, 4], "patch_size": 2}
LEVEL_SCALE = 1000.0  # cond.image_level in [0, 1] -> the range of DDPM's step index the sinusoids are made for
GUIDANCE_SCALE = 1000.0  # the sinusoids embed (w - 1) * 1000: Ho & Salimans' w (LCM's omega) x 1000, as LCM does

@dataclass
class UNetConfig:
    """Shape of the U-Net. Every field is plain data, so it serialises to JSON."""

    in_channels: int = 1
    out_channels: int | None = None  # default: in_channels (x2 with learned variance, set by the caller)
    channels: int = 32  # width of the first level
    channel_mult: tuple[int, ...] = (1, 2, 2)  # width multiplier per level; each level after the first halves H, W
    num_res_blocks: int = 1  # residual blocks per level on the way down (one more on the way up)
    attention_resolutions: tuple[int, ...] = (7,)  # feature-map sizes (H) that get self-attention
    head_dim: int = 32
    dropout: float = 0.0
    num_classes: int = 0  # > 0: class-conditional, with a null label for classifier-free guidance
    context_dim: int = 0  # > 0: text-conditional, cross-attending to token features of this width
    cond_channels: int = 0  # > 0: an image of this many channels (cond.image) is concatenated to the input
    image_level: bool = False  # embed cond.image_level, the condition's augmentation level (Ho et al. 2022)
    guidance_embed: bool = False  # embed cond.guidance, the guidance scale w (a guided consistency student)
    emb_mult: int = 4  # noise embedding width = channels * emb_mult
    image_size: int = 28
    patch_size: int = 1  # > 1: pixel-unshuffle p x p patches into channels first (lossless, p^2 fewer positions)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["channel_mult"] = list(self.channel_mult)
        d["attention_resolutions"] = list(self.attention_resolutions)
        return d


class UNet(nn.Module):
    """Encoder-decoder with skip connections, residual blocks, attention at chosen resolutions."""

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.grad_checkpoint = False  # a training-time memory option, not part of the model's shape
        ch = cfg.channels
        emb_dim = ch * cfg.emb_mult
        self.emb_mlp = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.label_emb = nn.Embedding(cfg.num_classes + 1, emb_dim) if cfg.num_classes > 0 else None
        self.context_emb = nn.Linear(cfg.context_dim, emb_dim) if cfg.context_dim > 0 else None
        self.level_emb = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)) \
            if cfg.image_level else None
        self.guidance_emb = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)) \
            if cfg.guidance_embed else None
        if self.guidance_emb is not None:  # zero: the embedding adds nothing until trained (the student = teacher)
            nn.init.zeros_(self.guidance_emb[2].weight)
            nn.init.zeros_(self.guidance_emb[2].bias)
        p = cfg.patch_size
        self.conv_in = nn.Conv2d((cfg.in_channels + cfg.cond_channels) * p * p, ch, 3, padding=1)

        self.down = nn.ModuleList()
        skips = [ch]
        cur, res = ch, -(-cfg.image_size // p)
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                out = ch * mult
                blocks = nn.ModuleList([ResBlock(cur, out, emb_dim, cfg.dropout)])
                if res in cfg.attention_resolutions:
                    blocks.extend(self._attention(out))
                self.down.append(blocks)
                cur = out
                skips.append(cur)
            if level < len(cfg.channel_mult) - 1:
                self.down.append(nn.ModuleList([Downsample(cur)]))
                skips.append(cur)
                res = (res + 1) // 2

        self.mid = nn.ModuleList([ResBlock(cur, cur, emb_dim, cfg.dropout), *self._attention(cur),
                                  ResBlock(cur, cur, emb_dim, cfg.dropout)])

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                out = ch * mult
                blocks = nn.ModuleList([ResBlock(cur + skips.pop(), out, emb_dim, cfg.dropout)])
                if res in cfg.attention_resolutions:
                    blocks.extend(self._attention(out))
                cur = out
                if level > 0 and i == cfg.num_res_blocks:
                    blocks.append(Upsample(cur))
                    res = res * 2
                self.up.append(blocks)
        self.norm_out = group_norm(cur)
        out_ch = cfg.out_channels or cfg.in_channels
        self.conv_out = nn.Conv2d(cur, out_ch * p * p, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def _attention(self, channels: int) -> list[nn.Module]:
        """Self-attention, followed by cross-attention to the tokens in a text-conditional net."""
        layers: list[nn.Module] = [AttentionBlock(channels, self.cfg.head_dim)]
        if self.cfg.context_dim > 0:
            layers.append(CrossAttentionBlock(channels, self.cfg.context_dim, self.cfg.head_dim))
        return layers

    def embed(self, c_noise: torch.Tensor, cond: Cond | None = None,
              context: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Noise-level embedding plus, for class-conditional nets, the label embedding (for text-conditional
        ones, the tokens' masked mean; for augmented image conditions, the condition's level; with a guidance input,
        the guidance scale's)."""
        emb = self.emb_mlp(timestep_embedding(c_noise, self.cfg.channels))
        if self.guidance_emb is not None:
            if cond is None or cond.guidance is None:
                raise ValueError("this U-Net takes the guidance scale as an input (guidance_embed): give cond.guidance "
                                 "(B,)")
            w = (cond.guidance.to(emb.device) - 1) * GUIDANCE_SCALE
            emb = emb + self.guidance_emb(timestep_embedding(w, self.cfg.channels))
        if self.level_emb is not None:
            level = cond.image_level if cond is not None and cond.image_level is not None else \
                torch.zeros(emb.shape[0], device=emb.device)
            emb = emb + self.level_emb(timestep_embedding(level * LEVEL_SCALE, self.cfg.channels))
        if self.context_emb is not None and context is not None:
            features, mask = context
            m = mask.to(features.dtype).unsqueeze(-1)
            emb = emb + self.context_emb((features * m).sum(1) / m.sum(1).clamp_min(1))
        if self.label_emb is not None:
            emb = emb + self.label_emb(labels_or_null(cond, self.cfg.num_classes, emb.shape[0], emb.device))
        return emb

    def _context(self, context: Any) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(features, mask) of a text-conditional net; a ValueError when they are missing or not expected."""
        if self.cfg.context_dim == 0:
            if context is not None:
                raise ValueError("this U-Net is not text-conditional (context_dim=0); it takes no context")
            return None
        if context is None:
            raise ValueError("a text-conditional U-Net needs context=(features (B, L, D), mask (B, L)) "
                             "(diffusa.nets.text.TextUNet passes them)")
        features, mask = context
        if mask is None:
            mask = torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)
        return features, mask.to(torch.bool)

    def widen_init(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Weights of a network without a condition image made to fit this image-conditioned one (`--init`), as
        Stable Diffusion's inpainting model was made from Stable Diffusion (Rombach et al. 2022): the input
        convolution gains the condition's channels at zero (theirs fill the leading columns: the image comes first,
        before patching and after), and an augmentation-level embedding theirs lacks adds zero until trained, so
        the new network starts as the base exactly. Anything else is returned unchanged."""
        name, mine = "conv_in.weight", self.conv_in.weight
        theirs = tensors.get(name)
        plain = self.cfg.in_channels * self.cfg.patch_size ** 2  # the input's own channels, after patching
        if (theirs is None or not self.cfg.cond_channels or theirs.ndim != 4 or theirs.shape[1] != plain
                or theirs.shape[0] != mine.shape[0] or theirs.shape[2:] != mine.shape[2:]):
            return tensors
        widened = torch.zeros(mine.shape, dtype=theirs.dtype)
        widened[:, :plain] = theirs
        out = {**tensors, name: widened}
        if self.level_emb is not None and not any(k.startswith("level_emb.") for k in tensors):
            for key, value in self.level_emb.state_dict().items():  # its last layer at zero: it adds nothing
                out[f"level_emb.{key}"] = value.detach().clone() if key.startswith("0.") else torch.zeros_like(value)
        return out

    def _with_image(self, x: torch.Tensor, cond: Cond | None) -> torch.Tensor:
        """x with cond.image concatenated as extra channels (before patching), resized to x's size."""
        cc = self.cfg.cond_channels
        image = None if cond is None else cond.image
        if image is None:
            if cc:
                raise ValueError(f"this U-Net is image-conditioned (cond_channels={cc}): give cond.image "
                                 f"(B, {cc}, H, W)")
            return x
        if image.ndim != 4 or image.shape[1] != cc or image.shape[0] != x.shape[0]:
            raise ValueError(f"cond.image must be (B={x.shape[0]}, {cc}, H, W) for this U-Net "
                             f"(cond_channels={cc}), got {tuple(image.shape)}")
        image = image.to(x.dtype)
        return torch.cat([x, resized_condition(image, tuple(x.shape[-2:]))], dim=1)

    def _run_layer(self, layer: nn.Module, h: torch.Tensor, emb: torch.Tensor, sizes: list[torch.Size],
                   ctx: tuple[torch.Tensor, ...] = ()) -> torch.Tensor:
        """Run one layer; with gradient checkpointing, residual and attention blocks recompute their
        activations in the backward pass instead of storing them (Chen et al. 2016)."""
        if isinstance(layer, Upsample):
            return layer(h, sizes.pop())
        if isinstance(layer, Downsample):
            return layer(h)
        if isinstance(layer, CrossAttentionBlock):
            args: tuple[Any, ...] = (h, *ctx)
        else:
            args = (h, emb) if isinstance(layer, ResBlock) else (h,)
        if self.grad_checkpoint and self.training and torch.is_grad_enabled():
            return checkpoint(layer, *args, use_reentrant=False)
        return layer(*args)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, cond: Any = None, *,
                context: tuple[torch.Tensor, torch.Tensor | None] | None = None) -> torch.Tensor:
        """x (B, C, H, W), c_noise (B,), cond a Cond (labels, image) or a label tensor; `context` the token
        features and mask of a text-conditional U-Net."""
        c = as_cond(cond)
        if c is not None and c.image is not None and not self.cfg.cond_channels:
            raise ValueError("this U-Net takes no image condition (cond_channels=0), but cond.image was given")
        supported = {"labels"} if self.cfg.num_classes > 0 else set()
        supported |= {"image"} if self.cfg.cond_channels else set()
        supported |= {"image_level"} if self.cfg.image_level else set()
        c = read_cond(c, supported | ({"guidance"} if self.cfg.guidance_embed else set()), "U-Net")
        ctx = self._context(context)
        emb = self.embed(c_noise, c, ctx)
        x = self._with_image(x, c)
        p = self.cfg.patch_size
        if p > 1:
            if x.shape[-1] % p or x.shape[-2] % p:
                raise ValueError(f"image size {tuple(x.shape[-2:])} is not divisible by patch_size {p}")
            x = F.pixel_unshuffle(x, p)
        h = self.conv_in(x)
        hs = [h]
        sizes: list[torch.Size] = []
        args = ctx or ()
        for blocks in self.down:
            for layer in blocks:
                if isinstance(layer, Downsample):
                    sizes.append(h.shape[-2:])
                h = self._run_layer(layer, h, emb, sizes, args)
            hs.append(h)
        for layer in self.mid:
            h = self._run_layer(layer, h, emb, sizes, args)
        for blocks in self.up:
            h = torch.cat([h, hs.pop()], dim=1)
            for layer in blocks:
                h = self._run_layer(layer, h, emb, sizes, args)
        out = self.conv_out(F.silu(self.norm_out(h)))
        return F.pixel_shuffle(out, p) if p > 1 else out


def unet_config(cfg: Mapping[str, Any]) -> UNetConfig:
    """A UNetConfig from a JSON-style dict (lists for the tuple fields)."""
    cfg = dict(cfg)
    for key in ("channel_mult", "attention_resolutions"):
        if key in cfg:
            cfg[key] = tuple(cfg[key])
    return UNetConfig(**cfg)


def check_unet(kind: str, cfg: Mapping[str, Any]) -> None:
    """One-line DiffusaErrors for U-Net settings it cannot build or run: unknown keys, sizes that are not
    positive integers, a patch size that does not divide the image, widths that do not split into heads."""
    check_keys(kind, cfg, UNetConfig.__dataclass_fields__)
    for key in ("in_channels", "channels", "num_res_blocks", "head_dim", "emb_mult", "image_size", "patch_size"):
        check_int(kind, cfg, key)
    check_int(kind, cfg, "out_channels", none_ok=True)
    for key in ("num_classes", "context_dim", "cond_channels"):
        check_int(kind, cfg, key, low=0)
    check_ints(kind, cfg, "channel_mult", empty_ok=False)
    check_ints(kind, cfg, "attention_resolutions")
    check_float(kind, cfg, "dropout", 0.0, 1.0)
    if "extra" in cfg and not isinstance(cfg["extra"], Mapping):
        raise DiffusaError(f"network {kind!r}: extra must be a table, got {cfg['extra']!r}")
    c = unet_config(cfg)
    if c.image_size % c.patch_size:
        raise DiffusaError(f"network {kind!r}: patch_size {c.patch_size} does not divide image_size {c.image_size}")
    res = -(-c.image_size // c.patch_size)
    for level, mult in enumerate(c.channel_mult):  # the levels with attention: their width splits into heads
        width = c.channels * mult
        if res in c.attention_resolutions or level == len(c.channel_mult) - 1:
            heads = max(1, width // c.head_dim)
            if width % heads:
                raise DiffusaError(f"network {kind!r}: width {width} (channels {c.channels} x {mult}) does not "
                                   f"split into {heads} attention heads of head_dim {c.head_dim}")
        res = (res + 1) // 2


class UNetKind(NetworkKind):
    """"unet": images (C, H, W), square; class labels and a concatenated image as conditions."""

    accepts = frozenset({"labels", "image"})
    text_kind = "text_unet"

    def config(self, request: NetRequest) -> dict[str, Any]:
        shape = tuple(request.data_shape)
        if request.kind_of_data != "image" or len(shape) != 3:
            raise DiffusaError(f"the U-Net needs images (C, H, W); this data has shape {shape}")
        c, h, w = shape
        if h != w:
            raise DiffusaError(f"the U-Net expects square images, got {h}x{w}")
        out_mult = 2 if request.learned_variance else 1
        spec = {**DEFAULT_UNET, "in_channels": c, "out_channels": c * out_mult, "image_size": h}
        if h % 2:
            spec["patch_size"] = 1
        elif (c + request.cond_channels) * 4 > spec["channels"] // 2:
            # RGB with a condition image (a 64x64 4x upscaler: 24 values per 2x2 patch into 32 channels) loses the
            # per-pixel detail it must pass through: full resolution, a fourth level keeps the deepest at h / 8
            # (docs/super_resolution.md, "A folder of RGB images")
            spec["patch_size"] = 1
            if h >= 32:
                spec.update({"channel_mult": [1, 2, 2, 2], "attention_resolutions": [h // 8]})
        if h // spec["patch_size"] <= 8:  # small inputs (8x8 digits, 7x7 latents): two levels, attention below
            spec.update({"channel_mult": [1, 2], "attention_resolutions": [(h // spec["patch_size"] + 1) // 2]})
        spec.update(request.net)
        label_conditioning(spec, request)
        if request.cond_channels:
            spec["cond_channels"] = request.cond_channels
        if request.image_level:
            spec["image_level"] = True
        return spec

    def check(self, cfg: Mapping[str, Any]) -> None:
        check_unet(self.name, cfg)

    def build(self, cfg: Mapping[str, Any]) -> nn.Module:
        return UNet(unet_config(cfg))

    def classifier_unet(self, cfg: Mapping[str, Any]) -> dict[str, Any] | None:
        return dict(cfg)

    def image_channels(self, cfg: Mapping[str, Any]) -> int:
        return int(cfg.get("cond_channels", 0) or 0)

    def guidance_input(self, cfg: Mapping[str, Any]) -> dict[str, Any]:
        return {**cfg, "guidance_embed": True}


__all__ = ["DEFAULT_UNET", "UNet", "UNetConfig", "UNetKind", "check_unet", "unet_config"]
