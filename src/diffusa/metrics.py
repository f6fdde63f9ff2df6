"""Sample-quality metrics, each reported beside its floor (the same metric between two sets of real data).

- Frechet distance (Heusel et al. 2017, eq. 6), KID (Binkowski et al. 2018, unbiased MMD^2 with the cubic
  polynomial kernel) and precision/recall (Kynkaanniemi et al. 2019, k-NN manifolds) in the 128-d features of
  the project's digit classifier (the "judge", docs/judge.md);
- the classifier's confidence on samples (share with max p >= 0.9), class coverage, and its own calibration
  (expected calibration error, Guo et al. 2017) and rejection of non-digits (`judge_report`);
- energy distance (Szekely & Rizzo 2013) for low-dimensional data.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from diffusa.checkpoint import load_state_dict_strict, load_tensors
from diffusa.nets.classifier import TRAIN_KINDS, UNSEEN_KINDS, DigitClassifier, gaussian_blur, non_digits

CONFIDENCE = 0.9  # a sample counts as a recognised digit at max p >= 0.9
REJECT = 0.5  # the judge takes an image for no digit at max p < 0.5
PR_K = 3  # neighbours that set the manifold radii of precision/recall (Kynkaanniemi et al. 2019)
JUDGE_SEED = 17  # the fixed non-digit sets of `judge_report`: kind i is drawn with seed JUDGE_SEED + i


def load_digit_classifier(path: Path) -> DigitClassifier:
    """A judge saved by scripts/train_digit_classifier.py; a file of another network (the 10-class classifier
    shipped before issue 17 included) is refused in one line."""
    net = DigitClassifier()
    load_state_dict_strict(net, load_tensors(path), path)
    return net.eval()


@lru_cache(maxsize=1)
def digit_classifier() -> DigitClassifier:
    """The shipped judge (trained by scripts/train_digit_classifier.py on mnist5k's train split, docs/judge.md)."""
    return load_digit_classifier(Path(str(resources.files("diffusa") / "assets" / "digit_classifier.safetensors")))


@torch.no_grad()
def classify(x: torch.Tensor, batch: int = 500, net: DigitClassifier | None = None) -> tuple[torch.Tensor,
                                                                                           torch.Tensor]:
    """(features (N, 128), digit probabilities (N, 10)) of images in [-1, 1], by the shipped judge or `net`.
    A row sums to 1 - p(not a digit)."""
    net = digit_classifier() if net is None else net
    feats, probs = [], []
    for i in range(0, x.shape[0], batch):
        f = net.features(x[i:i + batch].float().cpu())
        feats.append(f)
        probs.append(net.probabilities(f))
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


def _kth_neighbour_radii(x: torch.Tensor, k: int, chunk: int = 2048) -> torch.Tensor:
    """Distance from each point of `x` to its k-th nearest other point."""
    return torch.cat([torch.cdist(x[i:i + chunk], x).kthvalue(k + 1, dim=1).values  # +1: the point itself
                      for i in range(0, len(x), chunk)])


def _covered(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    """Whether each point lies in at least one ball (centre, radius)."""
    return torch.cat([(torch.cdist(points[i:i + chunk], centres) <= radii[None]).any(dim=1)
                      for i in range(0, len(points), chunk)])


def precision_recall(real: np.ndarray | torch.Tensor, fake: np.ndarray | torch.Tensor,
                     k: int = PR_K) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019, eqs. 1-2): the manifold of a set is the union of
    balls around its points reaching their k-th nearest neighbour; precision is the share of `fake` inside the
    real manifold ("are the samples realistic?"), recall the share of `real` inside the fake one ("is all of the
    data covered?"). Use sets of equal size: the radii shrink as a set grows."""
    real = torch.as_tensor(np.asarray(real), dtype=torch.float64)
    fake = torch.as_tensor(np.asarray(fake), dtype=torch.float64)
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} points per set")
    precision = _covered(fake, real, _kth_neighbour_radii(real, k)).double().mean()
    recall = _covered(real, fake, _kth_neighbour_radii(fake, k)).double().mean()
    return float(precision), float(recall)


def energy_distance(x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray) -> float:
    """2 E|X - Y| - E|X - X'| - E|Y - Y'| (V-statistic), Euclidean norms."""
    x = torch.as_tensor(np.asarray(x), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(y), dtype=torch.float64)
    return float(2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean())


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, projections: int = 512,
                       generator: torch.Generator | None = None) -> float:
    """Sliced Wasserstein-1 distance between two equal-size point sets (N, D): the mean over `projections` random
    unit directions of the 1-D Wasserstein distance of the projections (sorted, paired, mean |difference|)."""
    if a.shape != b.shape or a.dim() != 2:
        raise ValueError(f"sliced_wasserstein needs two (N, D) sets of one shape, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    dirs = torch.randn(a.shape[1], projections, generator=g, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    pa, pb = ((dirs.T @ v.double().T).sort(dim=1).values for v in (a, b))  # (projections, N): rows contiguous
    return float((pa - pb).abs().mean())


def _neighbourhoods(band: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, patch: int) -> torch.Tensor:
    """The patch x patch neighbourhoods of (N, C, H, W) images with top-left corners (rows, cols), each (N, K):
    (N * K, C, patch^2)."""
    n, c = band.shape[:2]
    offsets = torch.arange(patch)
    ii = rows[:, :, None, None] + offsets[:, None]  # (n, k, patch, 1)
    jj = cols[:, :, None, None] + offsets  # (n, k, 1, patch)
    picked = band.permute(0, 2, 3, 1)[torch.arange(n)[:, None, None, None], ii, jj]  # (n, k, patch, patch, c)
    return picked.reshape(-1, patch * patch, c).transpose(1, 2)


def laplacian_swd(x: torch.Tensor, y: torch.Tensor, patch: int = 7, per_image: int = 64, smallest: int = 16,
                  seed: int = 0) -> list[float]:
    """Sliced Wasserstein distance of local image statistics (Karras et al. 2018, App. D), a realism measure for
    images without a pretrained network: per level of a Laplacian pyramid (full size down to `smallest`, the
    last level the Gaussian residual), `per_image` random patch x patch neighbourhoods of each image of both sets
    (the same places), each channel normalised by the level's mean and std over both sets, then
    `sliced_wasserstein`; one number per level (x 1e3), finest first. Equal set sizes, images (N, C, H, W)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    level = [x.double(), y.double()]
    while True:
        last = level[0].shape[-1] // 2 < smallest
        down = [F.avg_pool2d(v, 2) for v in level]
        up = [F.interpolate(d, scale_factor=2, mode="bilinear") for d in down]
        bands = level if last else [v - u for v, u in zip(level, up, strict=True)]
        n, _, h, w = bands[0].shape
        rows = torch.randint(0, h - patch + 1, (n, per_image), generator=g)
        cols = torch.randint(0, w - patch + 1, (n, per_image), generator=g)
        px, py = (_neighbourhoods(b, rows, cols, patch) for b in bands)
        both = torch.cat([px, py])
        mean, std = both.mean(dim=(0, 2), keepdim=True), both.std(dim=(0, 2), keepdim=True).clamp_min(1e-8)
        out.append(1e3 * sliced_wasserstein(((px - mean) / std).flatten(1), ((py - mean) / std).flatten(1),
                                            generator=g))
        if last:
            return out
        level = down


def confidence_stats(probs: torch.Tensor, threshold: float = CONFIDENCE) -> dict[str, Any]:
    """Share of samples the classifier assigns to one digit with p >= threshold; classes seen; share it takes
    for no digit (max p < 0.5)."""
    conf, pred = probs.max(dim=1)
    confident = conf >= threshold
    counts = torch.bincount(pred[confident], minlength=probs.shape[1])
    return {"confident_share": float(confident.float().mean()),
            "classes_present": int((counts > 0).sum()),
            "class_counts": counts.tolist(),
            "mean_confidence": float(conf.mean()),
            "rejected_share": float((conf < REJECT).float().mean())}


@torch.no_grad()
def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """T minimising the NLL of softmax(logits / T) (temperature scaling: Guo et al. 2017, sec. 4.2), on a log grid
    0.2-10."""
    grid = torch.logspace(-0.7, 1.0, 341)
    nll = torch.stack([F.cross_entropy(logits.float() / t, labels) for t in grid])
    return float(grid[nll.argmin()])


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """ECE (Guo et al. 2017, eq. 3): sum over equal-width confidence bins of |B|/n |acc(B) - conf(B)|, with the
    confidence max p and the prediction its argmax."""
    conf, pred = probs.max(dim=1)
    correct = (pred == labels).double()
    which = (conf.double() * bins).ceil().clamp(1, bins).long() - 1  # bin b holds (b/bins, (b+1)/bins]
    ece = 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            ece += float(sel.double().mean() * (correct[sel].mean() - conf[sel].double().mean()).abs())
    return ece


def judge_report(net: DigitClassifier | None = None) -> dict[str, Any]:
    """How far the judge can be trusted, on fixed inputs: accuracy, ECE (15 bins) and the confident/rejected
    shares on mnist5k's held-out digits, the same for those digits with Gaussian noise (std 0.1, 0.2), blurred
    (sigma 1 px) or faint (ink at 0.7), and for each kind of non-digit (1,000 images, seed JUDGE_SEED + i,
    digit-based kinds made from the held-out digits) the share taken for no digit (max p < 0.5), the share
    taken for a digit with max p >= 0.9 and the mean max p."""
    from diffusa.data import load_dataset

    test = load_dataset("mnist5k", "test")
    _, probs = classify(test.x, net=net)
    stats = confidence_stats(probs)
    out: dict[str, Any] = {
        "accuracy": float((probs.argmax(1) == test.labels).float().mean()),
        "ece": expected_calibration_error(probs, test.labels),
        "nll": float(-torch.log(probs[torch.arange(len(probs)), test.labels].clamp_min(1e-12)).mean()),
        "confident_share": stats["confident_share"], "rejected_share": stats["rejected_share"], "non_digits": {}}
    g = torch.Generator().manual_seed(JUDGE_SEED)
    perturbed = {"noise 0.1": test.x + 0.1 * torch.randn(test.x.shape, generator=g),
                 "noise 0.2": test.x + 0.2 * torch.randn(test.x.shape, generator=g),
                 "blur 1px": gaussian_blur(test.x + 1, torch.ones(len(test.x))) - 1,
                 "faint 0.7": (test.x + 1) * 0.7 - 1}
    out["perturbed_digits"] = {}
    for name, x in perturbed.items():
        p = classify(x.clamp(-1, 1), net=net)[1]
        st = confidence_stats(p)
        out["perturbed_digits"][name] = {"accuracy": float((p.argmax(1) == test.labels).float().mean()),
                                         "confident": st["confident_share"], "rejected": st["rejected_share"]}
    for i, kind in enumerate(TRAIN_KINDS + UNSEEN_KINDS):
        x = non_digits(kind, test.x, torch.Generator().manual_seed(JUDGE_SEED + i))
        st = confidence_stats(classify(x, net=net)[1])
        out["non_digits"][kind] = {"rejected": st["rejected_share"], "confident": st["confident_share"],
                                   "mean_confidence": st["mean_confidence"], "seen_in_training": kind in TRAIN_KINDS}
    return out


EVAL_REFERENCE = 10_000  # held-out examples the samples are compared with (every built-in test split whole)


def eval_reference(data: Any) -> torch.Tensor:
    """The held-out examples `diffusa eval` compares samples with: up to EVAL_REFERENCE of the test split of a
    run's data config (a folder that streams is read in part)."""
    from diffusa.data import examples, run_dataset

    return examples(run_dataset(data, "test"), EVAL_REFERENCE)


def eval_floor(data: Any, n: int) -> torch.Tensor:
    """The real-vs-real floor's set for n samples: n training examples, the same for every call (seed 0)."""
    from diffusa.data import run_dataset

    train = run_dataset(data, "train")
    return train.get(torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:n])


def image_metrics(samples: torch.Tensor, reference: torch.Tensor, floor_set: torch.Tensor,
                  reference_judged: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, Any]:
    """FD, KID, precision/recall, confidence and coverage of `samples` against `reference`, with the floors
    measured on `floor_set` (other real data of the same size) against the same reference. Precision/recall
    compare sets of equal size m: the first m samples and floor images against m reference images drawn with
    seed 0. `reference_judged`: `classify(reference)`, computed once by a caller that judges many sets of samples
    against the same reference (None: computed here)."""
    n = min(len(samples), len(floor_set))
    f_s, p_s = classify(samples)
    f_r, p_r = classify(reference) if reference_judged is None else reference_judged
    f_f, _ = classify(floor_set[:n])
    kid, kid_std = kernel_inception_distance(f_s, f_r)
    kid_floor, _ = kernel_inception_distance(f_f, f_r)
    m = min(n, len(reference))
    f_ref = f_r[torch.randperm(len(reference), generator=torch.Generator().manual_seed(0))[:m]]
    if m > PR_K:  # k-NN radii need more than k points per set; fewer samples report None
        precision, recall = precision_recall(f_ref, f_s[:m])
        precision_floor, recall_floor = precision_recall(f_ref, f_f[:m])
    else:
        precision = recall = precision_floor = recall_floor = None
    out = {"n": len(samples), "n_reference": len(reference),
           "fd": frechet_distance(f_s, f_r), "fd_floor": frechet_distance(f_f, f_r),
           "kid": kid, "kid_std": kid_std, "kid_floor": kid_floor,
           "precision": precision, "recall": recall, "precision_floor": precision_floor,
           "recall_floor": recall_floor, "pr_k": PR_K, "pr_n": m}
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
