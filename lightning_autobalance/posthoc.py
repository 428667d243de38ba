"""Post-hoc logit adjustment: one strength τ, learned on held-out logits, subtracted as τ·log π at prediction time.

A classifier trained on long-tailed data predicts the training prior π; subtracting ``τ·log π_y`` from its logits
moves its decisions toward the balanced prior (Menon et al., "Long-tail learning via logit adjustment", ICLR 2021:
τ = 1 is the Bayes-optimal correction for the balanced error when the model is calibrated). Trained networks are
not calibrated, so τ is fitted here on held-out data the model did not train on, by minimising the *balanced*
cross-entropy of the adjusted logits (the mean over classes of the per-class mean cross-entropy): a convex,
one-dimensional problem with a unique minimiser whenever the adjustment changes the loss.

One scalar is fitted rather than one shift per class on purpose: the held-out split of a long-tailed data set holds
a handful of samples of its rarest classes, and a per-class shift fitted on them follows their noise (measured in
``benchmarks/results/diagnosis.md``).

Pure PyTorch (no Lightning).

Example:
    >>> import torch
    >>> counts = torch.tensor([900.0, 100.0])  # training counts: the model favours class 0
    >>> logits = torch.tensor([[3.0, 0.0], [2.0, 0.0], [1.0, 0.5], [1.5, 0.5]])  # held-out samples of 0, 0, 1, 1
    >>> logits.argmax(1).tolist()
    [0, 0, 0, 0]
    >>> tau = fit_logit_adjustment(logits, torch.tensor([0, 0, 1, 1]), counts)
    >>> round(tau, 2), adjust_logits(logits, counts, tau).argmax(1).tolist()
    (0.73, [0, 0, 1, 1])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lightning_autobalance.losses.priors import class_priors
from lightning_autobalance.objectives import balanced_cross_entropy

__all__ = ["adjust_logits", "fit_logit_adjustment"]


def _log_prior(class_counts: Sequence[float] | Tensor, num_classes: int) -> Tensor:
    counts = torch.as_tensor(class_counts, dtype=torch.float64).reshape(-1)
    if counts.numel() != num_classes:
        raise ValueError(
            f"class_counts has {counts.numel()} entries but the logits have {num_classes} classes: pass the training "
            "count of every class."
        )
    if not bool(torch.isfinite(counts).all()) or bool((counts <= 0).any()):
        raise ValueError(
            f"class_counts must be positive finite training counts (log π needs every class), got {counts.tolist()}."
        )
    return torch.log(class_priors(counts))


def adjust_logits(logits: Tensor, class_counts: Sequence[float] | Tensor, tau: float) -> Tensor:
    """``logits − τ·log π`` with π the training prior from ``class_counts`` (same dtype as ``logits``)."""
    return logits - tau * _log_prior(class_counts, logits.shape[-1]).to(logits.dtype)


def fit_logit_adjustment(
    logits: Tensor,
    targets: Tensor,
    class_counts: Sequence[float] | Tensor,
    *,
    bounds: tuple[float, float] = (-2.0, 4.0),
    tol: float = 1e-6,
) -> float:
    """The τ that minimises the balanced cross-entropy of ``logits − τ·log π`` on held-out data.

    The objective is convex in τ (cross-entropy is convex in the logits, which are affine in τ), so a bracketing
    search on ``bounds`` finds the minimiser; a minimiser at a bound is returned as the bound.

    Args:
        logits: held-out logits of a model that did not train on these samples, shape (N, K).
        targets: their class labels, shape (N,).
        class_counts: the model's training count of every class, shape (K,).
        bounds: the interval searched for τ.
        tol: width of the final bracket.

    Returns:
        τ (a Python float).

    Raises:
        ValueError: shapes that do not match, labels out of range, non-finite logits or counts that are not positive.
    """
    if logits.ndim != 2 or targets.shape != (logits.shape[0],) or logits.shape[0] == 0:
        raise ValueError(
            f"logits must be (N, K) and targets (N,) with N ≥ 1, got {tuple(logits.shape)} and {tuple(targets.shape)}."
        )
    num_classes = logits.shape[1]
    if int(targets.min()) < 0 or int(targets.max()) >= num_classes:
        raise ValueError(
            f"targets must lie in [0, {num_classes}), got values {int(targets.min())}..{int(targets.max())}."
        )
    if not bool(torch.isfinite(logits).all()):
        raise ValueError("logits contain NaN or inf: fit the adjustment on finite logits.")
    low, high = (float(b) for b in bounds)
    if not low < high:
        raise ValueError(f"bounds must be (low, high) with low < high, got {bounds!r}.")
    z = logits.detach().to(torch.float64)
    y = targets.detach().long()
    log_prior = _log_prior(class_counts, num_classes)

    def value(tau: float) -> float:
        return float(balanced_cross_entropy(z - tau * log_prior, y))

    ratio = (5**0.5 - 1) / 2  # golden-section search of a convex function
    a, b = low, high
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = value(c), value(d)
    while b - a > tol:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = value(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = value(d)
    return (a + b) / 2
