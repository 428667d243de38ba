r"""Error and accuracy per sensitive group or per (group, class) cell: the group-robustness metrics.

:class:`GroupErrors` and :class:`WorstGroupError`, and the accuracy conventions of the group-robustness
literature (Waterbirds / CelebA: group DRO, JTT, DFR): :class:`WorstGroupAccuracy`,
:class:`MeanGroupAccuracy` and the training-weighted :class:`WeightedAverageAccuracy`. Empty groups and cells
are ignored by every max / mean over groups.

Example:
    >>> import torch
    >>> preds, target = torch.tensor([0, 1, 1, 1, 2, 0]), torch.tensor([0, 0, 1, 1, 2, 2])
    >>> groups = torch.tensor([0, 0, 0, 1, 1, 1])
    >>> worst_group_error(preds, target, groups, num_classes=3, num_groups=2, over="group")
    tensor(0.3333)
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

import torch
from torch import Tensor

from lightning_autobalance.metrics.counts import (
    GroupConfusionMetric,
    TensorLike,
    as_tensor,
    confusion_counts,
    is_empty,
    nan_tensor,
    nanmax,
    to_default_dtype,
)

__all__ = [
    "GroupErrors",
    "MeanGroupAccuracy",
    "Over",
    "WeightedAverageAccuracy",
    "WorstGroupAccuracy",
    "WorstGroupError",
    "group_errors",
    "mean_group_accuracy",
    "weighted_average_accuracy",
    "worst_group_accuracy",
    "worst_group_error",
]

Over = Literal["class_group", "group"]

_OVERS = ("class_group", "group")


def _check_over(over: str) -> None:
    if over not in _OVERS:
        raise ValueError(f"over={over!r} is not supported: pass over='class_group' or over='group'.")


# ----------------------------------------------------------------------------------------------------------
# Reductions from counts
# ----------------------------------------------------------------------------------------------------------


def _group_error_table(counts: Tensor, per_class: bool) -> Tensor:
    """Error per group ``(G,)`` or per (group, class) ``(G, K)`` (float64, nan where no sample)."""
    c = counts.double()
    correct = torch.diagonal(c, dim1=1, dim2=2)  # (G, K)
    support = c.sum(2)  # (G, K)
    if not per_class:
        correct, support = correct.sum(1), support.sum(1)
    return 1.0 - correct / support


def _group_errors_from_counts(counts: Tensor, per_class: bool = False) -> Tensor:
    """Per-group error ``(G,)``, or per-(group, class) error ``(G, K)`` with ``per_class=True``."""
    if is_empty(counts, "GroupErrors"):
        return nan_tensor(tuple(counts.shape[:2]) if per_class else (counts.shape[0],), counts)
    return to_default_dtype(_group_error_table(counts, per_class))


def _worst_group_error_from_counts(counts: Tensor, over: Over = "class_group") -> Tensor:
    """Max error over non-empty (group, class) cells (``over="class_group"``) or groups (``"group"``)."""
    _check_over(over)
    if is_empty(counts, "WorstGroupError"):
        return nan_tensor((), counts)
    return to_default_dtype(nanmax(_group_error_table(counts, per_class=over == "class_group")))


def _worst_group_accuracy_from_counts(counts: Tensor, over: Over = "class_group") -> Tensor:
    """1 − the max error over non-empty (group, class) cells (``over="class_group"``) or groups."""
    _check_over(over)
    if is_empty(counts, "WorstGroupAccuracy"):
        return nan_tensor((), counts)
    return to_default_dtype(1.0 - nanmax(_group_error_table(counts, per_class=over == "class_group")))


def _mean_group_accuracy_from_counts(counts: Tensor, over: Over = "class_group") -> Tensor:
    """Unweighted mean accuracy over non-empty (group, class) cells (``over="class_group"``) or groups."""
    _check_over(over)
    if is_empty(counts, "MeanGroupAccuracy"):
        return nan_tensor((), counts)
    return to_default_dtype(torch.nanmean(1.0 - _group_error_table(counts, per_class=over == "class_group")))


def _train_cell_weights(train_cell_counts: Any, num_classes: int, num_groups: int) -> Tensor:
    """Check ``train_cell_counts`` (counts or proportions, shape ``(G, K)``) and return weights summing to 1.

    Returns:
        A float64 tensor of shape ``(num_groups, num_classes)``, non-negative, summing to 1.

    Raises:
        ValueError: If it is not a real tensor of shape ``(num_groups, num_classes)`` with finite,
            non-negative entries and a positive sum.
    """
    name = "train_cell_counts"
    try:
        w = as_tensor(train_cell_counts)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(
            f"{name} could not be turned into a tensor ({exc}): pass a (num_groups, num_classes) tensor of "
            "training counts or proportions."
        ) from None
    if w.is_complex() or w.dtype == torch.bool:
        raise ValueError(
            f"{name} must hold real counts or proportions, got dtype {w.dtype}: pass a float or int tensor."
        )
    expected = (num_groups, num_classes)
    if tuple(w.shape) != expected:
        hint = (
            " (it looks transposed: rows are groups, columns are classes)" if tuple(w.shape) == expected[::-1] else ""
        )
        raise ValueError(
            f"{name} must have shape (num_groups, num_classes) = {expected}, got shape {tuple(w.shape)}{hint}: "
            "pass the number (or share) of training samples of class c in group g at [g, c]."
        )
    w = w.detach().double()
    if not torch.isfinite(w).all():
        raise ValueError(f"{name} contains non-finite values (nan or inf): pass finite counts or proportions.")
    if (w < 0).any():
        g, c = (int(i) for i in (w < 0).nonzero()[0])
        raise ValueError(
            f"{name}[{g}, {c}] = {w[g, c].item():g} is negative: training counts or proportions must be >= 0."
        )
    total = w.sum()
    if total <= 0:
        raise ValueError(f"{name} sums to 0: at least one (group, class) cell needs a positive training count.")
    return w / total


def _weighted_average_accuracy_from_counts(counts: Tensor, weights: Tensor) -> Tensor:
    """Per-cell test accuracy averaged with the training weights ``(G, K)``, over the cells with test samples.

    Cells with a positive weight but no test sample are left out (with a warning) and the weights of the
    remaining cells renormalised; if no weighted cell has a test sample the result is ``nan`` (with a warning).
    """
    if is_empty(counts, "WeightedAverageAccuracy"):
        return nan_tensor((), counts)
    weights = weights.to(device=counts.device, dtype=torch.float64)
    accuracy = 1.0 - _group_error_table(counts, per_class=True)  # (G, K), nan where no test sample
    tested = counts.sum(2) > 0
    w = torch.where(tested, weights, torch.zeros_like(weights))
    total = w.sum()
    if total <= 0:
        warnings.warn(
            "WeightedAverageAccuracy: no (group, class) cell with positive training weight has test samples; "
            "returning nan.",
            UserWarning,
            stacklevel=3,
        )
        return nan_tensor((), counts)
    untested = [tuple(cell) for cell in ((weights > 0) & ~tested).nonzero().tolist()]
    if untested:
        warnings.warn(
            f"WeightedAverageAccuracy: (group, class) cells {untested} have training weight but no test samples; "
            "their accuracy is undefined and they are left out, the weights of the other cells renormalised "
            "(scikit-learn balanced_accuracy_score convention for absent classes).",
            UserWarning,
            stacklevel=3,
        )
    return to_default_dtype((w * torch.nan_to_num(accuracy)).sum() / total)


# ----------------------------------------------------------------------------------------------------------
# Metric classes
# ----------------------------------------------------------------------------------------------------------


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

    def compute(self) -> Tensor:
        """Return the per-group errors ``(num_groups,)`` or ``(num_groups, num_classes)``."""
        return _group_errors_from_counts(self.counts, per_class=self.per_class)


class _GroupedConfusionMetric(GroupConfusionMetric):
    """A :class:`GroupConfusionMetric` over groups of the ``over`` kind: (group, class) cells or sensitive groups."""

    def __init__(
        self,
        num_classes: int,
        num_groups: int = 1,
        *,
        over: Over = "class_group",
        validate_args: bool = True,
        **kwargs: Any,
    ):
        _check_over(over)
        super().__init__(num_classes, num_groups, validate_args=validate_args, **kwargs)
        self.over = over


class WorstGroupError(_GroupedConfusionMetric):
    r"""Worst-group error, where "group" is the sensitive-group index passed as ``groups``.

    * ``over="class_group"`` (default): the largest error over the non-empty (class, group) cells,
      :math:`\max_{g, c:\, n_{gc\cdot} > 0} (1 - n_{gcc} / n_{gc\cdot})`. This is the Waterbirds /
      CelebA convention (Sagawa et al., group DRO), where a "group" is a (label, attribute) pair: pass the
      attribute as ``groups``. It is also correct if ``groups`` already encodes (label, attribute), since
      every cell is then a whole group; with ``num_groups=1`` it equals :class:`WorstClassError`.
    * ``over="group"``: the largest plain error rate over the non-empty sensitive groups,
      :math:`\max_{g:\, n_{g\cdot\cdot} > 0} (1 - \sum_c n_{gcc} / n_{g\cdot\cdot})`.

    Empty groups / cells are ignored. Empty metric: ``nan`` with a warning.

    Args:
        num_classes: Number of classes ``K`` (at least 2).
        num_groups: Number of sensitive groups ``G`` (at least 1).
        over: ``"class_group"`` (default) or ``"group"``, see above.
        validate_args: Check that labels and groups are in range.
        **kwargs: Forwarded to :class:`torchmetrics.Metric`.

    Raises:
        ValueError: If ``over`` is not ``"class_group"`` or ``"group"``.

    Example:
        >>> import torch
        >>> preds, target = torch.tensor([0, 1, 1, 1, 2, 0]), torch.tensor([0, 0, 1, 1, 2, 2])
        >>> groups = torch.tensor([0, 0, 0, 1, 1, 1])
        >>> metric = WorstGroupError(num_classes=3, num_groups=2)
        >>> metric.update(preds, target, groups)
        >>> metric.compute()
        tensor(0.5000)
        >>> metric = WorstGroupError(num_classes=3, num_groups=2, over="group")
        >>> metric.update(preds, target, groups)
        >>> metric.compute()
        tensor(0.3333)
    """

    higher_is_better: bool | None = False

    def compute(self) -> Tensor:
        """Return the worst-group error (a 0-d tensor)."""
        return _worst_group_error_from_counts(self.counts, over=self.over)


class WorstGroupAccuracy(_GroupedConfusionMetric):
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

    Empty groups / cells are ignored. Empty metric: ``nan`` with a warning.

    Args:
        num_classes: Number of classes ``K`` (at least 2).
        num_groups: Number of sensitive groups ``G`` (at least 1).
        over: ``"class_group"`` (default) or ``"group"``, see above.
        validate_args: Check that labels and groups are in range.
        **kwargs: Forwarded to :class:`torchmetrics.Metric`.

    Raises:
        ValueError: If ``over`` is not ``"class_group"`` or ``"group"``.

    Example:
        >>> import torch
        >>> preds, target = torch.tensor([0, 1, 1, 1, 2, 0]), torch.tensor([0, 0, 1, 1, 2, 2])
        >>> groups = torch.tensor([0, 0, 0, 1, 1, 1])
        >>> metric = WorstGroupAccuracy(num_classes=3, num_groups=2)
        >>> metric.update(preds, target, groups)
        >>> metric.compute()
        tensor(0.5000)
        >>> metric = WorstGroupAccuracy(num_classes=3, num_groups=2, over="group")
        >>> metric.update(preds, target, groups)
        >>> metric.compute()
        tensor(0.6667)
    """

    higher_is_better: bool | None = True

    def compute(self) -> Tensor:
        """Return the worst-group accuracy (a 0-d tensor)."""
        return _worst_group_accuracy_from_counts(self.counts, over=self.over)


class MeanGroupAccuracy(_GroupedConfusionMetric):
    r"""Unweighted mean of the per-group accuracies ("mean group accuracy").

    * ``over="class_group"`` (default): the mean accuracy over the (sensitive group, class) cells that
      have test samples, :math:`\frac{1}{|P|} \sum_{(g, c) \in P} n_{gcc} / n_{gc\cdot}` with
      :math:`P = \{(g, c) : n_{gc\cdot} > 0\}` (every Waterbirds / CelebA group counts the same, however
      many test samples it has). With ``num_groups=1`` it is the balanced accuracy.
    * ``over="group"``: the mean over the non-empty sensitive groups of their plain accuracy.

    Cells / groups without test samples are left out of the mean (no warning: empty cells are expected,
    as in :class:`GroupErrors`). Empty metric: ``nan`` with a warning.

    Args:
        num_classes: Number of classes ``K`` (at least 2).
        num_groups: Number of sensitive groups ``G`` (at least 1).
        over: ``"class_group"`` (default) or ``"group"``, see above.
        validate_args: Check that labels and groups are in range.
        **kwargs: Forwarded to :class:`torchmetrics.Metric`.

    Raises:
        ValueError: If ``over`` is not ``"class_group"`` or ``"group"``.

    Example:
        >>> import torch
        >>> preds, target = torch.tensor([0, 1, 1, 1, 2, 0]), torch.tensor([0, 0, 1, 1, 2, 2])
        >>> groups = torch.tensor([0, 0, 0, 1, 1, 1])
        >>> metric = MeanGroupAccuracy(num_classes=3, num_groups=2)  # cells: 1/2, 1, 1, 1/2
        >>> metric.update(preds, target, groups)
        >>> metric.compute()
        tensor(0.7500)
    """

    higher_is_better: bool | None = True

    def compute(self) -> Tensor:
        """Return the mean group accuracy (a 0-d tensor)."""
        return _mean_group_accuracy_from_counts(self.counts, over=self.over)


class WeightedAverageAccuracy(GroupConfusionMetric):
    r"""Per-(group, class) test accuracy averaged with the cells' *training* proportions (DFR / JTT "average accuracy").

    With :math:`p_{gc}` the share of the training samples in cell (group :math:`g`, class :math:`c`)
    (``train_cell_counts`` normalised to sum 1) and :math:`a_{gc} = n_{gcc} / n_{gc\cdot}` the test accuracy
    of the cell,

    .. math::
        \mathrm{WAA} = \sum_{g, c} p_{gc}\, a_{gc}.

    This is the "average accuracy" reported for Waterbirds by group DRO (Sagawa et al.), JTT, DFR and the
    work that compares with them: the Waterbirds test set is group-balanced within each class while the
    training set is 95% spurious-aligned, so the plain test-set accuracy would over-weight the minority
    groups; weighting by the training proportions makes the reported average accuracy an estimate of the
    in-distribution accuracy (the accuracy on test data distributed like the training data). It therefore
    differs from the test-set accuracy whenever the test cell proportions differ from the training ones,
    e.g. on a group-balanced test set; it equals the test-set accuracy when ``train_cell_counts`` is the
    test cell counts. Papers that report the plain test accuracy under the same name are a known source of
    irreproducible numbers: say which one a table uses.

    A "group" is a (sensitive group, class) cell, as for :class:`WorstGroupAccuracy` with its default
    ``over="class_group"``: pass the spurious attribute as ``groups``. ``train_cell_counts[g, c]`` is the
    number (or share) of training samples of class ``c`` in group ``g``, e.g.
    ``torch.bincount(train_groups * K + train_target, minlength=G * K).reshape(G, K)``, or
    ``GroupConfusionMetric(K, G)`` updated on the training set, then ``.compute().sum(2)``.

    Conventions: a cell with training weight but no test sample has an undefined accuracy; as for absent
    classes in :class:`BalancedError` (scikit-learn's ``balanced_accuracy_score``), it is left out with a
    :class:`UserWarning` and the weights of the other cells are renormalised to sum 1. If no cell with
    positive weight has a test sample the result is ``nan`` (with a warning). Cells with test samples but
    zero training weight do not count. Empty metric: ``nan`` with a warning. The weights are a constant of
    the metric (not a state), so under DDP only the counts are summed and the result is exact.

    Args:
        num_classes: Number of classes ``K`` (at least 2).
        num_groups: Number of sensitive groups ``G`` (at least 1).
        train_cell_counts: Training counts or proportions per (group, class) cell, shape
            ``(num_groups, num_classes)``, non-negative with a positive sum (normalised internally).
        validate_args: Check that labels and groups are in range.
        **kwargs: Forwarded to :class:`torchmetrics.Metric`.

    Raises:
        ValueError: If ``train_cell_counts`` has the wrong shape, a negative or non-finite entry, or sums
            to 0.

    Example:
        >>> import torch
        >>> preds, target = torch.tensor([0, 1, 1, 1, 2, 0]), torch.tensor([0, 0, 1, 1, 2, 2])
        >>> groups = torch.tensor([0, 0, 0, 1, 1, 1])  # test cell accuracies [[1/2, 1, -], [-, 1, 1/2]]
        >>> train_cell_counts = torch.tensor([[60, 20, 0], [0, 5, 15]])
        >>> metric = WeightedAverageAccuracy(num_classes=3, num_groups=2, train_cell_counts=train_cell_counts)
        >>> metric.update(preds, target, groups)
        >>> metric.compute()  # 0.60 * 1/2 + 0.20 * 1 + 0.05 * 1 + 0.15 * 1/2
        tensor(0.6250)
    """

    higher_is_better: bool | None = True

    train_weights: Tensor

    def __init__(
        self,
        num_classes: int,
        num_groups: int = 1,
        *,
        train_cell_counts: TensorLike,
        validate_args: bool = True,
        **kwargs: Any,
    ):
        super().__init__(num_classes, num_groups, validate_args=validate_args, **kwargs)
        weights = _train_cell_weights(train_cell_counts, num_classes, num_groups)
        self.register_buffer("train_weights", weights, persistent=False)

    def compute(self) -> Tensor:
        """Return the training-weighted average accuracy (a 0-d tensor)."""
        return _weighted_average_accuracy_from_counts(self.counts, self.train_weights)


# ----------------------------------------------------------------------------------------------------------
# Functional twins
# ----------------------------------------------------------------------------------------------------------


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

    Args:
        preds: Float logits / probabilities ``(N, num_classes)`` or integer predicted labels ``(N,)``.
        target: Integer true labels ``(N,)``.
        groups: Integer group indices ``(N,)`` or ``None`` (all in group 0).
        num_classes: Number of classes (at least 2).
        num_groups: Number of groups (at least 1).
        per_class: Return the ``(G, K)`` per-(group, class) error matrix.
        validate_args: Check that labels and groups are in range.

    Returns:
        A ``(num_groups,)`` or ``(num_groups, num_classes)`` tensor, ``nan`` where there is no sample.

    Example:
        >>> import torch
        >>> preds, target = torch.tensor([0, 1, 1, 1, 2, 0]), torch.tensor([0, 0, 1, 1, 2, 2])
        >>> group_errors(preds, target, torch.tensor([0, 0, 0, 1, 1, 1]), num_classes=3, num_groups=3)
        tensor([0.3333, 0.3333,    nan])
    """
    counts = confusion_counts(preds, target, groups, num_classes, num_groups, validate_args)
    return _group_errors_from_counts(counts, per_class=per_class)


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

    Args:
        preds: Float logits / probabilities ``(N, num_classes)`` or integer predicted labels ``(N,)``.
        target: Integer true labels ``(N,)``.
        groups: Integer sensitive-group indices ``(N,)`` or ``None`` (all in group 0).
        num_classes: Number of classes (at least 2).
        num_groups: Number of groups (at least 1).
        over: ``"class_group"`` (default, Waterbirds convention: worst non-empty (class, group) cell) or
            ``"group"`` (worst non-empty sensitive group).
        validate_args: Check that labels and groups are in range.

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
    return _worst_group_error_from_counts(counts, over=over)


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

    Args:
        preds: Float logits / probabilities ``(N, num_classes)`` or integer predicted labels ``(N,)``.
        target: Integer true labels ``(N,)``.
        groups: Integer sensitive-group indices ``(N,)`` or ``None`` (all in group 0).
        num_classes: Number of classes (at least 2).
        num_groups: Number of groups (at least 1).
        over: ``"class_group"`` (default, Waterbirds convention: worst non-empty (group, class) cell) or
            ``"group"`` (worst non-empty sensitive group).
        validate_args: Check that labels and groups are in range.

    Returns:
        A 0-d tensor, ``1 −`` :func:`worst_group_error`; ``nan`` (with a warning) for empty inputs.

    Example:
        >>> import torch
        >>> preds, target = torch.tensor([0, 1, 1, 1, 2, 0]), torch.tensor([0, 0, 1, 1, 2, 2])
        >>> groups = torch.tensor([0, 0, 0, 1, 1, 1])
        >>> worst_group_accuracy(preds, target, groups, num_classes=3, num_groups=2)
        tensor(0.5000)
        >>> worst_group_accuracy(preds, target, groups, num_classes=3, num_groups=2, over="group")
        tensor(0.6667)
    """
    counts = confusion_counts(preds, target, groups, num_classes, num_groups, validate_args)
    return _worst_group_accuracy_from_counts(counts, over=over)


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

    Args:
        preds: Float logits / probabilities ``(N, num_classes)`` or integer predicted labels ``(N,)``.
        target: Integer true labels ``(N,)``.
        groups: Integer sensitive-group indices ``(N,)`` or ``None`` (all in group 0).
        num_classes: Number of classes (at least 2).
        num_groups: Number of groups (at least 1).
        over: ``"class_group"`` (default: mean over the (group, class) cells with test samples) or
            ``"group"`` (mean over the non-empty sensitive groups).
        validate_args: Check that labels and groups are in range.

    Returns:
        A 0-d tensor; ``nan`` (with a warning) for empty inputs.

    Example:
        >>> import torch
        >>> preds, target = torch.tensor([0, 1, 1, 1, 2, 0]), torch.tensor([0, 0, 1, 1, 2, 2])
        >>> groups = torch.tensor([0, 0, 0, 1, 1, 1])
        >>> mean_group_accuracy(preds, target, groups, num_classes=3, num_groups=2)
        tensor(0.7500)
        >>> mean_group_accuracy(preds, target, groups, num_classes=3, num_groups=2, over="group")
        tensor(0.6667)
    """
    counts = confusion_counts(preds, target, groups, num_classes, num_groups, validate_args)
    return _mean_group_accuracy_from_counts(counts, over=over)


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

    Args:
        preds: Float logits / probabilities ``(N, num_classes)`` or integer predicted labels ``(N,)``.
        target: Integer true labels ``(N,)``.
        groups: Integer sensitive-group indices ``(N,)`` or ``None`` (all in group 0).
        num_classes: Number of classes (at least 2).
        num_groups: Number of groups (at least 1).
        train_cell_counts: Training counts or proportions per (group, class) cell, shape
            ``(num_groups, num_classes)``, non-negative with a positive sum.
        validate_args: Check that labels and groups are in range.

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
    weights = _train_cell_weights(train_cell_counts, num_classes, num_groups)
    return _weighted_average_accuracy_from_counts(counts, weights)
