r"""Error and accuracy per sensitive group or per (group, class) cell: the group-robustness metrics.

:class:`GroupErrors` and :class:`WorstGroupError`, and the accuracy conventions of the group-robustness
literature (Waterbirds / CelebA: group DRO, JTT, DFR): :class:`WorstGroupAccuracy` and
:class:`MeanGroupAccuracy` (the training-weighted average accuracy has its own module,
:mod:`lightning_autobalance.metrics.weighted`, and is re-exported here). Empty groups and cells are ignored by
every max / mean over groups. The worst / mean metrics are small subclasses of :class:`GroupStatisticMetric`,
which holds their ``over`` option; the functional forms are in :mod:`lightning_autobalance.metrics.functional`.

Example:
    >>> import torch
    >>> preds, target = torch.tensor([0, 1, 1, 1, 2, 0]), torch.tensor([0, 0, 1, 1, 2, 2])
    >>> groups = torch.tensor([0, 0, 0, 1, 1, 1])
    >>> metric = WorstGroupError(num_classes=3, num_groups=2, over="group")
    >>> metric.update(preds, target, groups)
    >>> metric.compute(), WorstGroupError.from_counts(metric.counts)  # worst group, worst (group, class) cell
    (tensor(0.3333), tensor(0.5000))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from lightning_autobalance.metrics.counts import (
    GroupConfusionMetric,
    check_option,
    group_error_table,
    nanmax,
    reduce_counts,
)
from lightning_autobalance.metrics.weighted import WeightedAverageAccuracy

__all__ = [
    "GroupErrors",
    "GroupStatisticMetric",
    "MeanGroupAccuracy",
    "Over",
    "WeightedAverageAccuracy",
    "WorstGroupAccuracy",
    "WorstGroupError",
]

Over = Literal["class_group", "group"]

_OVERS = ("class_group", "group")


class GroupErrors(GroupConfusionMetric):
    r"""Error within each sensitive group, or within each (group, class) cell.

    With ``per_class=False`` (default) the result has shape ``(G,)`` and entry :math:`g` is the plain error
    rate of the samples of group :math:`g`, :math:`1 - \sum_c n_{gcc} / n_{g\cdot\cdot}`. With
    ``per_class=True`` it has shape ``(G, K)`` and entry :math:`(g, c)` is the error on the samples of class
    :math:`c` in group :math:`g`, :math:`1 - n_{gcc} / n_{gc\cdot}`. Entries without samples are ``nan``
    (no warning: empty groups / cells are expected). With ``num_groups=1`` torchmetrics squeezes the
    ``(1,)`` result of ``compute()`` to a 0-d tensor.

    Args:
        num_classes: Number of classes ``K`` (at least 2).
        num_groups: Number of sensitive groups ``G`` (at least 1).
        per_class: Return the ``(G, K)`` per-(group, class) error matrix instead of the ``(G,)`` vector.
        validate_args: Check that labels and groups are in range.
        **kwargs: Forwarded to :class:`torchmetrics.Metric`.

    Example:
        >>> import torch
        >>> preds, target = torch.tensor([0, 1, 1, 1, 2, 0]), torch.tensor([0, 0, 1, 1, 2, 2])
        >>> groups = torch.tensor([0, 0, 0, 1, 1, 1])
        >>> metric = GroupErrors(num_classes=3, num_groups=2)
        >>> metric.update(preds, target, groups)
        >>> metric.compute()
        tensor([0.3333, 0.3333])
        >>> metric = GroupErrors(num_classes=3, num_groups=2, per_class=True)
        >>> metric.update(preds, target, groups)
        >>> metric.compute()
        tensor([[0.5000, 0.0000,    nan],
                [   nan, 0.0000, 0.5000]])
    """

    higher_is_better: bool | None = False

    def __init__(
        self,
        num_classes: int,
        num_groups: int = 1,
        *,
        per_class: bool = False,
        validate_args: bool = True,
        **kwargs: Any,
    ):
        super().__init__(num_classes, num_groups, validate_args=validate_args, **kwargs)
        self.per_class = per_class

    @classmethod
    def from_counts(cls, counts: Tensor, per_class: bool = False) -> Tensor:
        """Per-group error ``(G,)``, or per-(group, class) error ``(G, K)`` with ``per_class=True``."""
        shape = tuple(counts.shape[:2]) if per_class else (counts.shape[0],)
        return reduce_counts(counts, "GroupErrors", lambda c: group_error_table(c, per_class), shape)

    def compute(self) -> Tensor:
        """Return the per-group errors ``(num_groups,)`` or ``(num_groups, num_classes)``."""
        return self.from_counts(self.counts, per_class=self.per_class)


class GroupStatisticMetric(GroupConfusionMetric):
    r"""Base of the worst / mean group metrics: a statistic of the error table over (group, class) cells or groups.

    ``over="class_group"`` (default) takes the errors of the (sensitive group, class) cells, ``over="group"``
    the plain errors of the sensitive groups (all classes pooled); cells / groups without samples are ``nan``
    and left out. The subclasses only say which ``statistic`` of that table they are.

    Args:
        num_classes: Number of classes ``K`` (at least 2).
        num_groups: Number of sensitive groups ``G`` (at least 1).
        validate_args: Check that labels and groups are in range (see :class:`GroupConfusionMetric`).
        over: ``"class_group"`` (default) or ``"group"``, see above.
        **kwargs: Forwarded to :class:`torchmetrics.Metric`.

    Raises:
        ValueError: If ``over`` is neither ``"class_group"`` nor ``"group"`` (before any other check).

    Example:
        >>> import torch
        >>> class BestGroupError(GroupStatisticMetric):  # a subclass only says which statistic
        ...     statistic = staticmethod(lambda errors: errors.nan_to_num(2.0).amin())
        >>> BestGroupError.from_counts(torch.tensor([[[1, 1], [0, 0]], [[3, 0], [0, 1]]]), over="group")
        tensor(0.)
    """

    metric_name: ClassVar[str] = "GroupStatisticMetric"  # the name in warnings
    statistic: ClassVar[Callable[[Tensor], Tensor]] = staticmethod(nanmax)

    def __init__(
        self,
        num_classes: int,
        num_groups: int = 1,
        *,
        validate_args: bool = True,
        over: Over = "class_group",
        **kwargs: Any,
    ):
        super().__init__(num_classes, num_groups, validate_args=validate_args, **kwargs)
        self.over = check_option("over", over, _OVERS)

    @classmethod
    def from_counts(cls, counts: Tensor, over: Over = "class_group") -> Tensor:
        """The statistic (a 0-d tensor) of the errors per (group, class) cell or per group of counts ``(G, K, K)``."""
        check_option("over", over, _OVERS)
        return reduce_counts(
            counts, cls.metric_name, lambda c: cls.statistic(group_error_table(c, over == "class_group"))
        )

    def compute(self) -> Tensor:
        """Return the statistic (a 0-d tensor)."""
        return self.from_counts(self.counts, over=self.over)


class WorstGroupError(GroupStatisticMetric):
    r"""Worst-group error, where "group" is the sensitive-group index passed as ``groups``.

    * ``over="class_group"`` (default): the largest error over the non-empty (class, group) cells,
      :math:`\max_{g, c:\, n_{gc\cdot} > 0} (1 - n_{gcc} / n_{gc\cdot})`. This is the Waterbirds /
      CelebA convention (Sagawa et al., group DRO), where a "group" is a (label, attribute) pair: pass the
      attribute as ``groups``. It is also correct if ``groups`` already encodes (label, attribute), since
      every cell is then a whole group; with ``num_groups=1`` it equals :class:`WorstClassError`.
    * ``over="group"``: the largest plain error rate over the non-empty sensitive groups,
      :math:`\max_{g:\, n_{g\cdot\cdot} > 0} (1 - \sum_c n_{gcc} / n_{g\cdot\cdot})`.

    Empty groups / cells are ignored. Empty metric: ``nan`` with a warning. Arguments: see
    :class:`GroupStatisticMetric`.

    Example:
        >>> import torch
        >>> preds, target = torch.tensor([0, 1, 1, 1, 2, 0]), torch.tensor([0, 0, 1, 1, 2, 2])
        >>> metric = WorstGroupError(num_classes=3, num_groups=2)
        >>> metric.update(preds, target, torch.tensor([0, 0, 0, 1, 1, 1]))
        >>> metric.compute()
        tensor(0.5000)
    """

    higher_is_better: bool | None = False
    metric_name = "WorstGroupError"


def _worst_accuracy(errors: Tensor) -> Tensor:
    return 1.0 - nanmax(errors)


def _mean_accuracy(errors: Tensor) -> Tensor:
    return torch.nanmean(1.0 - errors)


class WorstGroupAccuracy(GroupStatisticMetric):
    r"""Worst-group accuracy, ``1 −`` :class:`WorstGroupError`: the accuracy of the worst group.

    What a "group" is depends on ``over``, as in :class:`WorstGroupError`:

    * ``over="class_group"`` (default): a group is a (sensitive group, class) cell, and the result is
      :math:`\min_{g, c:\, n_{gc\cdot} > 0} n_{gcc} / n_{gc\cdot}`. This is the worst-group accuracy of
      Waterbirds / CelebA (Sagawa et al., group DRO; JTT; DFR), where a "group" is a (label, attribute)
      pair: pass the attribute (e.g. the background) as ``groups``. It is also correct if ``groups``
      already encodes (label, attribute), since every cell is then a whole group; with ``num_groups=1``
      it is the worst-class accuracy (worst recall).
    * ``over="group"``: a group is a sensitive group, all classes pooled:
      :math:`\min_{g:\, n_{g\cdot\cdot} > 0} \sum_c n_{gcc} / n_{g\cdot\cdot}`.

    Empty groups / cells are ignored; arguments as for :class:`GroupStatisticMetric`. Empty metric: ``nan``
    with a warning.

    Example:
        >>> import torch
        >>> preds, target = torch.tensor([0, 1, 1, 1, 2, 0]), torch.tensor([0, 0, 1, 1, 2, 2])
        >>> metric = WorstGroupAccuracy(num_classes=3, num_groups=2, over="group")
        >>> metric(preds, target, torch.tensor([0, 0, 0, 1, 1, 1]))  # forward: the value on this batch
        tensor(0.6667)
        >>> WorstGroupAccuracy.from_counts(metric.counts)  # over="class_group"
        tensor(0.5000)
    """

    higher_is_better: bool | None = True
    metric_name = "WorstGroupAccuracy"
    statistic = staticmethod(_worst_accuracy)


class MeanGroupAccuracy(GroupStatisticMetric):
    r"""Unweighted mean of the per-group accuracies ("mean group accuracy").

    * ``over="class_group"`` (default): the mean accuracy over the (sensitive group, class) cells that
      have test samples, :math:`\frac{1}{|P|} \sum_{(g, c) \in P} n_{gcc} / n_{gc\cdot}` with
      :math:`P = \{(g, c) : n_{gc\cdot} > 0\}` (every Waterbirds / CelebA group counts the same, however
      many test samples it has). With ``num_groups=1`` it is the balanced accuracy.
    * ``over="group"``: the mean over the non-empty sensitive groups of their plain accuracy.

    Cells / groups without test samples are left out of the mean (no warning: empty cells are expected,
    as in :class:`GroupErrors`). Empty metric: ``nan`` with a warning. The arguments are those of
    :class:`GroupStatisticMetric`.

    Example:
        >>> import torch
        >>> metric = MeanGroupAccuracy(num_classes=3, num_groups=2)  # cells: 1/2, 1, 1, 1/2
        >>> batch = torch.tensor([0, 1, 1, 1, 2, 0]), torch.tensor([0, 0, 1, 1, 2, 2]), torch.tensor([0, 0, 0, 1, 1, 1])
        >>> metric.update(*batch)
        >>> metric.compute()
        tensor(0.7500)
    """

    higher_is_better: bool | None = True
    metric_name = "MeanGroupAccuracy"
    statistic = staticmethod(_mean_accuracy)
