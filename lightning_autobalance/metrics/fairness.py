r"""Fairness gaps between sensitive groups: demographic parity, equal opportunity and equalized odds.

Each gap is the max − min over groups of a rate (selection rate, true-positive rate, false-positive rate)
computed from the shared counts. Binary tasks use class 1 as the positive class, as fairlearn does;
multiclass tasks take each class in turn as the positive one (one-vs-rest) and reduce the per-class gaps by
``reduction="max"`` or ``"mean"``. Rates with a zero denominator leave their group out.

Each gap is a small subclass of one base that holds the counts, the ``reduction`` and these conventions, and
that differs from its siblings only by its per-class gaps (:meth:`per_class_gaps`); their functional forms are
in :mod:`lightning_autobalance.metrics.functional`. :class:`EqualOpportunityGapMetric` and
:class:`EqualizedOddsGapMetric` are also exported under their former names ``EqualOpportunityGap`` and
``EqualizedOddsGap``, which the differentiable training objectives of :mod:`lightning_autobalance.objectives` (and
the package root) also bear.

Example:
    >>> import torch
    >>> counts = torch.stack([torch.tensor([[0, 2], [0, 2]]), torch.tensor([[2, 0], [1, 1]])])
    >>> [float(gap.from_counts(counts)) for gap in (DemographicParityGap, EqualOpportunityGapMetric)]
    [0.75, 0.5]
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from lightning_autobalance.metrics.counts import (
    GroupConfusionMetric,
    check_option,
    nanmax,
    reduce_counts,
)

__all__ = [
    "DemographicParityGap",
    "EqualOpportunityGap",
    "EqualOpportunityGapMetric",
    "EqualizedOddsGap",
    "EqualizedOddsGapMetric",
    "RateGapMetric",
    "Reduction",
]

Reduction = Literal["max", "mean"]

_REDUCTIONS = ("max", "mean")


def _rate_gaps(num: Tensor, den: Tensor) -> Tensor:
    """Per column, max − min over rows of ``num / den`` restricted to rows with ``den > 0``.

    Args:
        num: Numerators ``(G, C)``.
        den: Denominators ``(G, C)``.

    Returns:
        Gaps ``(C,)`` (float64), nan for columns where no row has ``den > 0``.
    """
    defined = den > 0
    rate = num / den.clamp(min=1)
    hi = torch.where(defined, rate, torch.full_like(rate, -float("inf"))).amax(0)
    lo = torch.where(defined, rate, torch.full_like(rate, float("inf"))).amin(0)
    gap = hi - lo
    return torch.where(defined.any(0), gap, torch.full_like(gap, float("nan")))


def _one_vs_rest_rates(counts: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
    """Numerators and denominators ``(G, C)`` of the one-vs-rest rates for the positive classes.

    For ``K = 2`` the only positive class is 1 (fairlearn's binary definitions); for ``K > 2`` every class
    is in turn the positive one.
    """
    c = counts.double()
    size = c.sum((1, 2)).unsqueeze(1)  # (G, 1)  samples in the group
    true = c.sum(2)  # (G, K)  samples of class k in the group
    pred = c.sum(1)  # (G, K)  samples predicted as k in the group
    tp = torch.diagonal(c, dim1=1, dim2=2)  # (G, K)
    cols = slice(1, 2) if c.shape[1] == 2 else slice(None)
    return {
        "selection": (pred[:, cols], size.expand_as(pred)[:, cols]),
        "tpr": (tp[:, cols], true[:, cols]),
        "fpr": ((pred - tp)[:, cols], (size - true)[:, cols]),
    }


class RateGapMetric(GroupConfusionMetric):
    r"""Base of the fairness gaps: max − min over groups of a rate, per positive class, reduced over classes.

    Binary tasks (``num_classes=2``) use class 1 as the positive class, which is fairlearn's definition.
    With ``num_classes > 2`` each class :math:`c` in turn is the positive class (one-vs-rest) and the
    per-class gaps :math:`\Delta_c` of the subclass (:meth:`per_class_gaps`) are reduced over the classes
    :math:`C^*` where they are defined: ``reduction="max"`` (default) gives :math:`\max_{c \in C^*} \Delta_c`,
    ``reduction="mean"`` gives :math:`\frac{1}{|C^*|} \sum_{c \in C^*} \Delta_c`. A group where a rate is
    undefined (zero denominator) is left out of that rate's max − min. Empty metric: ``nan`` with a warning.

    Args:
        num_classes: Number of classes ``K`` (at least 2).
        num_groups: Number of sensitive groups ``G`` (at least 1).
        reduction: ``"max"`` (default) or ``"mean"`` over classes (ignored for binary tasks).
        validate_args: Check that labels and groups are in range.
        **kwargs: Forwarded to :class:`torchmetrics.Metric`.

    Raises:
        ValueError: If ``reduction`` is not ``"max"`` or ``"mean"``.

    Example:
        >>> import torch
        >>> class SelectionRateGap(RateGapMetric):  # a subclass only says which gaps
        ...     per_class_gaps = staticmethod(lambda rates: torch.tensor([0.25, 0.5]))
        >>> SelectionRateGap.from_counts(torch.ones(2, 3, 3, dtype=torch.long), reduction="mean")
        tensor(0.3750)
    """

    higher_is_better: bool | None = False
    metric_name: ClassVar[str] = "RateGapMetric"  # the name in warnings

    def __init__(
        self,
        num_classes: int,
        num_groups: int = 1,
        *,
        reduction: Reduction = "max",
        validate_args: bool = True,
        **kwargs: Any,
    ):
        super().__init__(num_classes, num_groups, validate_args=validate_args, **kwargs)
        self.reduction = check_option("reduction", reduction, _REDUCTIONS)

    @staticmethod
    @abstractmethod
    def per_class_gaps(rates: dict[str, tuple[Tensor, Tensor]]) -> Tensor:
        """The gaps ``(C,)`` over the positive classes, from the rates' numerators and denominators ``(G, C)``."""

    @classmethod
    def from_counts(cls, counts: Tensor, reduction: Reduction = "max") -> Tensor:
        """The gap (a 0-d tensor) of counts ``(G, K, K)``, reduced over the positive classes by ``reduction``."""
        check_option("reduction", reduction, _REDUCTIONS)
        over_classes = nanmax if reduction == "max" else torch.nanmean
        return reduce_counts(counts, cls.metric_name, lambda c: over_classes(cls.per_class_gaps(_one_vs_rest_rates(c))))

    def compute(self) -> Tensor:
        """Return the gap (a 0-d tensor)."""
        return self.from_counts(self.counts, reduction=self.reduction)


class DemographicParityGap(RateGapMetric):
    r"""Demographic-parity gap: max − min over groups of the selection rate.

    For a positive class :math:`c`, the selection rate of group :math:`g` is
    :math:`s_{gc} = n_{g\cdot c} / n_{g\cdot\cdot}` and

    .. math::
        \Delta_c = \max_{g \in G^+} s_{gc} - \min_{g \in G^+} s_{gc},

    with :math:`G^+` the non-empty groups (fairlearn's ``demographic_parity_difference`` for binary tasks).
    Binary and multiclass tasks, ``reduction`` and the arguments: see :class:`RateGapMetric`. A single
    non-empty group gives 0.

    Example:
        >>> import torch
        >>> target = torch.tensor([1, 1, 0, 0, 1, 1, 0, 0])
        >>> preds = torch.tensor([1, 1, 1, 1, 1, 0, 0, 0])
        >>> groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
        >>> metric = DemographicParityGap(num_classes=2, num_groups=2)
        >>> metric.update(preds, target, groups)
        >>> metric.compute()
        tensor(0.7500)
    """

    metric_name = "DemographicParityGap"

    @staticmethod
    def per_class_gaps(rates: dict[str, tuple[Tensor, Tensor]]) -> Tensor:
        """Selection-rate gaps over the non-empty groups."""
        return _rate_gaps(*rates["selection"])


class EqualOpportunityGapMetric(RateGapMetric):
    r"""Equal-opportunity gap: max − min over groups of the true-positive rate (also named ``EqualOpportunityGap``).

    For a positive class :math:`c`, the true-positive rate of group :math:`g` is
    :math:`t_{gc} = n_{gcc} / n_{gc\cdot}`, defined when group :math:`g` has samples of class :math:`c`,
    and

    .. math::
        \Delta_c = \max_{g:\, n_{gc\cdot} > 0} t_{gc} - \min_{g:\, n_{gc\cdot} > 0} t_{gc}

    (fairlearn's ``equal_opportunity_difference`` for binary tasks, when every present group has a
    positive; fairlearn counts a group without positives as rate 0, we leave it out). Binary and multiclass
    tasks, ``reduction`` and the arguments: see :class:`RateGapMetric`.

    ``lightning_autobalance.metrics.EqualOpportunityGap`` is this class under its former name (an alias);
    the package root's ``EqualOpportunityGap`` is the differentiable training objective
    :class:`lightning_autobalance.objectives.EqualOpportunityGap`, not this metric.

    Example:
        >>> import torch
        >>> metric = EqualOpportunityGapMetric(num_classes=2, num_groups=2)
        >>> metric.update(torch.tensor([1, 1, 1, 0]), torch.tensor([1, 1, 1, 1]), torch.tensor([0, 0, 1, 1]))
        >>> metric.compute()  # true-positive rates 1 and 1/2
        tensor(0.5000)
    """

    metric_name = "EqualOpportunityGap"

    @staticmethod
    def per_class_gaps(rates: dict[str, tuple[Tensor, Tensor]]) -> Tensor:
        """True-positive-rate gaps over the groups where the rate is defined."""
        return _rate_gaps(*rates["tpr"])


EqualOpportunityGap = EqualOpportunityGapMetric  # the former name, kept as an alias (see the class docstring)


class EqualizedOddsGapMetric(RateGapMetric):
    r"""Equalized-odds gap: the larger of the true-positive-rate gap and the false-positive-rate gap.

    For a positive class :math:`c`, with :math:`\Delta^{TPR}_c` the gap of :class:`EqualOpportunityGapMetric`
    and :math:`\Delta^{FPR}_c` the max − min over groups of :math:`f_{gc} = (n_{g\cdot c} - n_{gcc}) /
    (n_{g\cdot\cdot} - n_{gc\cdot})` (over the groups that have samples of another class),

    .. math::
        \Delta_c = \max(\Delta^{TPR}_c, \Delta^{FPR}_c)

    (an undefined one of the two is ignored). For binary tasks this is fairlearn's
    ``equalized_odds_difference`` with its default ``agg="worst_case"``, when the rates are defined in
    every present group (fairlearn counts an undefined rate as 0, we leave the group out). Binary and
    multiclass tasks, ``reduction`` and the arguments: see :class:`RateGapMetric`; ``reduction="mean"``
    averages the per-class worst case over classes.

    ``lightning_autobalance.metrics.EqualizedOddsGap`` is this class under its former name (an alias); the package
    root's ``EqualizedOddsGap`` is the differentiable training objective
    :class:`lightning_autobalance.objectives.EqualizedOddsGap`, not this metric.

    Example:
        >>> import torch
        >>> preds, target = torch.tensor([1, 1, 1, 1, 1, 0, 0, 0]), torch.tensor([1, 1, 0, 0, 1, 1, 0, 0])
        >>> metric = EqualizedOddsGapMetric(num_classes=2, num_groups=2)
        >>> metric(preds, target, torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]))  # forward: the value on this batch
        tensor(1.)
    """

    metric_name = "EqualizedOddsGap"

    @staticmethod
    def per_class_gaps(rates: dict[str, tuple[Tensor, Tensor]]) -> Tensor:
        """Per class the larger of the TPR and FPR gaps (``fmax`` ignores an undefined one)."""
        return torch.fmax(_rate_gaps(*rates["tpr"]), _rate_gaps(*rates["fpr"]))


EqualizedOddsGap = EqualizedOddsGapMetric  # the former name, kept as an alias (see the class docstring)
