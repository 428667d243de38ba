"""DFR, Deep Feature Reweighting (Kirichenko, Izmailov, Wilson, ICLR 2023): :func:`dfr_head`.

ℓ1 logistic regression (scikit-learn) on standardised features of group-balanced subsamples
(:func:`group_balanced_indices`) of a held-out set, averaged over the subsamples, with ``C`` chosen on a selection
part (see :mod:`lightning_autobalance.group_last_layer` for the shared conventions).

Example:
    >>> y, g = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1]), torch.tensor([0, 0, 0, 1, 1, 1, 1, 1])
    >>> group_balanced_indices(y, g, seed=0).numel()  # 2 groups x 2 classes x the smallest cell (1 sample)
    4
    >>> x = torch.stack([y + 0.1 * torch.arange(8), g.double()], dim=1).double()
    >>> weight, bias, report = dfr_head(x, y, g, C_grid=1.0, num_subsamples=2)
    >>> report.method, report.params, report.selection_metric, len(report.subsamples)
    ('dfr', {'C': 1.0}, None, 2)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from lightning_autobalance.data.labels import cell_index
from lightning_autobalance.group_last_layer.selection import (
    FeatureSet,
    GroupHeadReport,
    SelectionOptions,
    check_grid,
    check_group_labels,
    check_inputs,
    check_selection_inputs,
    chosen_report,
    plan_selection,
    score_grid,
)
from lightning_autobalance.llr import check_targets, downsample_weights
from lightning_autobalance.options import options_from, options_signature

__all__ = ["DFR_C_GRID", "DFROptions", "dfr_head", "group_balanced_indices"]

DFR_C_GRID: tuple[float, ...] = (1.0, 0.7, 0.3, 0.1, 0.07, 0.03, 0.01)
"""Inverse ℓ1 strengths of the DFR reference code (Waterbirds)."""


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
    g = check_group_labels(groups, y.shape[0], "groups")
    num_g = 1 if g is None else (int(g.max()) + 1 if num_groups is None else int(num_groups))
    if g is not None and int(g.max()) >= num_g:
        raise ValueError(f"groups has label {int(g.max())} but num_groups={num_g}; increase num_groups")
    counts = torch.bincount(cell_index(y, g, k), minlength=num_g * k)
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
    options = {"fit_intercept": fit_intercept, "tol": tol, "max_iter": max_iter, "random_state": seed}
    return LogisticRegression(l1_ratio=1.0, C=c, solver=solver, **options)


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
    data: FeatureSet,
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


@dataclass(frozen=True)
class DFROptions(SelectionOptions):
    """The settings of :func:`dfr_head` (documented there) besides the data: the grid, the subsamples, the solver.

    Example:
        >>> DFROptions().C_grid == DFR_C_GRID, DFROptions().solver
        (True, 'liblinear')
    """

    C_grid: Sequence[float] | float = DFR_C_GRID
    num_subsamples: int = 10
    num_classes: int | None = None
    require_all_cells: bool = True
    solver: Literal["liblinear", "saga"] = "liblinear"


def dfr_head(
    features: Tensor,
    targets: Tensor,
    groups: Tensor | None = None,
    **options: Any,
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
        **options: every argument above from ``C_grid`` on (the fields of :class:`DFROptions`).

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
    settings: DFROptions = options_from(DFROptions, "dfr_head", options)
    c_values = check_grid(settings.C_grid, "C_grid", positive=True)
    if int(settings.num_subsamples) < 1:
        raise ValueError(f"num_subsamples must be >= 1, got {settings.num_subsamples}")
    if settings.solver not in ("liblinear", "saga"):
        raise ValueError(f"solver must be 'liblinear' (one-vs-rest) or 'saga' (multinomial), got {settings.solver!r}")
    data, k, dtype = check_inputs(features, targets, groups, settings.num_classes)
    selection = check_selection_inputs(
        data, k, settings.selection_features, settings.selection_targets, settings.selection_groups
    )
    fit_options = dict(
        num_subsamples=int(settings.num_subsamples),
        seed=int(settings.seed),
        require_all_cells=settings.require_all_cells,
        solver=settings.solver,
        fit_intercept=settings.fit_intercept,
        tol=float(settings.tol),
        max_iter=int(settings.max_iter),
    )
    fit_idx, selection, metric = plan_selection(
        data, k, len(c_values), selection, settings.selection_fraction, settings.selection_metric, int(settings.seed)
    )

    def fit_grid(part: FeatureSet, _: Tensor | None, grid: Sequence[float] = c_values) -> list[tuple[Any, ...]]:
        heads, subsamples, mean, scale = _dfr_fit(part, k, grid, **fit_options)  # type: ignore[arg-type]
        return [(weight, bias, subsamples, mean, scale) for weight, bias in heads]

    scores: list[tuple[dict[str, float], float]] = []
    chosen = c_values[0]
    final_data = data
    final = None
    if selection is not None:
        assert metric is not None
        best, values, fit_part, fits = score_grid(data, k, fit_idx, selection, metric, fit_grid)
        scores = [({"C": c}, v) for c, v in zip(c_values, values, strict=True)]
        chosen = c_values[best]
        if fit_idx is None or not settings.refit:
            final_data, final = fit_part, fits[best]
    if final is None:
        final = fit_grid(final_data, None, (chosen,))[0]
    weight, bias, subsamples, mean, scale = final
    n_fit = final_data.y.shape[0]
    usage = torch.zeros(n_fit, dtype=torch.float64)
    for idx in subsamples:
        usage[idx] += 1.0 / len(subsamples)
    fitted = {"num_fit": n_fit, "sample_weights": usage, "subsamples": subsamples, "mean": mean, "scale": scale}
    report = chosen_report("dfr", {"C": chosen}, scores, metric, selection, **fitted)
    return weight.to(dtype), bias.to(dtype), report


dfr_head.__signature__ = options_signature(dfr_head, DFROptions)  # type: ignore[attr-defined]
