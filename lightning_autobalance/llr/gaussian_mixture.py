"""Exact per-class errors of a linear rule on the binary Gaussian mixture ``x = y·µ + z`` (the paper's model)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "gaussian_mixture_class_errors",
]


def _normal_cdf(t: float) -> float:
    return 0.5 * math.erfc(-t / math.sqrt(2.0))


def gaussian_mixture_class_errors(theta: Tensor, b: float | Tensor, mu: Tensor) -> tuple[float, float]:
    """Exact per-class errors of ``sign(θᵀx + b)`` on ``x = y·µ + z``, ``z ~ N(0, I_d)``, ``y ∈ {±1}``.

    ``error(+1) = Φ(−(θᵀµ + b)/‖θ‖)`` and ``error(−1) = Φ(−(θᵀµ − b)/‖θ‖)``.

    Args:
        theta: ``(d,)`` direction ``θ`` (non-zero).
        b: intercept.
        mu: ``(d,)`` class mean ``µ``.

    Returns:
        ``(error of class +1, error of class −1)``.

    Raises:
        ValueError: if ``θ`` is zero or the shapes differ.

    Example:
        >>> e_pos, e_neg = gaussian_mixture_class_errors(torch.tensor([1.0, 0.0]), 0.0, torch.tensor([1.0, 0.0]))
        >>> round(e_pos, 4), round(e_neg, 4)
        (0.1587, 0.1587)
    """
    theta = torch.as_tensor(theta, dtype=torch.float64).flatten()
    mu = torch.as_tensor(mu, dtype=torch.float64).flatten()
    if theta.shape != mu.shape:
        raise ValueError(f"theta and mu must have the same length, got {theta.numel()} and {mu.numel()}")
    norm = float(theta.norm())
    if norm == 0.0 or not math.isfinite(norm):
        raise ValueError("theta must be finite and non-zero (a constant classifier has no margin)")
    proj = float(theta @ mu)
    b = float(b)
    return _normal_cdf(-(proj + b) / norm), _normal_cdf(-(proj - b) / norm)
