"""The mask-conditioned inpainting model (issue 19; Palette, Saharia et al. 2022; LDM inpainting, Rombach et al.
2022): the training masks (kinds, shapes, determinism), the condition (the masked example plus the mask) reaching
the network with no leak of the masked pixels, sampling with any sampler and an exact composite, the refusals, and
exact resume."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from resume_check import same_checkpoint

import diffusa
from diffusa.config import load_config
from diffusa.data import load_dataset
from diffusa.errors import DiffusaError
from diffusa.inpainting import (
    BLANK,
    MASK_KINDS,
    drop_masks,
    half_mask,
    masked_condition,
    null_mask_cond,
    parse_kinds,
    random_masks,
    stroke_masks,
    unmasked,
)
from diffusa.pipelines import Pipeline
from diffusa.pipelines.edit import named_mask
from diffusa.pipelines.sampling import network_calls
from diffusa.superres import ImageCondition
from diffusa.tasks.diffusion import DiffusionTask

TINY = ['data.name="digits"', 'data.inpaint="all"', "train.batch_size=32", "train.sample_every=0",
        "train.checkpoint_every=0", "train.warmup=5", "model.net.channels=8"]


@pytest.fixture(scope="module")
def inpaint_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny mask-conditioned model on 8x8 digits, 40 steps (a few seconds; read-only)."""
    from conftest import train_run

    return train_run(tmp_path_factory.mktemp("inpaint") / "run", [*TINY, "train.steps=40", "train.lr=2e-3"])


@pytest.fixture(scope="module")
def pipe(inpaint_run: Path) -> Pipeline:
    return diffusa.load(inpaint_run)


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    return load_dataset("digits", "test").x[:6]


def bound_task(overrides: list[str]) -> DiffusionTask:
    task = DiffusionTask(load_config(overrides=overrides))
    task.bind(task.model, None, torch.device("cpu"))
    return task


def is_rectangle(m: torch.Tensor) -> tuple[int, int] | None:
    """(height, width) if the True pixels of m (H, W) fill their bounding box exactly, else None."""
    rows, cols = m.any(1).nonzero().flatten(), m.any(0).nonzero().flatten()
    if len(rows) == 0:
        return None
    box = m[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    return (box.shape[0], box.shape[1]) if bool(box.all()) and int(m.sum()) == box.numel() else None


# -- the masks -----------------------------------------------------------------------------------------------------
def test_mask_kinds_parse_and_refuse() -> None:
    assert parse_kinds("") == () and parse_kinds(None) == ()
    assert parse_kinds("all") == MASK_KINDS == ("box", "strokes", "half")
    assert parse_kinds("half, box") == ("half", "box")
    for bad in ("boxes", "box,box", "box,", "true"):
        with pytest.raises(DiffusaError, match=r"data\.inpaint="):
            parse_kinds(bad)


def test_each_kind_draws_its_shape() -> None:
    """box: a filled rectangle with sides in [7, 21] of 28; half: one of the four halves, each ~1/4 of the time;
    strokes: never empty or full, ~14% covered on average."""
    n = 800
    boxes = random_masks(n, 28, 28, torch.Generator().manual_seed(0), ("box",))
    assert boxes.shape == (n, 1, 28, 28) and boxes.dtype == torch.bool
    sides = [is_rectangle(m[0]) for m in boxes]
    assert all(s is not None and 7 <= s[0] <= 21 and 7 <= s[1] <= 21 for s in sides)
    assert {s[0] for s in sides} == set(range(7, 22))  # every side length occurs
    halves = random_masks(n, 28, 28, torch.Generator().manual_seed(1), ("half",))
    which = [[torch.equal(m, half_mask(side, 28, 28)[0]) for side in ("left", "right", "top", "bottom")]
             for m in halves]
    assert all(sum(w) == 1 for w in which)
    counts = np.array(which).sum(0)
    assert counts.sum() == n and counts.min() > 150 and counts.max() < 250  # 200 each expected (sd ~12)
    strokes = random_masks(n, 28, 28, torch.Generator().manual_seed(2), ("strokes",))
    cover = strokes.float().mean((1, 2, 3))
    assert float(cover.min()) > 0 and float(cover.max()) < 0.6
    assert 0.08 < float(cover.mean()) < 0.22
    assert sum(is_rectangle(m[0]) is not None for m in strokes) < n // 4  # free-form, mostly not boxes
    small = stroke_masks(50, 8, 8, torch.Generator().manual_seed(3)).float().mean((1, 2, 3))
    assert float(small.min()) > 0 and float(small.max()) < 1  # small images too (half-width floored at 0.75 px)


def test_all_kinds_mix_and_are_deterministic() -> None:
    """"all": each example's mask is a box, strokes or a half, about a third each; the same generator state draws
    the same masks, another draws others."""
    n = 600
    masks = random_masks(n, 28, 28, torch.Generator().manual_seed(4))
    assert torch.equal(masks, random_masks(n, 28, 28, torch.Generator().manual_seed(4)))
    assert not torch.equal(masks, random_masks(n, 28, 28, torch.Generator().manual_seed(5)))
    halves = torch.cat([half_mask(s, 28, 28) for s in ("left", "right", "top", "bottom")])
    is_half = (masks[:, None] == halves[None]).flatten(2).all(-1).any(1)
    is_box = torch.tensor([is_rectangle(m[0]) is not None for m in masks]) & ~is_half
    assert 150 < int(is_half.sum()) < 250 and 150 < int(is_box.sum()) < 260  # 200 each (+ a few box-like strokes)
    g = torch.Generator().manual_seed(6)
    first = random_masks(8, 28, 28, g)
    assert not torch.equal(first, random_masks(8, 28, 28, g))  # the generator moves on


def test_named_strokes_mask_is_seeded() -> None:
    assert torch.equal(named_mask("strokes", 28, 28), stroke_masks(1, 28, 28, torch.Generator().manual_seed(0)))
    assert torch.equal(named_mask("strokes:7", 28, 28), stroke_masks(1, 28, 28, torch.Generator().manual_seed(7)))
    assert not torch.equal(named_mask("strokes:7", 28, 28), named_mask("strokes:8", 28, 28))
    assert torch.equal(named_mask("top", 28, 28), half_mask("top", 28, 28))
    for bad in ("strokes:x", "strokes:-1", "strokes:", "strokes:99999999999999999999"):
        with pytest.raises(DiffusaError, match="strokes:SEED"):
            named_mask(bad, 28, 28)


# -- the condition -------------------------------------------------------------------------------------------------
def test_masked_condition_blanks_the_repaint_region_and_adds_the_mask() -> None:
    x = torch.rand(3, 2, 5, 5) * 2 - 1
    m = torch.zeros(3, 1, 5, 5, dtype=torch.bool)
    m[0, 0, :2] = True
    m[1, 0, :, 3:] = True
    c = masked_condition(x, m)
    assert c.shape == (3, 3, 5, 5)
    assert torch.equal(c[:, 2:], m.float())
    assert torch.equal(c[:, :2], torch.where(m, torch.full((), BLANK), x))
    assert torch.equal(masked_condition(x, m[:1]), masked_condition(x, m[:1].expand(3, 1, 5, 5)))  # one for all
    leak = x + 5 * m  # other pixels under the mask: the condition is the same
    assert torch.equal(masked_condition(leak, m), c)


def test_the_training_condition_reaches_the_network() -> None:
    """The network's input beside x_t is the blanked example and the mask, drawn from the step's generator
    (nothing is drawn before the masks in "none" mode), for every example."""
    task = bound_task([*TINY, "model.net.patch_size=1", "data.inpaint_dropout=0"])
    assert task.spec["cond_channels"] == 2 and "image_level" not in task.spec
    x = load_dataset("digits").x[:32]
    cond = task.conditioner.training(torch.arange(32), torch.Generator().manual_seed(5), "cpu", x)
    expected = masked_condition(x, random_masks(32, 8, 8, torch.Generator().manual_seed(5), MASK_KINDS))
    assert torch.equal(cond.image, expected) and cond.image_level is None
    seen: dict[str, torch.Tensor] = {}
    task.model.conv_in.register_forward_hook(lambda m, args, out: seen.__setitem__("input", args[0]))
    task.loss(torch.arange(32), x, torch.Generator().manual_seed(1))
    inp = seen["input"]
    assert inp.shape == (32, 3, 8, 8)
    mask = inp[:, 2:] == 1
    assert bool(((inp[:, 2:] == 0) | mask).all()) and bool(mask.flatten(1).any(1).all())
    assert torch.equal(inp[:, 1:2], torch.where(mask, torch.full((), BLANK), x))  # known pixels exact, masked 0
    assert bool((mask.flatten(1).float().mean(1) < 1).all())


def test_the_network_reads_the_known_region_and_not_the_masked_one(digits: torch.Tensor) -> None:
    """Same x_t and time: changing a known pixel changes the network's output; changing masked pixels of the
    example changes nothing (they never reach the condition)."""
    task = bound_task(TINY)
    torch.manual_seed(0)
    for p in task.model.parameters():  # a network that is not near zero at init
        p.data.add_(torch.randn_like(p) * 0.05)
    x, m = digits, named_mask("top", 8, 8)
    x_t, t = torch.randn(6, 1, 8, 8), torch.full((6,), 0.5)

    def out(example: torch.Tensor) -> torch.Tensor:
        from diffusa.cond import Cond

        with torch.no_grad():
            return task.denoiser.output(x_t, t, Cond(image=masked_condition(example, m)))

    base = out(x)
    assert torch.equal(out(torch.where(m, -x, x)), base)  # the masked pixels do not leak
    known = x.clone()
    known[:, :, 6, 3] = -known[:, :, 6, 3] + 0.5
    assert float((out(known) - base).abs().max()) > 1e-4



def test_mask_dropout_trains_the_whole_image_to_draw() -> None:
    """data.inpaint_dropout: after the masks, one more draw from the step's generator replaces a share of the
    conditions by the unmasked one (BLANK everywhere, mask channel 1), the null condition of mask guidance;
    at 0 nothing more is drawn."""
    x = load_dataset("digits").x[:64]
    task = bound_task([*TINY, "data.inpaint_dropout=0.5"])
    cond = task.conditioner.training(torch.arange(64), torch.Generator().manual_seed(5), "cpu", x)
    g = torch.Generator().manual_seed(5)
    plain = masked_condition(x, random_masks(64, 8, 8, g, MASK_KINDS))
    assert torch.equal(cond.image, drop_masks(plain, 0.5, g))
    whole = (cond.image[:, 1] == 1).flatten(1).all(1)
    assert 16 <= int(whole.sum()) <= 48  # Binomial(64, 0.5): 32 +- 4
    assert bool((cond.image[whole, 0] == BLANK).all()) and torch.equal(cond.image[~whole], plain[~whole])
    assert torch.equal(unmasked(plain), masked_condition(x, torch.ones(1, 1, 8, 8, dtype=torch.bool)))
    g = torch.Generator().manual_seed(9)
    assert drop_masks(plain, 0.0, g) is plain and torch.equal(torch.rand(1, generator=g),
                                                              torch.rand(1, generator=torch.Generator().manual_seed(9)))
    null = null_mask_cond(cond)
    assert torch.equal(null.image, unmasked(cond.image)) and null.labels is None


def test_mask_guidance_mixes_against_the_whole_image(pipe: Pipeline, digits: torch.Tensor) -> None:
    """guidance_scale on a model trained with mask dropout: D_u + w (D_c - D_u), where D_u is the same network
    given the whole image to draw, both branches in one call of 2n; the output still equals the input outside
    the mask, and the scale is recorded."""
    from diffusa.cond import Cond
    from diffusa.pipelines.request import resolve

    assert pipe.run.mask_guided and pipe.run.meta["config"]["data"]["inpaint_dropout"] == 0.1
    cond_img = masked_condition(digits, named_mask("top", 8, 8))
    req = resolve(pipe.run, pipe.name, 6, prompt=None, label=None, guidance_scale=2.5, classifier=None,
                  classifier_scale=None, image=cond_img, image_channels=pipe.image_channels)
    x_t, t = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.full((6,), 0.6)
    den = pipe.run.denoiser
    with torch.no_grad():
        c = den.output(x_t, t, Cond(image=cond_img))  # raw outputs (x0 is clipped to [-1, 1] after the mix)
        u = den.output(x_t, t, Cond(image=unmasked(cond_img)))
        guided = req.denoiser.output(x_t, t, req.cond)
    assert float((c - u).abs().max()) > 1e-3  # the branches differ, so the check below means something
    torch.testing.assert_close(guided, u + 2.5 * (c - u), rtol=1e-5, atol=1e-5)
    seen: list = []
    hook = pipe.run.net.register_forward_pre_hook(lambda m, args: seen.append(args[2]))
    try:
        res = pipe.inpaint(digits, "top", steps=5, seed=2, guidance_scale=2.5)
    finally:
        hook.remove()
    assert len(seen) == 5 and all(torch.equal(s.image, torch.cat([cond_img, unmasked(cond_img)])) for s in seen)
    keep = ~named_mask("top", 8, 8)[0, 0]
    assert torch.equal(res.samples[..., keep], digits[..., keep]) and res.settings["guidance_scale"] == 2.5
    again = pipe.inpaint(digits, "top", steps=5, seed=2, guidance_scale=2.5).samples
    assert torch.equal(again, res.samples)
    assert not torch.equal(pipe.inpaint(digits, "top", steps=5, seed=2).samples, res.samples)


def test_mask_guidance_needs_a_model_trained_for_it(tmp_path: Path, inpaint_run: Path,
                                                    digits: torch.Tensor) -> None:
    """A model trained without mask dropout, or from before the setting (config.json without it), has no
    unconditional branch: guidance_scale is refused in one line, through the API and the CLI."""
    import json
    import shutil

    old = tmp_path / "old"
    shutil.copytree(inpaint_run, old)
    meta = json.loads((old / "config.json").read_text())
    del meta["config"]["data"]["inpaint_dropout"]
    (old / "config.json").write_text(json.dumps(meta))
    for run in (old, train_tiny(tmp_path / "none", ["data.inpaint_dropout=0", "train.steps=2"])):
        p = diffusa.load(run)
        assert not p.run.mask_guided
        with pytest.raises(DiffusaError, match="trained without mask dropout") as e:
            p.inpaint(digits, "top", steps=3, guidance_scale=2)
        assert "\n" not in str(e.value)
        p.inpaint(digits, "top", steps=3)  # unguided still works
    with pytest.raises(DiffusaError, match=r"data\.inpaint_dropout must be"):
        DiffusionTask(load_config(overrides=[*TINY, "data.inpaint_dropout=1"]))


def test_a_recommended_guidance_scale_is_the_default(tmp_path: Path, inpaint_run: Path,
                                                    digits: torch.Tensor) -> None:
    """config.json "sampling" "guidance_scale": the scale an inpainting call uses where it names none (recorded in
    the settings; equal to asking for it); a given scale wins, and w = 1 is the conditional model alone. Entries
    that are not a positive number, or on a model guidance cannot reach, are refused when the run is read."""
    import json
    import shutil

    run = tmp_path / "rec"
    shutil.copytree(inpaint_run, run)
    meta = json.loads((run / "config.json").read_text())
    meta["sampling"] = {"sampler": "ddpm", "steps": 4, "guidance_scale": 2.5, "why": "test"}
    (run / "config.json").write_text(json.dumps(meta))
    p = diffusa.load(run)
    assert p.run.recommended_guidance == 2.5
    res = p.inpaint(digits, "top", seed=1)
    assert res.settings["guidance_scale"] == 2.5 and res.settings["steps"] == 4
    assert torch.equal(res.samples, p.inpaint(digits, "top", seed=1, guidance_scale=2.5).samples)
    plain = p.inpaint(digits, "top", seed=1, guidance_scale=1)
    assert plain.settings["guidance_scale"] == 1 and not torch.equal(plain.samples, res.samples)
    assert torch.equal(plain.samples, diffusa.load(inpaint_run).inpaint(digits, "top", steps=4, seed=1).samples)
    for bad, message in ((0, "must be a finite number > 0"), (-1, "must be a finite number > 0"),
                         ("3", "must be a finite number > 0"), (True, "must be a finite number > 0"),
                         (10**400, "must be a finite number > 0")):
        meta["sampling"]["guidance_scale"] = bad
        (run / "config.json").write_text(json.dumps(meta))
        with pytest.raises(DiffusaError, match=re.escape(f"sampling.guidance_scale {message}")) as e:
            diffusa.load(run)
        assert "\n" not in str(e.value)
    none = train_tiny(tmp_path / "none", ["data.inpaint_dropout=0", "train.steps=2"])
    meta = json.loads((none / "config.json").read_text())
    meta["sampling"] = {"sampler": "ddpm", "steps": 4, "guidance_scale": 2.0}
    (none / "config.json").write_text(json.dumps(meta))
    with pytest.raises(DiffusaError, match=re.escape("sampling.guidance_scale does not suit this model: it was "
                                                     "trained without mask dropout")):
        diffusa.load(none)


def train_tiny(out: Path, extra: list[str]) -> Path:
    from conftest import train_run

    return train_run(out, [*TINY, *extra])

# -- sampling --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("jumps, sampler", [(None, "ddpm"), (0, "dpmpp_2m")])
def test_inpaint_passes_the_condition_to_every_call_and_composites_exactly(pipe: Pipeline, digits: torch.Tensor,
                                                                           jumps: int | None, sampler: str) -> None:
    """The default (replacement, no jumps; ancestral steps) and conditioning alone (jump_n_sample=0: the model's
    default sampler on its own grid): `steps` network calls, each given masked_condition(x, mask); the output
    equals the input outside the mask exactly (floats and uint8), and the masked part is drawn anew."""
    x, mask = digits, named_mask("bottom", 8, 8)
    keep = ~mask[0, 0]
    seen: list = []
    hook = pipe.run.net.register_forward_pre_hook(lambda m, args: seen.append(args[2]))
    try:
        with network_calls(pipe.run.net) as calls:
            res = pipe.inpaint(x, "bottom", steps=7, seed=3, jump_n_sample=jumps)
    finally:
        hook.remove()
    s = res.settings
    assert s["conditioning"] == "mask" and s["jump_n_sample"] == (1 if jumps is None else 0)
    assert s["sampler"] == sampler and s["nfe"] == calls[0] == len(seen) == s["reverse_steps"] == 7
    expected = masked_condition(x, mask)
    assert all(torch.equal(c.image, expected) for c in seen)
    assert torch.equal(res.samples[..., keep], x[..., keep])
    u8 = ((x + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert np.array_equal(res.images[:, keep.numpy()], u8[:, keep.numpy()])
    assert float((res.samples[..., ~keep] - x[..., ~keep]).abs().max()) > 0.1
    assert res.settings["masked_fraction"] == 0.5


@pytest.mark.parametrize("jumps", [None, 0])
def test_masked_pixels_of_the_input_do_not_change_the_output(pipe: Pipeline, digits: torch.Tensor,
                                                             jumps: int | None) -> None:
    x, mask = digits, named_mask("center", 8, 8)
    ref = pipe.inpaint(x, "center", steps=5, seed=1, jump_n_sample=jumps).samples
    scrambled = torch.where(mask, torch.rand_like(x) * 2 - 1, x)
    assert torch.equal(pipe.inpaint(scrambled, "center", steps=5, seed=1, jump_n_sample=jumps).samples, ref)
    known = x.clone()
    known[:, :, 0, :] = 1.0  # the top row, outside the centre box
    moved = pipe.inpaint(known, "center", steps=5, seed=1, jump_n_sample=jumps).samples
    assert float((moved[..., mask[0, 0]] - ref[..., mask[0, 0]]).abs().max()) > 1e-3  # the drawn part follows


@pytest.mark.parametrize("sampler", ["ddim", "heun", "dpmpp_3m", "euler_ancestral", "ddpm", "unipc"])
def test_any_sampler_and_the_repaint_loop_keep_the_known_region(pipe: Pipeline, digits: torch.Tensor,
                                                                sampler: str) -> None:
    x = digits[:3]
    repaint = torch.stack([named_mask(m, 8, 8)[0] for m in ("left", "strokes:1", "box:1,2,4,3")])
    keep = ~repaint
    for kw in ({}, {"jump_n_sample": 0}, {"jump_length": 2, "jump_n_sample": 2}):
        res = pipe.inpaint(x, repaint, sampler=sampler, steps=5, seed=0, **kw)
        assert torch.equal(res.samples[keep.expand_as(x)], x[keep.expand_as(x)]), (sampler, kw)
        assert bool(torch.isfinite(res.samples).all())
        # the final composite makes the known region exact whatever the sampler did: the drawn region must move
        drawn = repaint.expand_as(x)
        assert float((res.samples[drawn] - x[drawn]).abs().max()) > 0.1, (sampler, kw)
    assert res.settings["jump_n_sample"] == 2 and res.settings["reverse_steps"] > 5


def test_same_seed_same_output(pipe: Pipeline, digits: torch.Tensor) -> None:
    a = pipe.inpaint(digits, "top", sampler="ddpm", steps=4, seed=9).samples
    assert torch.equal(a, pipe.inpaint(digits, "top", sampler="ddpm", steps=4, seed=9).samples)
    assert not torch.equal(a, pipe.inpaint(digits, "top", sampler="ddpm", steps=4, seed=10).samples)


def test_cli_inpaints_with_the_model(cli, tmp_path: Path, pipe: Pipeline, inpaint_run: Path,
                                     digits: torch.Tensor) -> None:
    u8 = ((digits + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    np.savez(tmp_path / "x.npz", images=u8)
    r = cli("inpaint", tmp_path / "x.npz", "--mask", "strokes:2", "--model", inpaint_run, "--steps", "5",
            "--seed", "4", "--out", tmp_path / "o.npz")
    assert r.code == 0, r.err
    assert "conditioned on the masked image, replacement, no jumps: 5 steps" in r.out
    out = np.load(tmp_path / "o.npz")
    ref = pipe.inpaint(u8, "strokes:2", steps=5, seed=4)
    assert np.array_equal(out["samples"], ref.samples.numpy())
    keep = ~named_mask("strokes:2", 8, 8)[0, 0].numpy()
    assert np.array_equal(out["images"][:, keep], u8[:, keep])
    r = cli("generate", "--model", inpaint_run, "--out", tmp_path / "g.png")
    assert r.code != 0 and "mask-conditioned inpainting model" in r.err and "Traceback" not in r.err
    assert len(r.err.strip().splitlines()) == 1


# -- refusals ----------------------------------------------------------------------------------------------------------
def test_plain_sampling_and_img2img_say_what_the_model_needs(pipe: Pipeline, digits: torch.Tensor,
                                                            digits_run: Path) -> None:
    for call, what in ((lambda: pipe(n=2), "not plain sampling"), (lambda: pipe.img2img(digits, 0.5), "not img2img"),
                       (lambda: pipe.inpaint(digits, "top", cond_image=digits), "its condition is made from")):
        with pytest.raises(DiffusaError, match=what) as e:
            call()
        assert "\n" not in str(e.value)
    with pytest.raises(DiffusaError, match="not a super-resolution model"):
        pipe.upscale(digits)
    assert "mask-conditioned inpainting" in repr(pipe)
    plain = diffusa.load(digits_run)
    with pytest.raises(DiffusaError, match=r"positive integer on .*: 0 \(no replacement, conditioning alone\)"):
        plain.inpaint(digits, "top", jump_n_sample=0)
    assert plain.inpaint(digits, "top", steps=6).settings["jump_n_sample"] == 5  # plain models: RePaint 5 x 5


@pytest.mark.parametrize("overrides, message", [
    (['data.name="moons"'], "moons holds points, not images"),
    (["data.super_resolution=2"], "data.inpaint and data.super_resolution both make the condition image"),
    (["data.cond_noise_max=0.2"], "known pixels are kept exact"),
    (['data.inpaint="box,lines"'], "mask kinds among box, strokes, half"),
    (["data.inpaint=true"], r"data.inpaint must be text, got True \(in --set, quote it"),
])
def test_config_refusals(overrides: list[str], message: str) -> None:
    with pytest.raises(DiffusaError, match=message) as e:
        DiffusionTask(load_config(overrides=[*TINY, *overrides]))
    assert "\n" not in str(e.value)


def test_a_latent_model_is_refused() -> None:
    data = load_dataset("digits")
    with pytest.raises(DiffusaError, match="latent model"):
        ImageCondition(inpaint=("box",)).check(data, latent="some/autoencoder")
    assert ImageCondition(inpaint=("box",)).channels(data) == 2


# -- resume ------------------------------------------------------------------------------------------------------------
def test_resume_is_exact(tmp_path: Path) -> None:
    """The masks come from the step's generator: 6 steps straight equal 3, then a resume to 6."""
    from conftest import train_run

    overrides = [*TINY, 'train.lr_decay="constant"', "train.log_every=3"]
    whole = train_run(tmp_path / "whole", [*overrides, "train.steps=6"])
    part = train_run(tmp_path / "part", [*overrides, "train.steps=3"])
    train_run(part, [*overrides, "train.steps=6"], resume=True)
    same_checkpoint(part, whole)
