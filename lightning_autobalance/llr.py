"""Last-layer retraining (LLR) with class weights from "Thumb on the Scale" (PAPERS.md §2).

A trained backbone is frozen; only the final linear layer is refit on a small held-out *retraining set* of
features ``x ∈ R^d`` with labels ``y ∈ {0, …, K−1}`` (and optional group labels). This module provides

* :func:`fit_last_layer` — the weighted head: square loss in closed form (one Cholesky solve of the
  ``(d+1)×(d+1)`` normal equations in float64) or cross-entropy (full-batch L-BFGS from zeros);
* :func:`effective_dimension` — ``d_eff``: principal components holding 99% of the feature variance;
* :func:`optimal_weight` — the binary optimal weight ratio ``ρ̃ = (2π₋ − δ)/(2π₊ − δ)``, ``δ = d/n``;
* :func:`thumb_class_weights` (one-vs-rest multiclass extension) and :func:`prior_class_weights`;
* :func:`downsample_weights` — majority subsampling as 0/1 per-sample weights;
* :func:`bilevel_weights` — per-class or per-(group, class) weights tuned on a validation split with the *exact*
  hypergradient through the closed-form solve (autograd through ``torch.linalg.solve``);
* :func:`class_weights_for_mode` — one entry point for the modes ``none``, ``priors``, ``thumb``, ``downsample``,
  ``bilevel``;
* :func:`gaussian_mixture_class_errors` — exact per-class errors of a linear rule on ``x = y·µ + z``.

Conventions (shared by all functions):

* **Outputs.** The head always has ``K`` outputs, also for binary problems (two outputs, one-hot targets);
  prediction is the arg-max. For ``K = 2`` and the square loss, ``(W[1] − W[0], b[1] − b[0])`` is exactly the
  single-output least-squares fit to ``±1`` labels (``+1`` ↔ class 1), because least squares is linear in the
  targets and ``e₁ − e₀`` maps to ``±1``.
* **Objective.** ``Σ_i w_i ℓ_i + (ridge/2)·‖W‖²_F`` with ``ℓ_i = ½‖W x_i + b − e_{y_i}‖²`` (square) or the
  softmax cross-entropy (``ce``); the bias is never penalised. For the square loss this is the same problem as
  ``Σ_i w_i ‖W x_i + b − e_{y_i}‖² + ridge·‖W‖²``. For ``ce`` it is scikit-learn's multinomial
  ``LogisticRegression(C=1/ridge)`` with ``sample_weight=w``. Losses are *sums* over samples, so the strength of
  a given ``ridge`` shrinks as ``n`` grows.
* **Weights** passed to :func:`fit_last_layer` are per-sample ``(N,)``, per-class ``(K,)`` or per-(group, class)
  ``(G, K)``; a 1-D tensor of length ``N`` is always read as per-sample. Class weights returned here are
  normalised so that the mean weight over the samples is 1 (``Σ_k π_k ω_k = 1``).
* Bad input raises :class:`ValueError` with a message that says what to change.

Pure PyTorch (no Lightning); all solves run in float64.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "DEFAULT_ANCHOR",
    "DEFAULT_MAX_CORRECTION",
    "DEFAULT_MAX_WEIGHT",
    "DEFAULT_MIN_CELL_SIZE",
    "BilevelResult",
    "LinearHead",
    "bilevel_objective",
    "bilevel_weights",
    "class_weights_for_mode",
    "downsample_weights",
    "effective_dimension",
    "fit_last_layer",
    "gaussian_mixture_class_errors",
    "optimal_weight",
    "prior_class_weights",
    "thumb_class_weights",
]

DEFAULT_MAX_WEIGHT: float = 1e3
"""Cap on the binary minority/majority weight ratio when ``δ ≥ 2π₊`` (no finite weight equalizes the errors)."""

DEFAULT_MAX_CORRECTION: float = 1.5
"""Cap on the multiclass (``K ≥ 3``) Thumb correction ``ρ̃_k/ρ_k`` relative to the inverse-prior weight."""

DEFAULT_MIN_CELL_SIZE: int = 3
"""Bilevel weight cells with fewer validation samples than this are not tuned (kept at the prior ratio)."""

DEFAULT_ANCHOR: float = 10.0
"""Strength of the bilevel penalty that anchors the weights to the ratio of priors."""

WeightMode = Literal["none", "priors", "thumb", "downsample", "bilevel"]
MODES: tuple[str, ...] = ("none", "priors", "thumb", "downsample", "bilevel")


# ----------------------------------------------------------------------------------------------------------------
# Result type
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LinearHead:
    """A fitted linear head ``scores = x @ weight.T + bias`` (same layout as :class:`torch.nn.Linear`).

    Attributes:
        weight: ``(K, d)`` weight matrix.
        bias: ``(K,)`` bias (zeros when fitted without intercept).

    Example:
        >>> head = LinearHead(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.zeros(2))
        >>> head.predict(torch.tensor([[2.0, 1.0], [0.0, 3.0]])).tolist()
        [0, 1]
    """

    weight: Tensor
    bias: Tensor

    @property
    def num_classes(self) -> int:
        """Number of outputs ``K``."""
        return self.weight.shape[0]

    @property
    def in_features(self) -> int:
        """Feature dimension ``d``."""
        return self.weight.shape[1]

    def __call__(self, features: Tensor) -> Tensor:
        """Scores ``(N, K)`` of ``features`` ``(N, d)``, in the head's dtype."""
        features = torch.as_tensor(features)
        return features.to(self.weight.dtype) @ self.weight.T + self.bias

    def predict(self, features: Tensor) -> Tensor:
        """Predicted classes ``(N,)``: the arg-max of the scores."""
        return self(features).argmax(dim=-1)

    def to_linear(self) -> nn.Linear:
        """A :class:`torch.nn.Linear` holding copies of ``weight`` and ``bias``."""
        layer = nn.Linear(self.in_features, self.num_classes, dtype=self.weight.dtype)
        with torch.no_grad():
            layer.weight.copy_(self.weight)
            layer.bias.copy_(self.bias)
        return layer


@dataclass(frozen=True)
class BilevelResult:
    """Output of :func:`bilevel_weights`.

    Attributes:
        weights: the tuned weights, ``(K,)`` per class or ``(G, K)`` per (group, class), normalised so that the
            mean per-sample weight over the whole retraining set is 1. These are the weights at the step with
            the lowest validation objective (``best_step``).
        history: validation objective plus the ``anchor`` penalty before each step, and after the last one
            (``steps + 1`` values; a single value when no cell is tuned).
        weight_history: ``(len(history), *weights.shape)`` weights along the optimisation, same normalisation.
        best_step: index into ``history`` of the returned weights.
        tuned: boolean mask of the weights' shape: ``True`` for the cells whose weight was tuned, ``False`` for
            cells kept at the prior ratio (fewer than ``min_cell_size`` validation samples, no sample, or every
            cell with ``anchor=inf``).
    """

    weights: Tensor
    history: list[float] = field(default_factory=list)
    weight_history: Tensor | None = None
    best_step: int = 0
    tuned: Tensor | None = None


# ----------------------------------------------------------------------------------------------------------------
# Validation helpers
# ----------------------------------------------------------------------------------------------------------------
def check_features(features: Tensor, name: str = "features") -> Tensor:
    features = torch.as_tensor(features)
    if features.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (N, d) tensor, got shape {tuple(features.shape)}")
    if features.shape[0] == 0 or features.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(features.shape)}); pass at least one sample and feature")
    if not features.is_floating_point():
        features = features.to(torch.get_default_dtype())
    # A NaN/inf makes the sum non-finite; only then pay for the (slow) elementwise check, which also rules out a
    # false alarm from a sum that merely overflowed.
    if not math.isfinite(float(features.sum())) and not bool(torch.isfinite(features).all()):
        raise ValueError(f"{name} contains NaN or infinite values; clean or impute them before fitting the head")
    return features


def check_targets(targets: Tensor, n: int, num_classes: int | None, name: str = "targets") -> tuple[Tensor, int]:
    targets = torch.as_tensor(targets)
    if targets.ndim != 1 or targets.shape[0] != n or n == 0:
        raise ValueError(
            f"{name} must be a 1-D tensor of {n} class indices (one per row of the features), "
            f"got shape {tuple(targets.shape)}"
        )
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer class indices (e.g. targets.long()), got dtype {targets.dtype}")
    targets = targets.long()
    if int(targets.min()) < 0:
        raise ValueError(f"{name} has negative class indices; use labels 0..K-1")
    k = int(targets.max()) + 1 if num_classes is None else int(num_classes)
    if num_classes is not None and int(targets.max()) >= k:
        raise ValueError(f"{name} has label {int(targets.max())} but num_classes={k}; increase num_classes")
    if k < 2:
        raise ValueError("need at least two classes; pass num_classes>=2 and targets from two or more classes")
    return targets, k


def _check_groups(groups: Tensor | None, n: int, num_groups: int | None = None) -> Tensor | None:
    if groups is None:
        return None
    groups = torch.as_tensor(groups)
    if groups.ndim != 1 or groups.shape[0] != n:
        raise ValueError(f"groups must be a 1-D tensor of {n} group indices, got shape {tuple(groups.shape)}")
    if groups.is_floating_point() or groups.dtype == torch.bool:
        raise ValueError(f"groups must hold integer group indices, got dtype {groups.dtype}")
    groups = groups.long()
    if int(groups.min()) < 0:
        raise ValueError("groups has negative indices; use group labels 0..G-1")
    if num_groups is not None and int(groups.max()) >= num_groups:
        raise ValueError(
            f"groups has label {int(groups.max())} but the weights have only {num_groups} rows; "
            f"pass (G, K) weights with G > max(groups)"
        )
    return groups


def _check_nonneg_weights(weights: Tensor, name: str = "weights") -> Tensor:
    if not bool(torch.isfinite(weights).all()):
        raise ValueError(f"{name} contains NaN or infinite values; pass finite non-negative weights")
    if bool((weights < 0).any()):
        raise ValueError(f"{name} contains negative values; loss weights must be >= 0")
    return weights


def _sample_weights(weights: Tensor | None, targets: Tensor, groups: Tensor | None, k: int) -> Tensor:
    """Expand per-sample ``(N,)``, per-class ``(K,)`` or per-(group, class) ``(G, K)`` weights to ``(N,)``."""
    n = targets.shape[0]
    if weights is None:
        return torch.ones(n, dtype=torch.float64)
    weights = _check_nonneg_weights(torch.as_tensor(weights).to(torch.float64))
    if weights.ndim == 1 and weights.shape[0] == n:
        out = weights
    elif weights.ndim == 1 and weights.shape[0] == k:
        out = weights[targets]
    elif weights.ndim == 2 and weights.shape[1] == k:
        if groups is None:
            raise ValueError("per-(group, class) weights of shape (G, K) need group labels; pass groups=")
        groups = _check_groups(groups, n, num_groups=weights.shape[0])
        out = weights[groups, targets]
    else:
        raise ValueError(
            f"weights of shape {tuple(weights.shape)} match neither per-sample ({n},), per-class "
            f"({k},) nor per-(group, class) (G, {k}); fix the shape or num_classes"
        )
    if not bool((out > 0).any()):
        raise ValueError("all sample weights are zero; give at least two classes positive weight")
    return out


def _check_ridge(ridge: float) -> float:
    ridge = float(ridge)
    if not math.isfinite(ridge) or ridge < 0:
        raise ValueError(f"ridge must be a finite number >= 0, got {ridge}")
    return ridge


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


def _augment(x: Tensor, fit_intercept: bool) -> Tensor:
    if not fit_intercept:
        return x
    return torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], dim=1)


def _penalty_diag(d: int, ridge: float, fit_intercept: bool) -> Tensor:
    diag = torch.full((d + int(fit_intercept),), ridge, dtype=torch.float64)
    if fit_intercept:
        diag[-1] = 0.0  # the intercept is not penalised
    return diag


def _singular_message(m: int, d: int) -> str:
    return (
        f"the weighted normal equations are singular (n={m} samples with positive weight, d={d} features): "
        f"the closed-form square-loss head needs n > d and non-collinear features; pass ridge>0 or fewer "
        f"features"
    )


# ----------------------------------------------------------------------------------------------------------------
# Effective dimension and weights
# ----------------------------------------------------------------------------------------------------------------
@contextmanager
def _torch_threads(num: int) -> Iterator[None]:
    before = torch.get_num_threads()
    if num != before:
        torch.set_num_threads(num)
    try:
        yield
    finally:
        if num != before:
            torch.set_num_threads(before)


def _eigenvalues(sym: Tensor) -> Tensor:
    """Ascending eigenvalues of a symmetric matrix.

    Small decompositions run on one thread: with MKL on a busy 2-core machine the multi-threaded symmetric
    eigensolver of a 512×512 matrix took 0.1–10 s erratically, against a steady 0.05 s on one thread.
    """
    with _torch_threads(1 if sym.shape[0] <= 2048 else torch.get_num_threads()):
        return torch.linalg.eigh(sym).eigenvalues


def effective_dimension(features: Tensor, variance: float = 0.99) -> int:
    """Number of principal components of the centered features that hold ``variance`` of the total variance.

    This is the ``d_eff`` of "Thumb on the Scale": with ``δ = d_eff / n`` it replaces ``d / n`` in
    :func:`optimal_weight` for real (approximately low-rank) features.

    Args:
        features: ``(N, d)`` features.
        variance: fraction of the total variance to keep, in ``(0, 1]``.

    Returns:
        The smallest ``k`` such that the top ``k`` eigenvalues of the covariance sum to at least ``variance`` of
        the trace (``0`` if all features are constant).

    Raises:
        ValueError: if ``variance`` is outside ``(0, 1]`` or the features are not finite and 2-D with N >= 2.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(500, 3, generator=g) @ torch.randn(3, 20, generator=g)
        >>> effective_dimension(x + 1e-4 * torch.randn(500, 20, generator=g))
        3
    """
    variance = float(variance)
    if not (0.0 < variance <= 1.0):
        raise ValueError(f"variance must be in (0, 1], got {variance}")
    x = check_features(features).to(torch.float64)
    n, d = x.shape
    if n < 2:
        raise ValueError("effective_dimension needs at least 2 samples")
    x = x - x.mean(dim=0)
    gram = x.T @ x if n >= d else x @ x.T
    eig = _eigenvalues(gram).clamp_min(0.0).flip(0)
    cum = torch.cumsum(eig, dim=0)
    total = cum[-1]
    if float(total) == 0.0:
        return 0
    ratio = cum / total
    k = int(torch.searchsorted(ratio, torch.tensor([variance], dtype=torch.float64))[0]) + 1
    return min(k, int(torch.count_nonzero(eig)))


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


def _normalise(raw: Tensor, priors: Tensor) -> Tensor:
    return raw / (priors * raw).sum()


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
    counts = _check_counts(class_counts)
    priors = counts / counts.sum()
    return _normalise(1.0 / priors, priors)


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
    priors = counts / counts.sum()
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
        return _normalise(raw, priors)
    for k, p in enumerate(priors.tolist()):
        correction = 1.0
        if p < 0.5:
            correction = max_correction
            if delta < 2.0 * p:
                correction = min((1.0 - delta / (2.0 * (1.0 - p))) / (1.0 - delta / (2.0 * p)), max_correction)
        raw[k] = correction / p
    return _normalise(raw, priors)


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
    groups = _check_groups(groups, n)
    cells = targets if groups is None else groups * k + targets
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


# ----------------------------------------------------------------------------------------------------------------
# Fitting the head
# ----------------------------------------------------------------------------------------------------------------
def _fit_square(x: Tensor, targets: Tensor, w: Tensor, k: int, ridge: float, fit_intercept: bool) -> Tensor:
    """Closed-form weighted least squares on centered float64 features; returns ``(p, K)`` coefficients."""
    d = x.shape[1]
    m = int((w > 0).sum())
    p = d + int(fit_intercept)
    if ridge == 0.0 and m < p:
        raise ValueError(
            f"n <= d: {m} samples with positive weight for d={d} features"
            f"{' plus an intercept' if fit_intercept else ''}; the closed-form square-loss head is "
            f"not unique; pass ridge>0 or fewer features"
        )
    # Blocks of the augmented system [[XᵀDX, XᵀDw], [wᵀX, Σw]] θ = [XᵀDY; wᵀY] without forming [X, 1] or DX.
    wy = torch.zeros(x.shape[0], k, dtype=torch.float64)
    wy[torch.arange(x.shape[0]), targets] = w  # D·Y for one-hot Y
    cross = torch.empty(p, k, dtype=torch.float64)
    cross[:d] = x.T @ wy
    gram = torch.empty(p, p, dtype=torch.float64)
    if fit_intercept:
        cross[d] = wy.sum(dim=0)
        colsum = w @ x
        gram[:d, d] = colsum
        gram[d, :d] = colsum
        gram[d, d] = w.sum()
    xs = x.mul_(w.sqrt()[:, None])  # x is a private float64 copy
    gram[:d, :d] = xs.T @ xs
    gram.diagonal().add_(_penalty_diag(d, ridge, fit_intercept))
    chol, info = torch.linalg.cholesky_ex(gram)
    # L_ii² / A_ii is the fraction of column i's (weighted) energy not explained by the previous columns; a tiny
    # value means collinear features, which rounding can let through the factorisation.
    residual = chol.diagonal().pow(2) / gram.diagonal().clamp_min(torch.finfo(torch.float64).tiny)
    if int(info) != 0 or bool((residual < 1e-12).any()):
        raise ValueError(_singular_message(m, d))
    return torch.cholesky_solve(cross, chol)


def minimise_lbfgs(objective: Callable[[], Tensor], params: list[Tensor], max_iter: int, tol: float) -> float:
    """Minimise ``objective()`` over ``params`` by full-batch L-BFGS (strong Wolfe line search) to a gradient tolerance.

    Returns the largest absolute gradient entry at the end, for a convergence check.

    Example:
        >>> x = torch.zeros(2, dtype=torch.float64, requires_grad=True)
        >>> gmax = minimise_lbfgs(lambda: ((x - 3.0) ** 2).sum(), [x], max_iter=50, tol=1e-10)
        >>> x.detach().tolist(), gmax < 1e-8
        ([3.0, 3.0], True)
    """
    opt = torch.optim.LBFGS(
        params,
        lr=1.0,
        max_iter=max_iter,
        max_eval=2 * max_iter,
        tolerance_grad=tol,
        tolerance_change=1e-16,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        opt.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    opt.step(closure)
    grads = torch.autograd.grad(objective(), params)
    return max(float(g.abs().max()) for g in grads)


def _fit_ce(
    x: Tensor, targets: Tensor, w: Tensor, k: int, ridge: float, fit_intercept: bool, max_iter: int, tol: float
) -> Tensor:
    """Full-batch L-BFGS from zeros on the weighted multinomial cross-entropy; returns ``(p, K)``."""
    d = x.shape[1]
    weight = torch.zeros(k, d, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(k, dtype=torch.float64, requires_grad=fit_intercept)
    scale = 1.0 / float(w.sum())  # same minimiser, better-scaled tolerances
    params = [weight, bias] if fit_intercept else [weight]

    def objective() -> Tensor:
        logits = x @ weight.T + bias
        ce = F.cross_entropy(logits, targets, reduction="none")
        return scale * ((w * ce).sum() + 0.5 * ridge * weight.pow(2).sum())

    gmax = minimise_lbfgs(objective, params, max_iter, tol)
    if gmax > max(1e3 * tol, 1e-6):
        warnings.warn(
            f"cross-entropy head did not converge in max_iter={max_iter} L-BFGS iterations (max |grad| "
            f"= {gmax:.2e}); increase max_iter or ridge (with ridge=0 separable data has no finite "
            f"minimiser)",
            UserWarning,
            stacklevel=3,
        )
    with torch.no_grad():
        # Softmax is invariant to a shift shared by all classes: return the zero-mean representative (with
        # ridge > 0 the weight rows already sum to zero at the optimum; the unpenalised bias does not).
        coef = weight - weight.mean(dim=0)
        b = bias - bias.mean()
    return torch.cat([coef.T, b[None, :]], dim=0) if fit_intercept else coef.T.contiguous()


def fit_last_layer(
    features: Tensor,
    targets: Tensor,
    groups: Tensor | None = None,
    weights: Tensor | None = None,
    loss: Literal["square", "ce"] = "square",
    ridge: float = 0.0,
    num_classes: int | None = None,
    fit_intercept: bool = True,
    *,
    max_iter: int = 1000,
    tol: float = 1e-10,
) -> LinearHead:
    """Fit a weighted linear head on frozen features (last-layer retraining).

    Minimises ``Σ_i w_i ℓ_i + (ridge/2)·‖W‖²_F`` over ``W (K, d)`` and ``b (K,)``, ``b`` unpenalised, where

    * ``loss="square"``: ``ℓ_i = ½‖W x_i + b − e_{y_i}‖²`` with one-hot targets on ``K`` outputs (two outputs for
      binary; see the module docstring for the ``±1`` equivalence) — equivalently
      ``Σ_i w_i‖W x_i + b − e_{y_i}‖² + ridge·‖W‖²``. Solved in closed form by one Cholesky factorisation of the
      ``(d+1)×(d+1)`` weighted normal equations in float64 (features are first centered by their unweighted
      mean, an exact reparametrisation of the intercept that improves conditioning).
    * ``loss="ce"``: ``ℓ_i`` = softmax cross-entropy; full-batch L-BFGS (strong-Wolfe line search) from zeros in
      float64, at most ``max_iter`` iterations, stopping when the max gradient entry of the objective divided by
      ``Σ w`` is below ``tol``. Matches scikit-learn's multinomial ``LogisticRegression(C=1/ridge,
      fit_intercept=...)`` with ``sample_weight=w`` (for ``K ≥ 3``; sklearn's binary model is a different
      parametrisation). The result is the representative with zero-mean bias (and weight columns) over classes.

    Args:
        features: ``(N, d)`` features (any float dtype; the head is returned in this dtype).
        targets: ``(N,)`` class indices in ``[0, K)``.
        groups: ``(N,)`` group indices, needed only for ``(G, K)`` weights.
        weights: ``None`` (all ones), per-sample ``(N,)``, per-class ``(K,)`` or per-(group, class) ``(G, K)``
            non-negative weights. A 1-D tensor of length ``N`` is always per-sample.
        loss: ``"square"`` (closed form) or ``"ce"``.
        ridge: L2 penalty strength ``≥ 0`` on ``W`` (see above for the exact scaling).
        num_classes: ``K`` (default ``max(targets) + 1``).
        fit_intercept: fit the bias ``b`` (else ``b = 0``).
        max_iter: L-BFGS iterations for ``loss="ce"``.
        tol: gradient tolerance for ``loss="ce"``.

    Returns:
        The fitted :class:`LinearHead`.

    Raises:
        ValueError: non-finite features, shape mismatches, negative/non-finite weights, fewer than two classes
            with positive weight, or (square loss, ``ridge=0``) ``n ≤ d`` / singular normal equations.

    Example:
        >>> x = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
        >>> head = fit_last_layer(x, torch.tensor([0, 0, 1, 1]))
        >>> head.predict(x).tolist()
        [0, 0, 1, 1]
        >>> [round(v, 6) for v in head.weight[:, 0].tolist()]
        [-0.4, 0.4]
    """
    if loss not in ("square", "ce"):
        raise ValueError(f"loss must be 'square' or 'ce', got {loss!r}")
    if loss == "ce" and int(max_iter) < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    x = check_features(features)
    out_dtype = x.dtype
    n, d = x.shape
    y, k = check_targets(targets, n, num_classes)
    if groups is not None:
        groups = _check_groups(groups, n)
    ridge = _check_ridge(ridge)
    w = _sample_weights(weights, y, groups, k)
    present = torch.nonzero(torch.bincount(y, weights=w, minlength=k) > 0).flatten()
    if present.numel() < 2:
        raise ValueError(
            f"only one class ({present.tolist()}) present with positive weight; the retraining set "
            f"needs samples of at least two classes"
        )
    x64 = x.to(torch.float64, copy=True)
    # With an intercept, centering is an exact reparametrisation (b ← b + W·mean) that improves conditioning.
    mean = x64.mean(dim=0) if fit_intercept else torch.zeros(d, dtype=torch.float64)
    if fit_intercept:
        x64.sub_(mean)
    if loss == "square":
        coef = _fit_square(x64, y, w, k, ridge, fit_intercept)
    else:
        coef = _fit_ce(x64, y, w, k, ridge, fit_intercept, int(max_iter), float(tol))
    weight = coef[:d].T.contiguous()
    bias = coef[d] - weight @ mean if fit_intercept else torch.zeros(k, dtype=torch.float64)
    return LinearHead(weight.to(out_dtype), bias.to(out_dtype))


# ----------------------------------------------------------------------------------------------------------------
# Bilevel weights (exact hypergradient through the closed-form solve)
# ----------------------------------------------------------------------------------------------------------------
class _BilevelProblem:
    """Validation objective as a differentiable function of the log-weights.

    Precomputes one augmented Gram matrix per weight cell of the training split, so each evaluation costs
    ``O(C·p² + p³ + n_val·p·K)`` instead of a pass over the training features.
    """

    def __init__(
        self,
        train_x: Tensor,
        train_y: Tensor,
        train_cells: Tensor,
        num_cells: int,
        cell_class: Tensor,
        val_x: Tensor,
        val_y: Tensor,
        val_obj_cells: Tensor,
        k: int,
        objective: str,
        val_loss: str,
        temperature: float,
        ridge: float,
        fit_intercept: bool,
    ) -> None:
        mean = train_x.mean(dim=0)
        xa = _augment(train_x - mean, fit_intercept)
        p = xa.shape[1]
        self.grams = torch.zeros(num_cells, p, p, dtype=torch.float64)
        self.sums = torch.zeros(num_cells, p, dtype=torch.float64)
        for c in torch.unique(train_cells).tolist():
            rows = xa[train_cells == c]
            self.grams[c] = rows.T @ rows
            self.sums[c] = rows.sum(dim=0)
        self.cell_counts = torch.bincount(train_cells, minlength=num_cells).to(torch.float64)
        self.n_train = float(train_x.shape[0])
        self.onehot_cells = F.one_hot(cell_class, k).to(torch.float64)  # (C, K)
        self.penalty = _penalty_diag(train_x.shape[1], ridge, fit_intercept)
        self.val_xa = _augment(val_x - mean, fit_intercept)
        self.val_y = val_y
        self.val_onehot = F.one_hot(val_y, k).to(torch.float64)
        present, self.val_cells = torch.unique(val_obj_cells, return_inverse=True)
        self.num_val_cells = present.numel()
        self.val_cell_counts = torch.bincount(self.val_cells, minlength=self.num_val_cells).to(torch.float64)
        self.objective = objective
        self.val_loss = val_loss
        self.temperature = temperature
        self.m = int(train_x.shape[0])
        self.d = int(train_x.shape[1])

    def normalised(self, log_weights: Tensor) -> Tensor:
        """exp(log-weights) scaled so the mean per-sample weight on the training split is 1."""
        w = torch.exp(log_weights - log_weights.detach().max())  # the normalisation makes the shift a no-op
        return w * (self.n_train / (self.cell_counts * w).sum())

    def head(self, log_weights: Tensor) -> Tensor:
        w = self.normalised(log_weights)
        a = torch.einsum("c,cij->ij", w, self.grams) + torch.diag(self.penalty)
        rhs = self.onehot_cells.T @ (w[:, None] * self.sums)  # (K, p)
        try:
            return torch.linalg.solve(a, rhs.T)  # (p, K); autograd through solve is the exact hypergradient
        except RuntimeError as err:  # torch.linalg.LinAlgError subclasses RuntimeError
            raise ValueError(_singular_message(self.m, self.d)) from err

    def __call__(self, log_weights: Tensor) -> Tensor:
        scores = self.val_xa @ self.head(log_weights)
        if self.val_loss == "square":
            per_sample = (scores - self.val_onehot).pow(2).sum(dim=1)
        else:
            per_sample = F.cross_entropy(scores, self.val_y, reduction="none")
        per_cell = torch.zeros(self.num_val_cells, dtype=per_sample.dtype).index_add(0, self.val_cells, per_sample)
        per_cell = per_cell / self.val_cell_counts
        if self.objective == "balanced":
            return per_cell.mean()
        t = self.temperature
        return t * (torch.logsumexp(per_cell / t, dim=0) - math.log(self.num_val_cells))


def _check_bilevel_options(objective: str, val_loss: str, temperature: float) -> None:
    if objective not in ("balanced", "worst_group"):
        raise ValueError(f"objective must be 'balanced' or 'worst_group', got {objective!r}")
    if val_loss not in ("square", "ce"):
        raise ValueError(f"val_loss must be 'square' or 'ce', got {val_loss!r}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be > 0, got {temperature}")


def _weight_cells(
    log_weights_shape: tuple[int, ...], targets: Tensor, groups: Tensor | None, k: int
) -> tuple[Tensor, int, Tensor]:
    """Map samples to weight cells; returns (cells (N,), number of cells, class of each cell)."""
    if len(log_weights_shape) == 1:
        if log_weights_shape[0] != k:
            raise ValueError(f"per-class log-weights must have shape ({k},), got {log_weights_shape}")
        return targets, k, torch.arange(k)
    if len(log_weights_shape) == 2 and log_weights_shape[1] == k:
        if groups is None:
            raise ValueError("per-(group, class) weights of shape (G, K) need group labels; pass groups")
        g = log_weights_shape[0]
        if int(groups.max()) >= g:
            raise ValueError(f"groups has label {int(groups.max())} but the weights have only {g} rows")
        return groups * k + targets, g * k, torch.arange(k).repeat(g)
    raise ValueError(f"log-weights must have shape (K,) or (G, K) with K={k}, got {log_weights_shape}")


def _objective_cells(targets: Tensor, groups: Tensor | None, k: int, objective: str) -> Tensor:
    if objective == "worst_group" and groups is not None:
        return groups * k + targets
    return targets


def bilevel_objective(
    log_weights: Tensor,
    train_features: Tensor,
    train_targets: Tensor,
    val_features: Tensor,
    val_targets: Tensor,
    *,
    train_groups: Tensor | None = None,
    val_groups: Tensor | None = None,
    num_classes: int | None = None,
    objective: Literal["balanced", "worst_group"] = "balanced",
    val_loss: Literal["square", "ce"] = "ce",
    temperature: float = 0.1,
    ridge: float = 0.0,
    fit_intercept: bool = True,
) -> Tensor:
    """Validation objective of the closed-form square-loss head as a differentiable function of log-weights.

    The head is fit on the training split with weights ``ω = exp(log_weights)`` (normalised so the mean
    per-sample weight on the training split is 1) by one ``torch.linalg.solve`` of the normal equations, and
    scored on the validation split. Backpropagating into ``log_weights`` gives the exact hypergradient.

    Objectives on the validation scores ``s = W x + b``, from the per-cell mean loss ``L_c`` (square:
    ``‖s − e_y‖²``; ce: softmax cross-entropy of ``s``):

    * ``balanced``: mean over classes of the per-class mean loss;
    * ``worst_group``: smooth maximum ``τ·log((1/C) Σ_c exp(L_c/τ))`` over the (group, class) cells present in
      the validation split (over classes when no groups are given); it lies between the mean and the max and
      tends to the max as ``τ → 0``.

    Args:
        log_weights: ``(K,)`` per-class or ``(G, K)`` per-(group, class) log-weights.
        train_features: ``(N_tr, d)`` features of the split the head is fit on.
        train_targets: ``(N_tr,)`` class indices.
        val_features: ``(N_val, d)`` features of the validation split.
        val_targets: ``(N_val,)`` class indices.
        train_groups: ``(N_tr,)`` group indices (for ``(G, K)`` weights).
        val_groups: ``(N_val,)`` group indices (for ``worst_group`` over groups).
        num_classes: ``K`` (default ``max(train_targets) + 1``).
        objective: ``"balanced"`` or ``"worst_group"``.
        val_loss: validation loss of the scores, ``"ce"`` (default) or ``"square"``.
        temperature: ``τ > 0`` of the smooth max.
        ridge: L2 penalty as in :func:`fit_last_layer` (square loss).
        fit_intercept: fit an unpenalised bias.

    Returns:
        A float64 scalar tensor, differentiable with respect to ``log_weights``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x, y = torch.randn(60, 3, generator=g), torch.arange(60) % 2
        >>> lw = torch.zeros(2, dtype=torch.float64, requires_grad=True)
        >>> value = bilevel_objective(lw, x[:40], y[:40], x[40:], y[40:])
        >>> value.backward()
        >>> lw.grad.shape
        torch.Size([2])
    """
    _check_bilevel_options(objective, val_loss, temperature)
    ridge = _check_ridge(ridge)
    tx = check_features(train_features, "train_features").to(torch.float64)
    vx = check_features(val_features, "val_features").to(torch.float64)
    if vx.shape[1] != tx.shape[1]:
        raise ValueError(f"val_features has {vx.shape[1]} features but train_features has {tx.shape[1]}")
    ty, k = check_targets(train_targets, tx.shape[0], num_classes, "train_targets")
    vy, _ = check_targets(val_targets, vx.shape[0], k, "val_targets")
    tg = _check_groups(train_groups, tx.shape[0])
    vg = _check_groups(val_groups, vx.shape[0])
    cells, num_cells, cell_class = _weight_cells(tuple(log_weights.shape), ty, tg, k)
    problem = _BilevelProblem(
        tx,
        ty,
        cells,
        num_cells,
        cell_class,
        vx,
        vy,
        _objective_cells(vy, vg, k, objective),
        k,
        objective,
        val_loss,
        float(temperature),
        ridge,
        fit_intercept,
    )
    return problem(log_weights.to(torch.float64).reshape(-1))


def _stratified_split(cells: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Indices (train, val): each cell contributes ``round(fraction·n_c)`` samples to val, ≥ 1 to each side."""
    gen = torch.Generator().manual_seed(int(seed))
    train, val = [], []
    for c in torch.unique(cells).tolist():
        idx = torch.nonzero(cells == c).flatten()
        idx = idx[torch.randperm(idx.numel(), generator=gen)]
        if idx.numel() < 2:
            raise ValueError(
                f"cell {c} has a single sample; the bilevel split needs >= 2 samples per class "
                f"(and per (group, class) cell with groups)"
            )
        n_val = min(max(round(fraction * idx.numel()), 1), idx.numel() - 1)
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return torch.sort(torch.cat(train)).values, torch.sort(torch.cat(val)).values


def bilevel_weights(
    features: Tensor,
    targets: Tensor,
    groups: Tensor | None = None,
    *,
    num_classes: int | None = None,
    per: Literal["class", "group_class"] | None = None,
    objective: Literal["balanced", "worst_group"] = "balanced",
    val_loss: Literal["square", "ce"] = "ce",
    val_fraction: float = 0.3,
    steps: int = 100,
    lr: float = 0.05,
    temperature: float = 0.1,
    ridge: float = 0.0,
    fit_intercept: bool = True,
    init: Literal["none", "priors"] | Tensor = "priors",
    seed: int = 0,
    min_cell_size: int = DEFAULT_MIN_CELL_SIZE,
    anchor: float = DEFAULT_ANCHOR,
) -> BilevelResult:
    """Tune per-class or per-(group, class) loss weights by bilevel optimisation on a split of the retraining set.

    The retraining set is split (stratified by class, or by (group, class) cell when groups are given; seeded)
    into a training part, on which the weighted square-loss head is fit in closed form, and a validation part,
    on which :func:`bilevel_objective` is evaluated. The weights are ``exp(log-weights)``, normalised; the
    log-weights take ``steps`` Adam steps (learning rate ``lr``) along the exact hypergradient (autograd through
    ``torch.linalg.solve``; no Neumann or one-step approximation). Fully deterministic for a given ``seed``.

    Caveat: the weights are tuned for a head fit on the training part (``n·(1 − val_fraction)`` samples, i.e. a
    larger ``δ``) and are then meant for a refit on the whole retraining set.

    Small cells. A cell with one or two validation samples has a validation loss that is mostly noise, and the
    exact hypergradient fits that noise (on MNIST-1D-LT the tuned weights lost to the ratio of priors). Two guards,
    both relative to the *prior ratio* (inverse cell frequency ``1/n_c`` on the whole retraining set), written with
    the log-correction ``r_c = log ω_c + log n_c`` (equal ``r_c`` for all cells means the ratio of priors):

    * ``min_cell_size``: cells with fewer validation samples are not tuned; their ``r_c`` is the mean ``r`` of the
      tuned cells, i.e. they keep the inverse-frequency weight relative to a typical tuned cell. Their validation
      samples still count in the objective. If no cell is tuned the result is the ratio of priors.
    * ``anchor`` (``λ ≥ 0``): the objective minimised (and used to pick the best step) is the validation objective
      plus ``λ · mean_c (r_c − r̄)² / m_c`` over the cells with samples (``r̄`` their mean, ``m_c`` the cell's
      validation samples): a Gaussian prior on the log-corrections centred at the ratio of priors, whose weight
      relative to the data falls like the noise of a cell's mean validation loss (``∝ 1/m_c``). Small cells are
      pinned close to the ratio of priors, large cells can follow the hypergradient. ``λ = 0`` switches it off;
      ``λ = inf`` returns the ratio of priors.
    The defaults (:data:`DEFAULT_MIN_CELL_SIZE`, :data:`DEFAULT_ANCHOR`) were chosen on development seeds of
    ``benchmarks/llr_mnist1d.py``, checked against ``benchmarks/llr_theory.py --quick`` (the binary Gaussian
    mixture, where the optimal ratio is far from the priors and ``anchor=10`` keeps most of the gain over them);
    see ``benchmarks/results/llr_thumb_bilevel.md``.

    Args:
        features: ``(N, d)`` retraining features.
        targets: ``(N,)`` class indices.
        groups: optional ``(N,)`` group indices.
        num_classes: ``K`` (default ``max(targets) + 1``).
        per: ``"class"`` (``(K,)`` weights) or ``"group_class"`` (``(G, K)``); default ``"group_class"`` when
            groups are given, else ``"class"``.
        objective: ``"balanced"`` or ``"worst_group"`` (see :func:`bilevel_objective`).
        val_loss: ``"ce"`` (default) or ``"square"`` on the validation scores. On the Gaussian-mixture benchmark
            the square validation loss kept the weights near 1 (it does not track the 0-1 error well), the
            cross-entropy of the scores did better.
        val_fraction: fraction of each cell held out for validation, in ``(0, 1)``. Small values keep the
            training part (and its ``δ``) close to the full retraining set.
        steps: number of Adam steps (``≥ 0``).
        lr: Adam learning rate on the log-weights.
        temperature: smooth-max temperature for ``worst_group``.
        ridge: L2 penalty of the inner square-loss fit.
        fit_intercept: fit an unpenalised bias.
        init: starting weights: ``"priors"`` (inverse cell frequency), ``"none"`` (all ones) or a positive tensor
            of the weights' shape.
        seed: seed of the split.
        min_cell_size: cells with fewer validation samples than this keep the prior-ratio weight (``≤ 1``
            tunes every cell).
        anchor: strength ``λ ≥ 0`` (or ``inf``) of the penalty anchoring the weights to the ratio of priors.

    Returns:
        A :class:`BilevelResult` (best weights, objective history including the penalty, weight history, mask of
        the tuned cells).

    Raises:
        ValueError: bad options, cells with fewer than 2 samples, or a singular inner problem (pass ``ridge>0``).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> y = (torch.rand(400, generator=g) < 0.2).long()
        >>> x = torch.randn(400, 5, generator=g) + y[:, None].double()
        >>> res = bilevel_weights(x, y, steps=20)
        >>> res.weights.shape, len(res.history)
        (torch.Size([2]), 21)
    """
    _check_bilevel_options(objective, val_loss, temperature)
    ridge = _check_ridge(ridge)
    if not (0.0 < float(val_fraction) < 1.0):
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if int(steps) < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if isinstance(min_cell_size, bool) or int(min_cell_size) != min_cell_size or min_cell_size < 0:
        raise ValueError(f"min_cell_size must be an integer >= 0 (validation samples per cell), got {min_cell_size}")
    anchor = float(anchor)
    if math.isnan(anchor) or anchor < 0:
        raise ValueError(f"anchor must be >= 0 (0 switches the prior-ratio penalty off, inf pins it), got {anchor}")
    x = check_features(features).to(torch.float64)
    n = x.shape[0]
    y, k = check_targets(targets, n, num_classes)
    g = _check_groups(groups, n)
    if per is None:
        per = "class" if g is None else "group_class"
    if per == "class":
        shape: tuple[int, ...] = (k,)
    elif per == "group_class":
        if g is None:
            raise ValueError("per='group_class' needs group labels; pass groups or use per='class'")
        shape = (int(g.max()) + 1, k)
    else:
        raise ValueError(f"per must be 'class' or 'group_class', got {per!r}")
    if torch.unique(y).numel() < 2:
        raise ValueError("only one class present in targets; the retraining set needs at least two classes")

    cells, num_cells, cell_class = _weight_cells(shape, y, g, k)
    split_cells = cells if g is None else g * k + y
    train_idx, val_idx = _stratified_split(split_cells, float(val_fraction), seed)
    p = x.shape[1] + int(fit_intercept)
    if ridge == 0.0 and train_idx.numel() < p:
        raise ValueError(
            f"n <= d in the bilevel training split ({train_idx.numel()} samples, d={x.shape[1]}); "
            f"pass ridge>0, a smaller val_fraction, or fewer features"
        )
    val_g = None if g is None else g[val_idx]
    problem = _BilevelProblem(
        x[train_idx],
        y[train_idx],
        cells[train_idx],
        num_cells,
        cell_class,
        x[val_idx],
        y[val_idx],
        _objective_cells(y[val_idx], val_g, k, objective),
        k,
        objective,
        val_loss,
        float(temperature),
        ridge,
        fit_intercept,
    )

    full_counts = torch.bincount(cells, minlength=num_cells).to(torch.float64)
    present = full_counts > 0
    prior_log = -torch.log(full_counts.clamp_min(1.0))  # log-weights of the ratio of priors (inverse frequency)
    val_counts = torch.bincount(cells[val_idx], minlength=num_cells)
    tuned = present & (val_counts >= int(min_cell_size))
    if math.isinf(anchor):
        tuned = torch.zeros_like(tuned)
    if isinstance(init, str):
        if init == "none":
            start = torch.zeros(num_cells, dtype=torch.float64)
        elif init == "priors":
            start = prior_log.clone()
        else:
            raise ValueError(f"init must be 'none', 'priors' or a tensor of positive weights, got {init!r}")
    else:
        init_t = torch.as_tensor(init, dtype=torch.float64)
        if tuple(init_t.shape) != shape or not bool(torch.isfinite(init_t).all()) or bool((init_t <= 0).any()):
            raise ValueError(f"init must be a finite positive tensor of shape {shape}")
        start = torch.log(init_t).reshape(-1)
    # Optimise the log-corrections r = log-weights − prior log-weights of the tuned cells; the other cells take
    # the mean correction of the tuned ones (0, the ratio of priors, when none is tuned).
    correction = (start - prior_log).clone().requires_grad_(True)
    opt = torch.optim.Adam([correction], lr=float(lr))
    num_tuned = int(tuned.sum())
    num_present = int(present.sum())

    def log_weights(r: Tensor) -> Tensor:
        fill = r[tuned].mean() if num_tuned else r.new_zeros(())
        return prior_log + torch.where(tuned, r, fill)

    def penalty(lw: Tensor) -> Tensor:
        if anchor == 0.0 or math.isinf(anchor) or num_tuned == 0:
            return lw.new_zeros(())
        r = (lw - prior_log)[present]
        return anchor * ((r - r.mean()).pow(2) / val_counts[present].clamp_min(1)).sum() / num_present

    def full_norm(lw: Tensor) -> Tensor:
        w = torch.exp(lw - lw.max())
        return (w * (n / (full_counts * w).sum())).reshape(shape)

    history: list[float] = []
    weight_history: list[Tensor] = []
    for step in range(int(steps) + 1):
        opt.zero_grad()
        lw = log_weights(correction)
        value = problem(lw) + penalty(lw)
        history.append(float(value.detach()))
        weight_history.append(full_norm(lw.detach()))
        if step == int(steps) or num_tuned == 0:
            break
        value.backward()
        opt.step()
    best = min(range(len(history)), key=history.__getitem__)
    return BilevelResult(
        weights=weight_history[best].clone(),
        history=history,
        weight_history=torch.stack(weight_history),
        best_step=best,
        tuned=tuned.reshape(shape),
    )


# ----------------------------------------------------------------------------------------------------------------
# Modes
# ----------------------------------------------------------------------------------------------------------------
def class_weights_for_mode(
    mode: WeightMode,
    targets: Tensor,
    features: Tensor | None = None,
    groups: Tensor | None = None,
    *,
    num_classes: int | None = None,
    variance: float = 0.99,
    delta: float | None = None,
    max_weight: float = DEFAULT_MAX_WEIGHT,
    seed: int = 0,
    bilevel_kwargs: dict | None = None,
    max_correction: float = DEFAULT_MAX_CORRECTION,
) -> Tensor:
    """Loss weights for last-layer retraining under one of the named modes (pass them to :func:`fit_last_layer`).

    * ``none``: all classes weight 1, ``(K,)``;
    * ``priors``: :func:`prior_class_weights`, ``(K,)``;
    * ``thumb``: :func:`thumb_class_weights` with ``δ = d_eff / n``, ``d_eff = effective_dimension(features,
      variance)`` (or the given ``delta``), ``(K,)``; groups are ignored;
    * ``downsample``: :func:`downsample_weights` (per class, or per (group, class) cell with groups), 0/1
      per-sample ``(N,)``;
    * ``bilevel``: :attr:`BilevelResult.weights` of :func:`bilevel_weights` (``(K,)`` or ``(G, K)``), with
      ``bilevel_kwargs`` forwarded.

    Args:
        mode: one of ``"none"``, ``"priors"``, ``"thumb"``, ``"downsample"``, ``"bilevel"``.
        targets: ``(N,)`` class indices of the retraining set.
        features: ``(N, d)`` retraining features (needed by ``thumb`` without ``delta`` and by ``bilevel``).
        groups: optional ``(N,)`` group indices.
        num_classes: ``K`` (default ``max(targets) + 1``).
        variance: variance fraction for ``d_eff`` (``thumb``).
        delta: explicit ``δ`` for ``thumb`` (e.g. the true ``d/n``), overriding the ``d_eff`` estimate.
        max_weight: cap for binary ``thumb`` (see :func:`optimal_weight`).
        seed: seed for ``downsample`` and the ``bilevel`` split.
        bilevel_kwargs: extra keyword arguments of :func:`bilevel_weights`.
        max_correction: cap of the multiclass ``thumb`` correction (see :func:`thumb_class_weights`).

    Returns:
        A float64 weight tensor of the shape listed above.

    Raises:
        ValueError: unknown mode, missing features, or the errors of the functions above.

    Example:
        >>> y = torch.tensor([0] * 8 + [1] * 2)
        >>> class_weights_for_mode("priors", y).tolist()
        [0.625, 2.5]
        >>> [round(v, 4) for v in class_weights_for_mode("thumb", y, delta=0.2).tolist()]  # ratio 7
        [0.4545, 3.1818]
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    targets = torch.as_tensor(targets)
    y, k = check_targets(targets, targets.shape[0] if targets.ndim else -1, num_classes)
    n = y.shape[0]
    if features is not None:
        features = check_features(features)
        if features.shape[0] != n:
            raise ValueError(f"features has {features.shape[0]} rows but targets has {n}")
    if mode == "none":
        return torch.ones(k, dtype=torch.float64)
    if mode == "downsample":
        return downsample_weights(y, groups, k, seed=seed)
    counts = torch.bincount(y, minlength=k).to(torch.float64)
    if mode == "priors":
        return prior_class_weights(counts)
    if mode == "thumb":
        if delta is None:
            if features is None:
                raise ValueError("mode='thumb' needs features (for d_eff) or an explicit delta=d/n")
            delta = effective_dimension(features, variance) / n
        return thumb_class_weights(counts, delta, max_weight, max_correction)
    if features is None:
        raise ValueError("mode='bilevel' needs the retraining features")
    kwargs = dict(bilevel_kwargs or {})
    kwargs.setdefault("seed", seed)
    return bilevel_weights(features, y, groups, num_classes=k, **kwargs).weights


# ----------------------------------------------------------------------------------------------------------------
# Exact risks of the Gaussian mixture
# ----------------------------------------------------------------------------------------------------------------
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
