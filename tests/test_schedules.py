"""Beta schedules and sampling grids, checked against the papers' formulas and against diffusers."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from diffusa.errors import DiffusaError
from diffusa.schedules import (
    cosine_betas,
    discrete_grid,
    discrete_indices,
    linear_betas,
    make_betas,
    scaled_linear_betas,
    sigmoid_betas,
    uniform_grid,
)

T = 1000


def test_linear_endpoints_and_spacing():
    b = linear_betas(T)
    assert b.dtype == torch.float64 and b.shape == (T,)
    # float64 linspace: exact up to a few ulps
    assert b[0].item() == pytest.approx(1e-4, abs=1e-15)
    assert b[-1].item() == pytest.approx(0.02, abs=1e-15)
    assert torch.allclose(b.diff(), torch.full((T - 1,), (0.02 - 1e-4) / (T - 1), dtype=torch.float64),
                          rtol=0, atol=1e-15)


def test_linear_rescales_with_num_steps():
    # IDDPM's get_named_beta_schedule: scale = 1000 / T keeps alphabar_T about the same
    b = linear_betas(100)
    assert b[0].item() == pytest.approx(1e-3, abs=1e-15)
    assert b[-1].item() == pytest.approx(0.2, abs=1e-15)


@pytest.mark.parametrize("T_small", [1, 5, 10, 20])
def test_short_linear_chains_stay_valid(T_small):
    # the 1000 / T scaling reaches beta_end >= 1 for T <= 20; capped at 0.999, the chain stays a chain
    b = make_betas("linear", T_small)
    assert (b > 0).all() and (b <= 0.999).all()
    ab = torch.cumprod(1 - b, 0)
    assert (ab > 0).all() and (ab.diff() < 0).all()


def test_cosine_alphabar_matches_nichol_dhariwal_eq17():
    s = 0.008
    b = cosine_betas(T)
    ab = torch.cumprod(1 - b, 0)

    def f(u: float) -> float:
        return math.cos((u / T + s) / (1 + s) * math.pi / 2) ** 2

    ref = torch.tensor([f(i) / f(0) for i in range(1, T + 1)], dtype=torch.float64)
    # eq. 17 holds exactly until the 0.999 clip bites (only the last step, where alphabar ~ 1e-9 anyway)
    unclipped = b < 0.999
    assert unclipped[:-1].all()
    assert torch.allclose(ab[unclipped], ref[unclipped], rtol=1e-10, atol=1e-15)
    assert (b <= 0.999).all() and (b > 0).all()
    assert b[-1].item() == pytest.approx(0.999)
    # betas grow along the chain
    assert (b.diff() >= 0).all()


@pytest.mark.parametrize(
    ("ours", "name"),
    [(linear_betas, "linear"), (cosine_betas, "squaredcos_cap_v2"), (scaled_linear_betas, "scaled_linear"),
     (sigmoid_betas, "sigmoid")],
)
def test_betas_match_diffusers(ours, name):
    kwargs = {"beta_start": 0.00085, "beta_end": 0.012} if name == "scaled_linear" else {}
    ref = DDPMScheduler(num_train_timesteps=T, beta_schedule=name, **kwargs).betas.double()
    # diffusers stores float32: relative error 6e-8 on betas <= 0.999
    assert torch.allclose(ours(T), ref, rtol=0, atol=1e-6)


def test_make_betas_by_name_and_errors():
    assert torch.equal(make_betas("cosine", 50), cosine_betas(50))
    with pytest.raises(DiffusaError):
        make_betas("quadratic", 10)
    with pytest.raises(DiffusaError):
        make_betas("linear", 0)


# step counts for which diffusers' float `np.arange` neither lands on a .5 tie (e.g. 48: 937.4999..)
# nor emits an extra step below 0 (e.g. 61); on those diffusers' trailing timesteps are float noise.
STEP_COUNTS = [1, 2, 3, 7, 10, 20, 25, 50, 100, 333, 500, 999, 1000]


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_indices_match_diffusers_ddim(spacing):
    sched = DDIMScheduler(num_train_timesteps=T, timestep_spacing=spacing)
    for k in STEP_COUNTS:
        sched.set_timesteps(k)
        # diffusers' timesteps are 0-based step indices; ours are 1-based
        assert discrete_indices(T, k, spacing) == (sched.timesteps + 1).tolist(), k


def test_trailing_indices_well_formed_for_every_step_count():
    for k in range(1, T + 1):
        idx = discrete_indices(T, k, "trailing")
        assert len(idx) == k and idx[0] == T and idx[-1] >= 1
        assert all(a > b for a, b in itertools.pairwise(idx))


def test_leading_indices_formula():
    assert discrete_indices(T, 10, "leading") == [901, 801, 701, 601, 501, 401, 301, 201, 101, 1]
    assert discrete_indices(T, 3, "leading") == [667, 334, 1]


def _iddpm_space_timesteps(num_timesteps: int, count: int) -> list[int]:
    """IDDPM's respace.space_timesteps for one section (0-based), reimplemented."""
    frac_stride = (num_timesteps - 1) / (count - 1)
    cur, taken = 0.0, []
    for _ in range(count):
        taken.append(round(cur))
        cur += frac_stride
    return taken


@pytest.mark.parametrize("k", [2, 3, 10, 25, 50, 100, 250, 1000])
def test_even_indices(k):
    idx = discrete_indices(T, k, "even")
    assert len(idx) == k
    assert idx[0] == T and idx[-1] == 1
    assert all(a > b for a, b in itertools.pairwise(idx))
    # same as IDDPM up to how an exact .5 tie is rounded (IDDPM rounds 0-based, accumulated floats;
    # we round 1-based), so any step is at most one off
    ref = sorted((i + 1 for i in _iddpm_space_timesteps(T, k)), reverse=True)
    assert max(abs(a - b) for a, b in zip(idx, ref, strict=True)) <= 1
    if k in (2, 10, 50, 100, 1000):  # no ties on the way: identical
        assert idx == ref


def test_even_single_step_starts_at_the_last_step():
    assert discrete_indices(T, 1, "even") == [T]


@pytest.mark.parametrize("spacing", ["leading", "trailing", "even"])
def test_discrete_grid(spacing):
    g = discrete_grid(T, 20, spacing)
    idx = discrete_indices(T, 20, spacing)
    assert g.dtype == torch.float64 and g.shape == (21,)
    assert g[-1].item() == 0.0
    assert (g.diff() < 0).all()
    assert torch.equal(g[:-1], torch.tensor(idx, dtype=torch.float64) / T)


def test_uniform_grid():
    g = uniform_grid(4)
    assert torch.allclose(g, torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0], dtype=torch.float64))
    g = uniform_grid(2, t_max=0.9, t_min=0.1)
    assert np.allclose(g.numpy(), [0.9, 0.5, 0.1, 0.0])


@pytest.mark.parametrize(
    ("steps", "spacing"),
    [(0, "leading"), (-3, "trailing"), (2.5, "leading"), ("10", "even"), (1001, "leading"), (10, "linspace"),
     (10, "")],
)
def test_bad_grid_inputs_raise(steps, spacing):
    with pytest.raises(DiffusaError):
        discrete_indices(T, steps, spacing)
    with pytest.raises(DiffusaError):
        discrete_grid(T, steps, spacing)


def test_bad_uniform_steps_raise():
    with pytest.raises(DiffusaError):
        uniform_grid(0)
