"""Class priors from counts and the inverse-prior weights: the one place the package turns counts into weights.

``π = n / Σ n`` over the classes, or over the (group, class) cells of a count table; inverse-prior weights
``ω ∝ 1/π`` normalised so that the mean weight of a sample is 1 (``Σ π ω = 1``). Used by the ``weighted`` and
``class_balanced`` loss presets, last-layer retraining's ``priors`` and ``thumb`` modes and post-hoc logit
adjustment. The callers validate the counts (positive, finite) with the error message of their context.

Example:
    >>> import torch
    >>> counts = torch.tensor([80.0, 20.0], dtype=torch.float64)
    >>> class_priors(counts).tolist(), inverse_prior_weights(counts).tolist()
    ([0.8, 0.2], [0.625, 2.5])
    >>> normalise_to_prior(torch.tensor([1.0, 1.0], dtype=torch.float64), class_priors(counts)).tolist()
    [1.0, 1.0]
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["class_priors", "inverse_prior_weights", "normalise_to_prior"]


def class_priors(counts: Tensor) -> Tensor:
    """``counts / counts.sum()``: the prior of every class (or cell) of a float count tensor of any shape."""
    return counts / counts.sum()


def normalise_to_prior(weights: Tensor, priors: Tensor) -> Tensor:
    """``weights`` scaled so that their mean over samples is 1: ``Σ π ω = 1``."""
    return weights / (priors * weights).sum()


def inverse_prior_weights(counts: Tensor) -> Tensor:
    """Inverse-prior weights ``ω ∝ 1/π`` with ``Σ π ω = 1`` (``ω = 1 / (C π)`` over ``C`` classes or cells)."""
    priors = class_priors(counts)
    return normalise_to_prior(1.0 / priors, priors)
