"""The network registry and typed conditioning: every kind's defaults build and run, its checks are one-line
errors, networks read a diffusa.Cond (and the older label tensor / token dict identically), and an image
concatenated to the U-Net's input (SR3-style, Saharia et al. 2021) reaches the network."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from diffusa.checkpoint import load_tensors
from diffusa.cond import Cond
from diffusa.config import RunConfig
from diffusa.errors import DiffusaError
from diffusa.nets import NetRequest, accepts, build_network, kinds, network_config, network_kind
from diffusa.nets.mlp import DEFAULT_MLP
from diffusa.nets.unet import DEFAULT_UNET
from diffusa.runs import network_spec
from diffusa.shipped import shipped_root
from diffusa.text import tokenize

TINY_TEXT = {"width": 16, "depth": 1, "heads": 2, "max_len": 16}


def run_config(**model: Any) -> RunConfig:
    cfg = RunConfig()
    return replace(cfg, model=replace(cfg.model, **model))


def randomize(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter N(0, 0.1^2): the zero-initialised output layers would hide what the inputs do."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return net.eval()


def n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


# ---- the registry ----


def test_every_kind_is_registered_with_what_it_accepts():
    assert kinds() == ["mlp", "text_unet", "unet"]
    assert accepts("unet") == {"labels", "image"} and accepts("mlp") == {"labels"}
    assert accepts("text_unet") == {"text", "image"}
    assert network_kind("unet").text_kind == "text_unet" and network_kind("mlp").text_kind is None
    assert DEFAULT_UNET["channels"] == 32 and DEFAULT_MLP == {"hidden": 256, "depth": 4}


# (kind asked, data shape, run config, classes) -> (kind built, output shape, parameters of today's network)
ROUND_TRIPS = [
    ("auto", (1, 28, 28), {}, 0, "unet", (1, 28, 28), 1_209_732),  # the default image network
    ("auto", (3, 16, 16), {"learned_variance": True}, 0, "unet", (6, 16, 16), 764_824),
    ("unet", (1, 8, 8), {"conditioning": "class"}, 10, "unet", (1, 8, 8), 758_148),
    ("auto", (2,), {"conditioning": "class"}, 3, "mlp", (2,), 349_954),
    ("auto", (1, 8, 8), {"conditioning": "text", "text": TINY_TEXT}, 0, "text_unet", (1, 8, 8), 809_124),
]


@pytest.mark.parametrize("asked, shape, model, classes, kind, out_shape, params", ROUND_TRIPS)
def test_default_spec_builds_and_runs(asked: str, shape: tuple[int, ...], model: dict[str, Any], classes: int,
                                      kind: str, out_shape: tuple[int, ...], params: int):
    got_kind, spec = network_spec(run_config(kind=asked, **model), shape, classes)
    assert got_kind == kind
    assert network_config(asked, NetRequest(shape, num_classes=classes, **{
        k: v for k, v in model.items() if k != "text"}, text=model.get("text", {}))) == (kind, spec)
    torch.manual_seed(0)
    net = build_network(kind, json.loads(json.dumps(spec)))  # as saved in config.json and read back
    assert n_params(net) == params
    cond = None
    if kind == "text_unet":
        cond = net.tokenize(["a 7", "two"])
    elif classes:
        cond = Cond(labels=torch.tensor([0, classes]))  # a class and the null label
    with torch.no_grad():
        out = net(torch.randn(2, *shape), torch.rand(2), cond)
    assert out.shape == (2, *out_shape)


def test_default_specs_are_those_of_the_shipped_models():
    for name, cfg, shape in (("mnist-pixel", run_config(), (1, 28, 28)),
                             ("mnist-text", run_config(conditioning="text"), (4, 7, 7))):
        meta = json.loads((shipped_root() / name / "config.json").read_text())
        assert network_spec(cfg, shape) == (meta["network"]["kind"], meta["network"]["config"]), name


def test_no_image_condition_leaves_the_unet_as_it_was():
    """cond_channels = 0 (absent or explicit): the parameter names and shapes of the shipped model."""
    path = shipped_root() / "mnist-pixel"
    meta = json.loads((path / "config.json").read_text())
    shipped = {k: tuple(v.shape) for k, v in load_tensors(path / "model.safetensors").items()}
    for spec in (meta["network"]["config"], {**meta["network"]["config"], "cond_channels": 0}):
        net = build_network("unet", spec)
        assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == shipped
    kind, spec = network_spec(run_config(), (1, 28, 28), cond_channels=3)
    assert spec["cond_channels"] == 3 and "cond_channels" not in network_spec(run_config(), (1, 28, 28))[1]
    net = build_network(kind, spec)
    changed = {k for k, v in net.state_dict().items() if tuple(v.shape) != shipped[k]}
    assert changed == {"conv_in.weight"} and net.conv_in.weight.shape == (32, (1 + 3) * 2 * 2, 3, 3)
    _, text_spec = network_spec(run_config(conditioning="text"), (4, 7, 7), cond_channels=2)
    assert text_spec["unet"]["cond_channels"] == 2


def test_unknown_kind_lists_the_known_ones():
    with pytest.raises(DiffusaError, match=r"^unknown network 'dit'; known: mlp, text_unet, unet$"):
        build_network("dit", {})
    with pytest.raises(DiffusaError, match=r"^unknown network 'dit'; known: auto, mlp, text_unet, unet$"):
        network_spec(run_config(kind="dit"), (1, 8, 8))


GOOD = {
    "unet": {"channels": 8, "channel_mult": [1, 2], "attention_resolutions": [4], "image_size": 8},
    "mlp": {"dim": 2, "hidden": 16, "depth": 1},
    "text_unet": {"unet": {"channels": 8, "channel_mult": [1, 2], "attention_resolutions": [4], "image_size": 8},
                  "text": dict(TINY_TEXT)},
}
BAD_SETTINGS = [
    ("unet", {"widthh": 3}, "unknown setting(s) widthh for network 'unet'"),
    ("unet", {"channels": -8}, "channels must be >= 1, got -8"),
    ("unet", {"channels": 8.5}, "channels must be an integer, got 8.5"),
    ("unet", {"channels": True}, "channels must be an integer, got True"),
    ("unet", {"num_res_blocks": 0}, "num_res_blocks must be >= 1, got 0"),
    ("unet", {"image_size": "8"}, "image_size must be an integer"),
    ("unet", {"out_channels": 0}, "out_channels must be >= 1"),
    ("unet", {"num_classes": -1}, "num_classes must be >= 0"),
    ("unet", {"cond_channels": -2}, "cond_channels must be >= 0"),
    ("unet", {"channel_mult": []}, "channel_mult must not be empty"),
    ("unet", {"channel_mult": [1, 0]}, "every channel_mult entry must be >= 1"),
    ("unet", {"channel_mult": [1, 2.5]}, "channel_mult must be a list of integers"),
    ("unet", {"attention_resolutions": 4}, "attention_resolutions must be a list of integers"),
    ("unet", {"dropout": 1.5}, "dropout must be a number in [0, 1)"),
    ("unet", {"patch_size": 3}, "patch_size 3 does not divide image_size 8"),
    ("unet", {"channels": 50, "head_dim": 32}, "width 100 (channels 50 x 2) does not split into 3 attention heads"),
    ("mlp", {"channels": 8}, "unknown setting(s) channels for network 'mlp'"),
    ("mlp", {"hidden": 0}, "hidden must be >= 1, got 0"),
    ("mlp", {"dim": 2.0}, "dim must be an integer"),
    ("mlp", {"fourier": -1}, "fourier must be >= 0, got -1"),
    ("mlp", {"fourier": 10**8}, "fourier must be <= 4096, got 100000000"),
    ("mlp", {"fourier_scale": 0}, "fourier_scale must be a number in (0, 1000], got 0"),
    ("mlp", {"fourier_scale": "1"}, "fourier_scale must be a number in (0, 1000], got '1'"),
    ("text_unet", {"text": None}, "settings of network 'text_unet' must be a table"),
    ("text_unet", {"extra": {}}, "unknown setting(s) extra for network 'text_unet'"),
    ("text_unet", {"text": {**TINY_TEXT, "width": 15}}, "text width 15 does not split into 2 heads"),
    ("text_unet", {"text": {**TINY_TEXT, "max_len": 2}}, "max_len must be >= 3"),
    ("text_unet", {"text": {**TINY_TEXT, "encoder": "bpe"}}, "unknown text encoder 'bpe'; known: byte, hf"),
    ("text_unet", {"text": {**TINY_TEXT, "encoder": "hf"}}, "the hf text encoder needs a path"),
    ("text_unet", {"unet": {**GOOD["unet"], "patch_size": 3}}, "patch_size 3 does not divide image_size 8"),
]


@pytest.mark.parametrize("kind, change, message", BAD_SETTINGS)
def test_bad_settings_are_one_line_errors(kind: str, change: dict[str, Any], message: str):
    build_network(kind, GOOD[kind])  # the unchanged settings build
    with pytest.raises(DiffusaError) as err:
        build_network(kind, {**GOOD[kind], **change})
    assert message in str(err.value) and "\n" not in str(err.value)


def test_missing_text_settings_are_named():
    with pytest.raises(DiffusaError, match=r"^network 'text_unet' needs the setting\(s\) text$"):
        build_network("text_unet", {"unet": GOOD["unet"]})


BAD_REQUESTS = [
    ({}, (1, 28, 30), 0, "the U-Net expects square images, got 28x30"),
    ({"kind": "unet"}, (2,), 0, "the U-Net needs images (C, H, W); this data has shape (2,)"),
    ({"kind": "mlp"}, (1, 8, 8), 0, "the MLP needs flat points (D,); this data has shape (1, 8, 8)"),
    ({"learned_variance": True}, (2,), 0, "learned variance is only available for the U-Net"),
    ({"conditioning": "class"}, (1, 8, 8), 0, "needs labelled data; this dataset has no labels"),
    ({"conditioning": "colour"}, (1, 8, 8), 0, "unknown model.conditioning 'colour'; known: none, class, text"),
    ({"conditioning": "text"}, (2,), 0, "text conditioning needs images"),
    ({"kind": "text_unet"}, (1, 8, 8), 0, "network 'text_unet' needs model.conditioning=\"text\""),
    ({"net": {"patch_size": 3}}, (1, 28, 28), 0, "patch_size 3 does not divide image_size 28"),
    ({"net": {"depthh": 3}}, (2,), 0, "unknown setting(s) depthh for network 'mlp'"),
]


@pytest.mark.parametrize("model, shape, classes, message", BAD_REQUESTS)
def test_bad_requests_are_one_line_errors(model: dict[str, Any], shape: tuple[int, ...], classes: int, message: str):
    with pytest.raises(DiffusaError) as err:
        network_spec(run_config(**model), shape, classes)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_an_image_condition_needs_the_unet():
    with pytest.raises(DiffusaError, match=r"an image condition .* needs images and the U-Net"):
        network_spec(run_config(), (2,), cond_channels=1)
    with pytest.raises(DiffusaError, match="no default network for 'video' data"):
        network_config("auto", NetRequest((3, 4, 8, 8), data_kind="video"))


# ---- typed conditioning ----


def test_label_tensor_dict_and_cond_give_identical_outputs():
    torch.manual_seed(0)
    x8, c = torch.randn(3, 1, 8, 8), torch.rand(3)
    labels = torch.tensor([0, 4, 10])
    unet = randomize(build_network("unet", {**GOOD["unet"], "num_classes": 10}))
    mlp = randomize(build_network("mlp", {**GOOD["mlp"], "num_classes": 10}))
    text = randomize(build_network("text_unet", GOOD["text_unet"]))
    xp = torch.randn(3, 2)
    with torch.no_grad():
        for net, x in ((unet, x8), (mlp, xp)):
            a, b = net(x, c, labels), net(x, c, Cond(labels=labels))
            assert torch.equal(a, b) and float((a - net(x, c, labels.flip(0))).abs().max()) > 1e-3  # labels matter
            null = net(x, c, Cond(labels=torch.full((3,), 10)))
            assert torch.equal(net(x, c, None), null) and torch.equal(net(x, c, Cond()), null)  # the null label
        d = tokenize(["a 7", "two", ""], 16)
        cond = text.tokenize(["a 7", "two", ""])
        assert isinstance(cond, Cond) and torch.equal(cond.tokens, d["tokens"]) and torch.equal(cond.token_mask,
                                                                                              d["mask"])
        a, b = text(x8, c, d), text(x8, c, cond)
        assert torch.equal(a, b) and float((a - text(x8, c, text.tokenize(["a 3", "two", ""]))).abs().max()) > 1e-5


def test_fields_a_network_cannot_use_are_errors():
    torch.manual_seed(0)
    x, c = torch.randn(2, 1, 8, 8), torch.rand(2)
    plain = build_network("unet", GOOD["unet"])
    labels, tokens = torch.tensor([1, 2]), tokenize(["a", "b"], 16)
    with pytest.raises(ValueError, match=r"this U-Net cannot use cond.labels; it reads no conditioning"):
        plain(x, c, labels)
    with pytest.raises(ValueError, match=r"this U-Net cannot use cond.token_mask, cond.tokens"):
        plain(x, c, tokens)
    with pytest.raises(ValueError, match=r"cannot use cond.mask"):
        plain(x, c, Cond(mask=torch.ones(2, 1, 8, 8)))
    with pytest.raises(ValueError, match="not text-conditional"):
        plain(x, c, None, context=(torch.randn(2, 3, 16), None))
    with pytest.raises(ValueError, match=r"this MLP cannot use cond.labels; it reads no conditioning"):
        build_network("mlp", GOOD["mlp"])(torch.randn(2, 2), c, labels)
    text = build_network("text_unet", GOOD["text_unet"])
    with pytest.raises(ValueError, match=r"needs cond.tokens and cond.token_mask"):
        text(x, c, None)
    with pytest.raises(ValueError, match=r"text-conditional network cannot use cond.labels"):
        text(x, c, Cond(labels=labels, tokens=tokens["tokens"]))
    with pytest.raises(ValueError, match=r"needs context=\(features"):
        text.unet(x, c, None)


def test_image_condition_errors_and_resizing():
    torch.manual_seed(0)
    x, c = torch.randn(2, 1, 8, 8), torch.rand(2)
    net = randomize(build_network("unet", {**GOOD["unet"], "cond_channels": 2, "patch_size": 2}))
    with pytest.raises(ValueError, match=r"image-conditioned \(cond_channels=2\): give cond.image"):
        net(x, c, None)
    with pytest.raises(ValueError, match=r"cond.image must be \(B=2, 2, H, W\) .* got \(2, 3, 8, 8\)"):
        net(x, c, Cond(image=torch.randn(2, 3, 8, 8)))
    with pytest.raises(ValueError, match=r"takes no image condition \(cond_channels=0\)"):
        build_network("unet", GOOD["unet"])(x, c, Cond(image=torch.randn(2, 2, 8, 8)))
    small = torch.randn(2, 2, 4, 4)
    with torch.no_grad():
        out = net(x, c, Cond(image=small))  # resized to 8x8 inside the network
        ref = net(x, c, Cond(image=F.interpolate(small, size=(8, 8), mode="bilinear", align_corners=False)))
        other = net(x, c, Cond(image=F.interpolate(small, size=(8, 8), mode="nearest")))
    assert torch.equal(out, ref) and float((out - other).abs().max()) > 1e-4
    # a text network with an image-conditioned U-Net reads both
    text = build_network("text_unet", {**GOOD["text_unet"], "unet": {**GOOD["unet"], "cond_channels": 1}})
    tok = text.tokenize(["a", "b"])
    assert text(x, c, tok.replace(image=torch.randn(2, 1, 4, 4))).shape == (2, 1, 8, 8)
    with pytest.raises(ValueError, match=r"give cond.image"):
        text(x, c, tok)


def fit_to_condition(zero_condition: bool, steps: int = 250) -> tuple[float, float]:
    """A tiny U-Net (patches, 8 channels, 8x8) fed pure noise x and trained to output cond.image: only the
    condition holds the answer. Returns (held-out MSE, held-out target variance)."""
    torch.manual_seed(0)
    kind, spec = network_config("unet", NetRequest((1, 8, 8), cond_channels=1,
                                                   net={"channels": 8, "attention_resolutions": []}))
    net = build_network(kind, spec)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(steps):
        y, x = torch.randn(16, 1, 8, 8), torch.randn(16, 1, 8, 8)
        image = torch.zeros_like(y) if zero_condition else y
        loss = (net(x, torch.rand(16), Cond(image=image)) - y).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    g = torch.Generator().manual_seed(123)
    y, x = torch.randn(256, 1, 8, 8, generator=g), torch.randn(256, 1, 8, 8, generator=g)
    with torch.no_grad():
        out = net(x, torch.rand(256, generator=g), Cond(image=torch.zeros_like(y) if zero_condition else y))
    return float((out - y).pow(2).mean()), float(y.var())


def test_a_concatenated_image_condition_reaches_the_network():
    mse, var = fit_to_condition(False)
    zeroed, _ = fit_to_condition(True)
    assert 0.95 < var < 1.05 and zeroed > 0.95 * var  # without the condition: no better than the mean
    assert mse < 0.25 * var and mse < 0.25 * zeroed


def test_image_channels_of_every_kind() -> None:
    """What a pipeline asks of a run: the condition image's channels, for the U-Net and the text U-Net alike."""
    from diffusa.nets import network_kind

    assert network_kind("unet").image_channels({"cond_channels": 3}) == 3
    assert network_kind("unet").image_channels({}) == 0
    assert network_kind("text_unet").image_channels({"unet": {"cond_channels": 2}, "text": {}}) == 2
    assert network_kind("mlp").image_channels({"dim": 2}) == 0


@pytest.mark.parametrize(("shape", "cond", "patch", "mult", "attention"), [
    ((1, 28, 28), 0, 2, [1, 2, 2], [7, 4]),  # digits: 2x2 patches (4 values into 32 channels)
    ((1, 28, 28), 2, 2, [1, 2, 2], [7, 4]),  # a mask-conditioned digit model: 12 values, still patched
    ((3, 64, 64), 0, 2, [1, 2, 2], [7, 4]),  # RGB without a condition image: 12 values, patched
    ((3, 64, 64), 3, 1, [1, 2, 2, 2], [8]),  # an RGB upscaler: 24 values would crowd 32 channels: full resolution
    ((3, 16, 16), 3, 1, [1, 2, 2], [7, 4]),  # a small one: full resolution, the three default levels
])
def test_the_default_unet_patches_only_while_a_patch_fits_half_its_width(shape, cond, patch, mult, attention) -> None:
    _, spec = network_config("unet", NetRequest(shape, cond_channels=cond))
    assert (spec["patch_size"], spec["channel_mult"], spec["attention_resolutions"]) == (patch, mult, attention)


def test_fourier_features_are_the_plain_mlp_on_sin_and_cos_inputs():
    """MLP(fourier=F) on x is the plain MLP of input width 2 + 2F on [x, sin 2 pi x B, cos 2 pi x B] with the same
    weights (Tancik et al. 2020); B is fixed (seeded, std fourier_scale) and saved with the weights; a config
    without the keys (an earlier run's) builds the plain MLP."""
    fourier = build_network("mlp", {"dim": 2, "hidden": 16, "depth": 2, "fourier": 8, "fourier_scale": 3.0})
    plain = build_network("mlp", {"dim": 18, "hidden": 16, "depth": 2})
    plain.load_state_dict({k: v for k, v in randomize(fourier).state_dict().items()
                           if not k.startswith(("freqs", "out."))}, strict=False)
    plain.out = fourier.out  # the plain MLP's output is as wide as its input
    b = fourier.freqs
    again = build_network("mlp", {"dim": 2, "hidden": 16, "depth": 2, "fourier": 8, "fourier_scale": 3.0})
    assert torch.equal(again.freqs, b) and b.shape == (2, 8) and 2.0 < float(b.std()) < 4.5
    assert "freqs" in fourier.state_dict()
    x, c = torch.randn(5, 2), torch.rand(5)
    z = 2 * math.pi * x @ b
    assert torch.allclose(fourier(x, c), plain(torch.cat([x, z.sin(), z.cos()], 1), c), atol=1e-6)
    assert "freqs" not in build_network("mlp", {"dim": 2, "hidden": 16, "depth": 1}).state_dict()
