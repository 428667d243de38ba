"""Input validation shared by the last-layer retraining functions.

Each check raises :class:`ValueError` with a message that says what to change, and returns the input in the form
the fitting code expects.

Example:
    >>> check_targets(torch.tensor([0, 2, 1]), n=3, num_classes=None)
    (tensor([0, 2, 1]), 3)
    >>> check_features(torch.tensor([[1, 2], [3, 4]])).dtype
    torch.float32
    >>> check_ridge(-1.0)
    Traceback (most recent call last):
    ...
    ValueError: ridge must be a finite number >= 0, got -1.0
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "check_features",
    "check_groups",
    "check_ridge",
    "check_targets",
]


def check_features(features: Tensor, name: str = "features") -> Tensor:
    """Validate ``(N, d)`` features: non-empty, 2-D and finite; integer features become floating point."""
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
    """Validate ``(n,)`` integer class indices; return them as ``long`` with the number of classes ``K >= 2``."""
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


def check_groups(groups: Tensor | None, n: int, num_groups: int | None = None) -> Tensor | None:
    """Validate optional ``(N,)`` group indices (``None`` passes through); return them as ``long``."""
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


def check_ridge(ridge: float) -> float:
    """Validate the L2 penalty strength: a finite number ``>= 0``."""
    ridge = float(ridge)
    if not math.isfinite(ridge) or ridge < 0:
        raise ValueError(f"ridge must be a finite number >= 0, got {ridge}")
    return ridge
