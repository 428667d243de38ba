"""Shared input helpers of the losses: validated counts, call checks, config containers, reductions.

Every loss of the package (:class:`~lightning_autobalance.losses.ParametricCrossEntropy`, the baselines, Group DRO)
validates its counts and its ``(logits, targets, groups)`` calls with these, so their error messages agree.

Example:
    >>> as_counts([90, 10]).tolist()
    [90.0, 10.0]
    >>> reduce_loss(torch.tensor([1.0, 3.0]), "mean").item()
    2.0
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "Counts",
    "as_counts",
    "as_group_counts",
    "check_inputs",
    "check_logits",
    "plain_data",
    "reduce_loss",
]

#: per-class counts (K,) or per (group, class) counts (G, K)
Counts = Sequence[float] | Sequence[Sequence[float]] | Tensor


def as_counts(class_counts: Sequence[float] | Tensor, num_classes: int | None = None) -> Tensor:
    """Validated per-class counts as a float64 vector (positive, one per class); errors name the problem."""
    counts = torch.as_tensor(class_counts, dtype=torch.float64)
    if counts.dim() != 1:
        raise ValueError(
            f"class_counts must be a 1-D sequence of per-class sample counts, got shape {tuple(counts.shape)}."
        )
    if num_classes is not None and counts.numel() != num_classes:
        raise ValueError(
            f"class_counts has {counts.numel()} entries but num_classes={num_classes}: pass one count per class."
        )
    if not torch.isfinite(counts).all() or (counts < 0).any():
        raise ValueError(f"class_counts must be finite and non-negative, got {counts.tolist()}.")
    return counts


def as_group_counts(group_counts: Counts) -> Tensor:
    """Validated (group, class) counts as a float64 (G, K) table; errors name the problem."""
    counts = torch.as_tensor(group_counts, dtype=torch.float64)
    if counts.dim() != 2 or counts.shape[0] < 1 or counts.shape[1] < 2:
        raise ValueError(
            "group_counts must be a (num_groups, num_classes) table of training samples per (group, class) cell, "
            f"got shape {tuple(counts.shape)}."
        )
    if not torch.isfinite(counts).all() or (counts < 0).any():
        raise ValueError(f"group_counts must be finite and non-negative, got {counts.tolist()}.")
    return counts


def check_logits(logits: Tensor, num_classes: int) -> None:
    """Raise a ValueError that names the fix unless ``logits`` has shape (N, num_classes)."""
    if logits.dim() != 2 or logits.shape[1] != num_classes:
        raise ValueError(
            f"The loss was built for num_classes={num_classes} but the logits have shape "
            f"{tuple(logits.shape)}: make the model output (batch, {num_classes}) logits or build the "
            f"loss with num_classes={logits.shape[-1] if logits.dim() else '?'}."
        )


def check_inputs(
    logits: Tensor, targets: Tensor, groups: Tensor | None, num_classes: int, num_groups: int | None = 1
) -> None:
    """Validate a ``(logits, targets, groups)`` call of a loss; raise a :class:`ValueError` that names the fix.

    Args:
        logits: model outputs, expected shape (N, num_classes).
        targets: integer class labels, expected shape (N,) with values in [0, num_classes).
        groups: integer group labels of shape (N,) in [0, num_groups), or ``None``.
        num_classes: the number of classes the loss was built for.
        num_groups: the number of groups the loss was built for; ``None`` for losses that ignore groups.
    """
    check_logits(logits, num_classes)
    if targets.shape != (logits.shape[0],) or targets.is_floating_point():
        raise ValueError(
            f"targets must be integer class labels of shape ({logits.shape[0]},), got dtype {targets.dtype} "
            f"and shape {tuple(targets.shape)}."
        )
    _check_range(targets, num_classes, "Labels", "remap the labels or set num_classes to the number of classes")
    if num_groups is None:
        return
    if groups is None:
        if num_groups > 1:
            raise ValueError(
                f"This loss has num_groups={num_groups} but no groups were passed: return (x, y, g) "
                "batches or build the loss with num_groups=1."
            )
        return
    if groups.shape != targets.shape or groups.is_floating_point():
        raise ValueError(
            f"groups must be integer labels with the shape of targets {tuple(targets.shape)}, got dtype "
            f"{groups.dtype} and shape {tuple(groups.shape)}."
        )
    _check_range(groups, num_groups, "Group labels", "build the loss with num_groups={top}")


def _check_range(labels: Tensor, bound: int, what: str, fix: str) -> None:
    """Raise unless every label lies in ``[0, bound)``; ``fix`` may name ``{top}``, the largest label + 1."""
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= bound):
        low, high = int(labels.min()), int(labels.max())
        raise ValueError(f"{what} must lie in [0, {bound}), got values in [{low}, {high}]: {fix.format(top=high + 1)}.")


def reduce_loss(per_sample: Tensor, reduction: str) -> Tensor:
    """Per-sample losses reduced by ``"mean"``, ``"sum"`` or ``"none"`` (the losses' ``reduction`` argument)."""
    if reduction == "none":
        return per_sample
    if reduction == "sum":
        return per_sample.sum()
    if reduction == "mean":
        return per_sample.mean()
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}.")


def plain_data(value: object) -> object:
    """Turn config containers (e.g. OmegaConf ``ListConfig``) into plain lists; leave tensors and scalars alone."""
    if value is None or isinstance(value, (str, bytes, Tensor, np.ndarray, int, float)):
        return value
    if isinstance(value, Iterable):
        return [plain_data(item) for item in value]
    return value
