"""UniPC (Zhao et al. 2023): step by step against diffusers' UniPCMultistepScheduler, identities with DDIM and
DPM-Solver++(2M), its order of accuracy p + 1, and the Gaussian oracle against DPM-Solver++(2M). Every-process
coverage (Gaussian and mixture oracles, guidance) is through its Setting in test_sde_ode.py."""

from __future__ import annotations

import pytest
import torch
from diffusers import UniPCMultistepScheduler
from test_samplers import diffusers_reference
from test_sde_ode import MU, PROCS, SD, gaussian_denoiser, marginal_start, mixture_denoiser, oracle_grid

import diffusa
from diffusa import DiffusaError
from diffusa.process import Flow
from diffusa.samplers import make_grid, sample_ddim, sample_dpmpp_2m, sample_dpmpp_3m, sample_unipc

T = 1000
F64 = torch.float64


def run_both(sched, den, grid, eps_fn, x_T, **options):
    """diffusa's UniPC states after each step (the callback's x and x0) and diffusers' on its own chain."""
    xs: list[torch.Tensor] = []
    x0s: list[torch.Tensor] = []

    def callback(info):
        xs.append(info["x"].clone())
        x0s.append(info["x0"].clone())

    out = sample_unipc(den, x_T, grid, callback=callback, **options)
    assert len(xs) == len(grid) - 1 and torch.equal(out, xs[-1])
    refs, x = [], x_T
    for t in sched.timesteps:
        x = sched.step(eps_fn(x, t), t, x).prev_sample  # diffusers runs its own chain
        refs.append(x)
    return xs, x0s, refs


# ---------------------------------------------------------------------------------------------
# step by step against diffusers


@pytest.mark.parametrize(("schedule", "steps", "spacing"), [("linear", 10, "linspace"), ("cosine", 20, "leading")])
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("variant", ["bh1", "bh2"])
def test_unipc_matches_diffusers(variant, order, schedule, steps, spacing):
    sched, den, grid, eps_fn = diffusers_reference(UniPCMultistepScheduler, schedule, steps, spacing, T,
                                                   solver_order=order, solver_type=variant)
    x_T = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    xs, x0s, refs = run_both(sched, den, grid, eps_fn, x_T, order=order, variant=variant)
    for i in range(steps - 1):
        # float32 states (diffusers upcasts to float32 inside step), |x| <~ 3: 1e-5 is ~30 ulps
        assert torch.allclose(xs[i], refs[i], rtol=0, atol=1e-5), i
    # the step to sigma = 0 returns x0. diffusers computes it as x0 - alpha B(h) * 0 with h infinite, which for
    # bh1 (B(h) = h) is NaN; where finite, the two agree
    assert torch.equal(xs[-1], x0s[-1])
    if variant == "bh2":
        assert torch.allclose(xs[-1], refs[-1], rtol=0, atol=1e-5)
    else:
        assert torch.isfinite(xs[-1]).all()


def test_unipc_matches_diffusers_float64():
    """In float64 every coefficient agrees to rounding, on diffusa's default grid (the chain's trailing steps, from
    alphabar_T = 5e-5 where a float32 x0 = (x - sigma eps) / alpha loses 4 digits), ending at t = 0 or at the first
    step of the chain (diffusers' final_sigmas_type="sigma_min", where bh1's last step is finite too), with and
    without lower_order_final, and with the corrector disabled at some steps."""
    cases = [(v, p, final_zero, lof, off) for v in ("bh1", "bh2") for p in (1, 2, 3)
             for final_zero, lof in ((True, True), (False, True), (False, False)) for off in ((), (0, 3, 4))]
    x_T = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0), dtype=F64)
    for variant, order, final_zero, lof, off in cases:
        sched, den, grid, eps_fn = diffusers_reference(
            UniPCMultistepScheduler, "cosine", 8, "trailing", T, final_zero, solver_order=order, solver_type=variant,
            lower_order_final=lof, disable_corrector=list(off))
        assert torch.equal(grid[:-1], make_grid(den, 8)[:-1])
        xs, _, refs = run_both(sched, den, grid, eps_fn, x_T, order=order, variant=variant, lower_order_final=lof,
                               disable_corrector=off)
        last = len(xs) - (1 if final_zero and variant == "bh1" else 0)
        for i in range(last):
            assert torch.allclose(xs[i], refs[i], rtol=0, atol=1e-10), (variant, order, final_zero, lof, off, i)


# ---------------------------------------------------------------------------------------------
# identities: without its corrector UniPC-1 is DDIM, and UniPC-2 with B(h) = 1 - e^{-h} is DPM-Solver++(2M)


@pytest.mark.parametrize("pname", list(PROCS))
def test_unipc_without_corrector_is_ddim_and_dpmpp_2m(pname):
    proc = PROCS[pname]
    den = mixture_denoiser(proc)
    grid = oracle_grid(proc, 12)
    x_T = marginal_start(proc, grid, 64)
    off = range(12)
    assert torch.allclose(sample_unipc(den, x_T, grid, order=1, disable_corrector=off), sample_ddim(den, x_T, grid),
                          rtol=0, atol=1e-5)
    # UniP-2's D_1 = (m_1 - m_0) / r_1 with r_1 = -h_prev / h and weight 1/2 is DPM-Solver++(2M)'s difference
    x_T = x_T.double()
    assert torch.allclose(sample_unipc(den, x_T, grid, disable_corrector=off), sample_dpmpp_2m(den, x_T, grid),
                          rtol=0, atol=1e-10)
    # and the corrector is there: it changes the result
    assert not torch.allclose(sample_unipc(den, x_T, grid), sample_dpmpp_2m(den, x_T, grid), atol=1e-3)


# ---------------------------------------------------------------------------------------------
# accuracy


@pytest.fixture(scope="module")
def edm_references():
    """EDM, 64 starts from the Gaussian data's marginal; the ODE solved on 2,560 Karras steps by DPM-Solver++(3M)
    (it agrees with UniPC-3 on 640 steps to 1e-6 for the Gaussian, 5e-6 for the mixture)."""
    proc = PROCS["edm"]
    x_T = marginal_start(proc, oracle_grid(proc, 10), 64).double()
    return {name: (den, x_T, sample_dpmpp_3m(den, x_T, oracle_grid(proc, 2560), lower_order_final=False))
            for name, den in (("gaussian", gaussian_denoiser(proc)), ("mixture", mixture_denoiser(proc)))}


def test_unipc_order_of_accuracy(edm_references):
    """UniC raises UniP-p's order to p + 1 at no extra evaluation (Zhao et al. 2023): halving
    the step divides the error by 2^(p + 1). Measured (Gaussian data, max |x - x_ref|): p = 1: 80 -> 160 steps
    8.1e-3 -> 2.0e-3 (x4.0); p = 2: 6.7e-4 -> 8.0e-5 (x8.3); p = 3: 40 -> 80 steps 1.6e-3 -> 9.5e-5 (x16.7).
    (DPM-Solver++(3M) over the same 40 -> 80: x2.9, its warm-up bounds it.)"""
    den, x_T, ref = edm_references["gaussian"]
    proc = den.process

    def err(order: int, steps: int) -> float:
        x = sample_unipc(den, x_T, oracle_grid(proc, steps), order=order, lower_order_final=False)
        return float((x - ref).abs().max())

    for order, steps in ((1, 80), (2, 80), (3, 40)):
        ratio = err(order, steps) / err(order, 2 * steps)
        assert 2 ** (order + 1) * 0.75 < ratio < 2 ** (order + 1) * 1.35, (order, ratio)


def test_unipc_beats_dpm_solver_at_equal_evaluations(edm_references):
    """Against the same fine solution, same grid, one evaluation per step each. Measured max errors at 40 / 80
    steps: Gaussian 2M 1.8e-2 / 4.2e-3, UniPC-2 5.7e-3 / 6.7e-4, 3M 2.6e-3 / 9.0e-4, UniPC-3 1.6e-3 / 9.5e-5;
    mixture 2M 8.1e-2 / 2.3e-2, UniPC-2 5.2e-2 / 9.7e-3, 3M 4.7e-2 / 9.9e-3, UniPC-3 3.8e-2 / 3.1e-3."""
    for den, x_T, ref in edm_references.values():
        for steps, factor in ((40, 1.0), (80, 0.5)):
            grid = oracle_grid(den.process, steps)
            e2, e3 = ((sample_unipc(den, x_T, grid, order=p, lower_order_final=False) - ref).abs().max()
                      for p in (2, 3))
            assert e2 < factor * (sample_dpmpp_2m(den, x_T, grid, lower_order_final=False) - ref).abs().max(), steps
            assert e3 < factor * (sample_dpmpp_3m(den, x_T, grid, lower_order_final=False) - ref).abs().max(), steps


@pytest.mark.parametrize("pname", list(PROCS))
def test_unipc_gaussian_oracle_against_dpmpp_2m(pname):
    """The output law from a moment-matched start (deterministic: discretisation only), Karras grid, default
    options, worst |std / sd - 1| over the two coordinates. Measured on every process but VE (VE within 0.01):
                 10 steps   20       30
    dpmpp_2m     .120       .039     .016
    unipc        .140       .027     .0072
    At 10 steps the grid's first steps are too long for either, and UniPC's extrapolation is 1.17x worse; from 20
    steps it is better, from 30 steps more than twice."""
    proc = PROCS[pname]
    den = gaussian_denoiser(proc)
    for steps, ratio, bound in ((10, 1.25, 0.15), (20, 0.75, 0.03), (30, 0.5, 0.008)):
        grid = oracle_grid(proc, steps)
        x_T = marginal_start(proc, grid, 10, 200)

        def std_err(x: torch.Tensor) -> float:
            x = x.double().reshape(-1, 2)
            assert torch.allclose(x.mean(0), MU, atol=1e-4)  # the mean is exact for any linear multistep here
            return float((x.std(0) / SD - 1).abs().max())

        ours, theirs = std_err(sample_unipc(den, x_T, grid)), std_err(sample_dpmpp_2m(den, x_T, grid))
        assert ours < bound and ours < ratio * theirs, (steps, ours, theirs)


def test_unipc_start_at_alpha_zero():
    """A process whose log-SNR is -inf at t = 1 (Flow without its clamp; a zero-terminal-SNR chain): h is infinite
    for the first step, which is DDIM's (x_s = sigma_s x_T + alpha_s x0), the next step is not corrected and no
    difference is taken with the estimate at t = 1. Measured worst std error at 10 steps: bh2 order 2 / 3 .009 /
    .008 (Flow with its clamp at lambda = -27.6: .016 / .010)."""

    class UnclampedFlow(Flow):
        def log_snr(self, t: torch.Tensor) -> torch.Tensor:
            t = torch.as_tensor(t, dtype=F64)
            return 2 * (torch.log1p(-t) - torch.log(t))

    proc = UnclampedFlow()
    den = gaussian_denoiser(proc)
    grid = make_grid(den, 10, None, "unipc")
    assert float(proc.log_snr(grid[0])) == -float("inf")
    x_T = marginal_start(proc, grid, 10, 200)
    for variant in ("bh1", "bh2"):
        for order in (1, 2, 3):
            x = sample_unipc(den, x_T, grid, order=order, variant=variant).double().reshape(-1, 2)
            assert torch.isfinite(x).all() and ((x.std(0) / SD - 1).abs() < 0.1).all(), (variant, order)
    x = sample_unipc(den, x_T, grid).double().reshape(-1, 2)
    assert ((x.std(0) / SD - 1).abs() < 0.012).all()


# ---------------------------------------------------------------------------------------------
# the sampler contract: callback, options, seeds


def test_unipc_callback_and_entry_point():
    den = gaussian_denoiser(PROCS["ddpm_cosine"])
    calls: list[dict] = []
    out = diffusa.sample(den, (3, 2), sampler="unipc", steps=7, generator=torch.Generator().manual_seed(0),
                         callback=calls.append, order=3, variant="bh1")
    grid = make_grid(den, 7, None, "unipc")
    assert [c["i"] for c in calls] == list(range(7))
    assert [float(c["t"]) for c in calls] == grid[:-1].tolist()
    assert [float(c["s"]) for c in calls] == grid[1:].tolist()
    assert all(c["x"].shape == (3, 2) and c["x0"].shape == (3, 2) for c in calls)
    assert torch.equal(calls[-1]["x"], out) and torch.equal(out, calls[-1]["x0"])  # the step to t = 0 is x0
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    again = diffusa.sample(den, (3, 2), sampler="unipc", steps=7, generator=torch.Generator().manual_seed(0),
                           order=3, variant="bh1")
    assert torch.equal(out, again)


def test_unipc_option_errors():
    den = gaussian_denoiser(PROCS["vp"])
    for bad in ({"order": 4}, {"order": 0}, {"variant": "bh3"}, {"solver_type": "bh2"}):
        with pytest.raises(DiffusaError):
            diffusa.sample(den, (2, 2), sampler="unipc", steps=3, **bad)


def test_unipc_through_the_pipeline_callback_stops():
    """The pipeline's callback (step, t, x_t, x0) sees every step, and returning True stops there (the samples are
    then that step's x0), as for every sampler."""
    seen: list[int] = []
    res = diffusa.load("mnist-pixel")(n=2, sampler="unipc", steps=6, seed=0,
                                      callback=lambda k, t, x, x0: seen.append(k) or k == 2)
    assert seen == [0, 1, 2] and res.stopped_at == 2 and res.settings["nfe"] == 3
    assert torch.isfinite(res.samples).all()
