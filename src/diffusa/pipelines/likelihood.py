"""Bits/dim of 8-bit images under a loaded model: the variational bound of a discrete chain (Ho et al. 2020, eq. 5;
Nichol & Dhariwal 2021), or the probability-flow ODE likelihood of a continuous process (Song et al. 2021, App. D)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffusa.errors import DiffusaError
from diffusa.pipelines.request import check_seed

DEFAULT_TERMS = 100  # bound terms per image on a chain: an unbiased K-term estimate
DEFAULT_RTOL = 1e-5  # the ODE solver's tolerance (rtol = atol)
ODE_BATCH = 100  # images per ODE solve: the solver runs on a whole batch at once; this bounds its memory


def likelihood_images(x: Any, shape: tuple[int, ...]) -> torch.Tensor:
    """The images `likelihood` measures, as float (N, C, H, W) in [-1, 1] of the model's data `shape` (C, H, W): a
    tensor or numpy array, float (N, C, H, W) in [-1, 1] from 8-bit pixels, or uint8 pixels (N, H, W, C)
    (`Samples.images`; (N, H, W) for one channel) or (N, C, H, W); one DiffusaError naming x otherwise."""
    c, h, w = shape
    if isinstance(x, np.ndarray):
        if x.dtype != np.uint8 and not np.issubdtype(x.dtype, np.floating):
            raise DiffusaError(f"x must be uint8 pixels or float images in [-1, 1], got a numpy array of {x.dtype}")
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not torch.is_tensor(x):
        raise DiffusaError(f"x must be a tensor or a numpy array of images, got {type(x).__name__}")
    got = tuple(x.shape)
    if x.dtype == torch.uint8:
        if x.ndim == 3 and c == 1:
            x = x[..., None]  # (N, H, W): one channel
        if x.ndim == 4 and tuple(x.shape[1:]) == (h, w, c) != (c, h, w):
            x = x.movedim(-1, 1)
        x = x.float() / 127.5 - 1
    elif not x.is_floating_point():
        raise DiffusaError(f"x must be uint8 pixels or float images in [-1, 1], got {x.dtype}")
    if x.ndim != 4 or tuple(x.shape[1:]) != (c, h, w):
        raise DiffusaError(f"x must be this model's images: float (N, {c}, {h}, {w}) in [-1, 1], or uint8 pixels "
                           f"(N, {h}, {w}, {c}); got {x.dtype} of shape {got}")
    if not torch.isfinite(x).all():
        raise DiffusaError("x holds NaN or inf values")
    return x.float()


def image_likelihood(run: Any, name: str, x: torch.Tensor | np.ndarray, *, terms: int | str | None = None,
                     variance: str | None = None, rtol: float | None = None, seed: int = 0,
                     batch_size: int | None = None, plot: str | Path | None = None) -> dict[str, Any]:
    """Bits/dim of images x (float (N, C, H, W) in [-1, 1] from 8-bit pixels, or uint8: `likelihood_images`) as a
    JSON-ready dict.

    A discrete chain: the bound with `terms` terms per image (default 100; "all" for the full bound) and the
    fixed step `variance` ("beta_tilde", default, or "beta") of a model that does not learn it; `plot` draws the
    bound's terms against t. A continuous process: the ODE with Hutchinson's trace estimator, uniform
    dequantization and tolerance `rtol`, `batch_size` images per solve (default 100). Noise, probes and the
    bound's random terms all come from one generator seeded with `seed`.
    """
    from diffusa.likelihood import bits_per_dim, ode_bits_per_dim
    from diffusa.process import DiscreteDDPM

    if not run.is_image:
        raise DiffusaError("likelihood measures images (bits per dimension of 8-bit pixels); this model's data are "
                           "points")
    if "latent" in run.meta:
        raise DiffusaError("likelihood measures 8-bit pixels; this run is a latent model, whose likelihood would be "
                           "of its latents, not of the images")
    if "consistency" in run.meta:
        raise DiffusaError("likelihood needs a diffusion model's probability-flow ODE or bound; this run is a "
                           "consistency model (diffusa distill), which has neither")
    if run.config.data.super_resolution or run.config.data.inpaint:
        raise DiffusaError("likelihood is of unconditional (or label/text-conditional) images; this run is "
                           "conditioned on an image (super-resolution or inpainting), whose likelihood would be "
                           "conditional on that image")
    seed = check_seed(seed)
    x = likelihood_images(x, run.data_shape)
    n = len(x)
    if n < 1:
        raise DiffusaError("likelihood needs at least one image")
    den = run.denoiser
    proc = den.process
    discrete = isinstance(proc, DiscreteDDPM)
    given = {"rtol": rtol} if discrete else {"terms": terms, "plot": plot, "variance": variance}
    wrong = [k for k, v in given.items() if v is not None]
    if wrong:
        how = ("the variational bound of its discrete chain" if discrete
               else "the probability-flow ODE (continuous process)")
        raise DiffusaError(f"{', '.join(wrong)}: not for this model, whose likelihood comes from {how}")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise DiffusaError(f"batch_size must be a positive integer, got {batch_size!r}")
    g = torch.Generator().manual_seed(seed)
    out: dict[str, Any] = {"n": n, "seed": seed}
    if discrete:
        if terms == "all":
            k = None
        elif terms is None:
            k = DEFAULT_TERMS
        elif isinstance(terms, int) and not isinstance(terms, bool) and terms >= 1:
            k = terms
        else:
            raise DiffusaError(f"terms must be 'all' or a positive integer, got {terms!r}")
        var = variance or "beta_tilde"
        kw = {} if batch_size is None else {"batch_size": batch_size}
        res = bits_per_dim(den, x, terms=k, variance=var, generator=g, **kw)
        if plot is not None:
            from diffusa.viz import save_bound_terms

            save_bound_terms(res.times.tolist(), res.terms.tolist(), Path(plot),
                             f"{Path(name).name}: bound terms, total {res.total:.3f} bits/dim")
        se = res.se if math.isfinite(res.se) else None  # one image: no standard error (and JSON has no NaN)
        out.update({"method": "variational bound", "bpd": res.total, "se": se, "prior_bpd": res.prior,
                    "terms": "all" if k is None else k, "num_steps": proc.num_steps,
                    "variance": "learned" if den.learned_variance else var,
                    "plot": None if plot is None else str(plot)})
        return out
    tol = DEFAULT_RTOL if rtol is None else rtol
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not math.isfinite(tol) or tol <= 0:
        raise DiffusaError(f"rtol must be a positive number, got {rtol!r}")
    batch = batch_size or ODE_BATCH
    parts, nfe = [], 0
    for i in range(0, n, batch):
        bpd, k = ode_bits_per_dim(den, x[i:i + batch], generator=g, divergence="hutchinson", rtol=tol, atol=tol)
        parts.append(bpd)
        nfe += k
    per_image = torch.cat(parts)
    se = float(per_image.std() / math.sqrt(n)) if n > 1 else None  # JSON has no NaN
    out.update({"method": "probability-flow ODE, Hutchinson trace, uniform dequantization",
                "bpd": float(per_image.mean()), "se": se, "nfe": nfe, "rtol": tol})
    return out


__all__ = ["DEFAULT_RTOL", "DEFAULT_TERMS", "ODE_BATCH", "image_likelihood", "likelihood_images"]
