"""Last-layer retraining (LLR) with class weights from "Thumb on the Scale" (docs/references.md §2).

A trained backbone is frozen; only the final linear layer is refit on a small held-out *retraining set* of
features ``x ∈ R^d`` with labels ``y ∈ {0, …, K−1}`` (and optional group labels). This package provides

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

Modules, one concept each (every name above is importable from ``lightning_autobalance.llr``):

* :mod:`~lightning_autobalance.llr.head` — :class:`LinearHead` and :func:`fit_last_layer`;
* :mod:`~lightning_autobalance.llr.optim` — :func:`minimise_lbfgs`, the L-BFGS minimiser of the ``ce`` head;
* :mod:`~lightning_autobalance.llr.dimension` — :func:`effective_dimension`;
* :mod:`~lightning_autobalance.llr.weights` — prior, Thumb and downsample weights;
* :mod:`~lightning_autobalance.llr.bilevel` — :func:`bilevel_objective`, :func:`bilevel_weights`;
* :mod:`~lightning_autobalance.llr.modes` — :func:`class_weights_for_mode` and :data:`MODES`;
* :mod:`~lightning_autobalance.llr.gaussian_mixture` — :func:`gaussian_mixture_class_errors`;
* :mod:`~lightning_autobalance.llr.checks` — input validation (:func:`check_features`, :func:`check_targets`).

Pure PyTorch (no Lightning); all solves run in float64.

Example:
    >>> prior_class_weights([300, 100]).tolist()  # ω_k = 1/(K π_k): mean weight 1 over the samples
    [0.6666666666666666, 2.0]
"""

from __future__ import annotations

from lightning_autobalance.llr.bilevel import (
    DEFAULT_ANCHOR,
    DEFAULT_MIN_CELL_SIZE,
    BilevelResult,
    bilevel_objective,
    bilevel_weights,
)
from lightning_autobalance.llr.checks import check_features, check_targets
from lightning_autobalance.llr.dimension import effective_dimension
from lightning_autobalance.llr.gaussian_mixture import gaussian_mixture_class_errors
from lightning_autobalance.llr.head import LinearHead, fit_last_layer
from lightning_autobalance.llr.modes import MODES, WeightMode, class_weights_for_mode
from lightning_autobalance.llr.optim import minimise_lbfgs
from lightning_autobalance.llr.weights import (
    DEFAULT_MAX_CORRECTION,
    DEFAULT_MAX_WEIGHT,
    downsample_weights,
    optimal_weight,
    prior_class_weights,
    thumb_class_weights,
)

__all__ = [
    "DEFAULT_ANCHOR",
    "DEFAULT_MAX_CORRECTION",
    "DEFAULT_MAX_WEIGHT",
    "DEFAULT_MIN_CELL_SIZE",
    "MODES",
    "BilevelResult",
    "LinearHead",
    "WeightMode",
    "bilevel_objective",
    "bilevel_weights",
    "check_features",
    "check_targets",
    "class_weights_for_mode",
    "downsample_weights",
    "effective_dimension",
    "fit_last_layer",
    "gaussian_mixture_class_errors",
    "minimise_lbfgs",
    "optimal_weight",
    "prior_class_weights",
    "thumb_class_weights",
]
