r"""Class- and group-sensitive classification metrics computed from one count tensor.

Every metric in this module is derived from a single state: the tensor of counts

.. math::
    n[g, y, \hat y] = \#\{i : \text{group}_i = g,\ \text{target}_i = y,\ \text{pred}_i = \hat y\}

of shape ``(num_groups, num_classes, num_classes)`` (a per-group confusion matrix, rows = true class,
columns = predicted class). It is a ``long`` tensor declared with ``dist_reduce_fx="sum"``, so under DDP
the synchronised result is exactly the single-process result on the union of all shards.

Each metric is a :class:`torchmetrics.Metric` (all subclasses of :class:`GroupConfusionMetric`, which owns
the state and ``update``) with a functional twin that shares the counting and the reductions:

* :class:`BalancedError` / :func:`balanced_error`: mean per-class error = 1 − balanced accuracy;
* :class:`ClassErrors` / :func:`class_errors`: per-class error, shape ``(K,)``;
* :class:`WorstClassError` / :func:`worst_class_error`: max per-class error;
* :class:`GroupErrors` / :func:`group_errors`: per-group error ``(G,)``, or per (group, class) ``(G, K)``;
* :class:`WorstGroupError` / :func:`worst_group_error`: worst (class, group) cell (default) or worst group;
* :class:`WorstGroupAccuracy` / :func:`worst_group_accuracy`: 1 − worst-group error (Waterbirds convention);
* :class:`WeightedAverageAccuracy` / :func:`weighted_average_accuracy`: per-cell accuracy weighted by the
  *training* cell proportions (the DFR / JTT "average accuracy");
* :class:`MeanGroupAccuracy` / :func:`mean_group_accuracy`: unweighted mean of the per-cell accuracies;
* :class:`DemographicParityGap` / :func:`demographic_parity_gap`: max − min selection rate over groups;
* :class:`EqualOpportunityGap` / :func:`equal_opportunity_gap`: max − min true-positive rate over groups;
* :class:`EqualizedOddsGap` / :func:`equalized_odds_gap`: larger of the TPR gap and the FPR gap.

Inputs (``update(preds, target, groups=None)`` and the functions): ``preds`` are either logits or
probabilities (float tensor of shape ``(N, K)``, reduced with ``argmax``) or predicted labels (integer
tensor of shape ``(N,)``); ``target`` are integer labels ``(N,)``; ``groups`` are integer sensitive-group
indices ``(N,)`` in ``[0, num_groups)``, and ``groups=None`` puts every sample in group 0.

Conventions (the same for the classes and the functions):

* **Absent classes.** A class with no sample in ``target`` has an undefined error. As in scikit-learn's
  ``balanced_accuracy_score``, it is dropped from the mean / max (its entry of :func:`class_errors` is
  ``nan``) and a :class:`UserWarning` is emitted.
* **Empty groups.** A group without samples has an undefined error (``nan`` in :func:`group_errors`) and
  is ignored by every max / min over groups, as fairlearn's ``MetricFrame`` only sees the groups present.
* **Cells with training weight but no test sample** (:class:`WeightedAverageAccuracy`) are handled like
  absent classes: left out with a :class:`UserWarning`, the other training weights renormalised.
* **Zero denominators in the fairness rates.** If a rate is undefined in a group for a class (no sample of
  the class in the group for the TPR, no sample of another class in the group for the FPR), that group is
  excluded from the max − min for that class; a class for which no group has a defined rate is excluded
  from the reduction over classes. (fairlearn instead counts such a rate as 0, through
  ``confusion_matrix(normalize="true")``, which inflates the gap; both agree whenever every present group
  has a defined rate.)
* **Binary tasks** (``num_classes=2``): the fairness gaps use class 1 as the positive class, as fairlearn
  does. With ``num_classes > 2`` each class in turn is the positive class (one-vs-rest) and the per-class
  gaps are reduced by ``reduction="max"`` (default) or ``"mean"``. (One-vs-rest over both classes of a
  binary task would turn the TPR gap of class 0 into the FPR gap of class 1, hence the special case.)
* **Nothing seen.** When no sample was counted (empty input, or ``compute()`` before ``update()``) the
  result is ``nan`` (of the usual shape) and a :class:`UserWarning` is emitted; no exception is raised,
  so a rank or an epoch without data does not crash training.
* Errors are returned as tensors of the default float dtype on the device of the counts. Note that
  torchmetrics squeezes single-element results, so ``GroupErrors(num_groups=1).compute()`` is 0-d while
  :func:`group_errors` returns shape ``(1,)``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = [
    "BalancedError",
    "ClassErrors",
    "DemographicParityGap",
    "EqualOpportunityGap",
    "EqualizedOddsGap",
    "Error",
    "GroupConfusionMetric",
    "GroupErrors",
    "MeanGroupAccuracy",
    "WeightedAverageAccuracy",
    "WorstClassError",
    "WorstGroupAccuracy",
    "WorstGroupError",
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

Reduction = Literal["max", "mean"]
Over = Literal["class_group", "group"]
TensorLike = Tensor | Sequence[int] | Sequence[Sequence[float]]

_REDUCTIONS = ("max", "mean")
_OVERS = ("class_group", "group")


# ----------------------------------------------------------------------------------------------------------
# Validation and counting
# ----------------------------------------------------------------------------------------------------------


def _check_sizes(num_classes: int, num_groups: int) -> None:
    """Raise a ValueError unless ``num_classes >= 2`` and ``num_groups >= 1`` are integers."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(
            f"num_classes={num_classes!r} is invalid: pass an integer num_classes >= 2 "
            "(num_classes=2 for a binary task)."
        )
    if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1:
        raise ValueError(
            f"num_groups={num_groups!r} is invalid: pass an integer num_groups >= 1 "
            "(num_groups=1 when there are no sensitive groups)."
        )


def _check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction={reduction!r} is not supported: pass reduction='max' or reduction='mean'.")


def _check_over(over: str) -> None:
    if over not in _OVERS:
        raise ValueError(f"over={over!r} is not supported: pass over='class_group' or over='group'.")


def _as_tensor(x: Any) -> Tensor:
    return x if isinstance(x, Tensor) else torch.as_tensor(x)


def _check_range(x: Tensor, name: str, size_name: str, size: int, what: str) -> None:
    """Raise a ValueError naming the first offending value if ``x`` is not in ``[0, size)``."""
    if x.numel() == 0:
        return
    lo, hi = (int(v) for v in torch.aminmax(x))
    if lo < 0:
        raise ValueError(
            f"{name} contains the {what} {lo}, outside [0, {size_name}={size}): "
            f"{what}s must be non-negative integers, remap them to 0..{size - 1}."
        )
    if hi >= size:
        raise ValueError(
            f"{name} contains the {what} {hi}, outside [0, {size_name}={size}): "
            f"pass {size_name}={hi + 1} (or larger) or remap the {what}s to 0..{size - 1}."
        )


def _integer_vector(x: Tensor, name: str, n: int | None) -> Tensor:
    """Check that ``x`` is an integer tensor of shape ``(n,)`` and return it as ``long``."""
    if x.is_floating_point() or x.is_complex():
        raise ValueError(f"{name} must hold integer indices, got dtype {x.dtype}: pass {name}.long().")
    if x.ndim != 1:
        raise ValueError(f"{name} must have shape (N,), got shape {tuple(x.shape)}: pass a 1-D tensor.")
    if n is not None and x.shape[0] != n:
        raise ValueError(
            f"{name} has {x.shape[0]} elements but preds have {n} rows: pass exactly one {name} entry per prediction."
        )
    return x.long()


def _pred_labels(preds: Tensor, num_classes: int) -> Tensor:
    """Turn logits / probabilities ``(N, K)`` or labels ``(N,)`` into ``long`` labels ``(N,)``."""
    if preds.is_complex():
        raise ValueError(f"preds must be real, got dtype {preds.dtype}: pass float scores or integer labels.")
    if preds.is_floating_point():
        if preds.ndim != 2:
            raise ValueError(
                f"float preds must be logits or probabilities of shape (N, num_classes), got shape "
                f"{tuple(preds.shape)}: pass a 2-D float tensor, or integer class labels of shape (N,)."
            )
        if preds.shape[1] != num_classes:
            raise ValueError(
                f"num_classes={num_classes} but preds have {preds.shape[1]} columns: pass "
                f"num_classes={preds.shape[1]} or preds with {num_classes} columns (one score per class)."
            )
        return preds.argmax(dim=1)
    if preds.ndim != 1:
        raise ValueError(
            f"integer preds must be class labels of shape (N,), got shape {tuple(preds.shape)}: pass labels, "
            f"or float logits / probabilities of shape (N, num_classes={num_classes})."
        )
    return preds.long()


def _confusion_counts(
    preds: TensorLike,
    target: TensorLike,
    groups: TensorLike | None,
    num_classes: int,
    num_groups: int = 1,
    validate_args: bool = True,
) -> Tensor:
    """Count samples per (group, true class, predicted class).

    Args:
        preds: Float logits / probabilities ``(N, K)`` or integer predicted labels ``(N,)``.
        target: Integer true labels ``(N,)``.
        groups: Integer group indices ``(N,)`` or ``None`` (all samples in group 0).
        num_classes: Number of classes ``K``.
        num_groups: Number of groups ``G``.
        validate_args: Check that labels and groups are in range (shapes and dtypes are always checked).

    Returns:
        A ``long`` tensor of shape ``(G, K, K)`` on the device of ``target``.

    Raises:
        ValueError: On invalid sizes, shapes, dtypes or (with ``validate_args``) out-of-range values.
    """
    _check_sizes(num_classes, num_groups)
    preds, target = _as_tensor(preds), _as_tensor(target)
    pred = _pred_labels(preds, num_classes)
    n = pred.shape[0]
    true = _integer_vector(target, "target", n)
    group = None if groups is None else _integer_vector(_as_tensor(groups), "groups", n)
    if validate_args:
        _check_range(true, "target", "num_classes", num_classes, "label")
        _check_range(pred, "preds", "num_classes", num_classes, "label")
        if group is not None:
            _check_range(group, "groups", "num_groups", num_groups, "group index")
    pred = pred.to(true.device)
    index = true * num_classes + pred
    if group is not None:
        index = index + group.to(true.device) * (num_classes * num_classes)
    counts = torch.bincount(index, minlength=num_groups * num_classes * num_classes)
    return counts.reshape(num_groups, num_classes, num_classes)


# ----------------------------------------------------------------------------------------------------------
# Reductions from counts (shared by the classes and the functions)
# ----------------------------------------------------------------------------------------------------------


def _out(x: Tensor) -> Tensor:
    return x.to(torch.get_default_dtype())


def _nan(shape: tuple[int, ...], like: Tensor) -> Tensor:
    return torch.full(shape, float("nan"), dtype=torch.get_default_dtype(), device=like.device)


def _is_empty(counts: Tensor, name: str) -> bool:
    """Return True (and warn) if no sample has been counted."""
    if int(counts.sum()) == 0:
        warnings.warn(
            f"{name}: no samples were counted (empty input, or compute() before update()); returning nan.",
            UserWarning,
            stacklevel=3,
        )
        return True
    return False


def _nanmax(x: Tensor, dim: int | None = None) -> Tensor:
    """Max ignoring nan; nan where every entry is nan."""
    filled = torch.where(torch.isnan(x), torch.full_like(x, -float("inf")), x)
    m = filled.amax() if dim is None else filled.amax(dim=dim)
    return torch.where(torch.isinf(m), torch.full_like(m, float("nan")), m)


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


def _class_errors_from_counts(counts: Tensor) -> Tensor:
    """Per-class error vector ``(K,)``; nan (with a warning) for classes absent from the targets."""
    if _is_empty(counts, "ClassErrors"):
        return _nan((counts.shape[1],), counts)
    _warn_absent_classes(counts, "ClassErrors")
    return _out(_per_class_errors(counts))


def _balanced_error_from_counts(counts: Tensor) -> Tensor:
    """Mean per-class error over the classes present in the targets."""
    if _is_empty(counts, "BalancedError"):
        return _nan((), counts)
    _warn_absent_classes(counts, "BalancedError")
    return _out(torch.nanmean(_per_class_errors(counts)))


def _worst_class_error_from_counts(counts: Tensor) -> Tensor:
    """Max per-class error over the classes present in the targets."""
    if _is_empty(counts, "WorstClassError"):
        return _nan((), counts)
    _warn_absent_classes(counts, "WorstClassError")
    return _out(_nanmax(_per_class_errors(counts)))


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
    if _is_empty(counts, "GroupErrors"):
        return _nan(tuple(counts.shape[:2]) if per_class else (counts.shape[0],), counts)
    return _out(_group_error_table(counts, per_class))


def _worst_group_error_from_counts(counts: Tensor, over: Over = "class_group") -> Tensor:
    """Max error over non-empty (group, class) cells (``over="class_group"``) or groups (``"group"``)."""
    _check_over(over)
    if _is_empty(counts, "WorstGroupError"):
        return _nan((), counts)
    return _out(_nanmax(_group_error_table(counts, per_class=over == "class_group")))


def _worst_group_accuracy_from_counts(counts: Tensor, over: Over = "class_group") -> Tensor:
    """1 − the max error over non-empty (group, class) cells (``over="class_group"``) or groups."""
    _check_over(over)
    if _is_empty(counts, "WorstGroupAccuracy"):
        return _nan((), counts)
    return _out(1.0 - _nanmax(_group_error_table(counts, per_class=over == "class_group")))


def _mean_group_accuracy_from_counts(counts: Tensor, over: Over = "class_group") -> Tensor:
    """Unweighted mean accuracy over non-empty (group, class) cells (``over="class_group"``) or groups."""
    _check_over(over)
    if _is_empty(counts, "MeanGroupAccuracy"):
        return _nan((), counts)
    return _out(torch.nanmean(1.0 - _group_error_table(counts, per_class=over == "class_group")))


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
        w = _as_tensor(train_cell_counts)
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
    if _is_empty(counts, "WeightedAverageAccuracy"):
        return _nan((), counts)
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
        return _nan((), counts)
    untested = [tuple(cell) for cell in ((weights > 0) & ~tested).nonzero().tolist()]
    if untested:
        warnings.warn(
            f"WeightedAverageAccuracy: (group, class) cells {untested} have training weight but no test samples; "
            "their accuracy is undefined and they are left out, the weights of the other cells renormalised "
            "(scikit-learn balanced_accuracy_score convention for absent classes).",
            UserWarning,
            stacklevel=3,
        )
    return _out((w * torch.nan_to_num(accuracy)).sum() / total)


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
    return _nanmax(gaps) if reduction == "max" else torch.nanmean(gaps)


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
    if _is_empty(counts, "DemographicParityGap"):
        return _nan((), counts)
    num, den = _one_vs_rest_rates(counts)["selection"]
    return _out(_reduce_classes(_rate_gaps(num, den), reduction))


def _equal_opportunity_gap_from_counts(counts: Tensor, reduction: Reduction = "max") -> Tensor:
    """True-positive-rate gap over groups where it is defined, reduced over the positive classes."""
    _check_reduction(reduction)
    if _is_empty(counts, "EqualOpportunityGap"):
        return _nan((), counts)
    num, den = _one_vs_rest_rates(counts)["tpr"]
    return _out(_reduce_classes(_rate_gaps(num, den), reduction))


def _equalized_odds_gap_from_counts(counts: Tensor, reduction: Reduction = "max") -> Tensor:
    """Per class the larger of the TPR and FPR gaps, reduced over the positive classes."""
    _check_reduction(reduction)
    if _is_empty(counts, "EqualizedOddsGap"):
        return _nan((), counts)
    rates = _one_vs_rest_rates(counts)
    per_class = torch.fmax(_rate_gaps(*rates["tpr"]), _rate_gaps(*rates["fpr"]))  # fmax ignores nan
    return _out(_reduce_classes(per_class, reduction))


# ----------------------------------------------------------------------------------------------------------
# Metric classes
# ----------------------------------------------------------------------------------------------------------


class GroupConfusionMetric(Metric):
    r"""Accumulate per-group confusion counts; base class of every metric in this module.

    The only state is ``counts`` of shape ``(num_groups, num_classes, num_classes)``, indexed
    ``(group, true class, predicted class)``, a ``long`` tensor summed across processes under DDP.
    ``compute()`` of this base class returns a copy of the counts; subclasses reduce them to a metric.

    Args:
        num_classes: Number of classes ``K`` (at least 2).
        num_groups: Number of sensitive groups ``G`` (at least 1). Group indices are in ``[0, G)``.
        validate_args: Check in ``update`` that labels are in ``[0, K)`` and groups in ``[0, G)`` (one
            ``aminmax`` per input). Shapes and dtypes are always checked.
        **kwargs: Forwarded to :class:`torchmetrics.Metric` (e.g. ``sync_on_compute``).

    Raises:
        ValueError: If ``num_classes < 2`` or ``num_groups < 1``.

    Example:
        >>> import torch
        >>> metric = GroupConfusionMetric(num_classes=2, num_groups=2)
        >>> logits = torch.tensor([[2.0, -1.0], [0.5, 1.5], [0.0, 3.0]])
        >>> metric.update(logits, torch.tensor([0, 0, 1]), torch.tensor([0, 1, 1]))
        >>> metric.compute()
        tensor([[[1, 0],
                 [0, 0]],
        <BLANKLINE>
                [[0, 1],
                 [0, 1]]])
    """

    full_state_update: bool = False
    higher_is_better: bool | None = None
    is_differentiable: bool = False
    plot_lower_bound: float = 0.0
    plot_upper_bound: float = 1.0

    counts: Tensor

    def __init__(self, num_classes: int, num_groups: int = 1, *, validate_args: bool = True, **kwargs: Any):
        super().__init__(**kwargs)
        _check_sizes(num_classes, num_groups)
        self.num_classes = num_classes
        self.num_groups = num_groups
        self.validate_args = validate_args
        self.add_state(
            "counts",
            default=torch.zeros(num_groups, num_classes, num_classes, dtype=torch.long),
            dist_reduce_fx="sum",
        )

    def update(self, preds: Tensor, target: Tensor, groups: Tensor | None = None) -> None:
        """Add a batch to the counts.

        Args:
            preds: Float logits / probabilities ``(N, num_classes)`` (argmax is taken) or integer
                predicted labels ``(N,)``.
            target: Integer true labels ``(N,)`` in ``[0, num_classes)``.
            groups: Integer group indices ``(N,)`` in ``[0, num_groups)``; ``None`` puts all in group 0.

        Raises:
            ValueError: On a wrong shape or dtype, or a label / group index out of range.
        """
        counts = _confusion_counts(
            preds, target, groups, self.num_classes, self.num_groups, validate_args=self.validate_args
        )
        self.counts += counts.to(self.counts.device)

    def compute(self) -> Tensor:
        """Return a copy of the counts ``(num_groups, num_classes, num_classes)``."""
        return self.counts.clone()


def _error_from_counts(counts: Tensor) -> Tensor:
    if _is_empty(counts, "Error"):
        return _nan((), counts)
    correct = torch.diagonal(counts, dim1=1, dim2=2).sum()
    return _out(1 - correct / counts.sum())


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
    return _error_from_counts(_confusion_counts(preds, target, groups, num_classes, num_groups, validate_args))


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
    counts = _confusion_counts(preds, target, groups, num_classes, num_groups, validate_args)
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
    counts = _confusion_counts(preds, target, groups, num_classes, num_groups, validate_args)
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
    counts = _confusion_counts(preds, target, groups, num_classes, num_groups, validate_args)
    return _worst_class_error_from_counts(counts)


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
    counts = _confusion_counts(preds, target, groups, num_classes, num_groups, validate_args)
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
    counts = _confusion_counts(preds, target, groups, num_classes, num_groups, validate_args)
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
    counts = _confusion_counts(preds, target, groups, num_classes, num_groups, validate_args)
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
    counts = _confusion_counts(preds, target, groups, num_classes, num_groups, validate_args)
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
    counts = _confusion_counts(preds, target, groups, num_classes, num_groups, validate_args)
    weights = _train_cell_weights(train_cell_counts, num_classes, num_groups)
    return _weighted_average_accuracy_from_counts(counts, weights)


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
    counts = _confusion_counts(preds, target, groups, num_classes, num_groups, validate_args)
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
    counts = _confusion_counts(preds, target, groups, num_classes, num_groups, validate_args)
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
    counts = _confusion_counts(preds, target, groups, num_classes, num_groups, validate_args)
    return _equalized_odds_gap_from_counts(counts, reduction=reduction)
