r"""Fairness gaps between sensitive groups: demographic parity, equal opportunity and equalized odds.

Each gap is the max − min over groups of a rate (selection rate, true-positive rate, false-positive rate)
computed from the shared counts. Binary tasks use class 1 as the positive class, as fairlearn does;
multiclass tasks take each class in turn as the positive one (one-vs-rest) and reduce the per-class gaps by
``reduction="max"`` or ``"mean"``. Rates with a zero denominator leave their group out.

Example:
    >>> import torch
    >>> target = torch.tensor([1, 1, 0, 0, 1, 1, 0, 0])
    >>> preds = torch.tensor([1, 1, 1, 1, 1, 0, 0, 0])
    >>> groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    >>> demographic_parity_gap(preds, target, groups, num_classes=2, num_groups=2)
    tensor(0.7500)
"""

from __future__ import annotations

from typing import Any, Literal

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
    "DemographicParityGap",
    "EqualOpportunityGap",
    "EqualizedOddsGap",
    "Reduction",
    "demographic_parity_gap",
    "equal_opportunity_gap",
    "equalized_odds_gap",
]

Reduction = Literal["max", "mean"]

_REDUCTIONS = ("max", "mean")


def _check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction={reduction!r} is not supported: pass reduction='max' or reduction='mean'.")


# ----------------------------------------------------------------------------------------------------------
# Reductions from counts
# ----------------------------------------------------------------------------------------------------------


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


def _reduce_classes(gaps: Tensor, reduction: Reduction) -> Tensor:
    """Reduce per-class gaps by max or mean, ignoring the classes whose gap is undefined (nan)."""
    return nanmax(gaps) if reduction == "max" else torch.nanmean(gaps)


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


def _demographic_parity_gap_from_counts(counts: Tensor, reduction: Reduction = "max") -> Tensor:
    """Selection-rate gap over non-empty groups, reduced over the positive classes."""
    _check_reduction(reduction)
    if is_empty(counts, "DemographicParityGap"):
        return nan_tensor((), counts)
    num, den = _one_vs_rest_rates(counts)["selection"]
    return to_default_dtype(_reduce_classes(_rate_gaps(num, den), reduction))


def _equal_opportunity_gap_from_counts(counts: Tensor, reduction: Reduction = "max") -> Tensor:
    """True-positive-rate gap over groups where it is defined, reduced over the positive classes."""
    _check_reduction(reduction)
    if is_empty(counts, "EqualOpportunityGap"):
        return nan_tensor((), counts)
    num, den = _one_vs_rest_rates(counts)["tpr"]
    return to_default_dtype(_reduce_classes(_rate_gaps(num, den), reduction))


def _equalized_odds_gap_from_counts(counts: Tensor, reduction: Reduction = "max") -> Tensor:
    """Per class the larger of the TPR and FPR gaps, reduced over the positive classes."""
    _check_reduction(reduction)
    if is_empty(counts, "EqualizedOddsGap"):
        return nan_tensor((), counts)
    rates = _one_vs_rest_rates(counts)
    per_class = torch.fmax(_rate_gaps(*rates["tpr"]), _rate_gaps(*rates["fpr"]))  # fmax ignores nan
    return to_default_dtype(_reduce_classes(per_class, reduction))


# ----------------------------------------------------------------------------------------------------------
# Metric classes
# ----------------------------------------------------------------------------------------------------------


class DemographicParityGap(GroupConfusionMetric):
    r"""Demographic-parity gap: max − min over groups of the selection rate.

    For a positive class :math:`c`, the selection rate of group :math:`g` is
    :math:`s_{gc} = n_{g\cdot c} / n_{g\cdot\cdot}` and

    .. math::
        \Delta_c = \max_{g \in G^+} s_{gc} - \min_{g \in G^+} s_{gc},

    with :math:`G^+` the non-empty groups (fairlearn's ``demographic_parity_difference`` for binary tasks).

    Binary tasks (``num_classes=2``) use class 1 as the positive class, which is fairlearn's definition.
    With ``num_classes > 2`` each class :math:`c` in turn is the positive class (one-vs-rest) and the
    per-class gaps :math:`\Delta_c` are reduced over the classes :math:`C^*` where they are defined:
    ``reduction="max"`` (default) gives :math:`\max_{c \in C^*} \Delta_c`, ``reduction="mean"`` gives
    :math:`\frac{1}{|C^*|} \sum_{c \in C^*} \Delta_c`.

    A single non-empty group gives 0. Empty metric: ``nan`` with a warning.

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
        >>> target = torch.tensor([1, 1, 0, 0, 1, 1, 0, 0])
        >>> preds = torch.tensor([1, 1, 1, 1, 1, 0, 0, 0])
        >>> groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
        >>> metric = DemographicParityGap(num_classes=2, num_groups=2)
        >>> metric.update(preds, target, groups)
        >>> metric.compute()
        tensor(0.7500)
    """

    higher_is_better: bool | None = False

    def __init__(
        self,
        num_classes: int,
        num_groups: int = 1,
        *,
        reduction: Reduction = "max",
        validate_args: bool = True,
        **kwargs: Any,
    ):
        _check_reduction(reduction)
        super().__init__(num_classes, num_groups, validate_args=validate_args, **kwargs)
        self.reduction = reduction

    def compute(self) -> Tensor:
        """Return the demographic-parity gap (a 0-d tensor)."""
        return _demographic_parity_gap_from_counts(self.counts, reduction=self.reduction)


class EqualOpportunityGap(GroupConfusionMetric):
    r"""Equal-opportunity gap: max − min over groups of the true-positive rate.

    For a positive class :math:`c`, the true-positive rate of group :math:`g` is
    :math:`t_{gc} = n_{gcc} / n_{gc\cdot}`, defined when group :math:`g` has samples of class :math:`c`,
    and

    .. math::
        \Delta_c = \max_{g:\, n_{gc\cdot} > 0} t_{gc} - \min_{g:\, n_{gc\cdot} > 0} t_{gc}

    (fairlearn's ``equal_opportunity_difference`` for binary tasks, when every present group has a
    positive; fairlearn counts a group without positives as rate 0, we leave it out).

    Binary tasks (``num_classes=2``) use class 1 as the positive class, which is fairlearn's definition.
    With ``num_classes > 2`` each class :math:`c` in turn is the positive class (one-vs-rest) and the
    per-class gaps :math:`\Delta_c` are reduced over the classes :math:`C^*` where they are defined:
    ``reduction="max"`` (default) gives :math:`\max_{c \in C^*} \Delta_c`, ``reduction="mean"`` gives
    :math:`\frac{1}{|C^*|} \sum_{c \in C^*} \Delta_c`.

    Empty metric: ``nan`` with a warning.

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
        >>> target = torch.tensor([1, 1, 0, 0, 1, 1, 0, 0])
        >>> preds = torch.tensor([1, 1, 1, 1, 1, 0, 0, 0])
        >>> groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
        >>> metric = EqualOpportunityGap(num_classes=2, num_groups=2)
        >>> metric.update(preds, target, groups)
        >>> metric.compute()
        tensor(0.5000)
    """

    higher_is_better: bool | None = False

    def __init__(
        self,
        num_classes: int,
        num_groups: int = 1,
        *,
        reduction: Reduction = "max",
        validate_args: bool = True,
        **kwargs: Any,
    ):
        _check_reduction(reduction)
        super().__init__(num_classes, num_groups, validate_args=validate_args, **kwargs)
        self.reduction = reduction

    def compute(self) -> Tensor:
        """Return the equal-opportunity gap (a 0-d tensor)."""
        return _equal_opportunity_gap_from_counts(self.counts, reduction=self.reduction)


class EqualizedOddsGap(GroupConfusionMetric):
    r"""Equalized-odds gap: the larger of the true-positive-rate gap and the false-positive-rate gap.

    For a positive class :math:`c`, with :math:`\Delta^{TPR}_c` the gap of :class:`EqualOpportunityGap` and
    :math:`\Delta^{FPR}_c` the max − min over groups of :math:`f_{gc} = (n_{g\cdot c} - n_{gcc}) /
    (n_{g\cdot\cdot} - n_{gc\cdot})` (over the groups that have samples of another class),

    .. math::
        \Delta_c = \max(\Delta^{TPR}_c, \Delta^{FPR}_c)

    (an undefined one of the two is ignored). For binary tasks this is fairlearn's
    ``equalized_odds_difference`` with its default ``agg="worst_case"``, when the rates are defined in
    every present group (fairlearn counts an undefined rate as 0, we leave the group out).

    Binary tasks (``num_classes=2``) use class 1 as the positive class, which is fairlearn's definition.
    With ``num_classes > 2`` each class :math:`c` in turn is the positive class (one-vs-rest) and the
    per-class gaps :math:`\Delta_c` are reduced over the classes :math:`C^*` where they are defined:
    ``reduction="max"`` (default) gives :math:`\max_{c \in C^*} \Delta_c`, ``reduction="mean"`` gives
    :math:`\frac{1}{|C^*|} \sum_{c \in C^*} \Delta_c`.

    So ``reduction="mean"`` averages the per-class worst case over classes. Empty metric: ``nan`` with a
    warning.

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
        >>> target = torch.tensor([1, 1, 0, 0, 1, 1, 0, 0])
        >>> preds = torch.tensor([1, 1, 1, 1, 1, 0, 0, 0])
        >>> groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
        >>> metric = EqualizedOddsGap(num_classes=2, num_groups=2)
        >>> metric.update(preds, target, groups)
        >>> metric.compute()
        tensor(1.)
    """

    higher_is_better: bool | None = False

    def __init__(
        self,
        num_classes: int,
        num_groups: int = 1,
        *,
        reduction: Reduction = "max",
        validate_args: bool = True,
        **kwargs: Any,
    ):
        _check_reduction(reduction)
        super().__init__(num_classes, num_groups, validate_args=validate_args, **kwargs)
        self.reduction = reduction

    def compute(self) -> Tensor:
        """Return the equalized-odds gap (a 0-d tensor)."""
        return _equalized_odds_gap_from_counts(self.counts, reduction=self.reduction)


# ----------------------------------------------------------------------------------------------------------
# Functional twins
# ----------------------------------------------------------------------------------------------------------


def demographic_parity_gap(
    preds: TensorLike,
    target: TensorLike,
    groups: TensorLike | None = None,
    *,
    num_classes: int,
    num_groups: int = 1,
    reduction: Reduction = "max",
    validate_args: bool = True,
) -> Tensor:
    """Max − min selection rate over non-empty groups; functional form of :class:`DemographicParityGap`.

    Binary tasks: class 1 is positive (fairlearn's ``demographic_parity_difference``). Multiclass:
    one-vs-rest gap per class, reduced by ``reduction`` (``"max"`` or ``"mean"``).

    Args:
        preds: Float logits / probabilities ``(N, num_classes)`` or integer predicted labels ``(N,)``.
        target: Integer true labels ``(N,)``.
        groups: Integer group indices ``(N,)`` or ``None`` (all in group 0, gap 0).
        num_classes: Number of classes (at least 2).
        num_groups: Number of groups (at least 1).
        reduction: ``"max"`` (default) or ``"mean"`` over classes.
        validate_args: Check that labels and groups are in range.

    Returns:
        A 0-d tensor; ``nan`` (with a warning) for empty inputs.

    Example:
        >>> import torch
        >>> target = torch.tensor([1, 1, 0, 0, 1, 1, 0, 0])
        >>> preds = torch.tensor([1, 1, 1, 1, 1, 0, 0, 0])
        >>> groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
        >>> demographic_parity_gap(preds, target, groups, num_classes=2, num_groups=2)
        tensor(0.7500)
    """
    counts = confusion_counts(preds, target, groups, num_classes, num_groups, validate_args)
    return _demographic_parity_gap_from_counts(counts, reduction=reduction)


def equal_opportunity_gap(
    preds: TensorLike,
    target: TensorLike,
    groups: TensorLike | None = None,
    *,
    num_classes: int,
    num_groups: int = 1,
    reduction: Reduction = "max",
    validate_args: bool = True,
) -> Tensor:
    """Max − min true-positive rate over groups; functional form of :class:`EqualOpportunityGap`.

    Binary tasks: class 1 is positive (fairlearn's ``equal_opportunity_difference``). Multiclass:
    one-vs-rest gap per class, reduced by ``reduction``. Groups without samples of the positive class are
    left out for that class.

    Args:
        preds: Float logits / probabilities ``(N, num_classes)`` or integer predicted labels ``(N,)``.
        target: Integer true labels ``(N,)``.
        groups: Integer group indices ``(N,)`` or ``None`` (all in group 0, gap 0).
        num_classes: Number of classes (at least 2).
        num_groups: Number of groups (at least 1).
        reduction: ``"max"`` (default) or ``"mean"`` over classes.
        validate_args: Check that labels and groups are in range.

    Returns:
        A 0-d tensor; ``nan`` (with a warning) for empty inputs.

    Example:
        >>> import torch
        >>> target = torch.tensor([1, 1, 0, 0, 1, 1, 0, 0])
        >>> preds = torch.tensor([1, 1, 1, 1, 1, 0, 0, 0])
        >>> groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
        >>> equal_opportunity_gap(preds, target, groups, num_classes=2, num_groups=2)
        tensor(0.5000)
    """
    counts = confusion_counts(preds, target, groups, num_classes, num_groups, validate_args)
    return _equal_opportunity_gap_from_counts(counts, reduction=reduction)


def equalized_odds_gap(
    preds: TensorLike,
    target: TensorLike,
    groups: TensorLike | None = None,
    *,
    num_classes: int,
    num_groups: int = 1,
    reduction: Reduction = "max",
    validate_args: bool = True,
) -> Tensor:
    """Larger of the TPR gap and the FPR gap over groups; functional form of :class:`EqualizedOddsGap`.

    Binary tasks: class 1 is positive (fairlearn's ``equalized_odds_difference``, ``agg="worst_case"``).
    Multiclass: per class ``max(TPR gap, FPR gap)`` one-vs-rest, reduced by ``reduction``.

    Args:
        preds: Float logits / probabilities ``(N, num_classes)`` or integer predicted labels ``(N,)``.
        target: Integer true labels ``(N,)``.
        groups: Integer group indices ``(N,)`` or ``None`` (all in group 0, gap 0).
        num_classes: Number of classes (at least 2).
        num_groups: Number of groups (at least 1).
        reduction: ``"max"`` (default) or ``"mean"`` over classes.
        validate_args: Check that labels and groups are in range.

    Returns:
        A 0-d tensor; ``nan`` (with a warning) for empty inputs.

    Example:
        >>> import torch
        >>> target = torch.tensor([1, 1, 0, 0, 1, 1, 0, 0])
        >>> preds = torch.tensor([1, 1, 1, 1, 1, 0, 0, 0])
        >>> groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
        >>> equalized_odds_gap(preds, target, groups, num_classes=2, num_groups=2)
        tensor(1.)
    """
    counts = confusion_counts(preds, target, groups, num_classes, num_groups, validate_args)
    return _equalized_odds_gap_from_counts(counts, reduction=reduction)
