r"""The shared state of every metric of the package: per-group confusion counts, and how they are counted.

The counts ``n[g, y, ŷ]`` (samples of group ``g``, true class ``y``, predicted class ``ŷ``) are the one state
of :class:`GroupConfusionMetric`, the base class of every metric in :mod:`lightning_autobalance.metrics`:
a ``long`` tensor summed across processes under DDP. :func:`confusion_counts` is the same counting for the
functional forms, and the small helpers below are the conventions the reductions share (default float
output, ``nan`` with a warning when nothing was counted, a max that ignores ``nan``).

Example:
    >>> import torch
    >>> confusion_counts(torch.tensor([0, 1, 1]), torch.tensor([0, 0, 1]), None, num_classes=2)
    tensor([[[1, 1],
             [0, 1]]])
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from lightning_autobalance._checks import is_integer

__all__ = [
    "GroupConfusionMetric",
    "TensorLike",
    "as_tensor",
    "check_option",
    "confusion_counts",
    "group_error_table",
    "is_empty",
    "nan_tensor",
    "nanmax",
    "reduce_counts",
    "to_default_dtype",
]

TensorLike = Tensor | Sequence[int] | Sequence[Sequence[float]]


# ----------------------------------------------------------------------------------------------------------
# Validation and counting
# ----------------------------------------------------------------------------------------------------------


def _check_sizes(num_classes: int, num_groups: int) -> None:
    """Raise a ValueError unless ``num_classes >= 2`` and ``num_groups >= 1`` are integers."""
    if not is_integer(num_classes) or num_classes < 2:
        raise ValueError(
            f"num_classes={num_classes!r} is invalid: pass an integer num_classes >= 2 "
            "(num_classes=2 for a binary task)."
        )
    if not is_integer(num_groups) or num_groups < 1:
        raise ValueError(
            f"num_groups={num_groups!r} is invalid: pass an integer num_groups >= 1 "
            "(num_groups=1 when there are no sensitive groups)."
        )


def check_option(name: str, value: str, choices: tuple[str, ...]) -> str:
    """Return ``value``; raise a ValueError naming the accepted values unless it is one of ``choices``.

    Example:
        >>> check_option("over", "group", ("class_group", "group"))
        'group'
        >>> check_option("over", "cell", ("class_group", "group"))
        Traceback (most recent call last):
        ...
        ValueError: over='cell' is not supported: pass over='class_group' or over='group'.
    """
    if value not in choices:
        accepted = " or ".join(f"{name}={choice!r}" for choice in choices)
        raise ValueError(f"{name}={value!r} is not supported: pass {accepted}.")
    return value


def as_tensor(x: Any) -> Tensor:
    """Return ``x`` if it is a tensor, else ``torch.as_tensor(x)``."""
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


def confusion_counts(
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

    Example:
        >>> import torch
        >>> logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0]])
        >>> confusion_counts(logits, torch.tensor([0, 1, 1]), torch.tensor([0, 0, 1]), num_classes=2, num_groups=2)
        tensor([[[1, 0],
                 [0, 1]],
        <BLANKLINE>
                [[0, 0],
                 [1, 0]]])
    """
    _check_sizes(num_classes, num_groups)
    preds, target = as_tensor(preds), as_tensor(target)
    pred = _pred_labels(preds, num_classes)
    n = pred.shape[0]
    true = _integer_vector(target, "target", n)
    group = None if groups is None else _integer_vector(as_tensor(groups), "groups", n)
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
# Shared pieces of the reductions from counts
# ----------------------------------------------------------------------------------------------------------


def to_default_dtype(x: Tensor) -> Tensor:
    """Cast a result to the default float dtype (the dtype every metric returns)."""
    return x.to(torch.get_default_dtype())


def nan_tensor(shape: tuple[int, ...], like: Tensor) -> Tensor:
    """A ``nan`` result of the given shape, in the default float dtype, on the device of ``like``."""
    return torch.full(shape, float("nan"), dtype=torch.get_default_dtype(), device=like.device)


def is_empty(counts: Tensor, name: str) -> bool:
    """Return True (and warn) if no sample has been counted."""
    if int(counts.sum()) == 0:
        warnings.warn(
            f"{name}: no samples were counted (empty input, or compute() before update()); returning nan.",
            UserWarning,
            stacklevel=3,
        )
        return True
    return False


def group_error_table(counts: Tensor, per_class: bool) -> Tensor:
    """Error per group ``(G,)`` or per (group, class) ``(G, K)`` (float64, nan where no sample)."""
    c = counts.double()
    correct = torch.diagonal(c, dim1=1, dim2=2)  # (G, K)
    support = c.sum(2)  # (G, K)
    if not per_class:
        correct, support = correct.sum(1), support.sum(1)
    return 1.0 - correct / support


def reduce_counts(
    counts: Tensor, name: str, reduce: Callable[[Tensor], Tensor], empty_shape: tuple[int, ...] = ()
) -> Tensor:
    """``reduce(counts)`` in the default float dtype; ``nan`` of ``empty_shape`` (and a warning) if nothing was counted.

    Example:
        >>> import torch
        >>> reduce_counts(torch.ones(1, 2, 2, dtype=torch.long), "Total", lambda c: c.sum())
        tensor(4.)
    """
    if is_empty(counts, name):
        return nan_tensor(empty_shape, counts)
    return to_default_dtype(reduce(counts))


def nanmax(x: Tensor, dim: int | None = None) -> Tensor:
    """Max ignoring nan; nan where every entry is nan."""
    filled = torch.where(torch.isnan(x), torch.full_like(x, -float("inf")), x)
    m = filled.amax() if dim is None else filled.amax(dim=dim)
    return torch.where(torch.isinf(m), torch.full_like(m, float("nan")), m)


# ----------------------------------------------------------------------------------------------------------
# Base metric class
# ----------------------------------------------------------------------------------------------------------


class GroupConfusionMetric(Metric):
    r"""Accumulate per-group confusion counts; base class of every metric in this package.

    The only state is ``counts`` of shape ``(num_groups, num_classes, num_classes)``, indexed
    ``(group, true class, predicted class)``, a ``long`` tensor summed across processes under DDP.
    ``compute()`` returns :meth:`from_counts` of the counts: a copy of them in this base class, and the metric
    in the subclasses, which override :meth:`from_counts` (a class method, so that the functional forms reduce
    their counts the same way) and, when they take an option, pass it on in ``compute()``.

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
        counts = confusion_counts(
            preds, target, groups, self.num_classes, self.num_groups, validate_args=self.validate_args
        )
        self.counts += counts.to(self.counts.device)

    @classmethod
    def from_counts(cls, counts: Tensor) -> Tensor:
        """Reduce counts ``(num_groups, num_classes, num_classes)`` to the metric: here, a copy of them."""
        return counts.clone()

    def compute(self) -> Tensor:
        """Return :meth:`from_counts` of the counts accumulated so far."""
        return self.from_counts(self.counts)
