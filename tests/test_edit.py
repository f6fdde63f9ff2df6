"""Editing (issue 19): SDEdit / img2img and RePaint inpainting on any model and sampler, through diffusa.editing, the
pipeline and the command line. Numbers: the noise level each strength names on every process, closed forms on the
Gaussian oracle, RePaint's schedule by hand, exact composites, counted network evaluations, bit-identical reruns."""

from __future__ import annotations

import math
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import torch

import diffusa
from diffusa.editing import (
    noise_to,
    repaint,
    repaint_schedule,
    repaint_steps,
    reverse_steps,
    sampler_step,
    start_grid,
    strength_time,
)
from diffusa.errors import DiffusaError
from diffusa.pipelines import Pipeline
from diffusa.pipelines.edit import MASK_EXAMPLES, as_mask, is_named_mask, named_mask
from diffusa.prediction import Denoiser
from diffusa.process import EDM, VE, VP, DiscreteDDPM, Flow, SubVP
from diffusa.samplers import SAMPLERS, get_sampler, make_grid, sample

PROCESSES = {"ddpm-cosine": DiscreteDDPM("cosine", 1000), "ddpm-linear": DiscreteDDPM("linear", 1000), "vp": VP(),
             "subvp": SubVP(), "ve": VE(), "edm": EDM(), "flow": Flow()}
MU, SD = 0.3, 0.5  # the Gaussian oracle's data N(MU, SD^2) per coordinate


@pytest.fixture(scope="module")
def pixel() -> Pipeline:
    return diffusa.load("mnist-pixel")


@pytest.fixture(scope="module")
def text() -> Pipeline:
    return diffusa.load("mnist-text")


@pytest.fixture(scope="module")
def digits(mnist5k: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Eight held-out digits of eight classes, and their labels."""
    test = mnist5k["test"]
    idx = torch.arange(8) * 100 + 7
    return test.x[idx], test.labels[idx]


def oracle(proc: object) -> Denoiser:
    """The exact denoiser of N(MU, SD^2 I): E[x0 | x_t] = MU + SD^2 a (x_t - a MU) / (a^2 SD^2 + s^2) (DESIGN.md)."""

    def x0(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a, s = (v.reshape(-1, *[1] * (x.ndim - 1)).to(x.dtype) for v in proc.alpha_sigma(t))
        return MU + SD**2 * a * (x - a * MU) / (a**2 * SD**2 + s**2)

    return Denoiser.from_function(x0, proc, "x0")


def levels(proc: object, t: float) -> tuple[float, float]:
    a, s = proc.alpha_sigma(torch.tensor(t, dtype=torch.float64))
    return float(a), float(s)


# -- the strength, the grid, the schedule -------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(PROCESSES))
def test_strength_names_one_noise_level_on_every_process(name: str) -> None:
    """At t_start the noise's share sigma / sqrt(alpha^2 + sigma^2) is sin(pi s / 2), whatever the process; a level
    beyond the process's prior (VE, EDM at high strength) starts at t = 1; strength 1 is the grid's start."""
    proc = PROCESSES[name]
    grid = torch.linspace(1, 0, 1001, dtype=torch.float64)
    for s in (0.1, 0.3, 0.5, 0.7, 0.9, 0.99):
        t = strength_time(proc, s, grid)
        a, sig = levels(proc, t)
        share = sig / math.hypot(a, sig)
        if t < 1:
            assert share == pytest.approx(math.sin(math.pi * s / 2), abs=1e-6), (name, s, t)
        else:  # the process's noisiest level is below the one asked for
            assert share < math.sin(math.pi * s / 2)
    assert strength_time(proc, 1.0, grid) == 1.0
    assert strength_time(proc, 1.0, grid[3:]) == float(grid[3])  # a grid that starts lower starts there
    assert strength_time(proc, 1e-9, grid) == pytest.approx(0.001)  # at least the least positive time: one step


def test_start_grid_keeps_the_points_below_and_merges_a_sliver() -> None:
    grid = torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0], dtype=torch.float64)
    assert start_grid(grid, 1.0).tolist() == grid.tolist()  # strength 1: plain sampling's grid
    assert start_grid(grid, 0.6).tolist() == [0.6, 0.5, 0.25, 0.0]
    assert start_grid(grid, 0.51).tolist() == [0.51, 0.25, 0.0]  # 0.01 < a quarter of 0.25: merged
    assert start_grid(grid, 0.1).tolist() == [0.1, 0.0]  # never zero steps


def test_repaint_schedule_by_hand_and_the_papers_counts() -> None:
    """6 steps, jumps of 2, twice: RePaint's t = 5..-1 goes 5 4 3 2 (jump at t=2: 3 4) 3 2 1 0 (jump at t=0: 1 2)
    1 0 -1; position = 5 - t."""
    assert repaint_schedule(6, 2, 2) == [0, 1, 2, 3, 2, 1, 2, 3, 4, 5, 4, 3, 4, 5, 6]
    assert repaint_schedule(6, 2, 1) == list(range(7))
    assert reverse_steps(repaint_schedule(6, 2, 2)) == 10
    # the paper's setting (t_T = 250, j = 10, n = 10): 24 jump points x 9 repeats x 10 steps on top of 250
    sched = repaint_schedule(250, 10, 10)
    assert reverse_steps(sched) == 250 + 24 * 9 * 10
    for steps, length, n in ((6, 2, 2), (6, 2, 1), (250, 10, 10), (7, 3, 4), (5, 4, 3)):  # counted without walking
        assert repaint_steps(steps, length, n) == reverse_steps(repaint_schedule(steps, length, n))
    assert len(sched) - 1 == 250 + 2 * 24 * 9 * 10
    assert sched[0] == 0 and sched[-1] == 250 and all(abs(b - a) == 1 for a, b in pairwise(sched))
    with pytest.raises(DiffusaError, match="jump_length 20 leaves no room"):
        repaint_schedule(20, 20, 2)


# -- closed forms on the Gaussian oracle ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["ddpm-cosine", "vp", "ve", "flow"])
def test_sdedit_deterministic_is_the_exact_flow_map(name: str) -> None:
    """From x_t0 = a x + s z, the probability-flow ODE of N(MU, SD^2) ends at MU + SD (x_t0 - a MU) / sqrt(D),
    D = a^2 SD^2 + s^2, sample by sample: rk45 on every process, and the multistep and Heun solvers starting in the
    middle of their grids (their first point is not t = 1)."""
    proc = PROCESSES[name]
    den = oracle(proc)
    g = torch.Generator().manual_seed(0)
    x_in = torch.tensor([-1.0, 0.0, 0.5, 1.0]).expand(500, 4)
    for sampler, steps, tol in (("rk45", 10, 2e-3), ("dpmpp_2m", 100, 2e-2), ("dpmpp_3m", 100, 2e-2),
                                ("heun", 60, 2e-2)):
        for strength in (0.3, 0.7):
            grid = make_grid(den, steps, None, sampler)
            t0 = strength_time(proc, strength, grid)
            x_t = noise_to(proc, x_in, t0, torch.randn(x_in.shape, generator=g))
            out = sample(den, x_in.shape, sampler, grid=start_grid(grid, t0), x_T=x_t)
            a, s = levels(proc, t0)
            exact = MU + SD * (x_t - a * MU) / math.sqrt(a**2 * SD**2 + s**2)
            assert (out - exact).abs().max() < tol, (name, sampler, strength)


def test_sdedit_stochastic_has_the_exact_conditional_law() -> None:
    """The reverse SDE from x_t0 ~ q(x_t0 | x) ends in N(MU + k (x - MU), SD^2 s^2 / D (1 + k)), k = a^2 SD^2 / D:
    the posterior p(x0 | x_t0) averaged over x_t0 (ancestral sampling, 400 steps, 20,000 draws)."""
    proc = PROCESSES["ddpm-cosine"]
    den = oracle(proc)
    g = torch.Generator().manual_seed(1)
    n = 20_000
    x_in = torch.tensor([-1.0, 0.0, 1.0])
    grid = make_grid(den, 400, None, "ddpm")
    t0 = strength_time(proc, 0.5, grid)
    x_t = noise_to(proc, x_in.expand(n, 3), t0, torch.randn(n, 3, generator=g))
    out = sample(den, (n, 3), "ddpm", grid=start_grid(grid, t0), x_T=x_t, generator=g).double()
    a, s = levels(proc, t0)
    d = a**2 * SD**2 + s**2
    k = a**2 * SD**2 / d
    var = SD**2 * s**2 / d * (1 + k)
    assert (out.mean(0) - (MU + k * (x_in - MU))).abs().max() < 4 * math.sqrt(var / n)
    assert (out.var(0) / var - 1).abs().max() < 0.05  # ancestral steps' own bias ~2-3% at 400 steps


def test_repaint_on_a_correlated_2d_gaussian() -> None:
    """N(0, [[1, .9], [.9, 1]]) with x1 = 1.5 known: x2 | x1 ~ N(1.35, 0.19). The known coordinate is exact;
    replacement alone lands far off (mean ~0.66 with DDIM), RePaint's resampling close (~1.33, 0.19) — RePaint
    approximates the conditional, and the jumps are what bring it there."""
    proc = Flow()
    cov = torch.tensor([[1.0, 0.9], [0.9, 1.0]], dtype=torch.float64)

    def x0(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a, s = (v.reshape(-1, 1, 1) for v in proc.alpha_sigma(t))
        gain = a * cov @ torch.linalg.inv(a**2 * cov + s**2 * torch.eye(2, dtype=torch.float64))
        return (gain @ x.double().unsqueeze(-1)).squeeze(-1).to(x.dtype)

    den = Denoiser.from_function(x0, proc, "x0")
    n = 4000
    known = torch.zeros(n, 2)
    known[:, 0] = 1.5
    keep = torch.tensor([True, False]).expand(n, 2)
    grid = make_grid(den, 100, None, "ddim")
    results = {}
    for jumps in (1, 20):
        g = torch.Generator().manual_seed(0)
        x, stopped = repaint(den, known, keep, proc.prior_sample((n, 2), generator=g), grid,
                             repaint_schedule(100, 2, jumps), get_sampler("ddim"), generator=g)
        assert stopped is None and torch.equal(x[:, 0], known[:, 0])
        results[jumps] = (float(x[:, 1].mean()), float(x[:, 1].var()))
    assert abs(results[1][0] - 1.35) > 0.5
    assert results[20][0] == pytest.approx(1.35, abs=0.05)
    assert results[20][1] == pytest.approx(0.19, rel=0.1)


# -- the pipeline -----------------------------------------------------------------------------------------------------
def counting(pipe: Pipeline) -> list[int]:
    """Wrap the run's denoiser so every network evaluation is counted (guidance wraps the wrapped one)."""
    calls = [0]
    base = pipe.run.denoiser

    def raw(x: torch.Tensor, t: torch.Tensor, cond: object) -> torch.Tensor:
        calls[0] += 1
        return base.raw(x, t, cond)

    pipe.run.denoiser = base.derive(raw=raw)
    return calls


def test_nfe_reported_is_the_network_calls(digits: tuple) -> None:
    pipe = diffusa.load("mnist-pixel")
    calls = counting(pipe)
    x = digits[0][:2]
    for sampler, per_step in (("dpmpp_2m", 1), ("heun", 2), ("ddpm", 1)):
        for strength in (0.05, 0.5, 1.0):
            calls[0] = 0
            res = pipe.img2img(x, strength, sampler=sampler, steps=10)
            assert res.settings["nfe"] == calls[0] >= 1
            expected = res.settings["sampler_steps"] * per_step - (per_step - 1)  # Heun's last step is Euler
            assert calls[0] == expected, (sampler, strength)
    calls[0] = 0
    res = pipe.inpaint(x, "center", steps=10, jump_length=3, jump_n_sample=3)
    assert res.settings["nfe"] == calls[0] == res.settings["reverse_steps"] == 10 + 3 * 2 * 3


def test_inpaint_keeps_the_unmasked_pixels_exactly(pixel: Pipeline, text: Pipeline, digits: tuple) -> None:
    x, y = digits
    u8 = ((x + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for pipe, kw in ((pixel, {}), (text, {"label": y})):
        for mask in ("center", "left", "box:3,5,10,7"):
            keep = ~named_mask(mask, 28, 28)[0, 0]
            res = pipe.inpaint(u8, mask, steps=6, jump_length=2, jump_n_sample=2, seed=1, **kw)
            assert torch.equal(res.samples[..., keep], x[..., keep])
            assert np.array_equal(res.images[:, keep.numpy()], u8[:, keep.numpy()])
            assert (res.samples[..., ~keep] - x[..., ~keep]).abs().max() > 0.1  # the masked part is drawn anew


def test_same_seed_same_output_and_batches(pixel: Pipeline, digits: tuple) -> None:
    x = digits[0][:4]
    a = pixel.img2img(x, 0.5, steps=8, sampler="ddpm", seed=3)
    assert torch.equal(a.samples, pixel.img2img(x, 0.5, steps=8, sampler="ddpm", seed=3).samples)
    assert not torch.equal(a.samples, pixel.img2img(x, 0.5, steps=8, sampler="ddpm", seed=4).samples)
    b = pixel.inpaint(x, "top", steps=6, seed=3, jump_length=2, jump_n_sample=2)
    assert torch.equal(b.samples, pixel.inpaint(x, "top", steps=6, seed=3, jump_length=2, jump_n_sample=2).samples)
    # a deterministic sampler: batches do not change it (the model's recommended dpmpp_2m_sde is stochastic)
    c = pixel.img2img(x, 0.5, steps=8, sampler="dpmpp_2m", seed=3, batch_size=1)
    assert (c.samples - pixel.img2img(x, 0.5, steps=8, sampler="dpmpp_2m", seed=3).samples).abs().max() < 1e-4


def test_strength_one_is_plain_sampling(pixel: Pipeline, digits: tuple) -> None:
    """Bit for bit where alpha(1) = 0 (flow: the shipped network behind a flow Denoiser), and within the faint
    alpha(1) x that the cosine chain's start keeps (alpha(1) ~ 5e-5) otherwise. (Heun's Karras grid starts below
    t = 1, where plain sampling starts from the prior anyway and img2img from the forward process: they differ.)"""
    x = digits[0][:4]
    for sampler in ("ddim", "ddpm", "dpmpp_2m"):
        gen = pixel(n=4, sampler=sampler, steps=10, seed=2)
        edit = pixel.img2img(x, 1.0, sampler=sampler, steps=10, seed=2)
        assert edit.settings["sampler_steps"] == 10 and edit.settings["nfe"] == gen.settings["nfe"]
        assert (gen.samples - edit.samples).abs().max() < 0.02
    flow = diffusa.load("mnist-pixel")
    flow.run.denoiser = Denoiser.from_network(flow.run.net, Flow(), "v", clip_x0=1.0)
    for sampler in ("ddim", "ddpm", "dpmpp_2m"):
        assert torch.equal(flow(n=4, sampler=sampler, steps=6, seed=5).samples,
                           flow.img2img(x, 1.0, sampler=sampler, steps=6, seed=5).samples)


# the consistency sampler's step lands on the marginal at s only for a consistency function (tests/test_distill.py)
@pytest.mark.parametrize("sampler", sorted(set(SAMPLERS) - {"consistency"}))
def test_one_sampler_step_ends_at_s(sampler: str) -> None:
    """RePaint's steps: each sampler over [t, s] returns x_s, not its x0 (rk45 and score_sde's samplers end their
    grids with a denoising step); the deterministic ones land on the oracle's flow map (rk45 exactly)."""
    proc = PROCESSES["ddpm-cosine"]
    den = oracle(proc)
    g = torch.Generator().manual_seed(0)
    t, s = 0.5, 0.45  # a short step: Euler-Maruyama's error over a long one would swamp the check
    data = MU + SD * torch.randn(4000, 2, generator=g)
    x_t = noise_to(proc, data, t, torch.randn(4000, 2, generator=g))  # from the marginal at t
    x_s, x0 = sampler_step(get_sampler(sampler), den, x_t, t, s, generator=g)
    (a_t, s_t), (a_s, s_s) = levels(proc, t), levels(proc, s)
    d_t, d_s = a_t**2 * SD**2 + s_t**2, a_s**2 * SD**2 + s_s**2
    exact = a_s * MU + math.sqrt(d_s / d_t) * (x_t - a_t * MU)
    assert (x_s - x0).abs().mean() > 0.3  # the noise of t = s is still there
    assert float(x_s.std()) == pytest.approx(math.sqrt(d_s), rel=0.1)  # the marginal's spread at s
    if sampler == "rk45":
        assert (x_s - exact).abs().max() < 1e-3


@pytest.mark.parametrize("sampler", sorted(set(SAMPLERS) - {"rk45"}))  # rk45: ~300 evaluations, above instead
def test_every_sampler_edits_and_inpaints(pixel: Pipeline, digits: tuple, sampler: str) -> None:
    x = digits[0][:2]
    res = pixel.img2img(x, 0.4, sampler=sampler, steps=4)
    assert torch.isfinite(res.samples).all() and res.settings["nfe"] >= 1
    res = pixel.inpaint(x, "right", sampler=sampler, steps=3, jump_length=1, jump_n_sample=2)
    keep = ~named_mask("right", 28, 28)[0, 0]
    assert torch.equal(res.samples[..., keep], x[..., keep]) and torch.isfinite(res.samples).all()


def test_guidance_labels_prompts_and_callbacks(text: Pipeline, digits: tuple) -> None:
    x, y = digits
    res = text.img2img(x[:2], 0.3, prompt=["a handwritten 1", "a handwritten 2"], steps=6)
    assert res.prompts == ["a handwritten 1", "a handwritten 2"] and res.settings["guidance_scale"] == 3
    seen: list[int] = []
    res = text.inpaint(x[:2], "bottom", label=y[:2], steps=6, jump_length=2, jump_n_sample=2,
                       callback=lambda k, t, x_t, x0: seen.append(k) or k == 4)
    assert seen == [0, 1, 2, 3, 4] and res.stopped_at == 4
    keep = ~named_mask("bottom", 28, 28)[0, 0]
    assert torch.equal(res.samples[..., keep], x[:2][..., keep])


def test_api_refusals(pixel: Pipeline, digits: tuple) -> None:
    x = digits[0][:2]
    cases = [(lambda: pixel.img2img(x, 0), "strength must be a number in \\(0, 1\\]"),
             (lambda: pixel.img2img(x, 1.5), "strength"), (lambda: pixel.img2img(x, float("nan")), "strength"),
             (lambda: pixel.img2img(x, True), "strength"),
             (lambda: pixel.img2img(x.expand(2, 3, 28, 28), 0.5), "3 channels; this model draws images of 1"),
             (lambda: pixel.img2img(torch.zeros(1, 1, 28, 20), 0.5), "28x20; this model draws 28x28"),
             (lambda: pixel.img2img(x * 3, 0.5), "float images are in \\[-1, 1\\]"),
             (lambda: pixel.img2img(x, 0.5, n=3), "image: 2 given for n=3"),
             (lambda: pixel.img2img(x, 0.5, label=3), "unconditional"),
             (lambda: pixel.inpaint(x, torch.zeros(20, 20)), "mask is 20x20; the image is 28x28"),
             (lambda: pixel.inpaint(x, torch.zeros(28, 28)), "nothing to inpaint"),
             (lambda: pixel.inpaint(x, torch.ones(28, 28)), "plain sampling"),
             (lambda: pixel.inpaint(x, "middle"), "unknown mask 'middle'"),
             (lambda: pixel.inpaint(x, "center", steps=4, jump_length=4), "jump_length 4 leaves no room"),
             (lambda: pixel.inpaint(x, "center", jump_n_sample=0), "jump_n_sample must be a positive integer"),
             (lambda: pixel.inpaint(x, "center", sampler="heun", eta=1.0), "has no option 'eta'")]
    for call, message in cases:
        with pytest.raises(DiffusaError, match=message):
            call()
    for name in MASK_EXAMPLES:  # the names the server offers are the pipeline's, each a mask of the image
        assert is_named_mask(name) and named_mask(name, 28, 28).any()
    assert not any(is_named_mask(name) for name in ("middle", "Left", "box", "strokes1", "mask.png"))
    m = as_mask(np.array([[0, 1], [1, 0]], dtype=np.uint8), (2, 2))  # a 0/1 uint8 mask: 1 = repaint
    assert m[0, 0].tolist() == [[False, True], [True, False]]
    assert as_mask(np.array([[0, 255], [127, 128]], dtype=np.uint8), (2, 2))[0, 0].tolist() == [[False, True],
                                                                                                  [False, True]]


# -- the command line -------------------------------------------------------------------------------------------------
def test_cli_matches_python_bit_for_bit(cli, tmp_path: Path, pixel: Pipeline, digits: tuple, mnist5k: dict) -> None:
    x = mnist5k["test"].x[:3]
    r = cli("edit", "mnist5k:0-2", "--strength", "0.5", "--steps", "6", "--seed", "7", "--out", tmp_path / "e.npz")
    assert r.code == 0, r.err
    assert np.array_equal(np.load(tmp_path / "e.npz")["samples"], pixel.img2img(x, 0.5, steps=6, seed=7).samples)
    assert (tmp_path / "e-strip.png").is_file()
    r = cli("inpaint", tmp_path / "e.npz", "--model", "mnist-pixel", "--mask", "left", "--steps", "6",
            "--jump-length", "2", "--seed", "1", "--out", tmp_path / "i.npz", "--strip", tmp_path / "s.png")
    assert r.code == 0, r.err
    inp = np.load(tmp_path / "e.npz")["images"]
    out = np.load(tmp_path / "i.npz")
    ref = pixel.inpaint(inp, "left", steps=6, jump_length=2, seed=1)
    assert np.array_equal(out["samples"], ref.samples) and np.array_equal(out["images"][:, :, 14:], inp[:, :, 14:])
    assert (tmp_path / "s.png").is_file()


def test_cli_refusals_are_one_line(cli, tmp_path: Path) -> None:
    from PIL import Image

    Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "black.png")
    Image.fromarray(np.zeros((30, 28), np.uint8)).save(tmp_path / "tall.png")
    (tmp_path / "notes.png").write_text("not an image")
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 torn")
    before = (tmp_path / "black.png").read_bytes()
    out = ["--out", tmp_path / "o.png"]
    cases = [(("edit", tmp_path / "missing.png", *out), "does not exist"),
             (("edit", "mnist5k:0", "--strength", "0", *out), "strength must be"),
             (("edit", "mnist5k:0", "--strength", "1.5", *out), "strength must be"),
             (("edit", "mnist5k:0", "--strength", "nan", *out), "strength must be"),
             (("edit", "mnist5k:0", "--strength", "half", *out), "expected a number"),
             (("edit", tmp_path / "notes.png", *out), "cannot read image"),
             (("edit", tmp_path / "bad.npz", *out), "not a readable .npz"),
             (("edit", tmp_path / "tall.png", *out), "30x28; this model draws 28x28"),
             (("edit", "mnist5k:5000", *out), "digits 0..999"),
             (("edit", tmp_path / "black.png", "--out", tmp_path / "black.png", "--force"), "is an input file"),
             (("edit", "mnist5k:0", "--out", tmp_path / "tall.png"), "not written by diffusa"),
             (("inpaint", "mnist5k:0", "--mask", tmp_path / "tall.png", *out), "mask is 30x28"),
             (("inpaint", "mnist5k:0", "--mask", tmp_path / "black.png", *out), "nothing to inpaint"),
             (("inpaint", "mnist5k:0", "--mask", "box:20,20,10,10", *out), "inside the 28x28 image"),
             (("inpaint", "mnist5k:0", "--mask", "center", "--jump-length", "20", *out), "leaves no room"),
             (("inpaint", "mnist5k:0", "--mask", "center", "--out", tmp_path / "o.jpg"), "saved as .png")]
    for args, message in cases:
        r = cli(*args)
        assert r.code != 0 and message in r.err and "Traceback" not in r.err, (args, r.err)
        assert len(r.err.strip().splitlines()) == 1, r.err
    assert (tmp_path / "black.png").read_bytes() == before and not (tmp_path / "o.png").exists()
