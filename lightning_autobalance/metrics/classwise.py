r"""Error metrics per class, all groups pooled: overall error, per-class error, balanced and worst-class error.

Each metric reduces the class confusion matrix ``n[:, y, ŷ].sum(0)`` of the shared counts (see
:mod:`lightning_autobalance.metrics.counts`); classes absent from the targets are left out with a warning, as
in scikit-learn's ``balanced_accuracy_score``.

Example:
    >>> import torch
    >>> preds, target = torch.tensor([0, 1, 1, 1, 2, 0]), torch.tensor([0, 0, 1, 1, 2, 2])
    >>> error(preds, target, num_classes=3), balanced_error(preds, target, num_classes=3)
    (tensor(0.3333), tensor(0.3333))
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from lightning_autobalance.metrics.counts import (
    GroupConfusionMetric,
    TensorLike,
    confusion_counts,
    is_empty,
    nan_tensor,
    nanmax,
    to_default_dtype,
)

__all__ = [
    "BalancedError",
    "ClassErrors",
    "Error",
    "WorstClassError",
    "balanced_error",
    "class_errors",
    "error",
    "worst_class_error",
]


# ----------------------------------------------------------------------------------------------------------
# Reductions from counts
# ----------------------------------------------------------------------------------------------------------


def _per_class_errors(counts: Tensor) -> Tensor:
    """Per-class error ``1 - n[:, c, c].sum() / n[:, c, :].sum()`` (float64, nan for absent classes)."""
    cm = counts.sum(0).double()
    return 1.0 - torch.diagonal(cm) / cm.sum(1)


def _warn_absent_classes(counts: Tensor, name: str) -> None:
    absent = (counts.sum((0, 2)) == 0).nonzero().flatten().tolist()
    if absent:
        warnings.warn(
            f"{name}: classes {absent} have no samples in target; their error is undefined and they are "
            "left out (scikit-learn balanced_accuracy_score convention).",
            UserWarning,
            stacklevel=3,
        )


def _error_from_counts(counts: Tensor) -> Tensor:
    if is_empty(counts, "Error"):
        return nan_tensor((), counts)
    correct = torch.diagonal(counts, dim1=1, dim2=2).sum()
    return to_default_dtype(1 - correct / counts.sum())


def _class_errors_from_counts(counts: Tensor) -> Tensor:
    """Per-class error vector ``(K,)``; nan (with a warning) for classes absent from the targets."""
    if is_empty(counts, "ClassErrors"):
        return nan_tensor((counts.shape[1],), counts)
    _warn_absent_classes(counts, "ClassErrors")
    return to_default_dtype(_per_class_errors(counts))


def _balanced_error_from_counts(counts: Tensor) -> Tensor:
    """Mean per-class error over the classes present in the targets."""
    if is_empty(counts, "BalancedError"):
        return nan_tensor((), counts)
    _warn_absent_classes(counts, "BalancedError")
    return to_default_dtype(torch.nanmean(_per_class_errors(counts)))


def _worst_class_error_from_counts(counts: Tensor) -> Tensor:
    """Max per-class error over the classes present in the targets."""
    if is_empty(counts, "WorstClassError"):
        return nan_tensor((), counts)
    _warn_absent_classes(counts, "WorstClassError")
    return to_default_dtype(nanmax(_per_class_errors(counts)))


# ----------------------------------------------------------------------------------------------------------
# Metric classes
# ----------------------------------------------------------------------------------------------------------


class Error(GroupConfusionMetric):
    r"""Overall error: the share of misclassified samples, all classes and groups pooled (1 − accuracy).

    Example:
        >>> import torch
        >>> metric = Error(num_classes=3)
        >>> metric.update(torch.tensor([0, 1, 1, 1]), torch.tensor([0, 0, 1, 1]))
        >>> metric.compute()
        tensor(0.2500)
    """

    higher_is_better: bool | None = False

    def compute(self) -> Tensor:
        """Return the overall error (a 0-d tensor)."""
        return _error_from_counts(self.counts)


class BalancedError(GroupConfusionMetric):
    r"""Balanced error: mean over classes of the per-class error, i.e. 1 − balanced accuracy.

    .. math::
        \mathrm{BE} = \frac{1}{|C^+|} \sum_{c \in C^+} \Big(1 - \frac{n_{\cdot c c}}{n_{\cdot c \cdot}}\Big),

    where :math:`n_{\cdot c c}` counts the correctly classified samples of class :math:`c` (all groups
    pooled), :math:`n_{\cdot c \cdot}` the samples of class :math:`c`, and :math:`C^+` the classes present
    in the targets (classes absent from the targets are left out with a warning, as in scikit-learn's
    ``balanced_accuracy_score``). Groups are ignored. Empty metric: ``nan`` with a warning.

    Args:
        num_classes: Number of classes ``K`` (at least 2).
        num_groups: Number of sensitive groups ``G`` (at least 1).
        validate_args: Check that labels and groups are in range.
        **kwargs: Forwarded to :class:`torchmetrics.Metric`.

    Example:
        >>> import torch
        >>> metric = BalancedError(num_classes=3)
        >>> metric.update(torch.tensor([0, 1, 1, 1, 2, 0]), torch.tensor([0, 0, 1, 1, 2, 2]))
        >>> metric.compute()
        tensor(0.3333)
    """

    higher_is_better: bool | None = False

    def compute(self) -> Tensor:
        """Return the balanced error (a 0-d tensor)."""
        return _balanced_error_from_counts(self.counts)


class ClassErrors(GroupConfusionMetric):
    r"""Per-class error :math:`1 - n_{\cdot c c} / n_{\cdot c \cdot}` (1 − recall), shape ``(K,)``.

    Groups are pooled. A class absent from the targets gets ``nan`` (with a warning).

    Args:
        num_classes: Number of classes ``K`` (at least 2).
        num_groups: Number of sensitive groups ``G`` (at least 1).
        validate_args: Check that labels and groups are in range.
        **kwargs: Forwarded to :class:`torchmetrics.Metric`.

    Example:
        >>> import torch
        >>> metric = ClassErrors(num_classes=3)
        >>> metric.update(torch.tensor([0, 1, 1, 1, 2, 0]), torch.tensor([0, 0, 1, 1, 2, 2]))
        >>> metric.compute()
        tensor([0.5000, 0.0000, 0.5000])
    """

    higher_is_better: bool | None = False

    def compute(self) -> Tensor:
        """Return the per-class errors ``(num_classes,)``."""
        return _class_errors_from_counts(self.counts)


class WorstClassError(GroupConfusionMetric):
    r"""Largest per-class error :math:`\max_{c \in C^+} (1 - n_{\cdot c c} / n_{\cdot c \cdot})`.

    Groups are pooled; classes absent from the targets are left out (with a warning).

    Args:
        num_classes: Number of classes ``K`` (at least 2).
        num_groups: Number of sensitive groups ``G`` (at least 1).
        validate_args: Check that labels and groups are in range.
        **kwargs: Forwarded to :class:`torchmetrics.Metric`.

    Example:
        >>> import torch
        >>> metric = WorstClassError(num_classes=3)
        >>> metric.update(torch.tensor([0, 1, 1, 1, 2, 0]), torch.tensor([0, 0, 1, 1, 2, 2]))
        >>> metric.compute()
        tensor(0.5000)
    """

    higher_is_better: bool | None = False

    def compute(self) -> Tensor:
        """Return the worst per-class error (a 0-d tensor)."""
        return _worst_class_error_from_counts(self.counts)


# ----------------------------------------------------------------------------------------------------------
# Functional twins
# ----------------------------------------------------------------------------------------------------------


def error(
    preds: TensorLike,
    target: TensorLike,
    groups: TensorLike | None = None,
    *,
    num_classes: int,
    num_groups: int = 1,
    validate_args: bool = True,
) -> Tensor:
    """Overall error (1 − accuracy); functional form of :class:`Error`.

    Example:
        >>> import torch
        >>> error(torch.tensor([0, 1, 1, 1]), torch.tensor([0, 0, 1, 1]), num_classes=3)
        tensor(0.2500)
    """
    return _error_from_counts(confusion_counts(preds, target, groups, num_classes, num_groups, validate_args))


def balanced_error(
    preds: TensorLike,
    target: TensorLike,
    groups: TensorLike | None = None,
    *,
    num_classes: int,
    num_groups: int = 1,
    validate_args: bool = True,
) -> Tensor:
    """Balanced error (1 − balanced accuracy); functional form of :class:`BalancedError`.

    Args:
        preds: Float logits / probabilities ``(N, num_classes)`` or integer predicted labels ``(N,)``.
        target: Integer true labels ``(N,)``.
        groups: Integer group indices ``(N,)`` or ``None`` (ignored by this metric except for validation).
        num_classes: Number of classes (at least 2).
        num_groups: Number of groups (at least 1).
        validate_args: Check that labels and groups are in range.

    Returns:
        A 0-d tensor; ``nan`` (with a warning) for empty inputs.

    Example:
        >>> import torch
        >>> balanced_error(torch.tensor([0, 1, 1, 1, 2, 0]), torch.tensor([0, 0, 1, 1, 2, 2]), num_classes=3)
        tensor(0.3333)
    """
    counts = confusion_counts(preds, target, groups, num_classes, num_groups, validate_args)
    return _balanced_error_from_counts(counts)


def class_errors(
    preds: TensorLike,
    target: TensorLike,
    groups: TensorLike | None = None,
    *,
    num_classes: int,
    num_groups: int = 1,
    validate_args: bool = True,
) -> Tensor:
    """Per-class error (1 − recall); functional form of :class:`ClassErrors`.

    Args:
        preds: Float logits / probabilities ``(N, num_classes)`` or integer predicted labels ``(N,)``.
        target: Integer true labels ``(N,)``.
        groups: Integer group indices ``(N,)`` or ``None`` (pooled by this metric).
        num_classes: Number of classes (at least 2).
        num_groups: Number of groups (at least 1).
        validate_args: Check that labels and groups are in range.

    Returns:
        A ``(num_classes,)`` tensor, ``nan`` (with a warning) for classes absent from ``target``.

    Example:
        >>> import torch
        >>> class_errors(torch.tensor([0, 1, 1, 1, 2, 0]), torch.tensor([0, 0, 1, 1, 2, 2]), num_classes=3)
        tensor([0.5000, 0.0000, 0.5000])
    """
    counts = confusion_counts(preds, target, groups, num_classes, num_groups, validate_args)
    return _class_errors_from_counts(counts)


def worst_class_error(
    preds: TensorLike,
    target: TensorLike,
    groups: TensorLike | None = None,
    *,
    num_classes: int,
    num_groups: int = 1,
    validate_args: bool = True,
) -> Tensor:
    """Largest per-class error; functional form of :class:`WorstClassError`.

    Args:
        preds: Float logits / probabilities ``(N, num_classes)`` or integer predicted labels ``(N,)``.
        target: Integer true labels ``(N,)``.
        groups: Integer group indices ``(N,)`` or ``None`` (pooled by this metric).
        num_classes: Number of classes (at least 2).
        num_groups: Number of groups (at least 1).
        validate_args: Check that labels and groups are in range.

    Returns:
        A 0-d tensor; classes absent from ``target`` are left out (with a warning).

    Example:
        >>> import torch
        >>> worst_class_error(torch.tensor([0, 1, 1, 1, 2, 0]), torch.tensor([0, 0, 1, 1, 2, 2]), num_classes=3)
        tensor(0.5000)
    """
    counts = confusion_counts(preds, target, groups, num_classes, num_groups, validate_args)
    return _worst_class_error_from_counts(counts)
