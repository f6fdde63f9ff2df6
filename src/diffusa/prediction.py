"""What a network predicts, converted into one `Prediction`; the `Denoiser` every model is wrapped in.

All parameterization conversions live here and nowhere else. With x = alpha x0 + sigma eps:

- eps (Ho et al. 2020):      x0 = (x - sigma eps) / alpha
- x0:                        eps = (x - alpha x0) / sigma
- v (Salimans & Ho 2022, eq. 6 generalised): v = alpha eps - sigma x0, so
  x0 = (alpha x - sigma v) / (alpha^2 + sigma^2), eps = (sigma x + alpha v) / (alpha^2 + sigma^2)
- score (Song et al. 2021):  grad log p(x_t) = -eps / sigma
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from diffusa.errors import DiffusaError
from diffusa.process import Process, as_time, expand_as

PARAMETERIZATIONS = ("eps", "x0", "v")


def check_parameterization(kind: str) -> str:
    """Validate a parameterization name."""
    if kind not in PARAMETERIZATIONS:
        raise DiffusaError(f"unknown prediction {kind!r}; known: {', '.join(PARAMETERIZATIONS)}")
    return kind


def to_x0_eps(kind: str, out: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor,
              sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn a network output of parameterization `kind` into (x0, eps). alpha, sigma broadcast to x."""
    if kind == "eps":
        return (x - sigma * out) / alpha, out
    if kind == "x0":
        return out, (x - alpha * out) / sigma
    if kind == "v":
        norm = alpha**2 + sigma**2
        return (alpha * x - sigma * out) / norm, (sigma * x + alpha * out) / norm
    raise DiffusaError(f"unknown prediction {kind!r}; known: {', '.join(PARAMETERIZATIONS)}")


def target_of(kind: str, x0: torch.Tensor, eps: torch.Tensor, alpha: torch.Tensor,
              sigma: torch.Tensor) -> torch.Tensor:
    """The regression target for parameterization `kind` given the clean data and the noise."""
    if kind == "eps":
        return eps
    if kind == "x0":
        return x0
    if kind == "v":
        return alpha * eps - sigma * x0
    raise DiffusaError(f"unknown prediction {kind!r}; known: {', '.join(PARAMETERIZATIONS)}")


@dataclass
class Prediction:
    """The denoiser's answer at (x_t, t): x0 and eps, with the rest derived on demand.

    `v_var` is IDDPM's learned-variance interpolation in [0, 1] (Nichol & Dhariwal 2021, eq. 15),
    present only for models that learn it.
    """

    x: torch.Tensor
    x0: torch.Tensor
    eps: torch.Tensor
    alpha: torch.Tensor  # broadcastable to x
    sigma: torch.Tensor
    v_var: torch.Tensor | None = None

    @property
    def score(self) -> torch.Tensor:
        """grad_x log p_t(x) = -eps / sigma."""
        return -self.eps / self.sigma

    @property
    def v(self) -> torch.Tensor:
        """v = alpha eps - sigma x0."""
        return self.alpha * self.eps - self.sigma * self.x0


RawFn = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]


class Denoiser:
    """A network (or any function) behind one question: denoiser(x_t, t, cond) -> Prediction.

    Args:
        raw: callable (x_t, t, cond) -> output in parameterization `prediction`, t float64 (B,).
        process: the forward process that defines alpha(t), sigma(t).
        prediction: what `raw` outputs: "eps", "x0" or "v".
        learned_variance: `raw` outputs twice the channels; the second half is IDDPM's v in [-1, 1].
        clip_x0: clamp x0 to [-clip_x0, clip_x0] (and re-derive eps) when sampling images; None = off.
    """

    def __init__(self, raw: RawFn, process: Process, prediction: str = "eps", *,
                 learned_variance: bool = False, clip_x0: float | None = None) -> None:
        self.raw = raw
        self.process = process
        self.prediction = check_parameterization(prediction)
        self.learned_variance = learned_variance
        self.clip_x0 = clip_x0

    @classmethod
    def from_network(cls, net: torch.nn.Module, process: Process, prediction: str = "eps",
                     **kwargs: Any) -> Denoiser:
        """Wrap `net(x, c_noise, cond)`; the process decides c_noise (DESIGN.md: nets know no maths)."""

        def raw(x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
            return net(x, process.c_noise(t).to(x.dtype), cond)

        den = cls(raw, process, prediction, **kwargs)
        den.net = net
        return den

    @classmethod
    def from_function(cls, fn: Callable[..., torch.Tensor], process: Process, prediction: str = "x0",
                      **kwargs: Any) -> Denoiser:
        """Wrap any `fn(x_t, t)` (or `fn(x_t, t, cond)`) returning `prediction`: analytic denoisers in tests."""
        takes_cond = len(inspect.signature(fn).parameters) >= 3

        def raw(x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
            return fn(x, t, cond) if takes_cond else fn(x, t)

        return cls(raw, process, prediction, **kwargs)

    def output(self, x: torch.Tensor, t: torch.Tensor | float, cond: Any = None) -> torch.Tensor:
        """The raw network output (for losses that regress it directly)."""
        return self.raw(x, as_time(t, x.shape[0], x.device), cond)

    def __call__(self, x: torch.Tensor, t: torch.Tensor | float, cond: Any = None) -> Prediction:
        t = as_time(t, x.shape[0], x.device)
        out = self.raw(x, t, cond)
        return self.interpret(out, x, t)

    def interpret(self, out: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> Prediction:
        """Convert a raw output at (x, t) into a Prediction (split learned variance, clip)."""
        v_var = None
        if self.learned_variance:
            out, v_raw = out.chunk(2, dim=1)
            v_var = (v_raw + 1) / 2
        a, s = self.process.alpha_sigma(t)
        alpha, sigma = expand_as(a, x), expand_as(s, x)
        x0, eps = to_x0_eps(self.prediction, out, x, alpha, sigma)
        if self.clip_x0 is not None:
            x0 = x0.clamp(-self.clip_x0, self.clip_x0)
            eps = (x - alpha * x0) / sigma
        return Prediction(x=x, x0=x0, eps=eps, alpha=alpha, sigma=sigma, v_var=v_var)
