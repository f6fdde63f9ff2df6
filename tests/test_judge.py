"""The digit judge (issue 17): precision/recall against known answers, ECE by hand, the training data's
operations, and the shipped classifier's accuracy, calibration and rejection as numbers on fixed inputs
(docs/judge.md records how they were measured)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from diffusa.errors import DiffusaError
from diffusa.metrics import (
    JUDGE_SEED,
    classify,
    expected_calibration_error,
    fit_temperature,
    judge_report,
    load_digit_classifier,
    precision_recall,
)
from diffusa.nets.classifier import TRAIN_KINDS, UNSEEN_KINDS, DigitClassifier, augment_digits, non_digits

# -- precision and recall (Kynkaanniemi et al. 2019) -------------------------------------------


def test_precision_recall_by_hand() -> None:
    """Real points 0..4 on a line, k = 1: every real radius is 1. Fakes {0.5, 10}: 0.5 is inside, 10 is not
    (precision 1/2); the fakes' radius is their distance 9.5, so the ball around 0.5 holds every real point
    (recall 1)."""
    real = torch.arange(5.0)[:, None]
    fake = torch.tensor([[0.5], [10.0]])
    assert precision_recall(real, fake, k=1) == (0.5, 1.0)
    assert precision_recall(fake, real, k=1) == (1.0, 0.5)  # the roles swap
    with pytest.raises(ValueError, match="more than 3 points"):
        precision_recall(real[:3], real)


def _cloud(n: int, centre: float, g: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    x = torch.randn(n, 2, generator=g) * scale
    x[:, 0] += centre
    return x


def test_precision_recall_on_gaussian_clouds_with_known_overlap() -> None:
    """1,000 points per set in 2-D, k = 3 (measured values in the comments)."""
    g = torch.Generator().manual_seed(0)
    real = _cloud(1000, 0.0, g)
    assert precision_recall(real, real) == (1.0, 1.0)  # every point is its own centre
    p, r = precision_recall(real, _cloud(1000, 0.0, g))  # the same distribution: ~1 / ~1 (0.977 / 0.968)
    assert p > 0.95 and r > 0.95
    assert precision_recall(real, _cloud(1000, 20.0, g)) == (0.0, 0.0)  # disjoint
    # two modes, 20 standard deviations apart; the samples cover one of them: precision ~1, recall ~0.5
    two_modes = torch.cat([_cloud(500, -10.0, g), _cloud(500, 10.0, g)])
    p, r = precision_recall(two_modes, _cloud(1000, 10.0, g))  # 0.982 / 0.483
    assert p > 0.95 and 0.45 < r < 0.52
    # "sharp but few kinds" against "diverse but blurry": a narrow cloud keeps precision and loses recall,
    # a wide one the other way round
    p_narrow, r_narrow = precision_recall(real, _cloud(1000, 0.0, g, scale=0.5))  # 0.989 / 0.727
    p_wide, r_wide = precision_recall(real, _cloud(1000, 0.0, g, scale=1.5))  # 0.936 / 0.986
    assert p_narrow > 0.95 and r_narrow < 0.8 and r_wide > 0.95 and p_wide < p_narrow


# -- expected calibration error ----------------------------------------------------------------


def test_fit_temperature_recovers_a_known_overconfidence() -> None:
    """Labels drawn from softmax(z), logits given as 2 z (twice as confident): the NLL-optimal temperature is 2,
    found on the grid to within its spacing and the sampling noise of 20,000 draws."""
    g = torch.Generator().manual_seed(0)
    z = 1.5 * torch.randn(20000, 10, generator=g)
    labels = torch.multinomial(torch.softmax(z, 1), 1, generator=g)[:, 0]
    assert fit_temperature(2 * z, labels) == pytest.approx(2.0, rel=0.05)
    assert fit_temperature(z, labels) == pytest.approx(1.0, rel=0.05)


def test_expected_calibration_error_by_hand() -> None:
    """Four predictions: two at 0.95 (one right: bin (14/15, 1] has accuracy 0.5, confidence 0.95) and two at
    0.6 (both right: bin (8/15, 9/15] has accuracy 1, confidence 0.6).
    ECE = 2/4 * |0.5 - 0.95| + 2/4 * |1 - 0.6| = 0.425."""
    probs = torch.tensor([[0.95, 0.05], [0.05, 0.95], [0.6, 0.4], [0.4, 0.6]])
    labels = torch.tensor([0, 0, 0, 1])
    assert expected_calibration_error(probs, labels) == pytest.approx(0.425)
    perfect = torch.eye(3)
    assert expected_calibration_error(perfect, torch.arange(3)) == pytest.approx(0.0)


# -- what the judge is trained and tested on ---------------------------------------------------


def test_augmentation_and_non_digits_are_seeded_images_in_range(mnist5k: dict) -> None:
    digits = mnist5k["test"].x[::100]
    aug = augment_digits(digits, torch.Generator().manual_seed(0))
    assert aug.shape == digits.shape and aug.min() >= -1 and aug.max() <= 1
    assert torch.equal(aug, augment_digits(digits, torch.Generator().manual_seed(0)))
    assert (aug - digits).abs().mean() > 0.02  # it does move them
    for kind in TRAIN_KINDS + UNSEEN_KINDS:
        x = non_digits(kind, digits, torch.Generator().manual_seed(1))
        assert x.shape == digits.shape and x.min() >= -1 - 1e-6 and x.max() <= 1 + 1e-6, kind
        assert torch.equal(x, non_digits(kind, digits, torch.Generator().manual_seed(1))), kind
    shuffled = non_digits("shuffled", digits, torch.Generator().manual_seed(1))
    assert torch.equal(shuffled.flatten(1).sort(1).values, digits.flatten(1).sort(1).values)  # the same pixels
    with pytest.raises(ValueError, match="unknown kind"):
        non_digits("letters", digits, torch.Generator())


def test_loader_refuses_another_network_in_one_line(tmp_path: Path) -> None:
    """The 10-class classifier shipped before issue 17 (no "not a digit" class, no temperature) is refused."""
    from diffusa.checkpoint import save_tensors

    old = DigitClassifier(num_classes=10).state_dict()
    del old["temperature"]
    save_tensors(tmp_path / "old.safetensors", old)
    with pytest.raises(DiffusaError) as err:
        load_digit_classifier(tmp_path / "old.safetensors")
    assert "old.safetensors" in str(err.value) and "\n" not in str(err.value)


# -- the shipped judge -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def report(digit_classifier_path: Path) -> dict:
    return judge_report()


def test_shipped_judge_accuracy_and_calibration(report: dict, mnist5k: dict) -> None:
    """On the 1,000 held-out digits (never trained on, nor used to fit the temperature)."""
    assert report["accuracy"] >= 0.985  # 0.988: 12 of 1,000 wrong
    assert report["ece"] < 0.01  # 0.0087 (15 bins)
    assert report["confident_share"] > 0.96  # 0.973 recognised with max p >= 0.9
    assert report["rejected_share"] <= 0.002  # 0.001: one real digit taken for no digit
    # a sampler's faint residual noise, a soft or faint stroke do not make a digit "not a digit" (the classifier
    # trained without noise in its augmentation rejected 97% of the digits at noise 0.1)
    for name, row in report["perturbed_digits"].items():  # accuracy 0.983-0.989, rejected 0.001-0.004
        assert row["accuracy"] >= 0.98 and row["rejected"] <= 0.005 and row["confident"] > 0.96, (name, row)
    feats, probs = classify(mnist5k["test"].x[:10])
    assert feats.shape == (10, 128) and probs.shape == (10, 10)
    assert (probs.sum(1) <= 1 + 1e-6).all()  # the rest is p(not a digit)


# the share of 1,000 fixed images of each kind the shipped judge takes for no digit (max p < 0.5), as measured
# (docs/judge.md) and rounded down; issue 17 asks >= 99% for noise, blobs and shuffled-pixel digits. Some
# "partial" digits (half a 1) and "overlays" still read as digits; rectangles, inverted digits and
# checkerboards were never shown in training.
REJECTED_AT_LEAST = {"noise": 0.99, "blobs": 0.99, "shuffled": 0.99, "gaussian": 0.99, "smooth": 0.99,
                     "sparse": 0.99, "patches": 0.99, "blurred": 0.99, "partial": 0.94, "overlay": 0.93,
                     "rectangles": 0.94, "inverted": 0.99, "checkerboard": 0.99}


@pytest.mark.parametrize("kind", list(REJECTED_AT_LEAST))
def test_shipped_judge_rejects_non_digits(report: dict, kind: str) -> None:
    """Fixed non-digits (seed JUDGE_SEED + i; the digit-based kinds made from held-out digits)."""
    assert JUDGE_SEED == 17
    assert report["non_digits"][kind]["rejected"] >= REJECTED_AT_LEAST[kind], report["non_digits"][kind]
    assert report["non_digits"][kind]["confident"] <= 0.03, report["non_digits"][kind]  # at most 0.026 (overlay)


def test_image_metrics_with_too_few_samples_for_the_neighbours(digit_classifier_path: Path, mnist5k: dict) -> None:
    """`diffusa eval --n 2` is allowed (FD needs 2); precision/recall need more than k = 3 points and say None."""
    from diffusa.metrics import image_metrics

    test, train = mnist5k["test"].x, mnist5k["train"].x
    few = image_metrics(test[:3], test, train[::1000])
    assert few["precision"] is None and few["recall_floor"] is None and few["pr_n"] == 3
    enough = image_metrics(test[::250], test, train[::1000])
    assert enough["pr_n"] == 4 and 0 <= enough["precision"] <= 1 and 0 <= enough["recall_floor"] <= 1


def test_shipped_judge_records_what_it_measures(report: dict, digit_classifier_path: Path) -> None:
    """The asset's .json holds the command, the seconds and the numbers `judge_report` measures now."""
    rec = json.loads(digit_classifier_path.with_suffix(".json").read_text())
    assert rec["command"].startswith("python scripts/train_digit_classifier.py") and rec["train_seconds"] > 0
    assert rec["report"]["accuracy"] == pytest.approx(report["accuracy"], abs=2e-3)
    assert rec["report"]["ece"] == pytest.approx(report["ece"], abs=2e-3)
    for kind, row in report["non_digits"].items():
        assert rec["report"]["non_digits"][kind]["rejected"] == pytest.approx(row["rejected"], abs=2e-3), kind
