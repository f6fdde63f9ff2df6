"""Guidance as Denoiser -> Denoiser wrappers (DESIGN.md): samplers know nothing of it.

- Classifier-free guidance (Ho & Salimans 2021): eps = eps_u + w (eps_c - eps_u), one batched network call for
  both branches; w = 0 is the unconditional model, w = 1 the conditional one (diffusers' `guidance_scale`;
  Ho & Salimans' own w is this w - 1).
- Classifier guidance (Dhariwal & Nichol 2021, Sec. 4, Algorithm 2): the score gains s grad_x log p(y | x_t, t),
  so eps shifts by -sigma s grad (for every process: score = -eps / sigma). On an ancestral step the mean then
  moves by c1 sigma_t^2 / alpha_t s grad, which for small steps equals Algorithm 1's Sigma s grad.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch

from diffusa.errors import DiffusaError
from diffusa.prediction import Denoiser, Prediction
from diffusa.process import as_time

LogProbFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _stack(a: Any, b: Any) -> Any:
    """Concatenate two conditionings along the batch: tensors, or dicts of tensors (text: tokens and masks)."""
    if torch.is_tensor(a):
        return torch.cat([a, b])
    if isinstance(a, dict):
        return {k: _stack(a[k], b[k]) for k in a}
    raise DiffusaError(f"classifier-free guidance cannot batch a conditioning of type {type(a).__name__}")


def null_labels(cond: torch.Tensor, null: int) -> torch.Tensor:
    """The null label for every example (a class-conditional U-Net's label `num_classes`)."""
    return torch.full_like(cond, null)


def null_captions(net: Any) -> Callable[[Any], Any]:
    """The empty caption, tokenized by a text network's own tokenizer, for every example of a text cond."""
    return lambda c: net.tokenize([""] * c["tokens"].shape[0])


def classifier_free(denoiser: Denoiser, scale: float, null_cond: Any | Callable[[Any], Any]) -> Denoiser:
    """A Denoiser that mixes the conditional and unconditional outputs: u + scale (c - u).

    Every parameterization is affine in the network's output with coefficients of (x_t, t) alone, so mixing raw
    outputs mixes eps (and x0) with the same weights; x0 clipping applies after the mix. A learned variance is
    the conditional branch's. `null_cond` is the unconditional conditioning, or a function of the conditional
    one that returns it (e.g. `lambda y: null_labels(y, 10)`).
    """
    if not isinstance(scale, (int, float)) or scale != scale:
        raise DiffusaError(f"guidance scale must be a number, got {scale!r}")
    if not isinstance(denoiser, Denoiser):
        raise DiffusaError("classifier-free guidance wraps a Denoiser: apply it first, then classifier guidance")
    base = denoiser.raw
    lv = denoiser.learned_variance

    def raw(x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        if cond is None:
            return base(x, t, None)  # nothing to guide towards: the unconditional model
        if scale == 1:
            return base(x, t, cond)
        null = null_cond(cond) if callable(null_cond) else null_cond
        if scale == 0:
            return base(x, t, null)
        out = base(torch.cat([x, x]), torch.cat([t, t]), _stack(cond, null))
        c, u = out.chunk(2)
        if lv:
            (c_mean, c_var), u_mean = c.chunk(2, dim=1), u.chunk(2, dim=1)[0]
            return torch.cat([u_mean + scale * (c_mean - u_mean), c_var], dim=1)
        return u + scale * (c - u)

    guided = copy.copy(denoiser)
    guided.raw = raw
    return guided


class ClassifierGuided:
    """A Denoiser whose eps is shifted by -sigma * scale * grad_x log p(y | x_t, t) (Dhariwal & Nichol 2021).

    `log_prob(x_t, t, y) -> (B,)` is the noise-aware classifier's log-probability of the labels y (the `cond`
    the sampler passes). `model_cond`: also pass y to the wrapped denoiser (a class-conditional model), else
    the wrapped model is called unconditionally. Everything else (process, learned variance, ...) is the
    wrapped denoiser's.
    """

    def __init__(self, denoiser: Denoiser, log_prob: LogProbFn, scale: float, model_cond: bool = False) -> None:
        self.base, self.log_prob, self.scale, self.model_cond = denoiser, log_prob, float(scale), model_cond

    def __getattr__(self, name: str) -> Any:
        if name == "base" or name.startswith("__"):  # copy / pickle probe dunders before __init__ has run
            raise AttributeError(name)
        return getattr(self.base, name)

    def grad(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """grad_x log p(y | x_t, t), summed over the batch (each example's gradient is its own)."""
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            lp = self.log_prob(xg, t, y)
            return torch.autograd.grad(lp.sum(), xg)[0]

    def __call__(self, x: torch.Tensor, t: torch.Tensor | float, cond: Any = None) -> Prediction:
        t = as_time(t, x.shape[0], x.device)
        pred = self.base(x, t, cond if self.model_cond else None)
        if cond is None or self.scale == 0:
            return pred
        eps = pred.eps - pred.sigma * self.scale * self.grad(x, t, cond).to(pred.eps.dtype)
        # where alpha = 0 (flow at t = 1) x_t holds nothing of x0: the classifier cannot move it, the step is unguided
        live = pred.alpha > 1e-6
        x0 = torch.where(live, (x - pred.sigma * eps) / pred.alpha.clamp_min(1e-6), pred.x0)
        eps = torch.where(live, eps, pred.eps)
        clip = self.base.clip_x0
        if clip is not None:
            x0 = x0.clamp(-clip, clip)
            eps = (x - pred.alpha * x0) / pred.sigma
        return Prediction(x=x, x0=x0, eps=eps, alpha=pred.alpha, sigma=pred.sigma, v_var=pred.v_var)


def classifier_log_prob(classifier: torch.nn.Module, process: Any) -> LogProbFn:
    """log p(y | x_t, t) of a noise-aware classifier `classifier(x_t, c_noise) -> logits` under `process`."""

    def log_prob(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = classifier(x, process.c_noise(t).to(x.dtype))
        return torch.log_softmax(logits.float(), dim=1).gather(1, y.long().view(-1, 1)).squeeze(1)

    return log_prob


__all__ = ["ClassifierGuided", "classifier_free", "classifier_log_prob", "null_captions", "null_labels"]
