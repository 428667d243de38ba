"""Last-layer baselines for group robustness: DFR and AFR (PAPERS.md §3).

Both refit only the last linear layer of a trained model on a held-out set of frozen features, and choose their
one hyperparameter on held-out data:

* :func:`dfr_head` — **Deep Feature Reweighting** (Kirichenko, Izmailov, Wilson, ICLR 2023): ℓ1-regularised
  logistic regression (scikit-learn's :class:`~sklearn.linear_model.LogisticRegression`, ``l1_ratio=1``) on
  standardised features of a *group-balanced* subsample of the held-out set — every (group, class) cell subsampled
  to the smallest cell; the coefficients are averaged over several subsamples; ``C`` is chosen by the worst-group
  accuracy on a selection part.
* :func:`afr_head` — **Automatic Feature Reweighting** (Qiu, Potapczynski, Izmailov, Wilson, ICML 2023): weighted
  multinomial logistic regression with per-sample weights ``∝ β_y · exp(−γ · p_true(x))`` from the ERM model's
  predicted probability of the true class (:func:`afr_weights`) and an ℓ2 penalty pulling the head towards the ERM
  head; fitted in float64 with full-batch L-BFGS to convergence; ``γ`` (and the penalty) chosen by the worst-group
  (or worst-class) accuracy on a selection part. AFR needs no group labels to train.

Shared conventions:

* **Head layout.** Both return ``(weight (K, d), bias (K,), report)`` in the *original* feature space, ready to be
  copied into an :class:`torch.nn.Linear` with ``K`` outputs (also for ``K = 2``): prediction is the arg-max. A
  binary scikit-learn decision function ``z = w·x + b`` is written as the two rows ``(−z/2, +z/2)``, whose softmax
  is the logistic probability ``σ(z)``.
* **Selection without group labels.** ``selection_metric="worst_class"`` selects by the worst per-class accuracy on
  the selection part (the field's convention when no group labels are available); ``"worst_group"`` by the worst
  non-empty (group, class) cell, as :func:`~lightning_autobalance.metrics.worst_group_accuracy`. The default is
  ``"worst_group"`` when the selection part has group labels, else ``"worst_class"``.
* **Selection part.** Either given explicitly (``selection_features``, ``selection_targets``,
  ``selection_groups``), or split off the held-out set (``selection_fraction`` of every (group, class) cell, or
  class without groups; seeded). With a split and ``refit=True`` (default, as in the DFR reference code) the final
  head is refit with the chosen hyperparameters on the *whole* held-out set. A one-point grid needs no selection.
  Ties go to the first grid point.
* Bad input raises :class:`ValueError` naming the argument to change.

Pure PyTorch and scikit-learn (no Lightning). :func:`~lightning_autobalance.last_layer.retrain_last_layer` and
:class:`~lightning_autobalance.last_layer.LastLayerRetraining` run both as ``mode="dfr"`` / ``mode="afr"``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_autobalance.llr import check_features, check_targets, downsample_weights, minimise_lbfgs

__all__ = [
    "AFR_GAMMA_GRID",
    "AFR_L2_GRID",
    "DFR_C_GRID",
    "GROUP_MODES",
    "GroupHeadReport",
    "afr_head",
    "afr_weights",
    "dfr_head",
    "group_balanced_indices",
]

DFR_C_GRID: tuple[float, ...] = (1.0, 0.7, 0.3, 0.1, 0.07, 0.03, 0.01)
"""Inverse ℓ1 strengths of the DFR reference code (Waterbirds)."""

AFR_GAMMA_GRID: tuple[float, ...] = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0)
"""Default ``γ`` grid of :func:`afr_head` (the reference sweeps 4–20 on Waterbirds and 1–3 on CelebA)."""

AFR_L2_GRID: tuple[float, ...] = (1e-3, 1e-2, 1e-1)
"""Default ℓ2 strengths towards the ERM head (the reference sweeps 0–0.3 on Waterbirds and 1e-3–1e-1 on CelebA)."""

GROUP_MODES: tuple[str, ...] = ("dfr", "afr")
"""The modes these baselines add to :func:`~lightning_autobalance.last_layer.retrain_last_layer`."""

SelectionMetric = Literal["worst_group", "worst_class"]
ClassBalance = Literal["count", "sum", "none"]


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


# ----------------------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------------------
def _check_group_labels(groups: Any, n: int, name: str) -> Tensor | None:
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


def _check_grid(grid: Any, name: str, *, positive: bool) -> tuple[float, ...]:
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
class _Data:
    x: Tensor  # float64
    y: Tensor
    g: Tensor | None


def _inputs(
    features: Tensor,
    targets: Tensor,
    groups: Tensor | None,
    num_classes: int | None,
    prefix: str = "",
) -> tuple[_Data, int, torch.dtype]:
    x = check_features(features, f"{prefix}features")
    dtype = x.dtype
    y, k = check_targets(targets, x.shape[0], num_classes, f"{prefix}targets")
    g = _check_group_labels(groups, x.shape[0], f"{prefix}groups")
    return _Data(x.to(torch.float64), y, g), k, dtype


def _selection_inputs(
    data: _Data,
    k: int,
    selection_features: Tensor | None,
    selection_targets: Tensor | None,
    selection_groups: Tensor | None,
) -> _Data | None:
    if selection_features is None and selection_targets is None:
        if selection_groups is not None:
            raise ValueError("selection_groups was given without selection_features and selection_targets")
        return None
    if selection_features is None or selection_targets is None:
        raise ValueError("pass both selection_features and selection_targets (or neither, to split the set)")
    sel, _, _ = _inputs(selection_features, selection_targets, selection_groups, k, "selection_")
    if sel.x.shape[1] != data.x.shape[1]:
        raise ValueError(f"selection_features has {sel.x.shape[1]} features but features has {data.x.shape[1]}")
    return sel


def _cells(y: Tensor, g: Tensor | None, k: int) -> Tensor:
    return y if g is None else g * k + y


def _split(data: _Data, k: int, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Indices (fit, selection): ``round(fraction·n_c)`` of every (group, class) cell go to the selection part."""
    if not 0.0 < float(fraction) < 1.0:
        raise ValueError(f"selection_fraction must be in (0, 1), got {fraction}")
    cells = _cells(data.y, data.g, k)
    gen = torch.Generator().manual_seed(int(seed))
    fit, sel = [], []
    for c in torch.unique(cells).tolist():
        idx = torch.nonzero(cells == c).flatten()
        if idx.numel() < 2:
            what = f"class {c}" if data.g is None else f"(group {c // k}, class {c % k}) cell"
            raise ValueError(
                f"the {what} has a single sample, so it cannot appear in both the fitting and the selection part "
                "(selection_fraction split); pass selection_features/selection_targets or a larger held-out set"
            )
        idx = idx[torch.randperm(idx.numel(), generator=gen)]
        n_sel = min(max(round(float(fraction) * idx.numel()), 1), idx.numel() - 1)
        sel.append(idx[:n_sel])
        fit.append(idx[n_sel:])
    return torch.sort(torch.cat(fit)).values, torch.sort(torch.cat(sel)).values


def _subset(data: _Data, idx: Tensor) -> _Data:
    return _Data(data.x[idx], data.y[idx], None if data.g is None else data.g[idx])


def _worst_accuracy(preds: Tensor, y: Tensor, g: Tensor | None, k: int, metric: str) -> float:
    """Minimum accuracy over the non-empty classes (``worst_class``) or (group, class) cells (``worst_group``)."""
    cells = _cells(y, g if metric == "worst_group" else None, k)
    _, inverse = torch.unique(cells, return_inverse=True)
    total = torch.bincount(inverse).to(torch.float64)
    correct = torch.bincount(inverse, weights=(preds == y).to(torch.float64), minlength=total.numel())
    return float((correct / total).min())


def _plan(
    data: _Data,
    k: int,
    grid_size: int,
    selection: _Data | None,
    selection_fraction: float,
    metric: str | None,
    seed: int,
) -> tuple[Tensor | None, _Data | None, str | None]:
    """(indices of the fitting part, or ``None`` for the whole set; selection part; metric).

    Without selection (a one-point grid) the selection part and the metric are ``None``.
    """
    if grid_size == 1:
        return None, None, None
    fit_idx = None
    if selection is None:
        fit_idx, sel_idx = _split(data, k, selection_fraction, seed)
        selection = _subset(data, sel_idx)
    return fit_idx, selection, _check_selection_metric(metric, selection.g is not None)


def _best(scores: list[float]) -> int:
    return max(range(len(scores)), key=lambda i: (scores[i], -i))  # first maximum


# ----------------------------------------------------------------------------------------------------------------
# DFR
# ----------------------------------------------------------------------------------------------------------------
def group_balanced_indices(
    targets: Tensor,
    groups: Tensor | None = None,
    *,
    num_classes: int | None = None,
    num_groups: int | None = None,
    seed: int = 0,
    require_all_cells: bool = True,
) -> Tensor:
    """Indices of a group-balanced subsample: every (group, class) cell subsampled to the smallest cell.

    Without groups every class is subsampled to the smallest class. The subsample is drawn without replacement
    with a seeded generator (by :func:`~lightning_autobalance.llr.downsample_weights`).

    Args:
        targets: ``(N,)`` class indices.
        groups: optional ``(N,)`` group indices (a sensitive / spurious attribute).
        num_classes: ``K`` (default ``max(targets) + 1``).
        num_groups: ``G`` (default ``max(groups) + 1``).
        seed: seed of the subsample.
        require_all_cells: require a sample in each of the ``G × K`` cells (every class without groups). Pass
            ``False`` to balance over the non-empty cells only, e.g. when the group labels already encode the class
            (Waterbirds' four group indices).

    Returns:
        Sorted ``(K·G·m,)`` int64 indices, ``m`` the size of the smallest (non-empty) cell.

    Raises:
        ValueError: an empty cell (with ``require_all_cells``), fewer than two cells, or bad labels.

    Example:
        >>> y, g = torch.tensor([0, 0, 0, 1, 1, 0, 1, 1]), torch.tensor([0, 0, 1, 0, 1, 1, 1, 1])
        >>> idx = group_balanced_indices(y, g)
        >>> torch.bincount(g[idx] * 2 + y[idx]).tolist()
        [1, 1, 1, 1]
    """
    targets = torch.as_tensor(targets)
    y, k = check_targets(targets, targets.shape[0] if targets.ndim else -1, num_classes)
    g = _check_group_labels(groups, y.shape[0], "groups")
    num_g = 1 if g is None else (int(g.max()) + 1 if num_groups is None else int(num_groups))
    if g is not None and int(g.max()) >= num_g:
        raise ValueError(f"groups has label {int(g.max())} but num_groups={num_g}; increase num_groups")
    counts = torch.bincount(_cells(y, g, k), minlength=num_g * k)
    empty = torch.nonzero(counts == 0).flatten().tolist()
    if empty and require_all_cells:
        if g is None:
            raise ValueError(f"targets: classes {empty} have no sample; a class-balanced subsample would be empty")
        cells = [(c // k, c % k) for c in empty]
        raise ValueError(
            f"groups: the (group, class) cells {cells} have no sample, so a group-balanced subsample would be empty; "
            "collect samples of every cell, or pass require_all_cells=False to balance over the non-empty cells "
            "(e.g. when the group labels already encode the class)"
        )
    weights = downsample_weights(y, g, k, seed=seed)
    return torch.nonzero(weights).flatten()


def _logistic(c: float, solver: str, fit_intercept: bool, tol: float, max_iter: int, seed: int) -> Any:
    from sklearn.linear_model import LogisticRegression

    # ``l1_ratio=1`` is scikit-learn's spelling of ``penalty="l1"`` (deprecated in 1.8).
    return LogisticRegression(
        l1_ratio=1.0,
        C=c,
        solver=solver,
        fit_intercept=fit_intercept,
        tol=tol,
        max_iter=max_iter,
        random_state=seed,
    )


def _dfr_coefficients(
    xs: np.ndarray,
    y: np.ndarray,
    subsamples: list[np.ndarray],
    k: int,
    c: float,
    solver: str,
    fit_intercept: bool,
    tol: float,
    max_iter: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Average over the subsamples of the ``(K, d)`` / ``(K,)`` head fitted on standardised features."""
    from sklearn.multiclass import OneVsRestClassifier

    coefs, intercepts = [], []
    for idx in subsamples:
        model = _logistic(c, solver, fit_intercept, tol, max_iter, seed)
        if k > 2 and solver == "liblinear":
            ovr = OneVsRestClassifier(model).fit(xs[idx], y[idx])
            coef = np.concatenate([est.coef_ for est in ovr.estimators_])
            intercept = np.concatenate([np.atleast_1d(est.intercept_) for est in ovr.estimators_])
        else:
            model.fit(xs[idx], y[idx])
            coef, intercept = model.coef_, np.atleast_1d(model.intercept_)
        if k == 2:  # decision z = w·x + b  ->  rows (-z/2, z/2)
            coef = np.concatenate([-coef / 2, coef / 2])
            intercept = np.concatenate([-intercept / 2, intercept / 2])
        coefs.append(coef)
        intercepts.append(intercept * np.ones(k))
    return np.mean(coefs, axis=0), np.mean(intercepts, axis=0)


def _dfr_fit(
    data: _Data,
    k: int,
    c_values: Sequence[float],
    num_subsamples: int,
    seed: int,
    require_all_cells: bool,
    solver: str,
    fit_intercept: bool,
    tol: float,
    max_iter: int,
) -> tuple[list[tuple[Tensor, Tensor]], list[Tensor], Tensor, Tensor]:
    """Heads in the original feature space (one per ``C``), the subsamples, and the standardisation."""
    from sklearn.preprocessing import StandardScaler

    num_g = None if data.g is None else int(data.g.max()) + 1
    subsamples = [
        group_balanced_indices(
            data.y, data.g, num_classes=k, num_groups=num_g, seed=seed + i, require_all_cells=require_all_cells
        )
        for i in range(num_subsamples)
    ]
    x = data.x.numpy()
    scaler = StandardScaler().fit(x)
    xs = scaler.transform(x)
    y = data.y.numpy()
    mean = torch.from_numpy(np.asarray(scaler.mean_, dtype=np.float64))
    scale = torch.from_numpy(np.asarray(scaler.scale_, dtype=np.float64))
    heads = []
    for c in c_values:
        coef, intercept = _dfr_coefficients(
            xs, y, [s.numpy() for s in subsamples], k, c, solver, fit_intercept, tol, max_iter, seed
        )
        weight = torch.from_numpy(coef) / scale  # fold the standardisation into the head
        bias = torch.from_numpy(intercept) - weight @ mean
        heads.append((weight, bias))
    return heads, subsamples, mean, scale


def dfr_head(
    features: Tensor,
    targets: Tensor,
    groups: Tensor | None = None,
    *,
    C_grid: Sequence[float] | float = DFR_C_GRID,  # noqa: N803 (scikit-learn's name)
    num_subsamples: int = 10,
    seed: int = 0,
    selection_features: Tensor | None = None,
    selection_targets: Tensor | None = None,
    selection_groups: Tensor | None = None,
    selection_fraction: float = 0.5,
    selection_metric: SelectionMetric | None = None,
    refit: bool = True,
    num_classes: int | None = None,
    require_all_cells: bool = True,
    solver: Literal["liblinear", "saga"] = "liblinear",
    fit_intercept: bool = True,
    tol: float = 1e-4,
    max_iter: int = 1000,
) -> tuple[Tensor, Tensor, GroupHeadReport]:
    """DFR: the last layer refit by ℓ1 logistic regression on group-balanced subsamples of a held-out set.

    Steps (as the reference code ``dfr_evaluate_spurious.py``):

    1. standardise the features with the mean and standard deviation of the fitting set (scikit-learn's
       :class:`~sklearn.preprocessing.StandardScaler`, fitted once, before subsampling);
    2. draw ``num_subsamples`` group-balanced subsamples (:func:`group_balanced_indices`, seeds ``seed + i``):
       every (group, class) cell — every class without ``groups`` — subsampled to the smallest cell;
    3. on each, fit ``LogisticRegression(l1_ratio=1, C=C, solver=solver)`` (``l1_ratio=1`` is ``penalty="l1"``)
       and average the coefficients and intercepts over the subsamples;
    4. for every ``C`` of ``C_grid`` the averaged head is scored on the selection part; the best is kept;
    5. the head is returned in the original feature space: ``W = coef / scale``, ``b = intercept − W·mean``.

    Multiclass: ``solver="liblinear"`` (default, the reference's) is **one-vs-rest** for ``K ≥ 3`` (wrapped in
    :class:`~sklearn.multiclass.OneVsRestClassifier`; row ``k`` is the decision function of "class k vs the rest",
    and the arg-max is scikit-learn's prediction); ``solver="saga"`` fits the **multinomial** ℓ1 model. liblinear
    penalises the intercept like a weight (``intercept_scaling=1``), saga does not. Binary heads are written as the
    two rows ``(−z/2, z/2)`` of the decision function ``z``.

    Args:
        features: ``(N, d)`` held-out features (the fitting set, or the set to split).
        targets: ``(N,)`` class indices.
        groups: ``(N,)`` group indices for the balancing (and the selection); ``None`` balances classes only.
        C_grid: inverse ℓ1 strengths to choose from (default the reference's :data:`DFR_C_GRID`); one value, or a
            one-element grid, means no selection.
        num_subsamples: subsamples whose coefficients are averaged (the reference uses 20 for DFR on the
            validation set, 10 on the training set); also used for every grid point during the selection.
        seed: seed of the subsamples, of the split and of liblinear / saga.
        selection_features: ``(M, d)`` features of a separate selection set (else the set is split).
        selection_targets: ``(M,)`` its class indices.
        selection_groups: ``(M,)`` its group indices (for ``worst_group`` selection).
        selection_fraction: fraction of every (group, class) cell split off for the selection (the reference
            splits the validation set in half).
        selection_metric: ``"worst_group"``, ``"worst_class"`` (no group labels needed) or ``None`` (worst-group if
            the selection part has group labels).
        refit: after a split, refit the chosen ``C`` on the whole set (default, as the reference); else keep the
            head fitted on the fitting part.
        num_classes: ``K`` (default ``max(targets) + 1``).
        require_all_cells: require a sample in every (group, class) cell (see :func:`group_balanced_indices`).
        solver: ``"liblinear"`` (one-vs-rest) or ``"saga"`` (multinomial).
        fit_intercept: fit an intercept (else ``bias = −W·mean``, the standardisation's offset).
        tol: tolerance of the scikit-learn solver.
        max_iter: iteration limit of the scikit-learn solver.

    Returns:
        ``(weight (K, d), bias (K,), report)`` in the features' dtype, and a :class:`GroupHeadReport`.

    Raises:
        ValueError: empty or non-positive ``C_grid``, ``num_subsamples < 1``, an empty (group, class) cell,
            mismatched lengths, a bad ``selection_metric`` / ``selection_fraction`` / ``solver``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> y = torch.arange(200) % 2
        >>> a = torch.where(torch.rand(200, generator=g) < 0.9, y, 1 - y)  # spurious attribute
        >>> x = torch.stack([y + 0.5 * torch.randn(200, generator=g), 2.0 * a], dim=1).double()
        >>> weight, bias, report = dfr_head(x, y, a, C_grid=(1.0, 0.1), num_subsamples=3)
        >>> weight.shape, bias.shape, report.params["C"] in (1.0, 0.1), report.selection_metric
        (torch.Size([2, 2]), torch.Size([2]), True, 'worst_group')
    """
    c_values = _check_grid(C_grid, "C_grid", positive=True)
    if int(num_subsamples) < 1:
        raise ValueError(f"num_subsamples must be >= 1, got {num_subsamples}")
    if solver not in ("liblinear", "saga"):
        raise ValueError(f"solver must be 'liblinear' (one-vs-rest) or 'saga' (multinomial), got {solver!r}")
    data, k, dtype = _inputs(features, targets, groups, num_classes)
    selection = _selection_inputs(data, k, selection_features, selection_targets, selection_groups)
    options = dict(
        num_subsamples=int(num_subsamples),
        seed=int(seed),
        require_all_cells=require_all_cells,
        solver=solver,
        fit_intercept=fit_intercept,
        tol=float(tol),
        max_iter=int(max_iter),
    )
    fit_idx, selection, metric = _plan(
        data, k, len(c_values), selection, selection_fraction, selection_metric, int(seed)
    )
    scores: list[tuple[dict[str, float], float]] = []
    chosen = c_values[0]
    final_data = data
    final = None
    if selection is not None:
        assert metric is not None
        fit_part = data if fit_idx is None else _subset(data, fit_idx)
        heads, subsamples, mean, scale = _dfr_fit(fit_part, k, c_values, **options)
        values = [
            _worst_accuracy((selection.x @ w.T + b).argmax(dim=1), selection.y, selection.g, k, metric)
            for w, b in heads
        ]
        scores = [({"C": c}, v) for c, v in zip(c_values, values, strict=True)]
        best = _best(values)
        chosen = c_values[best]
        if fit_idx is None or not refit:
            final_data, final = fit_part, (heads[best], subsamples, mean, scale)
    if final is None:
        heads, subsamples, mean, scale = _dfr_fit(final_data, k, (chosen,), **options)
        final = (heads[0], subsamples, mean, scale)
    (weight, bias), subsamples, mean, scale = final
    n_fit = final_data.y.shape[0]
    usage = torch.zeros(n_fit, dtype=torch.float64)
    for idx in subsamples:
        usage[idx] += 1.0 / len(subsamples)
    report = GroupHeadReport(
        method="dfr",
        params={"C": chosen},
        scores=scores,
        selection_metric=metric,
        num_fit=n_fit,
        num_selection=0 if selection is None else selection.y.shape[0],
        sample_weights=usage,
        subsamples=subsamples,
        mean=mean,
        scale=scale,
    )
    return weight.to(dtype), bias.to(dtype), report


# ----------------------------------------------------------------------------------------------------------------
# AFR
# ----------------------------------------------------------------------------------------------------------------
def afr_weights(
    erm_logits: Tensor,
    targets: Tensor,
    gamma: float,
    *,
    class_balance: ClassBalance = "count",
) -> Tensor:
    """AFR's per-sample weights ``w_i ∝ β_{y_i} · exp(−γ · p_true(x_i))``, normalised to sum 1.

    ``p_true(x_i) = softmax(erm_logits_i)[y_i]`` is the ERM model's probability of the true class: samples the ERM
    model gets wrong (typically the minority groups) get the largest weights. The class factor ``β_y`` is

    * ``"count"`` (default, the reference code's ``balance_classes``): ``β_y = 1/n_y``, so every class has the same
      total weight *before* the exponential reweighting — classes the ERM model fits worse end up with more;
    * ``"sum"``: each class's weights are normalised to the same total, ``Σ_{i: y_i = y} w_i = 1/K'`` (``K'``
      classes present);
    * ``"none"``: ``β_y = 1``.

    Args:
        erm_logits: ``(N, K)`` logits of the ERM model on the retraining set.
        targets: ``(N,)`` class indices.
        gamma: ``γ ≥ 0``; ``0`` gives the (class-balanced) uniform weights.
        class_balance: ``"count"``, ``"sum"`` or ``"none"``.

    Returns:
        ``(N,)`` float64 weights summing to 1.

    Raises:
        ValueError: a negative or non-finite ``gamma``, bad shapes or an unknown ``class_balance``.

    Example:
        >>> logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]])
        >>> w = afr_weights(logits, torch.tensor([0, 1, 1]), gamma=2.0, class_balance="none")
        >>> [round(v, 4) for v in w.tolist()]
        [0.1518, 0.1518, 0.6964]
    """
    gamma = _check_grid(gamma, "gamma", positive=False)[0]
    if class_balance not in ("count", "sum", "none"):
        raise ValueError(f"class_balance must be 'count', 'sum' or 'none', got {class_balance!r}")
    logits = check_features(erm_logits, "erm_logits").to(torch.float64)
    y, _ = check_targets(targets, logits.shape[0], logits.shape[1], "targets")
    p_true = torch.softmax(logits, dim=1).gather(1, y[:, None]).squeeze(1)
    w = torch.exp(-gamma * p_true)
    if class_balance != "none":
        per_class = torch.bincount(y, weights=w if class_balance == "sum" else None, minlength=logits.shape[1])
        w = w / per_class.to(torch.float64)[y]
    return w / w.sum()


def _afr_fit(
    x: Tensor,
    y: Tensor,
    w: Tensor,
    weight0: Tensor,
    bias0: Tensor,
    l2: float,
    fit_intercept: bool,
    max_iter: int,
    tol: float,
) -> tuple[Tensor, Tensor, bool]:
    """Minimise ``Σ w_i CE_i + l2·(‖W − W0‖² + ‖b − b0‖²)`` by L-BFGS from ``(W0, b0)`` in float64."""
    weight = weight0.clone().requires_grad_(True)
    bias = bias0.clone().requires_grad_(fit_intercept)
    params = [weight, bias] if fit_intercept else [weight]

    def objective() -> Tensor:
        ce = F.cross_entropy(x @ weight.T + bias, y, reduction="none")
        penalty = (weight - weight0).pow(2).sum()
        if fit_intercept:
            penalty = penalty + (bias - bias0).pow(2).sum()
        return (w * ce).sum() + l2 * penalty

    converged = minimise_lbfgs(objective, params, max_iter, tol) <= max(1e3 * tol, 1e-7)
    with torch.no_grad():
        weight, bias = weight.detach(), bias.detach()
        if l2 == 0.0:  # softmax is shift-invariant: return the zero-mean representative
            weight = weight - weight.mean(dim=0)
            bias = bias - bias.mean() if fit_intercept else bias
    return weight, bias, converged


def afr_head(
    features: Tensor,
    targets: Tensor,
    erm_logits: Tensor | None = None,
    groups: Tensor | None = None,
    *,
    init_weight: Tensor | None = None,
    init_bias: Tensor | None = None,
    gamma_grid: Sequence[float] | float = AFR_GAMMA_GRID,
    l2: Sequence[float] | float = AFR_L2_GRID,
    class_balance: ClassBalance = "count",
    seed: int = 0,
    selection_features: Tensor | None = None,
    selection_targets: Tensor | None = None,
    selection_groups: Tensor | None = None,
    selection_fraction: float = 0.5,
    selection_metric: SelectionMetric | None = None,
    refit: bool = True,
    fit_intercept: bool = True,
    max_iter: int = 500,
    tol: float = 1e-10,
) -> tuple[Tensor, Tensor, GroupHeadReport]:
    """AFR: the last layer refit with weights ``∝ β_y·exp(−γ·p_true)`` and an ℓ2 pull towards the ERM head.

    Minimises, over the head ``(W, b)``, in float64 with full-batch L-BFGS (strong-Wolfe line search) started at
    the ERM head ``(W0, b0)`` and run to a gradient tolerance,

        ``Σ_i w_i · CE(W x_i + b, y_i) + l2 · (‖W − W0‖²_F + ‖b − b0‖²)``,   ``Σ_i w_i = 1``,

    with ``w = afr_weights(erm_logits, targets, γ, class_balance=...)`` — the reference code's objective (its
    penalty also covers the bias). The reference trains by gradient descent for a fixed number of epochs with early
    stopping on the validation worst-group accuracy; here each fit runs to convergence, so ``l2`` is the only
    regulariser. ``γ`` (and ``l2`` when a grid is given) is chosen by the selection score. Training uses no group
    labels; ``groups`` only serve the selection.

    Args:
        features: ``(N, d)`` held-out features (the reweighting set, or the set to split).
        targets: ``(N,)`` class indices.
        erm_logits: ``(N, K)`` ERM logits on ``features``; default ``features @ init_weight.T + init_bias``.
        groups: optional ``(N,)`` group indices, for ``worst_group`` selection (and a split stratified by cell).
        init_weight: ``(K, d)`` ERM head weight: the start and the centre of the ℓ2 penalty (default zeros).
        init_bias: ``(K,)`` ERM head bias (default zeros).
        gamma_grid: values ``γ ≥ 0`` to choose from.
        l2: penalty strength ``≥ 0``, or a grid of them (chosen jointly with ``γ``).
        class_balance: class factor of the weights (see :func:`afr_weights`).
        seed: seed of the split.
        selection_features: ``(M, d)`` features of a separate selection set (else the set is split).
        selection_targets: ``(M,)`` its class indices.
        selection_groups: ``(M,)`` its group indices.
        selection_fraction: fraction of every (group, class) cell split off for the selection.
        selection_metric: ``"worst_group"``, ``"worst_class"`` (no group labels needed) or ``None`` (worst-group if
            the selection part has group labels).
        refit: after a split, refit the chosen ``(γ, l2)`` on the whole set (default).
        fit_intercept: fit the bias (else it stays at ``init_bias``).
        max_iter: L-BFGS iterations per fit.
        tol: gradient tolerance (max absolute entry) of each fit.

    Returns:
        ``(weight (K, d), bias (K,), report)`` in the features' dtype, and a :class:`GroupHeadReport` (a warning if
        a fit did not converge — with ``l2 = 0`` separable data has no finite minimiser).

    Raises:
        ValueError: negative ``gamma_grid`` / ``l2`` values, empty grids, mismatched lengths or shapes, neither
            ``erm_logits`` nor ``init_weight``, bad selection options.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> y = torch.arange(300) % 2
        >>> x = torch.randn(300, 3, generator=g).double() + y[:, None]
        >>> w0, b0 = torch.tensor([[-1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]).double(), torch.zeros(2).double()
        >>> weight, bias, report = afr_head(x, y, init_weight=w0, init_bias=b0, gamma_grid=(0.0, 2.0), l2=0.01)
        >>> weight.shape, report.params["gamma"] in (0.0, 2.0), report.selection_metric, report.converged
        (torch.Size([2, 3]), True, 'worst_class', True)
    """
    gammas = _check_grid(gamma_grid, "gamma_grid", positive=False)
    l2_values = _check_grid(l2, "l2", positive=False)
    if class_balance not in ("count", "sum", "none"):
        raise ValueError(f"class_balance must be 'count', 'sum' or 'none', got {class_balance!r}")
    if int(max_iter) < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    x = check_features(features)
    n, d = x.shape
    if erm_logits is None and init_weight is None:
        raise ValueError("pass erm_logits (the ERM model's logits on features) or init_weight/init_bias (its head)")
    k = None
    if init_weight is not None:
        init_weight = torch.as_tensor(init_weight)
        if init_weight.ndim != 2 or init_weight.shape[1] != d:
            raise ValueError(f"init_weight must have shape (K, {d}), got {tuple(init_weight.shape)}")
        k = init_weight.shape[0]
    if erm_logits is not None:
        erm_logits = check_features(erm_logits, "erm_logits")
        if erm_logits.shape[0] != n:
            raise ValueError(f"erm_logits has {erm_logits.shape[0]} rows but features has {n}; pass one row per sample")
        if k is not None and erm_logits.shape[1] != k:
            raise ValueError(f"erm_logits has {erm_logits.shape[1]} columns but init_weight has {k} rows")
        k = erm_logits.shape[1]
    assert k is not None
    data, k, dtype = _inputs(x, targets, groups, k)
    w0 = torch.zeros(k, d, dtype=torch.float64) if init_weight is None else init_weight.to(torch.float64)
    if init_bias is None:
        b0 = torch.zeros(k, dtype=torch.float64)
    else:
        b0 = torch.as_tensor(init_bias).to(torch.float64)
        if tuple(b0.shape) != (k,):
            raise ValueError(f"init_bias must have shape ({k},), got {tuple(b0.shape)}")
    if not (bool(torch.isfinite(w0).all()) and bool(torch.isfinite(b0).all())):
        raise ValueError("init_weight and init_bias must be finite")
    logits = (data.x @ w0.T + b0) if erm_logits is None else erm_logits.to(torch.float64)
    selection = _selection_inputs(data, k, selection_features, selection_targets, selection_groups)
    grid = [(gm, lam) for gm in gammas for lam in l2_values]
    fit_idx, selection, metric = _plan(data, k, len(grid), selection, selection_fraction, selection_metric, int(seed))
    converged = True

    def fit(part: _Data, part_logits: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor, Tensor]:
        nonlocal converged
        w = afr_weights(part_logits, part.y, gamma, class_balance=class_balance)
        weight, bias, ok = _afr_fit(part.x, part.y, w, w0, b0, lam, fit_intercept, int(max_iter), float(tol))
        converged = converged and ok
        return weight, bias, w

    scores: list[tuple[dict[str, float], float]] = []
    chosen = grid[0]
    final: tuple[Tensor, Tensor, Tensor] | None = None
    final_n = n
    if selection is not None:
        assert metric is not None
        fit_part = data if fit_idx is None else _subset(data, fit_idx)
        fit_logits = logits if fit_idx is None else logits[fit_idx]
        fits, values = [], []
        for gamma, lam in grid:
            fits.append(fit(fit_part, fit_logits, gamma, lam))
            preds = (selection.x @ fits[-1][0].T + fits[-1][1]).argmax(dim=1)
            values.append(_worst_accuracy(preds, selection.y, selection.g, k, metric))
        scores = [({"gamma": gm, "l2": lam}, v) for (gm, lam), v in zip(grid, values, strict=True)]
        best = _best(values)
        chosen = grid[best]
        if fit_idx is None or not refit:
            final, final_n = fits[best], fit_part.y.shape[0]
    if final is None:
        final = fit(data, logits, *chosen)
    weight, bias, w = final
    if not converged:
        warnings.warn(
            f"an AFR head did not reach the gradient tolerance tol={tol:g} in max_iter={max_iter} L-BFGS iterations; "
            "increase max_iter or l2 (with l2=0 separable data has no finite minimiser)",
            UserWarning,
            stacklevel=2,
        )
    report = GroupHeadReport(
        method="afr",
        params={"gamma": chosen[0], "l2": chosen[1]},
        scores=scores,
        selection_metric=metric,
        num_fit=final_n,
        num_selection=0 if selection is None else selection.y.shape[0],
        sample_weights=w,
        converged=converged,
    )
    return weight.to(dtype), bias.to(dtype), report
