r"""Error metrics per class, all groups pooled: overall error, per-class error, balanced and worst-class error.

Each metric reduces the class confusion matrix ``n[:, y, ŷ].sum(0)`` of the shared counts (see
:mod:`lightning_autobalance.metrics.counts`); classes absent from the targets are left out with a warning, as
in scikit-learn's ``balanced_accuracy_score``. Groups are pooled. The metrics take the arguments of
:class:`~lightning_autobalance.metrics.counts.GroupConfusionMetric`; their functional forms are in
:mod:`lightning_autobalance.metrics.functional`.

Example:
    >>> import torch
    >>> counts = torch.tensor([[[1, 1, 0], [0, 2, 0], [1, 0, 1]]])  # (group, true class, predicted class)
    >>> Error.from_counts(counts), BalancedError.from_counts(counts)
    (tensor(0.3333), tensor(0.3333))
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import ClassVar

import torch
from torch import Tensor

from lightning_autobalance.metrics.counts import (
    GroupConfusionMetric,
    is_empty,
    nan_tensor,
    nanmax,
    reduce_counts,
    to_default_dtype,
)

__all__ = ["BalancedError", "ClassErrors", "Error", "WorstClassError"]


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

    @classmethod
    def from_counts(cls, counts: Tensor) -> Tensor:
        """The overall error (a 0-d tensor) of counts ``(G, K, K)``."""
        return reduce_counts(counts, "Error", lambda c: 1 - torch.diagonal(c, dim1=1, dim2=2).sum() / c.sum())


class _ClassErrorStatistic(GroupConfusionMetric):
    """A statistic of the per-class errors (groups pooled); the subclasses say which one in ``statistic``.

    Classes absent from the targets have a ``nan`` error, left out of the statistic with a warning.
    """

    higher_is_better: bool | None = False
    statistic: ClassVar[Callable[[Tensor], Tensor] | None] = None  # None: the per-class error vector itself

    @classmethod
    def from_counts(cls, counts: Tensor) -> Tensor:
        """The statistic of the per-class errors of counts ``(G, K, K)``; ``nan`` (with a warning) if empty."""
        if is_empty(counts, cls.__name__):
            return nan_tensor(() if cls.statistic else (counts.shape[1],), counts)
        _warn_absent_classes(counts, cls.__name__)
        errors = _per_class_errors(counts)
        return to_default_dtype(errors if cls.statistic is None else cls.statistic(errors))


class BalancedError(_ClassErrorStatistic):
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

    statistic = staticmethod(torch.nanmean)


class ClassErrors(_ClassErrorStatistic):
    r"""Per-class error :math:`1 - n_{\cdot c c} / n_{\cdot c \cdot}` (1 − recall), shape ``(K,)``.

    Groups are pooled. A class absent from the targets gets ``nan`` (with a warning).

    Example:
        >>> import torch
        >>> metric = ClassErrors(num_classes=3)
        >>> metric(torch.tensor([0, 1, 1, 1, 2, 0]), torch.tensor([0, 0, 1, 1, 2, 2]))  # forward: this batch
        tensor([0.5000, 0.0000, 0.5000])
    """


class WorstClassError(_ClassErrorStatistic):
    r"""Largest per-class error :math:`\max_{c \in C^+} (1 - n_{\cdot c c} / n_{\cdot c \cdot})`.

    Groups are pooled; classes absent from the targets are left out (with a warning).

    Example:
        >>> import torch
        >>> metric = WorstClassError(num_classes=3, num_groups=2)
        >>> metric.update(torch.tensor([0, 1, 1, 1, 2, 0]), torch.tensor([0, 0, 1, 1, 2, 2]), torch.tensor([0, 1] * 3))
        >>> metric.compute()
        tensor(0.5000)
    """

    statistic = staticmethod(nanmax)
