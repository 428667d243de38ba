"""Closed-form class weights: inverse priors, "Thumb on the Scale" (binary and one-vs-rest), majority downsampling.

Class weights are normalised so that the mean weight over the samples is 1 (``Σ_k π_k ω_k = 1``); downsampling
gives 0/1 per-sample weights.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor

from lightning_autobalance.data.labels import cell_index
from lightning_autobalance.llr.checks import check_groups, check_targets
from lightning_autobalance.losses.priors import class_priors, inverse_prior_weights, normalise_to_prior

__all__ = [
    "DEFAULT_MAX_CORRECTION",
    "DEFAULT_MAX_WEIGHT",
    "downsample_weights",
    "optimal_weight",
    "prior_class_weights",
    "thumb_class_weights",
]

DEFAULT_MAX_WEIGHT: float = 1e3
"""Cap on the binary minority/majority weight ratio when ``δ ≥ 2π₊`` (no finite weight equalizes the errors)."""

DEFAULT_MAX_CORRECTION: float = 1.5
"""Cap on the multiclass (``K ≥ 3``) Thumb correction ``ρ̃_k/ρ_k`` relative to the inverse-prior weight."""


def _check_counts(class_counts: Sequence[float] | Tensor) -> Tensor:
    counts = torch.as_tensor(class_counts, dtype=torch.float64)
    if counts.ndim != 1 or counts.shape[0] < 2:
        raise ValueError(
            f"class_counts must be a 1-D sequence with one count per class (K >= 2), got shape {tuple(counts.shape)}"
        )
    if not bool(torch.isfinite(counts).all()) or bool((counts < 0).any()):
        raise ValueError("class_counts must be finite and >= 0")
    empty = torch.nonzero(counts == 0).flatten().tolist()
    if empty:
        raise ValueError(
            f"classes {empty} have no samples; a class weight needs at least one sample of the "
            f"class (drop the class or add samples to the retraining set)"
        )
    return counts


def _thumb_ratio(minority_prior: float, delta: float, max_weight: float) -> tuple[float, bool]:
    """``(min(ρ̃, max_weight), capped)`` without warnings; inputs already validated."""
    if minority_prior == 0.5:
        return 1.0, False  # symmetric problem: weight 1 equalizes the errors for every δ
    if delta >= 2.0 * minority_prior:
        return max_weight, True
    rho = (2.0 * (1.0 - minority_prior) - delta) / (2.0 * minority_prior - delta)
    if rho > max_weight:
        return max_weight, True
    return rho, False


def _check_delta_and_cap(delta: float, max_weight: float) -> tuple[float, float]:
    delta, max_weight = float(delta), float(max_weight)
    if not math.isfinite(delta) or delta < 0:
        raise ValueError(f"delta (= d/n, features per retraining sample) must be finite and >= 0, got {delta}")
    if not math.isfinite(max_weight) or max_weight < 1:
        raise ValueError(f"max_weight must be a finite number >= 1, got {max_weight}")
    return delta, max_weight


def optimal_weight(minority_prior: float, delta: float, max_weight: float = DEFAULT_MAX_WEIGHT) -> float:
    """Minority/majority loss-weight ratio that equalizes the two class errors ("Thumb on the Scale").

    ``ρ̃ = (2π₋ − δ) / (2π₊ − δ)`` with ``π₋ = 1 − π₊``, valid for ``δ < 2π₊``. It tends to the ratio of priors
    ``π₋/π₊`` as ``δ → 0`` and grows as the retraining set shrinks. For ``δ ≥ 2π₊`` no weight equalizes the
    errors and the paper recommends weighting the minority as strongly as possible: the finite cap
    ``max_weight`` is returned with a :class:`UserWarning` (also when ``ρ̃ > max_weight``). For balanced classes
    (``π₊ = 1/2``) the answer is 1 for every ``δ`` (by symmetry).

    Args:
        minority_prior: ``π₊ ∈ (0, 0.5]``, the fraction of minority samples.
        delta: ``δ = d/n ≥ 0`` (use ``d_eff / n``, see :func:`effective_dimension`, on real features).
        max_weight: cap on the returned ratio, ``≥ 1`` (default :data:`DEFAULT_MAX_WEIGHT` ``= 1e3``).

    Returns:
        The weight of a minority sample relative to a majority sample.

    Raises:
        ValueError: for a prior outside ``(0, 0.5]``, a negative or non-finite ``delta``, or ``max_weight < 1``.

    Example:
        >>> optimal_weight(0.2, 0.2)  # paper's Fig. 2 setting; the ratio of priors is 4
        7.0
        >>> optimal_weight(0.2, 0.0)
        4.0
    """
    p = float(minority_prior)
    if not (math.isfinite(p) and 0.0 < p <= 0.5):
        raise ValueError(f"minority_prior must be in (0, 0.5] (the smaller class's fraction), got {p}")
    delta, max_weight = _check_delta_and_cap(delta, max_weight)
    rho, capped = _thumb_ratio(p, delta, max_weight)
    if capped:
        if delta >= 2 * p:
            why = f"delta={delta:g} >= 2*minority_prior={2 * p:g}: no weight equalizes the class errors"
        else:
            why = f"the optimal ratio exceeds max_weight={max_weight:g}"
        warnings.warn(
            f"{why}; returning the cap max_weight={max_weight:g} (weight the minority as strongly as "
            f"possible). Collect more retraining samples or reduce the feature dimension.",
            UserWarning,
            stacklevel=2,
        )
    return rho


def prior_class_weights(class_counts: Sequence[float] | Tensor) -> Tensor:
    """Inverse-prior class weights ``ω_k ∝ 1/π_k``, normalised so the mean weight over samples is 1.

    With this normalisation ``ω_k = 1/(K π_k)``; for two classes the ratio is the ratio of priors ``π₋/π₊``.

    Args:
        class_counts: ``(K,)`` number of samples per class (all > 0).

    Returns:
        ``(K,)`` float64 weights.

    Raises:
        ValueError: if a class has no samples or the counts are not a finite 1-D sequence of length >= 2.

    Example:
        >>> prior_class_weights([80, 20]).tolist()
        [0.625, 2.5]
    """
    return inverse_prior_weights(_check_counts(class_counts))


def _check_max_correction(max_correction: float) -> float:
    max_correction = float(max_correction)
    if not (math.isfinite(max_correction) and max_correction >= 1):
        raise ValueError(f"max_correction must be a finite number >= 1, got {max_correction}")
    return max_correction


def thumb_class_weights(
    class_counts: Sequence[float] | Tensor,
    delta: float,
    max_weight: float = DEFAULT_MAX_WEIGHT,
    max_correction: float = DEFAULT_MAX_CORRECTION,
) -> Tensor:
    """Per-class "Thumb on the Scale" weights: a one-vs-rest multiclass extension of :func:`optimal_weight`.

    Each class ``k`` is treated as the binary problem "class k vs the rest" with prior ``π_k`` and prior ratio
    ``ρ_k = (1 − π_k)/π_k``. Its finite-sample correction is

        ``c_k = ρ̃_k / ρ_k = (1 − δ/(2(1 − π_k))) / (1 − δ/(2π_k))``   for ``π_k < 1/2`` and ``δ < 2π_k``

    (``ρ̃_k`` the one-vs-rest optimal ratio of :func:`optimal_weight`), ``c_k = 1`` for ``π_k ≥ 1/2``, and the
    weights are the inverse-prior weights times the corrections, ``ω_k ∝ c_k / π_k``, normalised so that the mean
    weight over samples is 1 (``Σ_k π_k ω_k = 1``).

    * ``K = 2``: the published binary rule, unchanged: ``ω₊/ω₋`` is exactly :func:`optimal_weight` (``ρ̃`` for
      ``δ < 2π₊``, ``max_weight`` with a warning beyond, where the paper says "as strongly as possible").
    * ``K ≥ 3``: ``c_k`` is capped at ``max_correction`` (default :data:`DEFAULT_MAX_CORRECTION`), for every
      ``δ``, and classes with ``δ ≥ 2π_k`` (no finite optimum) get ``c_k = max_correction``. Every weight ratio
      thus stays within ``max_correction`` times the ratio of priors, ``ω_k/ω_j ≤ max_correction · π_j/π_k``.

    Why a cap relative to the priors for ``K ≥ 3``: ``c_k`` grows without bound as ``δ → 2π_k``, and an absolute
    cap on ``ρ̃_k`` (``max_weight``, the previous rule) gave every class beyond ``δ = 2π_k`` the *same* weight
    — on MNIST-1D-LT with ``δ ≈ 0.2–0.5`` that was 7 of 10 classes, so the tail lost its ordering by prior and the
    head classes were almost ignored; it lost to the plain ratio of priors on every setting measured
    (``benchmarks/results/llr_thumb_bilevel.md``). The binary "weight the minority as strongly as possible" does not
    carry over to several minorities that compete with each other: each one-vs-rest "rest" contains the other
    up-weighted classes. Capping the correction keeps the inverse-prior ordering (the ``δ → 0`` limit the paper
    proves) and the paper's direction (rarer classes get the larger correction, up to the cap); the cap is
    applied for every ``δ`` so that the weights are continuous and monotone in ``δ``. The default was chosen on
    development seeds of ``benchmarks/llr_mnist1d.py``; it is a heuristic, not a derived optimum. The paper's
    theory is binary only and conjectures that multiclass needs weights more extreme than the ratio of priors at
    small ``n``, which ``max_correction > 1`` allows. Tune with :func:`bilevel_weights` when a validation split
    is affordable.

    Args:
        class_counts: ``(K,)`` number of retraining samples per class (all > 0).
        delta: ``δ = d/n`` (or ``d_eff / n``), ``≥ 0``.
        max_weight: binary only (``K = 2``): cap on the ratio ``ρ̃`` (a warning says when it is hit).
        max_correction: ``K ≥ 3`` only: cap ``≥ 1`` on each correction ``c_k`` (``1`` gives the ratio of priors).

    Returns:
        ``(K,)`` float64 class weights with mean 1 over samples.

    Raises:
        ValueError: for empty classes, a negative ``delta``, ``max_weight < 1`` or ``max_correction < 1``.

    Example:
        >>> w = thumb_class_weights([800, 200], delta=0.2)
        >>> round(float(w[1] / w[0]), 6)
        7.0
        >>> w = thumb_class_weights([600, 300, 100], delta=0.25, max_correction=3.0)  # δ ≥ 2π₂ = 0.2
        >>> [round(v, 4) for v in (w * torch.tensor([0.6, 0.3, 0.1])).tolist()]  # π_k ω_k = c_k / Σ c, c = (1, 1.41, 3)
        [0.1849, 0.2604, 0.5547]
    """
    counts = _check_counts(class_counts)
    delta, max_weight = _check_delta_and_cap(delta, max_weight)
    max_correction = _check_max_correction(max_correction)
    priors = class_priors(counts)
    raw = torch.empty_like(priors)
    if priors.numel() == 2:
        capped_classes = []
        for k, p in enumerate(priors.tolist()):
            if p < 0.5:
                rho, capped = _thumb_ratio(p, delta, max_weight)
                if capped:
                    capped_classes.append(k)
                raw[k] = rho / (1.0 - p)
            else:
                raw[k] = 1.0 / p
        if capped_classes:
            warnings.warn(
                f"class {capped_classes[0]}: delta={delta:g} is too large for its prior (delta >= 2*prior or "
                f"ratio > max_weight); the weight ratio is capped at max_weight={max_weight:g}. Collect more "
                f"retraining samples or reduce the feature dimension.",
                UserWarning,
                stacklevel=2,
            )
        return normalise_to_prior(raw, priors)
    for k, p in enumerate(priors.tolist()):
        correction = 1.0
        if p < 0.5:
            correction = max_correction
            if delta < 2.0 * p:
                correction = min((1.0 - delta / (2.0 * (1.0 - p))) / (1.0 - delta / (2.0 * p)), max_correction)
        raw[k] = correction / p
    return normalise_to_prior(raw, priors)


def downsample_weights(
    targets: Tensor, groups: Tensor | None = None, num_classes: int | None = None, seed: int = 0
) -> Tensor:
    """0/1 per-sample weights that subsample every class to the size of the smallest class.

    With ``groups`` every non-empty (group, class) cell is subsampled to the smallest non-empty cell (group
    balancing, as in DFR). The subsample is drawn without replacement with a seeded :class:`torch.Generator`.

    Args:
        targets: ``(N,)`` class indices.
        groups: optional ``(N,)`` group indices.
        num_classes: number of classes (default ``max(targets) + 1``).
        seed: random seed of the subsample.

    Returns:
        ``(N,)`` float64 tensor of 0/1 weights (pass to :func:`fit_last_layer` as per-sample weights).

    Example:
        >>> w = downsample_weights(torch.tensor([0, 0, 0, 1, 0, 1]))
        >>> w.sum().item(), w[torch.tensor([3, 5])].tolist()
        (4.0, [1.0, 1.0])
    """
    targets = torch.as_tensor(targets)
    targets, k = check_targets(targets, targets.shape[0] if targets.ndim else -1, num_classes)
    n = targets.shape[0]
    groups = check_groups(groups, n)
    cells = cell_index(targets, groups, k)
    present = torch.unique(cells)
    if present.numel() < 2:
        raise ValueError("downsampling needs at least two classes (or (group, class) cells) in targets")
    counts = torch.bincount(cells)
    smallest = int(counts[present].min())
    gen = torch.Generator().manual_seed(int(seed))
    out = torch.zeros(n, dtype=torch.float64)
    for c in present.tolist():
        idx = torch.nonzero(cells == c).flatten()
        keep = idx[torch.randperm(idx.numel(), generator=gen)[:smallest]]
        out[keep] = 1.0
    return out
