"""What DFR and AFR share: input checks, the selection part and its score, and the :class:`GroupHeadReport`.

Both baselines choose their hyperparameter on a *selection part*: given explicitly, or split off the held-out set
(a fraction of every (group, class) cell, seeded); each grid point is scored by the worst per-class or per-cell
accuracy there, and ties go to the first grid point (see :mod:`lightning_autobalance.group_last_layer`).

Example:
    >>> data, k, _ = check_inputs(torch.randn(8, 2), torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]), None, None)
    >>> fit_idx, selection, metric = plan_selection(data, k, 3, None, 0.5, None, seed=0)
    >>> fit_idx.numel(), selection.y.tolist(), metric
    (4, [0, 0, 1, 1], 'worst_class')
    >>> worst_accuracy(torch.tensor([0, 1, 1, 1]), torch.tensor([0, 0, 1, 1]), None, 2, "worst_class")
    0.5
    >>> best_index([0.5, 0.7, 0.7, 0.1])  # the first maximum
    1
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from lightning_autobalance.data.labels import cell_index
from lightning_autobalance.data.split import stratified_split
from lightning_autobalance.llr import check_features, check_targets

__all__ = [
    "GROUP_MODES",
    "FeatureSet",
    "GroupHeadReport",
    "SelectionMetric",
    "SelectionOptions",
    "best_index",
    "cell_index",
    "check_grid",
    "check_group_labels",
    "check_inputs",
    "check_selection_inputs",
    "chosen_report",
    "plan_selection",
    "score_grid",
    "subset",
    "worst_accuracy",
]

GROUP_MODES: tuple[str, ...] = ("dfr", "afr")
"""The modes these baselines add to :func:`~lightning_autobalance.last_layer.retrain_last_layer`."""

SelectionMetric = Literal["worst_group", "worst_class"]


@dataclass(frozen=True)
class GroupHeadReport:
    """How a DFR / AFR head was chosen and fitted.

    Attributes:
        method: ``"dfr"`` or ``"afr"``.
        params: the chosen hyperparameters (``{"C": …}`` for DFR, ``{"gamma": …, "l2": …}`` for AFR).
        scores: the selection score (an accuracy in ``[0, 1]``) of every grid point, in grid order, as
            ``(params, score)`` pairs; empty when the grid has a single point.
        selection_metric: ``"worst_group"``, ``"worst_class"``, or ``None`` when nothing was selected.
        num_fit: number of samples of the set the returned head was fitted on.
        num_selection: number of samples of the selection part (``0`` without selection).
        sample_weights: ``(num_fit,)`` float64 weights of the final fit: AFR's normalised weights (sum 1); for DFR
            the fraction of the subsamples that contain each sample.
        subsamples: DFR: the index tensors (into the final fitting set) of the group-balanced subsamples.
        mean: DFR: ``(d,)`` mean of the fitting set used to standardise the features.
        scale: DFR: ``(d,)`` standard deviation (``ddof=0``, ``1`` for constant features), as scikit-learn's
            :class:`~sklearn.preprocessing.StandardScaler`.
        converged: AFR: whether every L-BFGS fit reached the gradient tolerance (DFR: ``True``).
    """

    method: str
    params: dict[str, float]
    scores: list[tuple[dict[str, float], float]] = field(default_factory=list)
    selection_metric: str | None = None
    num_fit: int = 0
    num_selection: int = 0
    sample_weights: Tensor | None = None
    subsamples: list[Tensor] = field(default_factory=list)
    mean: Tensor | None = None
    scale: Tensor | None = None
    converged: bool = True


@dataclass(frozen=True)
class SelectionOptions:
    """How DFR and AFR choose their hyperparameters, and the settings of their fits that both have.

    The selection part, its metric, the refit; the seed, intercept, iteration limit and tolerance of the fit (their
    defaults differ: each head's options override them). The fields are documented at
    :func:`~lightning_autobalance.group_last_layer.dfr_head`.

    Example:
        >>> SelectionOptions().selection_fraction, SelectionOptions(refit=False).refit
        (0.5, False)
    """

    seed: int = 0
    selection_features: Tensor | None = None
    selection_targets: Tensor | None = None
    selection_groups: Tensor | None = None
    selection_fraction: float = 0.5
    selection_metric: SelectionMetric | None = None
    refit: bool = True
    fit_intercept: bool = True
    max_iter: int = 1000
    tol: float = 1e-4


def check_group_labels(groups: Any, n: int, name: str) -> Tensor | None:
    """``groups`` as int64 labels ``>= 0``, one per sample (``None`` stays ``None``)."""
    if groups is None:
        return None
    groups = torch.as_tensor(groups)
    if groups.ndim != 1 or groups.shape[0] != n:
        raise ValueError(
            f"{name} must be a 1-D tensor of {n} group indices (one per sample), got shape {tuple(groups.shape)}"
        )
    if groups.is_floating_point() or groups.is_complex() or groups.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer group indices, got dtype {groups.dtype}")
    groups = groups.long()
    if n and int(groups.min()) < 0:
        raise ValueError(f"{name} has negative indices; use group labels 0..G-1")
    return groups


def check_grid(grid: Any, name: str, *, positive: bool) -> tuple[float, ...]:
    """A non-empty tuple of finite values ``>= 0`` (``> 0`` if ``positive``) from a grid or a single value."""
    values = (grid,) if isinstance(grid, (int, float)) else tuple(grid)
    if not values:
        raise ValueError(f"{name} is empty; pass at least one value")
    out = []
    for value in values:
        value = float(value)
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            need = "> 0" if positive else ">= 0"
            raise ValueError(f"{name} must hold finite values {need}, got {value}")
        out.append(value)
    return tuple(out)


def _check_selection_metric(metric: str | None, has_groups: bool) -> str:
    if metric is None:
        return "worst_group" if has_groups else "worst_class"
    if metric not in ("worst_group", "worst_class"):
        raise ValueError(f"selection_metric must be 'worst_group', 'worst_class' or None, got {metric!r}")
    if metric == "worst_group" and not has_groups:
        raise ValueError(
            "selection_metric='worst_group' needs group labels of the selection part: pass groups= (or "
            "selection_groups=), or select without groups with selection_metric='worst_class'"
        )
    return metric


@dataclass
class FeatureSet:
    """Checked features (float64), class labels and optional group labels of one set."""

    x: Tensor  # float64
    y: Tensor
    g: Tensor | None


def check_inputs(
    features: Tensor,
    targets: Tensor,
    groups: Tensor | None,
    num_classes: int | None,
    prefix: str = "",
) -> tuple[FeatureSet, int, torch.dtype]:
    """The checked set, the number of classes and the features' original dtype."""
    x = check_features(features, f"{prefix}features")
    dtype = x.dtype
    y, k = check_targets(targets, x.shape[0], num_classes, f"{prefix}targets")
    g = check_group_labels(groups, x.shape[0], f"{prefix}groups")
    return FeatureSet(x.to(torch.float64), y, g), k, dtype


def check_selection_inputs(
    data: FeatureSet,
    k: int,
    selection_features: Tensor | None,
    selection_targets: Tensor | None,
    selection_groups: Tensor | None,
) -> FeatureSet | None:
    """The checked explicit selection set, or ``None`` to split one off the held-out set."""
    if selection_features is None and selection_targets is None:
        if selection_groups is not None:
            raise ValueError("selection_groups was given without selection_features and selection_targets")
        return None
    if selection_features is None or selection_targets is None:
        raise ValueError("pass both selection_features and selection_targets (or neither, to split the set)")
    sel, _, _ = check_inputs(selection_features, selection_targets, selection_groups, k, "selection_")
    if sel.x.shape[1] != data.x.shape[1]:
        raise ValueError(f"selection_features has {sel.x.shape[1]} features but features has {data.x.shape[1]}")
    return sel


def _split(data: FeatureSet, k: int, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Indices (fit, selection): ``round(fraction·n_c)`` of every (group, class) cell go to the selection part."""
    if not 0.0 < float(fraction) < 1.0:
        raise ValueError(f"selection_fraction must be in (0, 1), got {fraction}")
    cells = cell_index(data.y, data.g, k)
    single = torch.nonzero(torch.bincount(cells) == 1).flatten().tolist()
    if single:
        c = single[0]
        what = f"class {c}" if data.g is None else f"(group {c // k}, class {c % k}) cell"
        raise ValueError(
            f"the {what} has a single sample, so it cannot appear in both the fitting and the selection part "
            "(selection_fraction split); pass selection_features/selection_targets or a larger held-out set"
        )
    return stratified_split(cells, None, float(fraction), int(seed))


def subset(data: FeatureSet, idx: Tensor) -> FeatureSet:
    """The samples ``idx`` of ``data``."""
    return FeatureSet(data.x[idx], data.y[idx], None if data.g is None else data.g[idx])


def worst_accuracy(preds: Tensor, y: Tensor, g: Tensor | None, k: int, metric: str) -> float:
    """Minimum accuracy over the non-empty classes (``worst_class``) or (group, class) cells (``worst_group``)."""
    cells = cell_index(y, g if metric == "worst_group" else None, k)
    _, inverse = torch.unique(cells, return_inverse=True)
    total = torch.bincount(inverse).to(torch.float64)
    correct = torch.bincount(inverse, weights=(preds == y).to(torch.float64), minlength=total.numel())
    return float((correct / total).min())


def plan_selection(
    data: FeatureSet,
    k: int,
    grid_size: int,
    selection: FeatureSet | None,
    selection_fraction: float,
    metric: str | None,
    seed: int,
) -> tuple[Tensor | None, FeatureSet | None, str | None]:
    """(indices of the fitting part, or ``None`` for the whole set; selection part; metric).

    Without selection (a one-point grid) the selection part and the metric are ``None``.
    """
    if grid_size == 1:
        return None, None, None
    fit_idx = None
    if selection is None:
        fit_idx, sel_idx = _split(data, k, selection_fraction, seed)
        selection = subset(data, sel_idx)
    return fit_idx, selection, _check_selection_metric(metric, selection.g is not None)


def best_index(scores: list[float]) -> int:
    """Index of the best score; ties go to the first."""
    return max(range(len(scores)), key=lambda i: (scores[i], -i))  # first maximum


def score_grid(
    data: FeatureSet,
    k: int,
    fit_idx: Tensor | None,
    selection: FeatureSet,
    metric: str,
    fit_grid: Callable[[FeatureSet, Tensor | None], Sequence[tuple[Any, ...]]],
) -> tuple[int, list[float], FeatureSet, Sequence[tuple[Any, ...]]]:
    """Fit every grid point on the fitting part and score it on the selection part.

    Args:
        data: the whole checked set.
        k: number of classes.
        fit_idx: indices of the fitting part, or ``None`` for the whole set.
        selection: the selection part.
        metric: ``"worst_group"`` or ``"worst_class"`` (see :func:`worst_accuracy`).
        fit_grid: ``(fitting part, fit_idx) -> [(weight, bias, ...) per grid point]``.

    Returns:
        (index of the best grid point, the scores in grid order, the fitting part, the fits).
    """
    fit_part = data if fit_idx is None else subset(data, fit_idx)
    fits = fit_grid(fit_part, fit_idx)
    values = [
        worst_accuracy((selection.x @ fit[0].T + fit[1]).argmax(dim=1), selection.y, selection.g, k, metric)
        for fit in fits
    ]
    return best_index(values), values, fit_part, fits


def chosen_report(
    method: str,
    params: dict[str, float],
    scores: list[tuple[dict[str, float], float]],
    metric: str | None,
    selection: FeatureSet | None,
    **fitted: Any,
) -> GroupHeadReport:
    """The :class:`GroupHeadReport` of a chosen head; ``fitted`` holds the fields that describe its final fit."""
    num_selection = 0 if selection is None else selection.y.shape[0]
    return GroupHeadReport(method, params, scores, metric, num_selection=num_selection, **fitted)
