"""What a network predicts, converted into one `Prediction`; the `Denoiser` every model is wrapped in.

All parameterization conversions live here and nowhere else. With x = alpha x0 + sigma eps:

- eps (Ho et al. 2020):      x0 = (x - sigma eps) / alpha
- x0:                        eps = (x - alpha x0) / sigma
- v (Salimans & Ho 2022, eq. 6 generalised): v = alpha eps - sigma x0, so
  x0 = (alpha x - sigma v) / (alpha^2 + sigma^2), eps = (sigma x + alpha v) / (alpha^2 + sigma^2)
- velocity (flow matching, Lipman et al. 2023; rectified flow, Liu et al. 2022): u = alpha' x0 + sigma' eps,
  the time derivative of x along the path; with det = alpha sigma' - sigma alpha' (> 0: sigma / alpha grows)
  x0 = (sigma' x - sigma u) / det, eps = (alpha u - alpha' x) / det
- edm (Karras et al. 2022, eq. 7 and Table 1): the raw output F of a preconditioned network,
  x0 = c_skip x + c_out F(c_in x), see `edm_scalings`
- score (Song et al. 2021):  grad log p(x_t) = -eps / sigma

Every target is an affine function of x0 at fixed x: target = A x0 + B x, so ||target error||^2 =
A^2 ||x0 error||^2; `x0_error_gain` gives A^2, with which losses move a weighting between spaces exactly.

Residual models (SRDiff, Li et al. 2022; `residual=True`): a super-resolution model whose condition image, resized
to x (bilinear, as the U-Net resizes it), is the anchor mu. The network solves the residual problem r = x0 - mu:
it sees x - alpha mu = alpha r + sigma eps and its output is read in its parameterization on that problem, so
x0 = mu + x0_r and eps is unchanged; its target is the target of (x0 - mu, eps). The process, the samplers and the
samples stay in image space. Without a network (output 0 for eps, v, edm) the x0 is mu plus the shrunk residual
estimate of each parameterization: with edm and sigma_data = s_r it is E[x0 | x_t] for x0 ~ N(mu, s_r^2 I).

A Denoiser derived from another (guidance, a loss's unclipped view) is built by a constructor, `Denoiser.derive`
or a subclass's `__init__`, from the other's settings (`Denoiser.settings`): nothing copies and patches one.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from diffusa.cond import as_cond, resized_condition
from diffusa.config import EDM_SIGMA_DATA
from diffusa.errors import DiffusaError
from diffusa.process import Process, as_time, expand_as
from diffusa.threads import batch_call

# the parameterizations fixed by (alpha, sigma) alone
PARAMETERIZATIONS = ("eps", "x0", "v")
# every name a Denoiser accepts: velocity also needs (alpha', sigma'), edm the data std sigma_data
PREDICTIONS = (*PARAMETERIZATIONS, "velocity", "edm")


def check_parameterization(kind: str) -> str:
    """Validate a parameterization name."""
    if kind not in PREDICTIONS:
        raise DiffusaError(f"unknown prediction {kind!r}; known: {', '.join(PREDICTIONS)}")
    return kind


def _unknown(kind: str) -> DiffusaError:
    return DiffusaError(f"unknown prediction {kind!r}; known: {', '.join(PREDICTIONS)}")


def _derivatives(kind: str, d_alpha: torch.Tensor | None,
                 d_sigma: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    if d_alpha is None or d_sigma is None:
        raise ValueError(f"the {kind!r} parameterization needs d_alpha and d_sigma (Process.d_alpha_sigma)")
    return d_alpha, d_sigma


def edm_scalings(alpha: torch.Tensor, sigma: torch.Tensor,
                 sigma_data: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """EDM's preconditioning (Karras et al. 2022, Table 1) as coefficients on x: x0 = c_skip x + c_out F(c_in x).

    Karras et al. write D(x; s) = c_skip(s) x + c_out(s) F(c_in(s) x) for alpha = 1, with
    c_skip = sd^2 / (s^2 + sd^2), c_out = s sd / sqrt(s^2 + sd^2), c_in = 1 / sqrt(s^2 + sd^2). For alpha != 1
    we apply it to x_hat = x / alpha at s = sigma / alpha (their eq. 4 scaling) and fold the 1 / alpha into
    the coefficients, which stay finite where alpha = 0 (flow at t = 1); with r^2 = sigma^2 + alpha^2 sd^2:
    c_skip = alpha sd^2 / r^2, c_out = sigma sd / r, c_in = 1 / r. For alpha = 1 these are Table 1's.
    """
    r2 = sigma**2 + alpha**2 * sigma_data**2
    r = r2.sqrt()
    return alpha * sigma_data**2 / r2, sigma * sigma_data / r, 1 / r


def to_x0_eps(kind: str, out: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor, *,
              d_alpha: torch.Tensor | None = None, d_sigma: torch.Tensor | None = None,
              sigma_data: float = EDM_SIGMA_DATA) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn a network output of parameterization `kind` into (x0, eps). alpha, sigma (and for "velocity"
    d_alpha, d_sigma; for "edm" sigma_data) broadcast to x."""
    if kind == "eps":
        return (x - sigma * out) / alpha, out
    if kind == "x0":
        return out, (x - alpha * out) / sigma
    if kind == "v":
        norm = alpha**2 + sigma**2
        return (alpha * x - sigma * out) / norm, (sigma * x + alpha * out) / norm
    if kind == "velocity":
        da, ds = _derivatives(kind, d_alpha, d_sigma)
        det = alpha * ds - sigma * da
        return (ds * x - sigma * out) / det, (alpha * out - da * x) / det
    if kind == "edm":
        # x0 = c_skip x + c_out F; eps = (x - alpha x0) / sigma written without the division, finite at sigma = 0
        r2 = sigma**2 + alpha**2 * sigma_data**2
        r = r2.sqrt()
        x0 = (alpha * sigma_data**2 * x + sigma * sigma_data * r * out) / r2
        eps = (sigma * x - alpha * sigma_data * r * out) / r2
        return x0, eps
    raise _unknown(kind)


def target_of(kind: str, x0: torch.Tensor, eps: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor, *,
              d_alpha: torch.Tensor | None = None, d_sigma: torch.Tensor | None = None,
              sigma_data: float = EDM_SIGMA_DATA) -> torch.Tensor:
    """The regression target for parameterization `kind` given the clean data and the noise.

    edm: F = (x0 - c_skip x) / c_out (Karras et al. 2022, eq. 8), which for x = alpha x0 + sigma eps is
    (sigma x0 - alpha sd^2 eps) / (sd r), r = sqrt(sigma^2 + alpha^2 sd^2): finite at sigma = 0.
    """
    if kind == "eps":
        return eps
    if kind == "x0":
        return x0
    if kind == "v":
        return alpha * eps - sigma * x0
    if kind == "velocity":
        da, ds = _derivatives(kind, d_alpha, d_sigma)
        return da * x0 + ds * eps
    if kind == "edm":
        r = (sigma**2 + alpha**2 * sigma_data**2).sqrt()
        return (sigma * x0 - alpha * sigma_data**2 * eps) / (sigma_data * r)
    raise _unknown(kind)


def x0_error_gain(kind: str, alpha: torch.Tensor, sigma: torch.Tensor, *, d_alpha: torch.Tensor | None = None,
                  d_sigma: torch.Tensor | None = None, sigma_data: float = EDM_SIGMA_DATA) -> torch.Tensor:
    """A^2 with ||target - target_hat||^2 = A^2 ||x0 - x0_hat||^2 at fixed x_t, for parameterization `kind`.

    eps: alpha^2 / sigma^2 (the SNR); x0: 1; v: (alpha^2 + sigma^2)^2 / sigma^2 (SNR + 1 for VP);
    velocity: det^2 / sigma^2 (1 / t^2 for flow); edm: 1 / c_out^2 = r^2 / (sigma sd)^2 (Karras's lambda).
    """
    if kind == "eps":
        return alpha**2 / sigma**2
    if kind == "x0":
        return torch.ones_like(alpha)
    if kind == "v":
        return (alpha**2 + sigma**2) ** 2 / sigma**2
    if kind == "velocity":
        da, ds = _derivatives(kind, d_alpha, d_sigma)
        return (alpha * ds - sigma * da) ** 2 / sigma**2
    if kind == "edm":
        return (sigma**2 + alpha**2 * sigma_data**2) / (sigma * sigma_data) ** 2
    raise _unknown(kind)


def clamp_x0(x: torch.Tensor, x0: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor,
             bound: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0 clamped to [-bound, bound], eps re-derived from it): eps = (x - alpha x0) / sigma (Ho et al. 2020's
    clip_denoised, applied to every parameterization)."""
    return to_x0_eps("x0", x0.clamp(-bound, bound), x, alpha, sigma)


def default_sigma_data(process: Process) -> float:
    """The data std EDM's preconditioning assumes: the process's own (EDM) or 0.5 (Karras et al. 2022)."""
    return float(getattr(process, "sigma_data", EDM_SIGMA_DATA))


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

    def with_eps(self, eps: torch.Tensor, clip: float | None = None) -> Prediction:
        """The prediction at the same (x_t, t) whose noise estimate is `eps`: x0 = (x - sigma eps) / alpha
        (Ho et al. 2020, eq. 4 solved for x0), clamped to [-clip, clip] with eps re-derived when `clip` is set.

        Where alpha = 0 (flow at t = 1) x_t holds nothing of x0, so no eps can move it: there this prediction is
        kept as it is. The learned variance is kept. Classifier guidance (Dhariwal & Nichol 2021) shifts eps so.
        """
        live = self.alpha > 1e-6
        x0, _ = to_x0_eps("eps", eps, self.x, self.alpha.clamp_min(1e-6), self.sigma)
        x0 = torch.where(live, x0, self.x0)
        eps = torch.where(live, eps, self.eps)
        if clip is not None:
            x0, eps = clamp_x0(self.x, x0, self.alpha, self.sigma, clip)
        return Prediction(x=self.x, x0=x0, eps=eps, alpha=self.alpha, sigma=self.sigma, v_var=self.v_var)


RawFn = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]
# `Denoiser.derive`'s default for a setting it leaves as it is (None is a value: clip_x0=None turns clipping off)
KEEP: Any = object()


class Denoiser:
    """A network (or any function) behind one question: denoiser(x_t, t, cond) -> Prediction.

    Args:
        raw: callable (x_t, t, cond) -> output in parameterization `prediction`, t float64 (B,).
        process: the forward process that defines alpha(t), sigma(t).
        prediction: what `raw` outputs: "eps", "x0", "v", "velocity" or "edm" (EDM's F; see `from_network`).
        learned_variance: `raw` outputs twice the channels; the second half is IDDPM's v in [-1, 1].
        clip_x0: clamp x0 to [-clip_x0, clip_x0] (and re-derive eps) when sampling images; None = off.
        sigma_data: the data std of EDM's preconditioning; None = the process's own, else 0.5.
        residual: predict around the condition image (SRDiff; the module docstring): x0 = mu + the residual's.
        net: the network behind `raw`, when there is one (`from_network`), for callers that count or move it.

    Wrappers (guidance) are subclasses built from a base Denoiser's process, prediction and `settings()`.
    """

    def __init__(self, raw: RawFn, process: Process, prediction: str = "eps", *,
                 learned_variance: bool = False, clip_x0: float | None = None,
                 sigma_data: float | None = None, residual: bool = False,
                 net: torch.nn.Module | None = None) -> None:
        self.raw = raw
        self.process = process
        self.prediction = check_parameterization(prediction)
        self.learned_variance = learned_variance
        self.clip_x0 = clip_x0
        self.sigma_data = default_sigma_data(process) if sigma_data is None else float(sigma_data)
        self.residual = bool(residual)
        self.net = net

    def settings(self) -> dict[str, Any]:
        """The keyword arguments that rebuild this Denoiser's interpretation of `raw` (with process, prediction)."""
        return {"learned_variance": self.learned_variance, "clip_x0": self.clip_x0, "sigma_data": self.sigma_data,
                "residual": self.residual, "net": self.net}

    def derive(self, raw: RawFn | None = None, *, learned_variance: bool = KEEP, clip_x0: float | None = KEEP,
               sigma_data: float = KEEP) -> Denoiser:
        """A new Denoiser with this one's process, prediction and settings, but for those given: another raw
        function and/or learned_variance, clip_x0 (None = off), sigma_data. This one is left as it is.

        A wrapper (guidance) rebuilds itself around its base's derived Denoiser, so e.g. `derive(clip_x0=None)`
        of a guided denoiser is the same guidance without clipping."""
        changes = {"learned_variance": learned_variance, "clip_x0": clip_x0, "sigma_data": sigma_data}
        settings = {**self.settings(), **{k: v for k, v in changes.items() if v is not KEEP}}
        return Denoiser(self.raw if raw is None else raw, self.process, self.prediction, **settings)

    @classmethod
    def from_network(cls, net: torch.nn.Module, process: Process, prediction: str = "eps",
                     **kwargs: Any) -> Denoiser:
        """Wrap `net(x, c_noise, cond)`; the process decides c_noise (DESIGN.md: nets know no maths).

        For "edm" the network sees c_in x (Karras et al. 2022, eq. 7), so its input has unit variance at every
        noise level; its raw output is F."""
        check_parameterization(prediction)
        sd = kwargs.get("sigma_data")
        sd = default_sigma_data(process) if sd is None else float(sd)

        def raw(x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
            if prediction == "edm":
                a, s = process.alpha_sigma(t)
                x = x * expand_as(edm_scalings(a, s, sd)[2], x)
            return batch_call(net, x, process.c_noise(t).to(x.dtype), cond)  # sliced over threads if no grad

        return cls(raw, process, prediction, net=net, **kwargs)

    @classmethod
    def from_function(cls, fn: Callable[..., torch.Tensor], process: Process, prediction: str = "x0",
                      **kwargs: Any) -> Denoiser:
        """Wrap any `fn(x_t, t)` (or `fn(x_t, t, cond)`) returning `prediction`: analytic denoisers in tests."""
        takes_cond = len(inspect.signature(fn).parameters) >= 3

        def raw(x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
            return fn(x, t, cond) if takes_cond else fn(x, t)

        return cls(raw, process, prediction, **kwargs)

    def levels(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        """(alpha, sigma, extras) at t, broadcast to `like`: extras are the keyword arguments this
        parameterization's conversions need (d_alpha, d_sigma for velocity; sigma_data for edm)."""
        a, s = self.process.alpha_sigma(t)
        extras: dict[str, Any] = {}
        if self.prediction == "velocity":
            da, ds = self.process.d_alpha_sigma(t)
            extras = {"d_alpha": expand_as(da, like), "d_sigma": expand_as(ds, like)}
        elif self.prediction == "edm":
            extras = {"sigma_data": self.sigma_data}
        return expand_as(a, like), expand_as(s, like), extras

    def anchor(self, like: torch.Tensor, cond: Any) -> torch.Tensor | None:
        """A residual model's mu (module docstring): the first C channels of cond.image at like's (C, H, W) size,
        resized bilinearly as the U-Net resizes its condition; None for any other model."""
        if not self.residual:
            return None
        c = as_cond(cond)
        if c is None or c.image is None:
            raise DiffusaError("this model predicts around its condition image (model.residual), but none was given")
        return resized_condition(c.image[:, :like.shape[1]], tuple(like.shape[-2:])).to(like.dtype)

    def _network_input(self, x: torch.Tensor, t: torch.Tensor, mu: torch.Tensor | None) -> torch.Tensor:
        """x, or for a residual model x - alpha mu (the noised residual)."""
        if mu is None:
            return x
        return x - expand_as(self.process.alpha_sigma(t)[0], x).to(x.dtype) * mu

    def target(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor | float, cond: Any = None) -> torch.Tensor:
        """The regression target of this parameterization for clean data x0 and noise eps at time t (a residual
        model's: of x0 - mu, its condition's anchor)."""
        t = as_time(t, x0.shape[0], x0.device)
        alpha, sigma, extras = self.levels(t, x0)
        mu = self.anchor(x0, cond)
        return target_of(self.prediction, x0 if mu is None else x0 - mu, eps, alpha, sigma, **extras)

    def x0_error_gain(self, t: torch.Tensor | float, batch: int | None = None) -> torch.Tensor:
        """Per-example A^2 (float64, shape (B,)): target-space squared error = A^2 x0-space squared error."""
        t = as_time(t, batch or 1)
        alpha, sigma, extras = self.levels(t, t)
        return x0_error_gain(self.prediction, alpha, sigma, **extras)

    def output(self, x: torch.Tensor, t: torch.Tensor | float, cond: Any = None) -> torch.Tensor:
        """The raw network output (for losses that regress it directly)."""
        t = as_time(t, x.shape[0], x.device)
        return self.raw(self._network_input(x, t, self.anchor(x, cond)), t, cond)

    def __call__(self, x: torch.Tensor, t: torch.Tensor | float, cond: Any = None) -> Prediction:
        t = as_time(t, x.shape[0], x.device)
        mu = self.anchor(x, cond)
        out = self.raw(self._network_input(x, t, mu), t, cond)
        return self.interpret(out, x, t, cond, mu=mu)

    def interpret(self, out: torch.Tensor, x: torch.Tensor, t: torch.Tensor, cond: Any = None, *,
                  mu: torch.Tensor | None = None) -> Prediction:
        """Convert a raw output at (x, t) into a Prediction (split learned variance, clip); a residual model's
        output is read on x - alpha mu and mu added to its x0 (mu: the anchor of cond, unless given)."""
        v_var = None
        if self.learned_variance:
            out, v_raw = out.chunk(2, dim=1)
            v_var = (v_raw + 1) / 2
        alpha, sigma, extras = self.levels(t, x)
        mu = self.anchor(x, cond) if mu is None else mu
        x0, eps = to_x0_eps(self.prediction, out, self._network_input(x, t, mu), alpha, sigma, **extras)
        if mu is not None:
            x0 = x0 + mu
        if self.clip_x0 is not None:
            x0, eps = clamp_x0(x, x0, alpha, sigma, self.clip_x0)
        return Prediction(x=x, x0=x0, eps=eps, alpha=alpha, sigma=sigma, v_var=v_var)
