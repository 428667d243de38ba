r"""Upper-level objectives: what AutoBalance minimises on the held-out split.

An objective is a callable ``objective(logits, targets, groups) -> scalar`` on the *raw* model logits of held-out
samples (the tuned loss never touches them), differentiable in the logits. ``groups`` is an integer tensor ``(N,)`` of
sensitive-group indices, or ``None`` when the data has no groups. Pure PyTorch.

Objectives are resolved by name with :func:`get_objective` (registry :data:`OBJECTIVES`) or built as small
configurable objects (:class:`WorstGroup`, :class:`EqualOpportunityGap`, :class:`EqualizedOddsGap`, :class:`Blend`),
which Hydra instantiates from ``conf/objective/<name>.yaml``. Group objectives (``requires_groups = True``) called
with ``groups=None`` raise a ``ValueError`` saying how to provide the group labels.

**Estimator.** Every objective is a function of *per-cell mean losses* on the samples it is given (the AutoBalance
callback pools ``heldout_batches`` held-out batches before calling it):

.. math::
    L[g, y] = \frac{1}{n_{g,y}} \sum_{i:\ g_i = g,\ y_i = y} \mathrm{CE}(z_i, y_i),

where :math:`n_{g,y}` is the number of samples of class ``y`` in group ``g`` in the batch. A cell without samples is
*excluded* from every mean, max and min (never counted as a zero loss, which would bias the worst-group loss and the
gaps down, and never divided by zero). There is deliberately no running estimate of missing cells: a stale value
carries no gradient with respect to the current weights, so it could only shift the value, not the hypergradient; if
cells go missing, pool more held-out batches (``heldout_batches``) or raise the held-out fraction. Given the cells
present, each :math:`L[g, y]` is an unbiased estimate of the cell's population loss; the max over cells (and so the
worst-group loss and the gaps) is biased upward by the noise of small cells, less so with the smooth maximum.

* ``balanced`` (:func:`balanced_cross_entropy`): mean over the classes present of the per-class mean CE (groups
  pooled); the paper's balanced loss.
* ``worst_group`` (:class:`WorstGroup`): smooth maximum over the cells present,
  :math:`\operatorname{smax}_\tau(L) = \tau \log \frac{1}{C}\sum_c e^{L_c/\tau}` (``C`` = number of cells present).
  It lies between the mean (``τ → ∞``) and the max (``τ → 0``) and never exceeds the max, so adding cells does not
  inflate it (unlike ``τ·logsumexp``, which overshoots the max by up to ``τ·log C``). ``temperature=0`` or
  ``hard=True`` give the hard max. Cells are (group, class) pairs by default (the Waterbirds worst-group convention
  of :func:`~lightning_autobalance.metrics.worst_group_error`); ``over="group"`` uses groups (classes pooled) and
  ``over="class"`` classes (groups ignored: the worst-class loss, usable without groups).
* ``equal_opportunity_gap`` (:class:`EqualOpportunityGap`): the loss analogue of the true-positive-rate gap of
  :class:`~lightning_autobalance.metrics.EqualOpportunityGap`. For each *positive* class ``k`` (class 1 in a binary
  task, every class one-vs-rest otherwise), the gap over the groups ``g`` having samples of ``k`` of the positive
  loss :math:`P[g, k] = L[g, k]`: :math:`\max_g P[g, k] - \min_g P[g, k]`. Classes present in fewer than two groups
  have no gap and are excluded; the per-class gaps are reduced by ``"max"`` (default, as the metric) or ``"mean"``.
* ``equalized_odds_gap`` (:class:`EqualizedOddsGap`): per positive class ``k``, the larger of the positive-loss gap
  above and the gap of the *negative* loss :math:`N[g, k]`, the mean over samples of group ``g`` whose class is not
  ``k`` of :math:`-\log(1 - p_k(x))` (the one-vs-rest surrogate of the false-positive rate). In a binary task
  :math:`N[g, 1] = L[g, 0]`: the objective is the larger of the gaps of the positive and of the negative cells.
* With ``temperature > 0`` the gaps use smooth extremes, :math:`\operatorname{smax}_\tau - \operatorname{smin}_\tau`
  over groups (``smin_τ(L) = −smax_τ(−L)``); the default ``temperature=0`` is the hard max − min.
* ``blend`` (:class:`Blend`): :math:`(1 - \lambda) A + \lambda B`, e.g. balanced loss and a gap.

If no class has samples in two groups, a gap is undefined: the gap objectives then return a zero that is still
connected to the logits (a zero hypergradient, the step changes nothing) and warn.
"""

from __future__ import annotations

import difflib
import math
import warnings
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_autobalance.data.labels import cell_index
from lightning_autobalance.protocols import GroupObjective

__all__ = [
    "OBJECTIVES",
    "Blend",
    "EqualOpportunityGap",
    "EqualizedOddsGap",
    "Objective",
    "WorstGroup",
    "balanced_cross_entropy",
    "blend",
    "cell_mean_losses",
    "equal_opportunity_gap_loss",
    "equalized_odds_gap_loss",
    "get_objective",
    "requires_groups",
    "worst_group_loss",
]

#: The package's objective: what AutoBalance minimises on held-out samples, ``objective(logits, targets, groups) ->
#: scalar`` (``groups`` may be ``None``). The hypergradient engines' level objectives, functions of the parameter and
#: hyper-parameter dicts, are another type (:data:`lightning_autobalance.hypergrad.LevelObjective`).
Objective = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]
Over = Literal["class_group", "group", "class"]
Reduction = Literal["max", "mean"]

_OVERS = ("class_group", "group", "class")
_REDUCTIONS = ("max", "mean")


# ----------------------------------------------------------------------------------------------------------------
# Validation and per-cell means
# ----------------------------------------------------------------------------------------------------------------
def _check_inputs(logits: Tensor, targets: Tensor, groups: Tensor | None) -> None:
    if logits.ndim != 2:
        raise ValueError(f"logits must have shape (N, num_classes), got {tuple(logits.shape)}.")
    if targets.shape != (logits.shape[0],):
        raise ValueError(
            f"targets must have shape ({logits.shape[0]},) to match the logits, got {tuple(targets.shape)}."
        )
    if groups is not None:
        if groups.shape != targets.shape:
            raise ValueError(
                f"groups must have one entry per sample, shape {tuple(targets.shape)}, got {tuple(groups.shape)}."
            )
        if groups.is_floating_point() or groups.is_complex():
            raise ValueError(f"groups must hold integer group indices, got dtype {groups.dtype}: pass groups.long().")
        if groups.numel() and int(groups.min()) < 0:
            raise ValueError(f"group indices must be ≥ 0, found {int(groups.min())}: remap the groups to 0..G-1.")


def _require_groups(name: str, groups: Tensor | None) -> Tensor:
    if groups is None:
        raise ValueError(
            f"The {name} objective needs group labels: return (x, y, g) batches from the data set (and "
            "(logits, y, g) from autobalance_forward), or choose a class-only objective such as 'balanced' or "
            "WorstGroup(over='class')."
        )
    return groups


def _connected_zero(logits: Tensor) -> Tensor:
    """A zero with a (zero) gradient path to the logits, so autograd callers never see a detached scalar."""
    return logits.sum() * 0.0


def cell_mean_losses(
    losses: Tensor, targets: Tensor, groups: Tensor | None, num_classes: int, num_groups: int | None = None
) -> tuple[Tensor, Tensor]:
    """Mean of per-sample ``losses`` in every (group, class) cell, and which cells have samples.

    Args:
        losses: per-sample losses (N,).
        targets: class labels (N,) in ``[0, num_classes)``.
        groups: group labels (N,) or ``None`` (one group).
        num_classes: number of classes K.
        num_groups: number of groups G (default: max group + 1).

    Returns:
        ``(means, present)``, both of shape (G, K); ``means`` is 0 (not nan) where ``present`` is False, so that
        masked reductions have finite gradients.

    Example:
        >>> means, present = cell_mean_losses(
        ...     torch.tensor([1.0, 3.0, 5.0]), torch.tensor([0, 0, 1]), torch.tensor([0, 0, 1]), num_classes=2
        ... )
        >>> means
        tensor([[2., 0.],
                [0., 5.]])
        >>> present
        tensor([[ True, False],
                [False,  True]])
    """
    if groups is None:
        groups = torch.zeros_like(targets)
    if num_groups is None:
        num_groups = int(groups.max()) + 1 if groups.numel() else 1
    cells = cell_index(targets, groups, num_classes)
    size = num_groups * num_classes
    sums = torch.zeros(size, dtype=losses.dtype, device=losses.device).index_add(0, cells, losses)
    counts = torch.bincount(cells, minlength=size)
    present = counts > 0
    means = sums / counts.clamp(min=1).to(losses.dtype)
    return means.view(num_groups, num_classes), present.view(num_groups, num_classes)


def _smooth_max(values: Tensor, mask: Tensor, temperature: float, dim: int | None = None) -> Tensor:
    r"""Masked :math:`\tau \log \operatorname{mean} \exp(v / \tau)` (hard max for ``τ = 0``) over ``dim`` (all if None).

    Entries outside ``mask`` are ignored. A slice with no entry gives a finite meaningless value (callers exclude such
    slices): filling it with ``-inf`` would make the gradient of ``logsumexp`` nan even where it is multiplied by 0.
    """
    if dim is None:
        values, mask, dim = values.flatten(), mask.flatten(), 0
    fill = torch.where(mask.any(dim=dim, keepdim=True), -math.inf, 0.0).to(values.dtype).expand_as(values)
    if temperature == 0:
        return torch.where(mask, values, fill).amax(dim=dim)
    lse = torch.logsumexp(torch.where(mask, values / temperature, fill), dim=dim)
    count = mask.sum(dim=dim).clamp(min=1).to(values.dtype)
    return temperature * (lse - torch.log(count))


def _check_temperature(temperature: float) -> float:
    temperature = float(temperature)
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a finite number ≥ 0 (0 = hard max), got {temperature}.")
    return temperature


def _check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be 'max' or 'mean', got {reduction!r}.")


def _gap_inputs(
    name: str, logits: Tensor, targets: Tensor, groups: Tensor | None, reduction: str, temperature: float
) -> tuple[Tensor, float]:
    """Check the arguments of a gap objective: the group labels (required) and the checked temperature."""
    temperature = _check_temperature(temperature)
    _check_reduction(reduction)
    _check_inputs(logits, targets, groups)
    return _require_groups(name, groups), temperature


# ----------------------------------------------------------------------------------------------------------------
# Functional objectives
# ----------------------------------------------------------------------------------------------------------------
def balanced_cross_entropy(logits: Tensor, targets: Tensor, groups: Tensor | None = None) -> Tensor:
    """Mean over the classes present of the per-class mean cross-entropy (docs/references.md §1, "balanced loss").

    Equal to cross-entropy with inverse-frequency class weights on the given sample: every class present counts
    equally however many samples it has.

    Args:
        logits: raw model outputs (N, K).
        targets: labels (N,).
        groups: ignored (accepted for a uniform signature).

    Example:
        >>> logits = torch.tensor([[2.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
        >>> y = torch.tensor([0, 0, 1])
        >>> per_class = F.cross_entropy(logits, y, reduction="none")
        >>> bool(torch.isclose(balanced_cross_entropy(logits, y), (per_class[0] + per_class[2]) / 2))
        True
    """
    del groups
    per_sample = F.cross_entropy(logits, targets, reduction="none")
    num_classes = logits.shape[1]
    sums = torch.zeros(num_classes, dtype=per_sample.dtype, device=per_sample.device).index_add(0, targets, per_sample)
    counts = torch.bincount(targets, minlength=num_classes).to(per_sample.dtype)
    present = counts > 0
    return (sums[present] / counts[present]).mean()


def worst_group_loss(
    logits: Tensor,
    targets: Tensor,
    groups: Tensor | None,
    *,
    temperature: float = 0.1,
    hard: bool = False,
    over: Over = "class_group",
) -> Tensor:
    r"""Smooth maximum of the mean cross-entropy over the cells present (see the module docstring).

    Args:
        logits: raw model outputs (N, K).
        targets: labels (N,).
        groups: group labels (N,); may be ``None`` only with ``over="class"``.
        temperature: τ of :math:`\tau \log \frac{1}{C} \sum_c e^{L_c/\tau}`; 0 gives the hard max.
        hard: use the hard max whatever the temperature.
        over: cells are ``"class_group"`` (group, class) pairs, ``"group"`` groups or ``"class"`` classes.

    Example:
        >>> logits = torch.zeros(4, 2)  # CE = log 2 everywhere
        >>> y, g = torch.tensor([0, 1, 0, 1]), torch.tensor([0, 0, 1, 1])
        >>> round(float(worst_group_loss(logits, y, g)), 4) == round(math.log(2), 4)
        True
    """
    temperature = _check_temperature(temperature)
    if over not in _OVERS:
        raise ValueError(f"over must be one of {', '.join(_OVERS)}, got {over!r}.")
    _check_inputs(logits, targets, groups)
    if over != "class":
        groups = _require_groups(f"worst_group (over={over!r})", groups)
    per_sample = F.cross_entropy(logits, targets, reduction="none")
    num_classes = logits.shape[1]
    if over == "class":
        means, present = cell_mean_losses(per_sample, targets, None, num_classes)
    elif over == "group":
        means, present = cell_mean_losses(per_sample, torch.zeros_like(targets), groups, 1)
    else:
        means, present = cell_mean_losses(per_sample, targets, groups, num_classes)
    return _smooth_max(means, present, 0.0 if hard else temperature)


def _gaps(values: Tensor, present: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """Per column, (smooth) max − min over the rows present, and which columns have ≥ 2 rows present."""
    hi = _smooth_max(values, present, temperature, dim=0)
    lo = -_smooth_max(-values, present, temperature, dim=0)
    defined = present.sum(0) >= 2
    return torch.where(defined, hi - lo, torch.zeros_like(hi)), defined


def _reduce_gaps(gaps: Tensor, defined: Tensor, reduction: str, logits: Tensor, name: str) -> Tensor:
    if not bool(defined.any()):
        warnings.warn(
            f"{name}: no class has held-out samples in two groups, so the gap is undefined on this batch; returning 0 "
            "(no hypergradient). Pool more held-out batches (heldout_batches) or raise the held-out fraction.",
            UserWarning,
            stacklevel=3,
        )
        return _connected_zero(logits)
    kept = gaps[defined]
    return kept.max() if reduction == "max" else kept.mean()


def _positive_classes(num_classes: int) -> slice:
    """Class 1 in a binary task (fairlearn's convention, as in metrics.py), every class otherwise."""
    return slice(1, 2) if num_classes == 2 else slice(None)


def equal_opportunity_gap_loss(
    logits: Tensor, targets: Tensor, groups: Tensor | None, *, reduction: Reduction = "max", temperature: float = 0.0
) -> Tensor:
    """Gap over groups of the mean cross-entropy of the positive class (loss analogue of the TPR gap).

    Binary tasks: the positive class is 1. Multiclass: each class in turn, gaps reduced by ``reduction``.

    Args:
        logits: raw model outputs (N, K).
        targets: labels (N,).
        groups: group labels (N,) (required).
        reduction: ``"max"`` or ``"mean"`` over the positive classes with a defined gap.
        temperature: 0 for max − min over groups, > 0 for smooth max − smooth min.

    Example:
        >>> logits = torch.tensor([[0.0, 2.0], [0.0, -1.0], [0.0, 0.0]])
        >>> y, g = torch.tensor([1, 1, 0]), torch.tensor([0, 1, 1])
        >>> ce = F.cross_entropy(logits, y, reduction="none")
        >>> bool(torch.isclose(equal_opportunity_gap_loss(logits, y, g), ce[1] - ce[0]))
        True
    """
    groups, temperature = _gap_inputs("equal_opportunity_gap", logits, targets, groups, reduction, temperature)
    num_classes = logits.shape[1]
    per_sample = F.cross_entropy(logits, targets, reduction="none")
    means, present = cell_mean_losses(per_sample, targets, groups, num_classes)
    positive = _positive_classes(num_classes)
    gaps, defined = _gaps(means[:, positive], present[:, positive], temperature)
    return _reduce_gaps(gaps, defined, reduction, logits, "equal_opportunity_gap")


def _log_one_minus_softmax(logits: Tensor) -> Tensor:
    r""":math:`\log(1 - p_k(x))` for every sample and class, stable when :math:`p_k \to 1`.

    For the arg-max class it is the log-sum-exp of the other logits minus the full one (exact); for the others
    :math:`p_k \le 1/2` and ``log1p(-p_k)`` is well conditioned.
    """
    lse = torch.logsumexp(logits, dim=1, keepdim=True)
    top = logits.argmax(dim=1, keepdim=True)
    is_top = torch.zeros_like(logits, dtype=torch.bool).scatter(1, top, True)
    without_top = torch.logsumexp(logits.masked_fill(is_top, -math.inf), dim=1, keepdim=True) - lse
    prob = torch.softmax(logits, dim=1).masked_fill(is_top, 0.0)  # 0 where unused, so no inf/nan gradient
    return torch.where(is_top, without_top.expand_as(logits), torch.log1p(-prob))


def equalized_odds_gap_loss(
    logits: Tensor, targets: Tensor, groups: Tensor | None, *, reduction: Reduction = "max", temperature: float = 0.0
) -> Tensor:
    r"""Per positive class, the larger of the positive-loss gap and the negative-loss gap over groups.

    Positive loss of class ``k`` in group ``g``: mean CE of the samples of class ``k``; negative loss: mean of
    :math:`-\log(1 - p_k(x))` over the samples of the group whose class is not ``k`` (the one-vs-rest surrogates of
    the TPR and the FPR). Binary tasks: ``k = 1``, and the negative loss is the mean CE of class 0. The arguments are
    those of :func:`equal_opportunity_gap_loss`.

    Example:
        >>> logits = torch.tensor([[0.0, 2.0], [0.0, -1.0], [1.0, 0.0], [0.0, 0.0]])
        >>> y, g = torch.tensor([1, 1, 0, 0]), torch.tensor([0, 1, 0, 1])
        >>> ce = F.cross_entropy(logits, y, reduction="none")
        >>> expected = torch.maximum(ce[1] - ce[0], ce[3] - ce[2])
        >>> bool(torch.isclose(equalized_odds_gap_loss(logits, y, g), expected))
        True
    """
    groups, temperature = _gap_inputs("equalized_odds_gap", logits, targets, groups, reduction, temperature)
    num_classes = logits.shape[1]
    num_groups = int(groups.max()) + 1 if groups.numel() else 1
    positive = _positive_classes(num_classes)
    # positive losses: CE of the samples of class k = −log p_k
    per_sample = F.cross_entropy(logits, targets, reduction="none")
    pos_means, pos_present = cell_mean_losses(per_sample, targets, groups, num_classes, num_groups)
    pos_gaps, pos_defined = _gaps(pos_means[:, positive], pos_present[:, positive], temperature)
    # negative losses: −log(1 − p_k) on the samples of group g with y ≠ k
    neg_loss = -_log_one_minus_softmax(logits)  # (N, K)
    negative = ~F.one_hot(targets, num_classes).bool()  # (N, K)
    one_hot_g = F.one_hot(groups.long(), num_groups).to(neg_loss.dtype)  # (N, G)
    neg_sums = one_hot_g.T @ (neg_loss * negative)  # (G, K)
    neg_counts = one_hot_g.T @ negative.to(neg_loss.dtype)
    neg_present = neg_counts > 0
    neg_means = neg_sums / neg_counts.clamp(min=1)
    neg_gaps, neg_defined = _gaps(neg_means[:, positive], neg_present[:, positive], temperature)
    # per class: the larger gap among those defined
    gaps = torch.where(
        pos_defined & neg_defined, torch.maximum(pos_gaps, neg_gaps), torch.where(pos_defined, pos_gaps, neg_gaps)
    )
    return _reduce_gaps(gaps, pos_defined | neg_defined, reduction, logits, "equalized_odds_gap")


# ----------------------------------------------------------------------------------------------------------------
# Configurable objective objects (Hydra-friendly)
# ----------------------------------------------------------------------------------------------------------------
class WorstGroup:
    """Smooth worst-group cross-entropy; callable ``(logits, targets, groups) -> scalar``.

    See :func:`worst_group_loss`. Requires group labels unless ``over="class"``.

    Args:
        temperature: τ of the smooth maximum (0 = hard max); 0.1 by default, sharp for CE values of order 1.
        hard: use the hard max whatever the temperature.
        over: ``"class_group"`` (default), ``"group"`` or ``"class"``.

    Example:
        >>> objective = WorstGroup(hard=True)
        >>> logits = torch.tensor([[3.0, 0.0], [0.0, 0.0]])
        >>> value = objective(logits, torch.tensor([0, 0]), torch.tensor([0, 1]))  # cells: CE(3 vs 0), CE(0 vs 0)
        >>> round(float(value), 4) == round(math.log(2), 4)
        True
    """

    def __init__(self, temperature: float = 0.1, hard: bool = False, over: Over = "class_group") -> None:
        self.temperature = _check_temperature(temperature)
        if over not in _OVERS:
            raise ValueError(f"over must be one of {', '.join(_OVERS)}, got {over!r}.")
        self.hard, self.over = bool(hard), over
        self.requires_groups = over != "class"

    def __call__(self, logits: Tensor, targets: Tensor, groups: Tensor | None = None) -> Tensor:
        return worst_group_loss(logits, targets, groups, temperature=self.temperature, hard=self.hard, over=self.over)

    def __repr__(self) -> str:
        return f"WorstGroup(temperature={self.temperature}, hard={self.hard}, over={self.over!r})"


class _GapObjective:
    requires_groups = True
    _function: Callable[..., Tensor]

    def __init__(self, reduction: Reduction = "max", temperature: float = 0.0) -> None:
        _check_reduction(reduction)
        self.reduction, self.temperature = reduction, _check_temperature(temperature)

    def __call__(self, logits: Tensor, targets: Tensor, groups: Tensor | None = None) -> Tensor:
        return type(self)._function(logits, targets, groups, reduction=self.reduction, temperature=self.temperature)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(reduction={self.reduction!r}, temperature={self.temperature})"


class EqualOpportunityGap(_GapObjective):
    """Equal-opportunity gap of the cross-entropy over groups; see :func:`equal_opportunity_gap_loss`.

    Args:
        reduction: ``"max"`` (default) or ``"mean"`` over positive classes (multiclass only).
        temperature: 0 (default) for max − min over groups, > 0 for the smooth version.

    Example:
        >>> EqualOpportunityGap()(torch.zeros(4, 2), torch.tensor([1, 1, 0, 0]), torch.tensor([0, 1, 0, 1]))
        tensor(0.)
    """

    _function = staticmethod(equal_opportunity_gap_loss)


class EqualizedOddsGap(_GapObjective):
    """Equalized-odds gap of the cross-entropy over groups; see :func:`equalized_odds_gap_loss`.

    Takes the arguments of :class:`EqualOpportunityGap` (``reduction``, ``temperature``).

    Example:
        >>> objective = EqualizedOddsGap(reduction="mean")
        >>> objective, objective(torch.zeros(4, 2), torch.tensor([1, 1, 0, 0]), torch.tensor([0, 1, 0, 1]))
        (EqualizedOddsGap(reduction='mean', temperature=0.0), tensor(0.))
    """

    _function = staticmethod(equalized_odds_gap_loss)


class Blend:
    r"""Convex combination :math:`(1 - \lambda) A + \lambda B` of two objectives.

    Args:
        a: first objective, by name or callable (default ``"balanced"``).
        b: second objective, by name or callable (default ``"equal_opportunity_gap"``).
        lam: weight λ of ``b``, in [0, 1].

    Example:
        >>> objective = Blend("balanced", "worst_group", lam=0.25)
        >>> objective
        Blend(a=balanced_cross_entropy, b=WorstGroup(temperature=0.1, hard=False, over='class_group'), lam=0.25)
    """

    def __init__(self, a: str | Objective = "balanced", b: str | Objective = "equal_opportunity_gap", lam: float = 0.5):
        lam = float(lam)
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"The blend weight lam must lie in [0, 1], got {lam}.")
        self.a, self.b, self.lam = get_objective(a), get_objective(b), lam
        self.requires_groups = requires_groups(self.a) or requires_groups(self.b)

    def __call__(self, logits: Tensor, targets: Tensor, groups: Tensor | None = None) -> Tensor:
        if self.lam == 0.0:
            return self.a(logits, targets, groups)
        if self.lam == 1.0:
            return self.b(logits, targets, groups)
        return (1.0 - self.lam) * self.a(logits, targets, groups) + self.lam * self.b(logits, targets, groups)

    def __repr__(self) -> str:
        def name(o: Objective) -> str:
            return getattr(o, "__name__", None) or repr(o)

        return f"Blend(a={name(self.a)}, b={name(self.b)}, lam={self.lam})"


def blend(a: str | Objective, b: str | Objective, lam: float) -> Blend:
    """``(1 − lam) · a + lam · b``; shorthand for :class:`Blend`.

    Example:
        >>> blend("balanced", "equalized_odds_gap", 0.0)(torch.zeros(2, 2), torch.tensor([0, 1]), None)
        tensor(0.6931)
    """
    return Blend(a, b, lam)


OBJECTIVES: dict[str, Objective] = {
    "balanced": balanced_cross_entropy,
    "worst_group": WorstGroup(),
    "worst_class": WorstGroup(over="class"),
    "equal_opportunity_gap": EqualOpportunityGap(),
    "equalized_odds_gap": EqualizedOddsGap(),
}


def get_objective(objective: str | Objective) -> Objective:
    """Resolve an objective given by name (``"balanced"``, ``"worst_group"``, ...) or as a callable.

    Example:
        >>> get_objective("worst_group")
        WorstGroup(temperature=0.1, hard=False, over='class_group')
    """
    if callable(objective):
        return objective
    if objective not in OBJECTIVES:
        close = difflib.get_close_matches(str(objective), list(OBJECTIVES), n=3)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(
            f"Unknown objective {objective!r}: choose one of {', '.join(OBJECTIVES)} or pass a callable.{hint}"
        )
    return OBJECTIVES[objective]


def requires_groups(objective: object) -> bool:
    """Whether an objective needs group labels: its declared ``requires_groups`` (:class:`GroupObjective`), else no.

    Example:
        >>> requires_groups(get_objective("worst_group")), requires_groups(get_objective("balanced"))
        (True, False)
    """
    return isinstance(objective, GroupObjective) and bool(objective.requires_groups)
