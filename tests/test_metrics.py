"""Sample-quality metrics against closed forms, and the shipped digit classifier."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy.stats import norm

from diffusa.metrics import (
    classify,
    confidence_stats,
    energy_distance,
    frechet_distance,
    kernel_inception_distance,
    point_metrics,
)

# -- Frechet distance --------------------------------------------------------------------------


def test_frechet_distance_matches_closed_form_for_diagonal_gaussians() -> None:
    """FD(N(m1, diag v1), N(m2, diag v2)) = |m1 - m2|^2 + sum_i (sqrt(v1_i) - sqrt(v2_i))^2.
    With 200,000 samples per side the estimate is within 1% of it (observed error ~0.1%)."""
    rng = np.random.default_rng(0)
    m1, v1 = np.array([0.0, 0.0, 1.0, -1.0]), np.array([1.0, 2.0, 0.5, 1.0])
    m2, v2 = np.array([1.0, 0.5, 1.0, 0.0]), np.array([1.0, 0.5, 2.0, 0.25])
    n = 200_000
    a = m1 + np.sqrt(v1) * rng.standard_normal((n, 4))
    b = m2 + np.sqrt(v2) * rng.standard_normal((n, 4))
    exact = ((m1 - m2) ** 2).sum() + ((np.sqrt(v1) - np.sqrt(v2)) ** 2).sum()
    assert exact == pytest.approx(2.25 + 1.25)  # |dm|^2 = 1 + 0.25 + 0 + 1; sqrt terms 0 + 0.5 + 0.5 + 0.25
    assert frechet_distance(a, b) == pytest.approx(exact, rel=0.01)
    assert frechet_distance(b, a) == pytest.approx(frechet_distance(a, b), rel=1e-6)
    assert frechet_distance(torch.from_numpy(a).float(), torch.from_numpy(b).float()) == pytest.approx(exact, rel=0.01)


def test_frechet_distance_of_a_set_with_itself_is_zero() -> None:
    rng = np.random.default_rng(1)
    a = np.maximum(rng.standard_normal((2000, 64)) @ rng.standard_normal((64, 64)), 0)  # correlated, ReLU-like
    assert abs(frechet_distance(a, a)) < 1e-6 * np.trace(np.cov(a, rowvar=False))


def test_frechet_distance_with_fewer_samples_than_dimensions_is_finite_and_silent() -> None:
    """Singular covariances (n < d, as in a small `diffusa eval --n`) give a finite value, no warnings
    (a warning text on stderr would break the CLI's one-line contract, a DeprecationWarning the next SciPy)."""
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((50, 128)), rng.standard_normal((50, 128)) + 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fd = frechet_distance(a, b)
        frechet_distance(rng.standard_normal((500, 8)), rng.standard_normal((500, 8)))
    assert math.isfinite(fd) and fd > 0


# -- energy distance ---------------------------------------------------------------------------


def _mean_abs_normal(m: float, s: float) -> float:
    """E|Z| for Z ~ N(m, s^2) (folded normal mean)."""
    return s * math.sqrt(2 / math.pi) * math.exp(-m * m / (2 * s * s)) + m * (1 - 2 * norm.cdf(-m / s))


def test_energy_distance_closed_form_1d() -> None:
    """X ~ N(0, 1), Y ~ N(d, 1): ED = 2 E|X - Y| - E|X - X'| - E|Y - Y'| with X - Y ~ N(-d, 2).
    For d = 3 that is ~3.80; 3,000 samples per side land within 5% (the V-statistic's bias is O(1/n))."""
    d = 3.0
    exact = 2 * _mean_abs_normal(d, math.sqrt(2)) - 2 * _mean_abs_normal(0.0, math.sqrt(2))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3000, 1, generator=g)
    y = torch.randn(3000, 1, generator=g) + d
    assert energy_distance(x, y) == pytest.approx(exact, rel=0.05)
    assert energy_distance(y, x) == pytest.approx(energy_distance(x, y), rel=1e-9)


def test_energy_distance_same_distribution_is_near_zero_relative_to_a_shift() -> None:
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(2000, 2, generator=g), torch.randn(2000, 2, generator=g)
    same = energy_distance(x, y)
    shifted = energy_distance(x, y + torch.tensor([0.5, 0.0]))
    assert energy_distance(x, x) == pytest.approx(0.0, abs=1e-12)
    assert shifted > 0.05
    assert abs(same) < 0.1 * shifted
    assert energy_distance(x.numpy(), (y + 0.5).numpy()) > shifted  # numpy input, a bigger shift


def test_point_metrics_floor_and_ratio() -> None:
    g = torch.Generator().manual_seed(2)
    ref, floor_set = torch.randn(1000, 2, generator=g), torch.randn(1000, 2, generator=g)
    good = point_metrics(torch.randn(1000, 2, generator=g), ref, floor_set)
    bad = point_metrics(torch.randn(1000, 2, generator=g) * 2 + 1, ref, floor_set)
    assert good["n"] == 1000 and good["energy_distance_floor"] == bad["energy_distance_floor"]
    assert bad["ratio_to_floor"] > 10 * good["ratio_to_floor"]
    assert good["ratio_to_floor"] == pytest.approx(good["energy_distance"] / good["energy_distance_floor"])


# -- KID ---------------------------------------------------------------------------------------


def test_kid_is_unbiased_near_zero_for_one_distribution() -> None:
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((1000, 16)), rng.standard_normal((1000, 16))
    same, same_std = kernel_inception_distance(x, y, subset_size=300)
    shifted, _ = kernel_inception_distance(x, y + 0.5, subset_size=300)
    assert shifted > 0.5
    assert abs(same) < 0.02 * shifted
    assert abs(same) < 3 * same_std + 1e-3  # unbiased: zero within its spread, can be negative
    assert kernel_inception_distance(x, y, subset_size=300) == (same, same_std)  # seeded


# -- classifier confidence ---------------------------------------------------------------------


def test_confidence_stats_by_hand() -> None:
    probs = torch.tensor([
        [0.95, 0.03, 0.02],  # confident, class 0
        [0.50, 0.45, 0.05],  # not confident
        [0.00, 0.01, 0.99],  # confident, class 2
        [0.05, 0.05, 0.90],  # exactly at the threshold: counts
    ])
    s = confidence_stats(probs)
    assert s["confident_share"] == pytest.approx(0.75)
    assert s["class_counts"] == [1, 0, 2]
    assert s["classes_present"] == 2
    assert s["mean_confidence"] == pytest.approx((0.95 + 0.50 + 0.99 + 0.90) / 4)
    strict = confidence_stats(probs, threshold=0.96)
    assert strict["confident_share"] == pytest.approx(0.25) and strict["class_counts"] == [0, 0, 1]


# -- the shipped classifier (accuracy, calibration, rejection: tests/test_judge.py) -------------


def test_image_fd_floor_is_far_below_noise(digit_classifier_path, mnist5k: dict) -> None:
    """In the classifier's features, real-vs-real FD is small next to noise-vs-real."""
    f_test, _ = classify(mnist5k["test"].x)
    train = mnist5k["train"]
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))  # the splits are sorted by class
    f_train, _ = classify(train.x[perm[:500]])
    f_noise, _ = classify(torch.rand(500, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    assert frechet_distance(f_train, f_test) < 0.1 * frechet_distance(f_noise, f_test)


def test_sliced_wasserstein_of_a_shift_is_the_mean_projected_shift() -> None:
    from diffusa.metrics import sliced_wasserstein

    g = torch.Generator().manual_seed(0)
    a = torch.randn(300, 5, generator=g, dtype=torch.float64)
    shift = torch.tensor([0.5, -1.0, 2.0, 0.0, 0.25], dtype=torch.float64)
    # each projection of a + shift is that of a moved by <shift, theta>: sorted pairs differ by exactly that
    dirs = torch.randn(5, 64, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    expected = float((shift @ (dirs / dirs.norm(dim=0))).abs().mean())
    got = sliced_wasserstein(a, a + shift, projections=64, generator=torch.Generator().manual_seed(3))
    assert got == pytest.approx(expected, rel=1e-12)
    assert sliced_wasserstein(a, a[torch.randperm(300, generator=g)]) == 0.0  # the order of a set does not matter
    with pytest.raises(ValueError, match="one shape"):
        sliced_wasserstein(a, a[:10])


def test_laplacian_swd_is_zero_on_one_set_and_sees_lost_detail_at_the_fine_levels() -> None:
    import torch.nn.functional as F

    from diffusa.data.scenes import render_scenes
    from diffusa.metrics import laplacian_swd

    x, other = render_scenes(24, 32, seed=1), render_scenes(24, 32, seed=2)
    assert laplacian_swd(x, x, smallest=8) == [0.0, 0.0, 0.0]  # levels 32, 16 and the 8x8 residual
    blurry = F.interpolate(F.avg_pool2d(x, 4), scale_factor=4, mode="bicubic")
    real, lost = laplacian_swd(x, other, smallest=8), laplacian_swd(blurry, other, smallest=8)
    # the finest level: real scenes against real ones stay close, the 4x-shrunk-and-bicubic ones do not
    assert lost[0] > 5 * real[0] and lost[1] > 2 * real[1]
