r"""The training-weighted average accuracy of the group-robustness literature (DFR / JTT "average accuracy").

:class:`WeightedAverageAccuracy` averages the test accuracy of each (group, class) cell with the cell's share of
the *training* data, given as ``train_cell_counts`` and checked by :func:`train_cell_weights`; its functional
form is in :mod:`lightning_autobalance.metrics.functional`.

Example:
    >>> import torch
    >>> counts = torch.tensor([[[1, 1], [0, 2]]])  # one group: class 0 half right, class 1 all right
    >>> WeightedAverageAccuracy.from_counts(counts, train_cell_weights([[3, 1]], num_classes=2, num_groups=1))
    tensor(0.6250)
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

from lightning_autobalance.metrics.counts import (
    GroupConfusionMetric,
    TensorLike,
    as_tensor,
    group_error_table,
    is_empty,
    nan_tensor,
    to_default_dtype,
)

__all__ = ["WeightedAverageAccuracy", "train_cell_weights"]


def train_cell_weights(train_cell_counts: Any, num_classes: int, num_groups: int) -> Tensor:
    """Check ``train_cell_counts`` (counts or proportions, shape ``(G, K)``) and return weights summing to 1.

    Example:
        >>> train_cell_weights([[3, 1], [0, 4]], num_classes=2, num_groups=2)
        tensor([[0.3750, 0.1250],
                [0.0000, 0.5000]], dtype=torch.float64)

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


def _weighted_accuracy(counts: Tensor, weights: Tensor) -> Tensor:
    """Per-cell test accuracy averaged with the training weights ``(G, K)``, over the cells with test samples.

    Cells with a positive weight but no test sample are left out (with a warning) and the weights of the
    remaining cells renormalised; if no weighted cell has a test sample the result is ``nan`` (with a warning).
    """
    if is_empty(counts, "WeightedAverageAccuracy"):
        return nan_tensor((), counts)
    weights = weights.to(device=counts.device, dtype=torch.float64)
    accuracy = 1.0 - group_error_table(counts, per_class=True)  # (G, K), nan where no test sample
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
        weights = train_cell_weights(train_cell_counts, num_classes, num_groups)
        self.register_buffer("train_weights", weights, persistent=False)

    @classmethod
    def from_counts(cls, counts: Tensor, weights: Tensor) -> Tensor:  # type: ignore[override]
        """The accuracy of counts ``(G, K, K)`` weighted by ``weights`` ``(G, K)`` (see :func:`train_cell_weights`)."""
        return _weighted_accuracy(counts, weights)

    def compute(self) -> Tensor:
        """Return the training-weighted average accuracy (a 0-d tensor)."""
        return self.from_counts(self.counts, self.train_weights)
