"""Sample-quality metrics, each reported beside its floor (the same metric between two sets of real data).

- Frechet distance (Heusel et al. 2017, eq. 6) and KID (Binkowski et al. 2018, unbiased MMD^2 with
  the cubic polynomial kernel) in the 128-d features of the project's digit classifier;
- the classifier's confidence on samples (share with max p >= 0.9) and class coverage;
- energy distance (Szekely & Rizzo 2013) for low-dimensional data.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np
import torch

from diffusa.checkpoint import load_state_dict_strict, load_tensors
from diffusa.nets.classifier import DigitClassifier

CONFIDENCE = 0.9


@lru_cache(maxsize=1)
def digit_classifier() -> DigitClassifier:
    """The shipped classifier (trained by scripts/train_digit_classifier.py on mnist5k's train split)."""
    path = resources.files("diffusa") / "assets" / "digit_classifier.safetensors"
    net = DigitClassifier()
    load_state_dict_strict(net, load_tensors(path), path)
    return net.eval()


@torch.no_grad()
def classify(x: torch.Tensor, batch: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, 128), probabilities (N, 10)) of images in [-1, 1]."""
    net = digit_classifier()
    feats, probs = [], []
    for i in range(0, x.shape[0], batch):
        f = net.features(x[i:i + batch].float().cpu())
        feats.append(f)
        probs.append(torch.softmax(net.head(f), dim=1))
    return torch.cat(feats), torch.cat(probs)


def frechet_distance(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^{1/2}) between Gaussians fitted to two feature sets."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    # Tr (S_a S_b)^{1/2} = sum of the square roots of the eigenvalues of S_a S_b, which are real and >= 0
    # (S_a S_b is similar to the PSD S_a^{1/2} S_b S_a^{1/2}); no sqrtm, whose `disp` flag SciPy removes in 1.18
    eig = np.linalg.eigvals(s_a @ s_b)
    tr_covmean = np.sqrt(np.clip(eig.real, 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * tr_covmean)


def kernel_inception_distance(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor, subsets: int = 10,
                              subset_size: int = 500, seed: int = 0) -> tuple[float, float]:
    """Unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3, averaged over random subsets: (mean, std)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    d = a.shape[1]
    m = min(subset_size, len(a), len(b))
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        kxx = (x @ x.T / d + 1) ** 3
        kyy = (y @ y.T / d + 1) ** 3
        kxy = (x @ y.T / d + 1) ** 3
        mmd = (kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1)) \
            - 2 * kxy.mean()
        vals.append(mmd)
    return float(np.mean(vals)), float(np.std(vals))


def energy_distance(x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray) -> float:
    """2 E|X - Y| - E|X - X'| - E|Y - Y'| (V-statistic), Euclidean norms."""
    x = torch.as_tensor(np.asarray(x), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(y), dtype=torch.float64)
    return float(2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean())


def confidence_stats(probs: torch.Tensor, threshold: float = CONFIDENCE) -> dict[str, Any]:
    """Share of samples the classifier assigns to one digit with p >= threshold; classes seen."""
    conf, pred = probs.max(dim=1)
    confident = conf >= threshold
    counts = torch.bincount(pred[confident], minlength=probs.shape[1])
    return {"confident_share": float(confident.float().mean()),
            "classes_present": int((counts > 0).sum()),
            "class_counts": counts.tolist(),
            "mean_confidence": float(conf.mean())}


def image_metrics(samples: torch.Tensor, reference: torch.Tensor, floor_set: torch.Tensor) -> dict[str, Any]:
    """FD, KID, confidence and coverage of `samples` against `reference`, with the floors measured on
    `floor_set` (other real data of the same size) against the same reference."""
    n = min(len(samples), len(floor_set))
    f_s, p_s = classify(samples)
    f_r, p_r = classify(reference)
    f_f, _ = classify(floor_set[:n])
    kid, kid_std = kernel_inception_distance(f_s, f_r)
    kid_floor, _ = kernel_inception_distance(f_f, f_r)
    out = {"n": len(samples), "n_reference": len(reference),
           "fd": frechet_distance(f_s, f_r), "fd_floor": frechet_distance(f_f, f_r),
           "kid": kid, "kid_std": kid_std, "kid_floor": kid_floor}
    stats = confidence_stats(p_s)
    out.update(stats)
    # the classifier saw the training split, so its confidence floor is measured on held-out digits
    out["confident_share_floor"] = confidence_stats(p_r)["confident_share"]
    out["feature_net"] = "diffusa digit classifier (mnist5k train split)"
    return out


def point_metrics(samples: torch.Tensor, reference: torch.Tensor, floor_set: torch.Tensor) -> dict[str, Any]:
    """Energy distance of 2-D samples to held-out data, beside the real-vs-real floor at equal N."""
    n = min(len(samples), len(reference), len(floor_set))
    ed = energy_distance(samples[:n], reference[:n])
    floor = energy_distance(floor_set[:n], reference[:n])
    return {"n": n, "energy_distance": ed, "energy_distance_floor": floor, "ratio_to_floor": ed / max(floor, 1e-12)}
