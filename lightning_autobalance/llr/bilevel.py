"""Bilevel class weights: per-class or per-(group, class) weights tuned on a validation split of the retraining set.

The exact hypergradient flows through the closed-form square-loss head (autograd through ``torch.linalg.solve``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_autobalance._checks import check_integer
from lightning_autobalance.data.labels import cell_index
from lightning_autobalance.data.split import stratified_split
from lightning_autobalance.llr.checks import check_features, check_groups, check_ridge, check_targets
from lightning_autobalance.llr.head import penalty_diag, singular_message
from lightning_autobalance.options import options_from, options_signature

__all__ = [
    "DEFAULT_ANCHOR",
    "DEFAULT_MIN_CELL_SIZE",
    "BilevelOptions",
    "BilevelResult",
    "ObjectiveOptions",
    "bilevel_objective",
    "bilevel_weights",
]

DEFAULT_MIN_CELL_SIZE: int = 3
"""Bilevel weight cells with fewer validation samples than this are not tuned (kept at the prior ratio)."""

DEFAULT_ANCHOR: float = 10.0
"""Strength of the bilevel penalty that anchors the weights to the ratio of priors."""


@dataclass(frozen=True)
class BilevelResult:
    """Output of :func:`bilevel_weights`.

    Attributes:
        weights: the tuned weights, ``(K,)`` per class or ``(G, K)`` per (group, class), normalised so that the
            mean per-sample weight over the whole retraining set is 1. These are the weights at the step with
            the lowest validation objective (``best_step``).
        history: validation objective plus the ``anchor`` penalty before each step, and after the last one
            (``steps + 1`` values; a single value when no cell is tuned).
        weight_history: ``(len(history), *weights.shape)`` weights along the optimisation, same normalisation.
        best_step: index into ``history`` of the returned weights.
        tuned: boolean mask of the weights' shape: ``True`` for the cells whose weight was tuned, ``False`` for
            cells kept at the prior ratio (fewer than ``min_cell_size`` validation samples, no sample, or every
            cell with ``anchor=inf``).
    """

    weights: Tensor
    history: list[float] = field(default_factory=list)
    weight_history: Tensor | None = None
    best_step: int = 0
    tuned: Tensor | None = None


def _augment(x: Tensor, fit_intercept: bool) -> Tensor:
    if not fit_intercept:
        return x
    return torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], dim=1)


class _BilevelProblem:
    """Validation objective as a differentiable function of the log-weights.

    Precomputes one augmented Gram matrix per weight cell of the training split, so each evaluation costs
    ``O(C·p² + p³ + n_val·p·K)`` instead of a pass over the training features.
    """

    def __init__(
        self, train: _Split, num_cells: int, cell_class: Tensor, val: _Split, k: int, options: ObjectiveOptions
    ) -> None:
        train_x, train_cells = train.x, train.cells
        mean = train_x.mean(dim=0)
        xa = _augment(train_x - mean, options.fit_intercept)
        p = xa.shape[1]
        self.grams = torch.zeros(num_cells, p, p, dtype=torch.float64)
        self.sums = torch.zeros(num_cells, p, dtype=torch.float64)
        for c in torch.unique(train_cells).tolist():
            rows = xa[train_cells == c]
            self.grams[c] = rows.T @ rows
            self.sums[c] = rows.sum(dim=0)
        self.cell_counts = torch.bincount(train_cells, minlength=num_cells).to(torch.float64)
        self.n_train = float(train_x.shape[0])
        self.onehot_cells = F.one_hot(cell_class, k).to(torch.float64)  # (C, K)
        self.penalty = penalty_diag(train_x.shape[1], options.ridge, options.fit_intercept)
        self.val_xa = _augment(val.x - mean, options.fit_intercept)
        self.val_y = val.y
        self.val_onehot = F.one_hot(val.y, k).to(torch.float64)
        present, self.val_cells = torch.unique(val.cells, return_inverse=True)
        self.num_val_cells = present.numel()
        self.val_cell_counts = torch.bincount(self.val_cells, minlength=self.num_val_cells).to(torch.float64)
        self.objective = options.objective
        self.val_loss = options.val_loss
        self.temperature = options.temperature
        self.m = int(train_x.shape[0])
        self.d = int(train_x.shape[1])

    def normalised(self, log_weights: Tensor) -> Tensor:
        """exp(log-weights) scaled so the mean per-sample weight on the training split is 1."""
        w = torch.exp(log_weights - log_weights.detach().max())  # the normalisation makes the shift a no-op
        return w * (self.n_train / (self.cell_counts * w).sum())

    def head(self, log_weights: Tensor) -> Tensor:
        w = self.normalised(log_weights)
        a = torch.einsum("c,cij->ij", w, self.grams) + torch.diag(self.penalty)
        rhs = self.onehot_cells.T @ (w[:, None] * self.sums)  # (K, p)
        try:
            return torch.linalg.solve(a, rhs.T)  # (p, K); autograd through solve is the exact hypergradient
        except RuntimeError as err:  # torch.linalg.LinAlgError subclasses RuntimeError
            raise ValueError(singular_message(self.m, self.d)) from err

    def __call__(self, log_weights: Tensor) -> Tensor:
        scores = self.val_xa @ self.head(log_weights)
        if self.val_loss == "square":
            per_sample = (scores - self.val_onehot).pow(2).sum(dim=1)
        else:
            per_sample = F.cross_entropy(scores, self.val_y, reduction="none")
        per_cell = torch.zeros(self.num_val_cells, dtype=per_sample.dtype).index_add(0, self.val_cells, per_sample)
        per_cell = per_cell / self.val_cell_counts
        if self.objective == "balanced":
            return per_cell.mean()
        t = self.temperature
        return t * (torch.logsumexp(per_cell / t, dim=0) - math.log(self.num_val_cells))


@dataclass(frozen=True)
class ObjectiveOptions:
    """Settings of the validation objective and of the inner fit (see :func:`bilevel_objective`).

    Raises:
        ValueError: an unknown ``objective`` / ``val_loss``, a temperature that is not > 0, a bad ``ridge``.

    Example:
        >>> ObjectiveOptions(objective="worst_group").temperature
        0.1
    """

    objective: Literal["balanced", "worst_group"] = "balanced"
    val_loss: Literal["square", "ce"] = "ce"
    temperature: float = 0.1
    ridge: float = 0.0
    fit_intercept: bool = True

    def __post_init__(self) -> None:
        if self.objective not in ("balanced", "worst_group"):
            raise ValueError(f"objective must be 'balanced' or 'worst_group', got {self.objective!r}")
        if self.val_loss not in ("square", "ce"):
            raise ValueError(f"val_loss must be 'square' or 'ce', got {self.val_loss!r}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        object.__setattr__(self, "temperature", float(self.temperature))
        object.__setattr__(self, "ridge", check_ridge(self.ridge))


@dataclass(frozen=True)
class BilevelOptions(ObjectiveOptions):
    """Settings of :func:`bilevel_weights` (documented there): the objective's, the split's and the descent's.

    Raises:
        ValueError: the errors of :class:`ObjectiveOptions`; ``val_fraction`` outside ``(0, 1)``, ``steps < 0``, a
            ``min_cell_size`` that is not an integer >= 0, a negative or NaN ``anchor``.

    Example:
        >>> BilevelOptions(steps=5).anchor == DEFAULT_ANCHOR
        True
    """

    per: Literal["class", "group_class"] | None = None
    val_fraction: float = 0.3
    steps: int = 100
    lr: float = 0.05
    init: Literal["none", "priors"] | Tensor = "priors"
    seed: int = 0
    min_cell_size: int = DEFAULT_MIN_CELL_SIZE
    anchor: float = DEFAULT_ANCHOR

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (0.0 < float(self.val_fraction) < 1.0):
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        check_integer("steps", self.steps, 0)
        check_integer("min_cell_size", self.min_cell_size, 0, meaning=" (validation samples per cell)")
        anchor = float(self.anchor)
        if math.isnan(anchor) or anchor < 0:
            raise ValueError(f"anchor must be >= 0 (0 switches the prior-ratio penalty off, inf pins it), got {anchor}")
        object.__setattr__(self, "anchor", anchor)


@dataclass(frozen=True)
class _Split:
    """One side of the split: features, class labels and the cell of every sample (weight or objective cells)."""

    x: Tensor
    y: Tensor
    cells: Tensor


def _weight_cells(
    log_weights_shape: tuple[int, ...], targets: Tensor, groups: Tensor | None, k: int
) -> tuple[Tensor, int, Tensor]:
    """Map samples to weight cells; returns (cells (N,), number of cells, class of each cell)."""
    if len(log_weights_shape) == 1:
        if log_weights_shape[0] != k:
            raise ValueError(f"per-class log-weights must have shape ({k},), got {log_weights_shape}")
        return targets, k, torch.arange(k)
    if len(log_weights_shape) == 2 and log_weights_shape[1] == k:
        if groups is None:
            raise ValueError("per-(group, class) weights of shape (G, K) need group labels; pass groups")
        g = log_weights_shape[0]
        if int(groups.max()) >= g:
            raise ValueError(f"groups has label {int(groups.max())} but the weights have only {g} rows")
        return cell_index(targets, groups, k), g * k, torch.arange(k).repeat(g)
    raise ValueError(f"log-weights must have shape (K,) or (G, K) with K={k}, got {log_weights_shape}")


def _objective_cells(targets: Tensor, groups: Tensor | None, k: int, objective: str) -> Tensor:
    if objective == "worst_group" and groups is not None:
        return cell_index(targets, groups, k)
    return targets


def bilevel_objective(
    log_weights: Tensor,
    train_features: Tensor,
    train_targets: Tensor,
    val_features: Tensor,
    val_targets: Tensor,
    *,
    train_groups: Tensor | None = None,
    val_groups: Tensor | None = None,
    num_classes: int | None = None,
    **options: Any,
) -> Tensor:
    """Validation objective of the closed-form square-loss head as a differentiable function of log-weights.

    The head is fit on the training split with weights ``ω = exp(log_weights)`` (normalised so the mean
    per-sample weight on the training split is 1) by one ``torch.linalg.solve`` of the normal equations, and
    scored on the validation split. Backpropagating into ``log_weights`` gives the exact hypergradient.

    Objectives on the validation scores ``s = W x + b``, from the per-cell mean loss ``L_c`` (square:
    ``‖s − e_y‖²``; ce: softmax cross-entropy of ``s``):

    * ``balanced``: mean over classes of the per-class mean loss;
    * ``worst_group``: smooth maximum ``τ·log((1/C) Σ_c exp(L_c/τ))`` over the (group, class) cells present in
      the validation split (over classes when no groups are given); it lies between the mean and the max and
      tends to the max as ``τ → 0``.

    Args:
        log_weights: ``(K,)`` per-class or ``(G, K)`` per-(group, class) log-weights.
        train_features: ``(N_tr, d)`` features of the split the head is fit on.
        train_targets: ``(N_tr,)`` class indices.
        val_features: ``(N_val, d)`` features of the validation split.
        val_targets: ``(N_val,)`` class indices.
        train_groups: ``(N_tr,)`` group indices (for ``(G, K)`` weights).
        val_groups: ``(N_val,)`` group indices (for ``worst_group`` over groups).
        num_classes: ``K`` (default ``max(train_targets) + 1``).
        objective: ``"balanced"`` or ``"worst_group"``.
        val_loss: validation loss of the scores, ``"ce"`` (default) or ``"square"``.
        temperature: ``τ > 0`` of the smooth max.
        ridge: L2 penalty as in :func:`fit_last_layer` (square loss).
        fit_intercept: fit an unpenalised bias.
        **options: ``objective``, ``val_loss``, ``temperature``, ``ridge`` and ``fit_intercept`` above (the fields
            of :class:`ObjectiveOptions`).

    Returns:
        A float64 scalar tensor, differentiable with respect to ``log_weights``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x, y = torch.randn(60, 3, generator=g), torch.arange(60) % 2
        >>> lw = torch.zeros(2, dtype=torch.float64, requires_grad=True)
        >>> value = bilevel_objective(lw, x[:40], y[:40], x[40:], y[40:])
        >>> value.backward()
        >>> lw.grad.shape
        torch.Size([2])
    """
    settings: ObjectiveOptions = options_from(ObjectiveOptions, "bilevel_objective", options)
    tx = check_features(train_features, "train_features").to(torch.float64)
    vx = check_features(val_features, "val_features").to(torch.float64)
    if vx.shape[1] != tx.shape[1]:
        raise ValueError(f"val_features has {vx.shape[1]} features but train_features has {tx.shape[1]}")
    ty, k = check_targets(train_targets, tx.shape[0], num_classes, "train_targets")
    vy, _ = check_targets(val_targets, vx.shape[0], k, "val_targets")
    tg = check_groups(train_groups, tx.shape[0])
    vg = check_groups(val_groups, vx.shape[0])
    cells, num_cells, cell_class = _weight_cells(tuple(log_weights.shape), ty, tg, k)
    val = _Split(vx, vy, _objective_cells(vy, vg, k, settings.objective))
    problem = _BilevelProblem(_Split(tx, ty, cells), num_cells, cell_class, val, k, settings)
    return problem(log_weights.to(torch.float64).reshape(-1))


bilevel_objective.__signature__ = options_signature(bilevel_objective, ObjectiveOptions)  # type: ignore[attr-defined]


def _stratified_split(cells: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Indices (train, val): each cell contributes ``round(fraction·n_c)`` samples to val, ≥ 1 to each side."""
    single = torch.nonzero(torch.bincount(cells) == 1).flatten().tolist()
    if single:
        raise ValueError(
            f"cell {single[0]} has a single sample; the bilevel split needs >= 2 samples per class "
            f"(and per (group, class) cell with groups)"
        )
    return stratified_split(cells, None, fraction, int(seed))


def bilevel_weights(
    features: Tensor,
    targets: Tensor,
    groups: Tensor | None = None,
    *,
    num_classes: int | None = None,
    **options: Any,
) -> BilevelResult:
    """Tune per-class or per-(group, class) loss weights by bilevel optimisation on a split of the retraining set.

    The retraining set is split (stratified by class, or by (group, class) cell when groups are given; seeded)
    into a training part, on which the weighted square-loss head is fit in closed form, and a validation part,
    on which :func:`bilevel_objective` is evaluated. The weights are ``exp(log-weights)``, normalised; the
    log-weights take ``steps`` Adam steps (learning rate ``lr``) along the exact hypergradient (autograd through
    ``torch.linalg.solve``; no Neumann or one-step approximation). Fully deterministic for a given ``seed``.

    Caveat: the weights are tuned for a head fit on the training part (``n·(1 − val_fraction)`` samples, i.e. a
    larger ``δ``) and are then meant for a refit on the whole retraining set.

    Small cells. A cell with one or two validation samples has a validation loss that is mostly noise, and the
    exact hypergradient fits that noise (on MNIST-1D-LT the tuned weights lost to the ratio of priors). Two guards,
    both relative to the *prior ratio* (inverse cell frequency ``1/n_c`` on the whole retraining set), written with
    the log-correction ``r_c = log ω_c + log n_c`` (equal ``r_c`` for all cells means the ratio of priors):

    * ``min_cell_size``: cells with fewer validation samples are not tuned; their ``r_c`` is the mean ``r`` of the
      tuned cells, i.e. they keep the inverse-frequency weight relative to a typical tuned cell. Their validation
      samples still count in the objective. If no cell is tuned the result is the ratio of priors.
    * ``anchor`` (``λ ≥ 0``): the objective minimised (and used to pick the best step) is the validation objective
      plus ``λ · mean_c (r_c − r̄)² / m_c`` over the cells with samples (``r̄`` their mean, ``m_c`` the cell's
      validation samples): a Gaussian prior on the log-corrections centred at the ratio of priors, whose weight
      relative to the data falls like the noise of a cell's mean validation loss (``∝ 1/m_c``). Small cells are
      pinned close to the ratio of priors, large cells can follow the hypergradient. ``λ = 0`` switches it off;
      ``λ = inf`` returns the ratio of priors.
    The defaults (:data:`DEFAULT_MIN_CELL_SIZE`, :data:`DEFAULT_ANCHOR`) were chosen on development seeds of
    ``benchmarks/llr_mnist1d.py``, checked against ``benchmarks/llr_theory.py --quick`` (the binary Gaussian
    mixture, where the optimal ratio is far from the priors and ``anchor=10`` keeps most of the gain over them);
    see ``benchmarks/results/llr_thumb_bilevel.md``.

    Args:
        features: ``(N, d)`` retraining features.
        targets: ``(N,)`` class indices.
        groups: optional ``(N,)`` group indices.
        num_classes: ``K`` (default ``max(targets) + 1``).
        per: ``"class"`` (``(K,)`` weights) or ``"group_class"`` (``(G, K)``); default ``"group_class"`` when
            groups are given, else ``"class"``.
        objective: ``"balanced"`` or ``"worst_group"`` (see :func:`bilevel_objective`).
        val_loss: ``"ce"`` (default) or ``"square"`` on the validation scores. On the Gaussian-mixture benchmark
            the square validation loss kept the weights near 1 (it does not track the 0-1 error well), the
            cross-entropy of the scores did better.
        val_fraction: fraction of each cell held out for validation, in ``(0, 1)``. Small values keep the
            training part (and its ``δ``) close to the full retraining set.
        steps: number of Adam steps (``≥ 0``).
        lr: Adam learning rate on the log-weights.
        temperature: smooth-max temperature for ``worst_group``.
        ridge: L2 penalty of the inner square-loss fit.
        fit_intercept: fit an unpenalised bias.
        init: starting weights: ``"priors"`` (inverse cell frequency), ``"none"`` (all ones) or a positive tensor
            of the weights' shape.
        seed: seed of the split.
        min_cell_size: cells with fewer validation samples than this keep the prior-ratio weight (``≤ 1``
            tunes every cell).
        anchor: strength ``λ ≥ 0`` (or ``inf``) of the penalty anchoring the weights to the ratio of priors.
        **options: every argument above but ``features``, ``targets``, ``groups`` and ``num_classes`` (the fields of
            :class:`BilevelOptions`).

    Returns:
        A :class:`BilevelResult` (best weights, objective history including the penalty, weight history, mask of
        the tuned cells).

    Raises:
        ValueError: bad options, cells with fewer than 2 samples, or a singular inner problem (pass ``ridge>0``).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> y = (torch.rand(400, generator=g) < 0.2).long()
        >>> x = torch.randn(400, 5, generator=g) + y[:, None].double()
        >>> res = bilevel_weights(x, y, steps=20)
        >>> res.weights.shape, len(res.history)
        (torch.Size([2]), 21)
    """
    settings: BilevelOptions = options_from(BilevelOptions, "bilevel_weights", options)
    x = check_features(features).to(torch.float64)
    n = x.shape[0]
    y, k = check_targets(targets, n, num_classes)
    g = check_groups(groups, n)
    shape = _weights_shape(settings.per, g, k)
    if torch.unique(y).numel() < 2:
        raise ValueError("only one class present in targets; the retraining set needs at least two classes")

    cells, num_cells, cell_class = _weight_cells(shape, y, g, k)
    train_idx, val_idx = _stratified_split(cell_index(y, g, k), float(settings.val_fraction), settings.seed)
    p = x.shape[1] + int(settings.fit_intercept)
    if settings.ridge == 0.0 and train_idx.numel() < p:
        raise ValueError(
            f"n <= d in the bilevel training split ({train_idx.numel()} samples, d={x.shape[1]}); "
            f"pass ridge>0, a smaller val_fraction, or fewer features"
        )
    val_g = None if g is None else g[val_idx]
    val = _Split(x[val_idx], y[val_idx], _objective_cells(y[val_idx], val_g, k, settings.objective))
    train = _Split(x[train_idx], y[train_idx], cells[train_idx])
    problem = _BilevelProblem(train, num_cells, cell_class, val, k, settings)
    descent = _Descent(problem, cells, num_cells, torch.bincount(cells[val_idx], minlength=num_cells), shape, settings)
    return descent.run(_start(settings.init, descent.prior_log, shape, num_cells))


bilevel_weights.__signature__ = options_signature(bilevel_weights, BilevelOptions)  # type: ignore[attr-defined]


def _weights_shape(per: str | None, g: Tensor | None, k: int) -> tuple[int, ...]:
    """``(K,)`` per class or ``(G, K)`` per (group, class); ``per=None`` picks by the presence of groups."""
    if per is None:
        per = "class" if g is None else "group_class"
    if per == "class":
        return (k,)
    if per == "group_class":
        if g is None:
            raise ValueError("per='group_class' needs group labels; pass groups or use per='class'")
        return (int(g.max()) + 1, k)
    raise ValueError(f"per must be 'class' or 'group_class', got {per!r}")


def _start(init: str | Tensor, prior_log: Tensor, shape: tuple[int, ...], num_cells: int) -> Tensor:
    """The starting log-weights: of ``"none"`` (ones), ``"priors"`` or a positive tensor of the weights' shape."""
    if isinstance(init, str):
        if init == "none":
            return torch.zeros(num_cells, dtype=torch.float64)
        if init == "priors":
            return prior_log.clone()
        raise ValueError(f"init must be 'none', 'priors' or a tensor of positive weights, got {init!r}")
    init_t = torch.as_tensor(init, dtype=torch.float64)
    if tuple(init_t.shape) != shape or not bool(torch.isfinite(init_t).all()) or bool((init_t <= 0).any()):
        raise ValueError(f"init must be a finite positive tensor of shape {shape}")
    return torch.log(init_t).reshape(-1)


class _Descent:
    """Adam on the log-corrections ``r = log-weights − prior log-weights`` of the tuned cells.

    The other cells take the mean correction of the tuned ones (0, the ratio of priors, when none is tuned); the
    ``anchor`` penalty pulls the corrections towards their mean (see :func:`bilevel_weights`).
    """

    def __init__(
        self,
        problem: _BilevelProblem,
        cells: Tensor,
        num_cells: int,
        val_counts: Tensor,
        shape: tuple[int, ...],
        options: BilevelOptions,
    ) -> None:
        self.problem, self.shape, self.options, self.val_counts = problem, shape, options, val_counts
        self.n = cells.shape[0]
        self.full_counts = torch.bincount(cells, minlength=num_cells).to(torch.float64)
        self.present = self.full_counts > 0
        self.prior_log = -torch.log(self.full_counts.clamp_min(1.0))  # log-weights of the ratio of priors
        tuned = self.present & (val_counts >= int(options.min_cell_size))
        self.tuned = torch.zeros_like(tuned) if math.isinf(options.anchor) else tuned
        self.num_tuned = int(self.tuned.sum())
        self.num_present = int(self.present.sum())

    def log_weights(self, r: Tensor) -> Tensor:
        fill = r[self.tuned].mean() if self.num_tuned else r.new_zeros(())
        return self.prior_log + torch.where(self.tuned, r, fill)

    def penalty(self, lw: Tensor) -> Tensor:
        anchor = self.options.anchor
        if anchor == 0.0 or math.isinf(anchor) or self.num_tuned == 0:
            return lw.new_zeros(())
        r = (lw - self.prior_log)[self.present]
        return anchor * ((r - r.mean()).pow(2) / self.val_counts[self.present].clamp_min(1)).sum() / self.num_present

    def full_norm(self, lw: Tensor) -> Tensor:
        w = torch.exp(lw - lw.max())
        return (w * (self.n / (self.full_counts * w).sum())).reshape(self.shape)

    def run(self, start: Tensor) -> BilevelResult:
        correction = (start - self.prior_log).clone().requires_grad_(True)
        opt = torch.optim.Adam([correction], lr=float(self.options.lr))
        steps = int(self.options.steps)
        history: list[float] = []
        weight_history: list[Tensor] = []
        for step in range(steps + 1):
            opt.zero_grad()
            lw = self.log_weights(correction)
            value = self.problem(lw) + self.penalty(lw)
            history.append(float(value.detach()))
            weight_history.append(self.full_norm(lw.detach()))
            if step == steps or self.num_tuned == 0:
                break
            value.backward()
            opt.step()
        best = min(range(len(history)), key=history.__getitem__)
        return BilevelResult(
            weights=weight_history[best].clone(),
            history=history,
            weight_history=torch.stack(weight_history),
            best_step=best,
            tuned=self.tuned.reshape(self.shape),
        )
