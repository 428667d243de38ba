r"""The functional forms of the metrics: each takes a batch, counts it, and reduces the counts like its class.

``f(preds, target, groups, num_classes=..., num_groups=..., **options)`` is
``Metric.from_counts(confusion_counts(preds, target, groups, num_classes, num_groups, validate_args), **options)``,
the value a fresh ``Metric(num_classes, num_groups, **options)`` computes after one ``update``. The arguments they
all take:

* ``preds``: float logits / probabilities ``(N, num_classes)`` or integer predicted labels ``(N,)``;
* ``target``: integer true labels ``(N,)``;
* ``groups``: integer sensitive-group indices ``(N,)``, or ``None`` (all samples in group 0);
* ``num_classes`` (at least 2) and ``num_groups`` (at least 1), keyword-only;
* ``validate_args``: check that labels and groups are in range (shapes and dtypes are always checked).

The options after them (``reduction``, ``over``, ``per_class``, ``train_cell_counts``) are those of the class.
Bad inputs raise the ``ValueError`` of :func:`~lightning_autobalance.metrics.counts.confusion_counts`.

Example:
    >>> import torch
    >>> preds, target = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 1, 1])
    >>> error(preds, target, num_classes=2), worst_class_error(preds, target, num_classes=2)
    (tensor(0.2500), tensor(0.3333))
"""

from __future__ import annotations

from torch import Tensor

from lightning_autobalance.metrics.classwise import BalancedError, ClassErrors, Error, WorstClassError
from lightning_autobalance.metrics.counts import TensorLike, confusion_counts
from lightning_autobalance.metrics.fairness import (
    DemographicParityGap,
    EqualizedOddsGapMetric,
    EqualOpportunityGapMetric,
    Reduction,
)
from lightning_autobalance.metrics.groups import (
    GroupErrors,
    MeanGroupAccuracy,
    Over,
    WorstGroupAccuracy,
    WorstGroupError,
)
from lightning_autobalance.metrics.weighted import WeightedAverageAccuracy, train_cell_weights

__all__ = [
    "balanced_error",
    "class_errors",
    "demographic_parity_gap",
    "equal_opportunity_gap",
    "equalized_odds_gap",
    "error",
    "group_errors",
    "mean_group_accuracy",
    "weighted_average_accuracy",
    "worst_class_error",
    "worst_group_accuracy",
    "worst_group_error",
]


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
    counts = confusion_counts(preds, target, groups, num_classes, num_groups, validate_args)
    return Error.from_counts(counts)


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

    Returns:
        A 0-d tensor; ``nan`` (with a warning) for empty inputs.

    Example:
        >>> import torch
        >>> balanced_error(torch.tensor([0, 1, 1, 1, 2, 0]), torch.tensor([0, 0, 1, 1, 2, 2]), num_classes=3)
        tensor(0.3333)
    """
    counts = confusion_counts(preds, target, groups, num_classes, num_groups, validate_args)
    return BalancedError.from_counts(counts)


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

    Returns:
        A ``(num_classes,)`` tensor, ``nan`` (with a warning) for classes absent from ``target``.

    Example:
        >>> import torch
        >>> class_errors(torch.tensor([0, 1, 1, 1, 2, 0]), torch.tensor([0, 0, 1, 1, 2, 2]), num_classes=3)
        tensor([0.5000, 0.0000, 0.5000])
    """
    counts = confusion_counts(preds, target, groups, num_classes, num_groups, validate_args)
    return ClassErrors.from_counts(counts)


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

    Returns:
        A 0-d tensor; classes absent from ``target`` are left out (with a warning).

    Example:
        >>> import torch
        >>> worst_class_error(torch.tensor([0, 1, 1, 1, 2, 0]), torch.tensor([0, 0, 1, 1, 2, 2]), num_classes=3)
        tensor(0.5000)
    """
    counts = confusion_counts(preds, target, groups, num_classes, num_groups, validate_args)
    return WorstClassError.from_counts(counts)


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
    return DemographicParityGap.from_counts(counts, reduction=reduction)


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
    """Max − min true-positive rate over groups; functional form of :class:`EqualOpportunityGapMetric`.

    Binary tasks: class 1 is positive (fairlearn's ``equal_opportunity_difference``). Multiclass:
    one-vs-rest gap per class, reduced by ``reduction``. Groups without samples of the positive class are
    left out for that class.

    Returns:
        A 0-d tensor; ``nan`` (with a warning) for empty inputs.

    Example:
        One-vs-rest over three classes, the largest gap and the mean gap over the positive classes (class 2 is
        only in group 0: its gap is 0):

        >>> from torch import tensor
        >>> args = (tensor([0, 1, 2, 2, 0, 1]), tensor([0, 1, 2, 0, 1, 1]), tensor([0, 0, 0, 1, 1, 1]))
        >>> equal_opportunity_gap(*args, num_classes=3, num_groups=2)
        tensor(1.)
        >>> equal_opportunity_gap(*args, num_classes=3, num_groups=2, reduction="mean")  # gaps 1, 1/2, 0
        tensor(0.5000)
    """
    counts = confusion_counts(preds, target, groups, num_classes, num_groups, validate_args)
    return EqualOpportunityGapMetric.from_counts(counts, reduction=reduction)


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
    """Larger of the TPR gap and the FPR gap over groups; functional form of :class:`EqualizedOddsGapMetric`.

    Binary tasks: class 1 is positive (fairlearn's ``equalized_odds_difference``, ``agg="worst_case"``).
    Multiclass: per class ``max(TPR gap, FPR gap)`` one-vs-rest, reduced by ``reduction``.

    Returns:
        A 0-d tensor: at least the TPR gap of :func:`equal_opportunity_gap`; ``nan`` (with a warning) for empty inputs.

    Example:
        Group 0 is always predicted positive, group 1 only when right: the true-positive rates agree, the
        false-positive rates are 1 and 0.

        >>> import torch
        >>> y, g = torch.tensor([1, 0, 1, 0]), torch.tensor([0, 0, 1, 1])
        >>> equalized_odds_gap(torch.tensor([1, 1, 1, 0]), y, g, num_classes=2, num_groups=2)
        tensor(1.)
    """
    counts = confusion_counts(preds, target, groups, num_classes, num_groups, validate_args)
    return EqualizedOddsGapMetric.from_counts(counts, reduction=reduction)


def group_errors(
    preds: TensorLike,
    target: TensorLike,
    groups: TensorLike | None = None,
    *,
    num_classes: int,
    num_groups: int = 1,
    per_class: bool = False,
    validate_args: bool = True,
) -> Tensor:
    """Error per group ``(G,)`` or per (group, class) ``(G, K)``; functional form of :class:`GroupErrors`.

    Returns:
        A ``(num_groups,)`` or ``(num_groups, num_classes)`` tensor, ``nan`` where there is no sample.

    Example:
        >>> import torch
        >>> preds, target = torch.tensor([0, 1, 1, 1, 2, 0]), torch.tensor([0, 0, 1, 1, 2, 2])
        >>> group_errors(preds, target, torch.tensor([0, 0, 0, 1, 1, 1]), num_classes=3, num_groups=3)
        tensor([0.3333, 0.3333,    nan])
    """
    counts = confusion_counts(preds, target, groups, num_classes, num_groups, validate_args)
    return GroupErrors.from_counts(counts, per_class=per_class)


def worst_group_error(
    preds: TensorLike,
    target: TensorLike,
    groups: TensorLike | None = None,
    *,
    num_classes: int,
    num_groups: int = 1,
    over: Over = "class_group",
    validate_args: bool = True,
) -> Tensor:
    """Worst (class, group) cell error or worst group error; functional form of :class:`WorstGroupError`.

    Returns:
        A 0-d tensor; ``nan`` (with a warning) for empty inputs.

    Example:
        >>> import torch
        >>> preds, target = torch.tensor([0, 1, 1, 1, 2, 0]), torch.tensor([0, 0, 1, 1, 2, 2])
        >>> groups = torch.tensor([0, 0, 0, 1, 1, 1])
        >>> worst_group_error(preds, target, groups, num_classes=3, num_groups=2)
        tensor(0.5000)
        >>> worst_group_error(preds, target, groups, num_classes=3, num_groups=2, over="group")
        tensor(0.3333)
    """
    counts = confusion_counts(preds, target, groups, num_classes, num_groups, validate_args)
    return WorstGroupError.from_counts(counts, over=over)


def worst_group_accuracy(
    preds: TensorLike,
    target: TensorLike,
    groups: TensorLike | None = None,
    *,
    num_classes: int,
    num_groups: int = 1,
    over: Over = "class_group",
    validate_args: bool = True,
) -> Tensor:
    """Worst (group, class) cell accuracy or worst group accuracy; functional form of :class:`WorstGroupAccuracy`.

    Returns:
        A 0-d tensor, ``1 −`` :func:`worst_group_error`; ``nan`` (with a warning) for empty inputs.

    Example:
        The (label, attribute) cells of a Waterbirds-like task: the minority cell (label 1, attribute 0) is half wrong.

        >>> from torch import tensor
        >>> labels, attributes = tensor([0, 0, 0, 1, 1, 1, 1]), tensor([0, 0, 0, 0, 0, 1, 1])
        >>> worst_group_accuracy(tensor([0, 0, 0, 1, 0, 1, 1]), labels, attributes, num_classes=2, num_groups=2)
        tensor(0.5000)
    """
    counts = confusion_counts(preds, target, groups, num_classes, num_groups, validate_args)
    return WorstGroupAccuracy.from_counts(counts, over=over)


def mean_group_accuracy(
    preds: TensorLike,
    target: TensorLike,
    groups: TensorLike | None = None,
    *,
    num_classes: int,
    num_groups: int = 1,
    over: Over = "class_group",
    validate_args: bool = True,
) -> Tensor:
    """Unweighted mean accuracy over non-empty cells or groups; functional form of :class:`MeanGroupAccuracy`.

    Returns:
        A 0-d tensor; ``nan`` (with a warning) for empty inputs.

    Example:
        Cells (0, 0), (0, 1), (1, 1) and (1, 2) have accuracies 1/2, 1, 1 and 1/2; the groups 2/3 each:

        >>> from torch import tensor
        >>> inputs = (tensor([0, 1, 1, 1, 2, 0]), tensor([0, 0, 1, 1, 2, 2]), tensor([0, 0, 0, 1, 1, 1]))
        >>> [float(mean_group_accuracy(*inputs, num_classes=3, num_groups=2, over=o)) for o in ("class_group", "group")]
        [0.75, 0.6666666865348816]
    """
    counts = confusion_counts(preds, target, groups, num_classes, num_groups, validate_args)
    return MeanGroupAccuracy.from_counts(counts, over=over)


def weighted_average_accuracy(
    preds: TensorLike,
    target: TensorLike,
    groups: TensorLike | None = None,
    *,
    num_classes: int,
    num_groups: int = 1,
    train_cell_counts: TensorLike,
    validate_args: bool = True,
) -> Tensor:
    r"""Test accuracy per cell weighted by the training proportions; functional :class:`WeightedAverageAccuracy`.

    The DFR / JTT "average accuracy" :math:`\sum_{g, c} p_{gc} a_{gc}`, with :math:`p_{gc}` the training
    share of cell (group, class) and :math:`a_{gc}` its test accuracy. Cells with training weight but no
    test sample are left out with a warning and the other weights renormalised.

    Returns:
        A 0-d tensor; ``nan`` (with a warning) for empty inputs or when no weighted cell was tested.

    Raises:
        ValueError: On a bad ``train_cell_counts`` (shape, negative or non-finite entry, zero sum) and on
            the usual bad inputs.

    Example:
        >>> import torch
        >>> preds, target = torch.tensor([0, 1, 1, 1, 2, 0]), torch.tensor([0, 0, 1, 1, 2, 2])
        >>> groups = torch.tensor([0, 0, 0, 1, 1, 1])
        >>> train = [[0.60, 0.20, 0.0], [0.0, 0.05, 0.15]]
        >>> weighted_average_accuracy(preds, target, groups, num_classes=3, num_groups=2, train_cell_counts=train)
        tensor(0.6250)
    """
    counts = confusion_counts(preds, target, groups, num_classes, num_groups, validate_args)
    return WeightedAverageAccuracy.from_counts(counts, train_cell_weights(train_cell_counts, num_classes, num_groups))
