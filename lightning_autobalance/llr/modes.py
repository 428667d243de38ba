"""Loss weights by mode name: one entry point for ``none``, ``priors``, ``thumb``, ``downsample``, ``bilevel``."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from lightning_autobalance.llr.bilevel import bilevel_weights
from lightning_autobalance.llr.checks import check_features, check_targets
from lightning_autobalance.llr.dimension import effective_dimension
from lightning_autobalance.llr.weights import (
    DEFAULT_MAX_CORRECTION,
    DEFAULT_MAX_WEIGHT,
    downsample_weights,
    prior_class_weights,
    thumb_class_weights,
)

__all__ = [
    "MODES",
    "WeightMode",
    "class_weights_for_mode",
]

WeightMode = Literal["none", "priors", "thumb", "downsample", "bilevel"]
MODES: tuple[str, ...] = ("none", "priors", "thumb", "downsample", "bilevel")


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
