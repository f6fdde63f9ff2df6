"""Likelihoods: the variational bound in bits/dim (bound.py); the probability-flow ODE likelihood (ode.py)."""

from __future__ import annotations

from diffusa.likelihood.bound import BoundResult, bits_per_dim, discretized_gaussian_log_likelihood, normal_kl
from diffusa.likelihood.ode import ode_bits_per_dim, ode_log_likelihood

__all__ = ["BoundResult", "bits_per_dim", "discretized_gaussian_log_likelihood", "normal_kl"]
__all__ += ["ode_bits_per_dim", "ode_log_likelihood"]
