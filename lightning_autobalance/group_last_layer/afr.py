"""AFR, Automatic Feature Reweighting (Qiu, Potapczynski, Izmailov, Wilson, ICML 2023): :func:`afr_head`.

A weighted multinomial logistic head with per-sample weights ``∝ β_y · exp(−γ · p_true(x))`` (:func:`afr_weights`)
and an ℓ2 pull towards the ERM head, fitted in float64 with L-BFGS; ``γ`` (and the penalty) chosen on a selection
part (see :mod:`lightning_autobalance.group_last_layer` for the shared conventions). Training needs no group labels.

Example:
    >>> w = afr_weights(torch.tensor([[3.0, 0.0], [0.0, 3.0], [3.0, 0.0]]), torch.tensor([0, 1, 1]), gamma=0.0)
    >>> w.tolist()  # gamma = 0: class-balanced uniform weights
    [0.5, 0.25, 0.25]
    >>> x, y = torch.tensor([[1.0], [-1.0], [2.0], [-2.0]]).double(), torch.tensor([1, 0, 1, 0])
    >>> weight, bias, report = afr_head(x, y, init_weight=torch.zeros(2, 1), gamma_grid=1.0, l2=0.1)
    >>> report.method, report.params, report.converged, weight.shape
    ('afr', {'gamma': 1.0, 'l2': 0.1}, True, torch.Size([2, 1]))
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_autobalance.group_last_layer.selection import (
    FeatureSet,
    GroupHeadReport,
    SelectionOptions,
    check_grid,
    check_inputs,
    check_selection_inputs,
    chosen_report,
    plan_selection,
    score_grid,
)
from lightning_autobalance.llr import check_features, check_targets, minimise_lbfgs
from lightning_autobalance.options import options_from, options_signature

__all__ = ["AFR_GAMMA_GRID", "AFR_L2_GRID", "AFROptions", "ClassBalance", "afr_head", "afr_weights"]

AFR_GAMMA_GRID: tuple[float, ...] = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0)
"""Default ``γ`` grid of :func:`afr_head` (the reference sweeps 4–20 on Waterbirds and 1–3 on CelebA)."""

AFR_L2_GRID: tuple[float, ...] = (1e-3, 1e-2, 1e-1)
"""Default ℓ2 strengths towards the ERM head (the reference sweeps 0–0.3 on Waterbirds and 1e-3–1e-1 on CelebA)."""
ClassBalance = Literal["count", "sum", "none"]


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
    gamma = check_grid(gamma, "gamma", positive=False)[0]
    _check_class_balance(class_balance)
    logits = check_features(erm_logits, "erm_logits").to(torch.float64)
    y, _ = check_targets(targets, logits.shape[0], logits.shape[1], "targets")
    p_true = torch.softmax(logits, dim=1).gather(1, y[:, None]).squeeze(1)
    w = torch.exp(-gamma * p_true)
    if class_balance != "none":
        per_class = torch.bincount(y, weights=w if class_balance == "sum" else None, minlength=logits.shape[1])
        w = w / per_class.to(torch.float64)[y]
    return w / w.sum()


def _check_class_balance(class_balance: str) -> None:
    if class_balance not in ("count", "sum", "none"):
        raise ValueError(f"class_balance must be 'count', 'sum' or 'none', got {class_balance!r}")


@dataclass(frozen=True)
class AFROptions(SelectionOptions):
    """The settings of :func:`afr_head` (documented there) besides the data: the ERM head, the grids, the fit.

    Example:
        >>> AFROptions().gamma_grid == AFR_GAMMA_GRID, AFROptions().max_iter
        (True, 500)
    """

    init_weight: Tensor | None = None
    init_bias: Tensor | None = None
    gamma_grid: Sequence[float] | float = AFR_GAMMA_GRID
    l2: Sequence[float] | float = AFR_L2_GRID
    class_balance: ClassBalance = "count"
    max_iter: int = 500
    tol: float = 1e-10


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
    **options: Any,
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
        **options: every argument above from ``init_weight`` on (the fields of :class:`AFROptions`).

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
    settings: AFROptions = options_from(AFROptions, "afr_head", options)
    gammas = check_grid(settings.gamma_grid, "gamma_grid", positive=False)
    l2_values = check_grid(settings.l2, "l2", positive=False)
    _check_class_balance(settings.class_balance)
    max_iter, tol = int(settings.max_iter), float(settings.tol)
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {settings.max_iter}")
    data, k, dtype, w0, b0, logits = _afr_inputs(features, targets, erm_logits, groups, settings)
    selection = check_selection_inputs(
        data, k, settings.selection_features, settings.selection_targets, settings.selection_groups
    )
    grid = [(gm, lam) for gm in gammas for lam in l2_values]
    fit_idx, selection, metric = plan_selection(
        data, k, len(grid), selection, settings.selection_fraction, settings.selection_metric, int(settings.seed)
    )
    converged = True

    def fit(part: FeatureSet, part_logits: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor, Tensor]:
        nonlocal converged
        w = afr_weights(part_logits, part.y, gamma, class_balance=settings.class_balance)
        weight, bias, ok = _afr_fit(part.x, part.y, w, w0, b0, lam, settings.fit_intercept, max_iter, tol)
        converged = converged and ok
        return weight, bias, w

    def fit_grid(part: FeatureSet, idx: Tensor | None) -> list[tuple[Tensor, Tensor, Tensor]]:
        part_logits = logits if idx is None else logits[idx]
        return [fit(part, part_logits, gamma, lam) for gamma, lam in grid]

    scores: list[tuple[dict[str, float], float]] = []
    chosen = grid[0]
    final: tuple[Tensor, Tensor, Tensor] | None = None
    final_n = data.x.shape[0]
    if selection is not None:
        assert metric is not None
        best, values, fit_part, fits = score_grid(data, k, fit_idx, selection, metric, fit_grid)
        scores = [({"gamma": gm, "l2": lam}, v) for (gm, lam), v in zip(grid, values, strict=True)]
        chosen = grid[best]
        if fit_idx is None or not settings.refit:
            final, final_n = fits[best], fit_part.y.shape[0]  # type: ignore[assignment]
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
    params = {"gamma": chosen[0], "l2": chosen[1]}
    fitted = {"num_fit": final_n, "sample_weights": w, "converged": converged}
    report = chosen_report("afr", params, scores, metric, selection, **fitted)
    return weight.to(dtype), bias.to(dtype), report


afr_head.__signature__ = options_signature(afr_head, AFROptions)  # type: ignore[attr-defined]


def _afr_inputs(
    features: Tensor, targets: Tensor, erm_logits: Tensor | None, groups: Tensor | None, settings: AFROptions
) -> tuple[FeatureSet, int, torch.dtype, Tensor, Tensor, Tensor]:
    """The checked set, ``K``, the features' dtype, the ERM head ``(W0, b0)`` (float64) and the ERM logits."""
    x = check_features(features)
    n, d = x.shape
    init_weight, init_bias = settings.init_weight, settings.init_bias
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
    data, k, dtype = check_inputs(x, targets, groups, k)
    w0 = torch.zeros(k, d, dtype=torch.float64) if init_weight is None else init_weight.to(torch.float64)
    b0 = _initial_bias(init_bias, k)
    if not (bool(torch.isfinite(w0).all()) and bool(torch.isfinite(b0).all())):
        raise ValueError("init_weight and init_bias must be finite")
    logits = (data.x @ w0.T + b0) if erm_logits is None else erm_logits.to(torch.float64)
    return data, k, dtype, w0, b0, logits


def _initial_bias(init_bias: Tensor | None, k: int) -> Tensor:
    if init_bias is None:
        return torch.zeros(k, dtype=torch.float64)
    b0 = torch.as_tensor(init_bias).to(torch.float64)
    if tuple(b0.shape) != (k,):
        raise ValueError(f"init_bias must have shape ({k},), got {tuple(b0.shape)}")
    return b0
