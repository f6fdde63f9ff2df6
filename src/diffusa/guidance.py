"""Guidance as Denoiser -> Denoiser wrappers (DESIGN.md): samplers know nothing of it.

- Classifier-free guidance (Ho & Salimans 2021): eps = eps_u + w (eps_c - eps_u), one batched network call for
  both branches; w = 0 is the unconditional model, w = 1 the conditional one (diffusers' `guidance_scale`;
  Ho & Salimans' own w is this w - 1).
- Classifier guidance (Dhariwal & Nichol 2021, Sec. 4, Algorithm 2): the score gains s grad_x log p(y | x_t, t),
  so eps shifts by -sigma s grad (for every process: score = -eps / sigma). On an ancestral step the mean then
  moves by c1 sigma_t^2 / alpha_t s grad, which for small steps equals Algorithm 1's Sigma s grad.
- Guidance as an input (Meng et al. 2023, "On distillation of guided diffusion models"; Luo et al. 2023, latent
  consistency models): a student distilled from a classifier-free guided teacher takes w as an input of its network
  (cond.guidance) and is asked once per step, over the range of w it was distilled on (`GuidanceInput`; the range
  a run records: `diffusa.runs.GuidanceRange`). The teacher of that distillation is `ClassifierFreeGuided` with each
  example's own w.

Both wrappers are Denoisers built from the wrapped one's process, prediction and settings, and stack: classifier
guidance on top of a classifier-free guided model. Conditionings are read as `diffusa.cond.Cond` (`as_cond`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import torch

from diffusa.cond import Cond, as_cond
from diffusa.errors import DiffusaError
from diffusa.prediction import Denoiser, Prediction, RawFn
from diffusa.process import as_time, expand_as

LogProbFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
NullCond = Any  # the unconditional conditioning, or a function of the conditional one that returns it


def check_scale(scale: Any, name: str = "guidance scale") -> float:
    """A guidance scale as a float: the one rule for guidance scales (ClassifierFreeGuided's, and the pipelines'
    guidance_scale and classifier_scale). A finite real number (numpy's included); a DiffusaError naming `name`
    for anything else: a bool, NaN, or inf (which makes every sample NaN)."""
    if isinstance(scale, numbers.Real) and not isinstance(scale, bool):
        try:
            value = float(scale)
        except OverflowError:  # an int beyond a float's range
            value = math.inf
        if math.isfinite(value):
            return value
    raise DiffusaError(f"{name} must be a finite number, got {scale!r}")


def null_labels(cond: Cond | torch.Tensor, null: int) -> Cond:
    """`cond` with the null label for every example (a class-conditional U-Net's label `num_classes`); its other
    fields (text, an input image: a super-resolution model is guided on its labels) are kept."""
    c = as_cond(cond)
    if c is None or c.labels is None:
        raise DiffusaError("null_labels replaces class labels, but this conditioning has none")
    return c.replace(labels=torch.full_like(c.labels, null))


def null_captions(net: Any) -> Callable[[Any], Cond]:
    """A function of a text conditioning: the same conditioning with the empty caption, tokenized by the text
    network's own `net.tokenize`, for every example (its other fields kept)."""

    def null(cond: Any) -> Cond:
        c = as_cond(cond)
        if c is None or c.tokens is None:
            raise DiffusaError("null_captions replaces a caption, but this conditioning has no text tokens")
        empty = as_cond(net.tokenize([""] * c.tokens.shape[0])).to(c.tokens.device)
        return c.replace(tokens=empty.tokens, token_mask=empty.token_mask)

    return null


class ClassifierFreeGuided(Denoiser):
    """A Denoiser that mixes the conditional and unconditional outputs: u + scale (c - u) (Ho & Salimans 2021).

    Every parameterization is affine in the network's output with coefficients of (x_t, t) alone, so mixing raw
    outputs mixes eps (and x0) with the same weights; x0 clipping applies after the mix. A learned variance is
    the conditional branch's. Both branches go through one batched call of the base's raw function, with the
    conditionings read as `Cond` and batched by `Cond.cat` (at scale 1 the conditioning goes in as it came).
    `null_cond` is the unconditional conditioning, or a function of the conditional one that returns it (e.g.
    `lambda y: null_labels(y, 10)`). Process, prediction and settings are the base's.

    `scale` None: each example's own w, read from cond.guidance (B,) and removed before the base is asked (the
    teacher of guided distillation, asked at the w drawn for each example: Luo et al. 2023, eq. 9).
    """

    def __init__(self, denoiser: Denoiser, scale: float | None, null_cond: NullCond) -> None:
        self.scale = None if scale is None else check_scale(scale)
        if not isinstance(denoiser, Denoiser):
            raise DiffusaError(f"classifier-free guidance wraps a Denoiser, got {type(denoiser).__name__}")
        if isinstance(denoiser, ClassifierGuided):  # its guidance is on the score: the raw outputs do not have it
            raise DiffusaError("classifier-free guidance wraps a Denoiser: apply it first, then classifier guidance")
        self.base, self.null_cond = denoiser, null_cond
        super().__init__(self.mix, denoiser.process, denoiser.prediction, **denoiser.settings())

    def mix(self, x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        """The guided raw output at (x_t, t): one call of the base's raw function (both branches batched)."""
        base, scale = self.base.raw, self.scale
        if cond is None:
            return base(x, t, None)  # nothing to guide towards: the unconditional model
        if scale is None:  # per example: w from the conditioning, as a (B, 1, ...) factor
            c = as_cond(cond)
            if c.guidance is None:
                raise DiffusaError("classifier-free guidance per example reads each example's scale from "
                                   "cond.guidance, and none was given")
            scale, cond = expand_as(c.guidance.to(x.dtype), x), c.replace(guidance=None)
        elif scale == 1:
            return base(x, t, cond)
        null = as_cond(self.null_cond(cond) if callable(self.null_cond) else self.null_cond)
        if not torch.is_tensor(scale) and scale == 0:
            return base(x, t, null)
        out = base(torch.cat([x, x]), torch.cat([t, t]), as_cond(cond).cat(null))
        c, u = out.chunk(2)
        if self.learned_variance:
            (c_mean, c_var), u_mean = c.chunk(2, dim=1), u.chunk(2, dim=1)[0]
            return torch.cat([u_mean + scale * (c_mean - u_mean), c_var], dim=1)
        return u + scale * (c - u)

    def derive(self, raw: RawFn | None = None, **settings: Any) -> Denoiser:
        """The same guidance around `self.base.derive(raw, **settings)` (see `Denoiser.derive`)."""
        return ClassifierFreeGuided(self.base.derive(raw, **settings), self.scale, self.null_cond)


def classifier_free(denoiser: Denoiser, scale: float | None, null_cond: NullCond) -> ClassifierFreeGuided:
    """Classifier-free guidance of `denoiser` at `scale` (None: each example's cond.guidance) against `null_cond`
    (see `ClassifierFreeGuided`)."""
    return ClassifierFreeGuided(denoiser, scale, null_cond)


class GuidanceInput(Denoiser):
    """A guided student asked at guidance scale w: its network receives w as cond.guidance, one call per step and
    no unconditional branch (Meng et al. 2023, Sec. 3: the w-conditioned student; Luo et al. 2023, the LCM
    f_theta(z, w, c, t) of eq. 9). The conditioning may be None (an unconditional draw: the null label or caption,
    where every w is the unconditional model). Process, prediction and settings are the base's."""

    def __init__(self, denoiser: Denoiser, scale: float) -> None:
        if not isinstance(denoiser, Denoiser):
            raise DiffusaError(f"a guidance input wraps a Denoiser, got {type(denoiser).__name__}")
        self.base, self.scale = denoiser, check_scale(scale)
        super().__init__(self.with_scale, denoiser.process, denoiser.prediction, **denoiser.settings())

    def with_scale(self, x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        """The base's raw output with w = `scale` for every example in cond.guidance."""
        c = as_cond(cond) or Cond()
        return self.base.raw(x, t, c.replace(guidance=torch.full((x.shape[0],), self.scale, device=x.device)))

    def derive(self, raw: RawFn | None = None, **settings: Any) -> Denoiser:
        """The same input around `self.base.derive(raw, **settings)` (see `Denoiser.derive`)."""
        return GuidanceInput(self.base.derive(raw, **settings), self.scale)


class ClassifierGuided(Denoiser):
    """A Denoiser whose eps is shifted by -sigma * scale * grad_x log p(y | x_t, t) (Dhariwal & Nichol 2021).

    `log_prob(x_t, t, y) -> (B,)` is the noise-aware classifier's log-probability of the labels y, the `labels`
    of the `cond` the sampler passes. `model_cond`: also pass the labels to the wrapped denoiser (a
    class-conditional model, possibly classifier-free guided), else it gets cond without them (its other fields,
    e.g. a super-resolution model's image; None when nothing is left: the unconditional model). Process,
    prediction and settings are the wrapped denoiser's. The guidance acts on the Prediction (it needs y), so
    `output` / `interpret` give the wrapped model's unguided raw output.
    """

    def __init__(self, denoiser: Denoiser, log_prob: LogProbFn, scale: float, model_cond: bool = False) -> None:
        if not isinstance(denoiser, Denoiser):
            raise DiffusaError(f"classifier guidance wraps a Denoiser, got {type(denoiser).__name__}")
        self.base, self.log_prob, self.scale, self.model_cond = denoiser, log_prob, float(scale), model_cond
        super().__init__(self.model_raw, denoiser.process, denoiser.prediction, **denoiser.settings())

    def model_cond_of(self, cond: Any) -> Any:
        """What the wrapped model is given: cond, or without `model_cond` cond without its labels."""
        if self.model_cond or cond is None:
            return cond
        rest = as_cond(cond).replace(labels=None)
        return rest if rest.present() else None

    def model_raw(self, x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        """The wrapped model's raw output (unguided), given `model_cond_of(cond)`."""
        return self.base.raw(x, t, self.model_cond_of(cond))

    def derive(self, raw: RawFn | None = None, **settings: Any) -> Denoiser:
        """The same guidance around `self.base.derive(raw, **settings)` (see `Denoiser.derive`)."""
        return ClassifierGuided(self.base.derive(raw, **settings), self.log_prob, self.scale, self.model_cond)

    def grad(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """grad_x log p(y | x_t, t), summed over the batch (each example's gradient is its own)."""
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            lp = self.log_prob(xg, t, y)
            return torch.autograd.grad(lp.sum(), xg)[0]

    def __call__(self, x: torch.Tensor, t: torch.Tensor | float, cond: Any = None) -> Prediction:
        t = as_time(t, x.shape[0], x.device)
        pred = self.base(x, t, self.model_cond_of(cond))
        if cond is None or self.scale == 0:
            return pred
        y = as_cond(cond).labels
        if y is None:
            raise DiffusaError("classifier guidance guides towards class labels, but the conditioning has none")
        # score + s grad log p(y | x_t) = -(eps - sigma s grad) / sigma
        eps = pred.eps - pred.sigma * self.scale * self.grad(x, t, y).to(pred.eps.dtype)
        return pred.with_eps(eps, self.clip_x0)


class AutoGuided(Denoiser):
    """A Denoiser guided by a worse one: raw = bad + scale (good - bad) (Karras et al. 2024, eq. 2).

    Both must share the process (the same alpha, sigma at every t, checked on a grid) and the parameterization, so
    that mixing raw outputs mixes x0 and eps with the same weights (as `ClassifierFreeGuided`); two network calls
    per evaluation (different networks). Scale 1 is the good model alone, 0 the bad one. A learned variance is the
    good model's. Both receive the same conditioning. Process, prediction and settings are the good model's.
    """

    def __init__(self, good: Denoiser, bad: Denoiser, scale: float) -> None:
        for name, d in (("good", good), ("bad", bad)):
            if not isinstance(d, Denoiser):
                raise DiffusaError(f"autoguidance's {name} model must be a Denoiser, got {type(d).__name__}")
        if (bad.prediction, bad.learned_variance, bad.sigma_data, bad.residual) != (
                good.prediction, good.learned_variance, good.sigma_data, good.residual):
            # EDM's F-prediction reads its output through sigma_data: raw outputs mix as x0 only if it agrees
            raise DiffusaError(f"autoguidance mixes two models of one parameterization: the guiding model predicts "
                               f"{bad.prediction} (sigma_data {bad.sigma_data}, residual {bad.residual}), the guided "
                               f"one {good.prediction} (sigma_data {good.sigma_data}, residual {good.residual})")
        t = torch.linspace(0.02, 0.98, 17, dtype=torch.float64)
        if type(bad.process) is not type(good.process) or not all(
                torch.allclose(a, b, rtol=1e-5, atol=1e-7)
                for a, b in zip(good.process.alpha_sigma(t), bad.process.alpha_sigma(t), strict=True)):
            raise DiffusaError("autoguidance mixes two models of one process: the guiding model's noise schedule "
                               "differs from the guided one's")
        self.base, self.bad, self.scale = good, bad, check_scale(scale)
        super().__init__(self.mix, good.process, good.prediction, **good.settings())

    def mix(self, x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        """bad + scale (good - bad) of the two raw outputs at (x_t, t); at scale 1 only the good model is asked."""
        good = self.base.raw(x, t, cond)
        if self.scale == 1:
            return good
        bad = self.bad.raw(x, t, cond)
        if self.learned_variance:
            (g_mean, g_var), b_mean = good.chunk(2, dim=1), bad.chunk(2, dim=1)[0]
            return torch.cat([b_mean + self.scale * (g_mean - b_mean), g_var], dim=1)
        return bad + self.scale * (good - bad)

    def derive(self, raw: RawFn | None = None, **settings: Any) -> Denoiser:
        """The same guidance around `self.base.derive(raw, **settings)` (see `Denoiser.derive`)."""
        return AutoGuided(self.base.derive(raw, **settings), self.bad.derive(**settings), self.scale)


def classifier_log_prob(classifier: torch.nn.Module, process: Any) -> LogProbFn:
    """log p(y | x_t, t) of a noise-aware classifier `classifier(x_t, c_noise) -> logits` under `process`."""

    def log_prob(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = classifier(x, process.c_noise(t).to(x.dtype))
        return torch.log_softmax(logits.float(), dim=1).gather(1, y.long().view(-1, 1)).squeeze(1)

    return log_prob


__all__ = ["AutoGuided", "ClassifierFreeGuided", "ClassifierGuided", "GuidanceInput", "check_scale", "classifier_free",
           "classifier_log_prob", "null_captions", "null_labels"]
