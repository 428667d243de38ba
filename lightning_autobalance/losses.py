"""The AutoBalance loss family: cross-entropy with per-class (or per class × group) logit scales, shifts and weights.

For a sample ``(x, y, g)`` with logits ``f(x)`` the loss is (PAPERS.md §1)::

    ℓ(x, y, g) = − ω[g, y] · log softmax_y( Δ[g, :] ⊙ f(x) + ι[g, :] )

* ``Δ`` (delta) — multiplicative logit scale, kept positive;
* ``ι`` (iota) — additive logit shift;
* ``ω`` (omega) — loss weight, kept positive.

**Personalized augmentation** (PAPERS.md §1, the paper's class-personalized augmentation). Two more per (group,
class) hyperparameters act on the logits of *training* samples before Δ and ι (only while the loss is in training
mode; they are 0, i.e. off, unless set or learned)::

    f̃_i = (1 − m[g_i, y_i]) · f(x_i) + m[g_i, y_i] · f(x_π(i)) + σ[g_i, y_i] · ε_i,   ε_i ~ N(0, I_K)

* ``σ`` (noise) — scale of additive Gaussian noise on the logits, the output features of the network;
* ``m`` (mix) — mixing strength in [0, ½): each sample's logits are mixed with those of a random partner π(i) of
  the batch, keeping the sample's own label (for a linear head this is mixup of the penultimate features).

Both are augmentations of the sample's neighbourhood whose size depends on its class: training to classify every
point within a class-dependent radius of x correctly is what a class-dependent margin asks for, so a larger σ or m for
a class acts like a larger margin for it (the paper's equivalence between personalized augmentation radius and
per-class margin). They are differentiable in σ and m, so the same hypergradient tunes them
(``learnable=["noise", "mix"]``).

Hand-tuned losses of the literature are members of the family and are available as presets
(:meth:`ParametricCrossEntropy.from_preset`, :func:`make_loss` for Hydra); AutoBalance starts from one of them and
tunes the learnable parameters by hypergradient descent. Common baselines *outside* the family (LDAM, focal loss) are
in :mod:`lightning_autobalance.baselines`.

This module is pure PyTorch (no Lightning).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "AUGMENTATION_KINDS",
    "HPARAM_KINDS",
    "PRESETS",
    "ParametricCrossEntropy",
    "check_inputs",
    "check_logits",
    "effective_number_weights",
    "frequency_blocks",
    "make_loss",
    "preset_values",
]

HPARAM_KINDS: tuple[str, ...] = ("delta", "iota", "omega", "noise", "mix")
AUGMENTATION_KINDS: tuple[str, ...] = ("noise", "mix")
MIX_MAX = 0.5
#: initial σ and m of an augmentation kind that is learnable but not given (0 would be a fixed point: raw = −∞)
LEARNABLE_AUGMENTATION_INIT: dict[str, float] = {"noise": 0.5, "mix": 0.1}
PRESETS: tuple[str, ...] = ("ce", "weighted", "class_balanced", "la", "cdt", "vs", "balanced_softmax")
DeltaParameterization = Literal["sigmoid", "exp"]
ExpansionMode = Literal["constant", "linear"]

_Counts = Sequence[float] | Sequence[Sequence[float]] | Tensor


def as_counts(class_counts: Sequence[float] | Tensor, num_classes: int | None = None) -> Tensor:
    """Validated per-class counts as a float64 vector (positive, one per class); errors name the problem."""
    counts = torch.as_tensor(class_counts, dtype=torch.float64)
    if counts.dim() != 1:
        raise ValueError(
            f"class_counts must be a 1-D sequence of per-class sample counts, got shape {tuple(counts.shape)}."
        )
    if num_classes is not None and counts.numel() != num_classes:
        raise ValueError(
            f"class_counts has {counts.numel()} entries but num_classes={num_classes}: pass one count per class."
        )
    if not torch.isfinite(counts).all() or (counts < 0).any():
        raise ValueError(f"class_counts must be finite and non-negative, got {counts.tolist()}.")
    return counts


def as_group_counts(group_counts: _Counts) -> Tensor:
    """Validated (group, class) counts as a float64 (G, K) table; errors name the problem."""
    counts = torch.as_tensor(group_counts, dtype=torch.float64)
    if counts.dim() != 2 or counts.shape[0] < 1 or counts.shape[1] < 2:
        raise ValueError(
            "group_counts must be a (num_groups, num_classes) table of training samples per (group, class) cell, "
            f"got shape {tuple(counts.shape)}."
        )
    if not torch.isfinite(counts).all() or (counts < 0).any():
        raise ValueError(f"group_counts must be finite and non-negative, got {counts.tolist()}.")
    return counts


def _check_preset_options(preset: str, tau: float, gamma: float, beta: float) -> None:
    if preset not in PRESETS:
        raise ValueError(f"Unknown loss preset {preset!r}: choose one of {', '.join(PRESETS)}.")
    if not (isinstance(tau, (int, float)) and math.isfinite(tau) and tau >= 0):
        raise ValueError(
            f"tau must be a finite number ≥ 0 (the logit-adjustment strength of 'la' / 'vs'; 1 is the published "
            f"value, 0 turns the adjustment off), got {tau!r}."
        )
    if isinstance(gamma, bool) or not (isinstance(gamma, (int, float)) and math.isfinite(gamma)):
        raise ValueError(
            f"gamma must be a finite number (Δ_y = (n_y / n_max)^γ of 'cdt' / 'vs': γ > 0 shrinks the logits of rare "
            f"classes, γ < 0 enlarges them; 0 turns it off, 0.3 is VS's default), got {gamma!r}."
        )
    if not (isinstance(beta, (int, float)) and 0 <= beta < 1):
        raise ValueError(
            f"beta must lie in [0, 1) (the effective-number parameter of 'class_balanced': 0 gives plain "
            f"cross-entropy, values close to 1 such as 0.9999 approach inverse-frequency weights), got {beta!r}."
        )


def effective_number_weights(counts: Sequence[float] | Tensor, beta: float) -> Tensor:
    """Unnormalised class-balanced weights (1 − β) / (1 − β^n) of Cui et al. 2019, elementwise in ``counts``.

    ``(1 − β^n) / (1 − β)`` is the *effective number* of ``n`` samples; the weight is its inverse. Computed as
    ``(1 − β) / −expm1(n · log β)`` in float64, so β close to 1 keeps its precision.

    Args:
        counts: positive sample counts, any shape.
        beta: β in [0, 1).

    Returns:
        Float64 tensor of the shape of ``counts``.

    Example:
        >>> effective_number_weights([1.0, 2.0], beta=0.5).tolist()
        [1.0, 0.6666666666666666]
    """
    if not (isinstance(beta, (int, float)) and 0 <= beta < 1):
        raise ValueError(f"beta must lie in [0, 1), got {beta!r}.")
    counts = torch.as_tensor(counts, dtype=torch.float64)
    if (counts <= 0).any():
        raise ValueError(f"Class-balanced weights need positive counts, got {counts.tolist()}.")
    log_beta = torch.log(torch.tensor(float(beta), dtype=torch.float64))  # −inf for β = 0: every weight is 1
    return (1.0 - beta) / -torch.expm1(counts * log_beta)


def preset_values(
    preset: str,
    class_counts: _Counts,
    *,
    tau: float = 1.0,
    gamma: float = 0.3,
    beta: float = 0.9999,
) -> dict[str, Tensor]:
    """Per-class (Δ, ι, ω) of a named member of the loss family.

    With ``n_y`` the training count of class ``y``, ``n = Σ_y n_y``, ``π_y = n_y / n`` and ``n_max = max_y n_y``:

    * ``ce`` — cross-entropy: Δ = 1, ι = 0, ω = 1.
    * ``weighted`` — weighted cross-entropy with the ratio of priors: ω_y ∝ 1/π_y, normalised so that
      Σ_y π_y ω_y = 1 (the expected weight of a training sample is 1, so the effective learning rate is unchanged).
    * ``class_balanced`` — class-balanced loss (Cui et al. 2019, "Class-Balanced Loss Based on Effective Number of
      Samples"): ω_y ∝ (1 − β) / (1 − β^{n_y}), the inverse effective number, normalised like ``weighted``
      (Σ_y π_y ω_y = 1; Cui et al. normalise to Σ_y ω_y = K, which only rescales the loss). β = 0 gives ``ce``,
      β → 1 gives ``weighted``. The only preset that depends on the absolute counts, not just their ratios: scaling
      every count by c leaves it unchanged only together with β → β^{1/c}.
    * ``la`` — logit adjustment (Menon et al. 2021): ι_y = τ · log π_y.
    * ``cdt`` — class-dependent temperatures (Ye et al. 2020): Δ_y = (n_y / n_max)^γ.
    * ``vs`` — vector-scaling loss (Kini et al. 2021): Δ_y = (n_y / n_max)^γ and ι_y = τ · log π_y.
    * ``balanced_softmax`` — Balanced Softmax (Ren et al. 2020): the softmax of ``f + log n_y``, i.e.
      ``−log(n_y e^{f_y} / Σ_j n_j e^{f_j})``, so ι_y = log π_y (the constant log n cancels in the softmax). It is
      the same loss as ``la`` with τ = 1, kept as its own name for the literature; it ignores ``tau``.

    **Group-sensitive presets.** ``class_counts`` may be a (G, K) table of (group, class) counts ``n_{g,y}``: every
    (group, class) cell is then treated like a class of the formulas above, with the joint prior
    ``π_{g,y} = n_{g,y} / n`` and ``n_max = max_{g,y} n_{g,y}``. Row ``g`` is the preset for group ``g``; with G = 1
    it is exactly the class preset. For ι the joint and the conditional prior π_{y|g} give the same loss (they differ
    by log π_g, constant within a row, which the softmax cancels); weights are normalised over all cells,
    Σ_{g,y} π_{g,y} ω_{g,y} = 1.

    Args:
        preset: one of :data:`PRESETS`.
        class_counts: training samples per class, shape (K,), or per (group, class) cell, shape (G, K).
        tau: logit-adjustment strength τ ≥ 0 (``la``, ``vs``).
        gamma: temperature exponent γ (``cdt``, ``vs``; γ < 0 gives rare classes Δ > 1, which needs
            ``delta_max`` above ρ^(−γ) or ``delta_parameterization="exp"``).
        beta: effective-number parameter β in [0, 1) (``class_balanced``).

    Returns:
        ``{"delta", "iota", "omega"}`` float64 tensors of the shape of ``class_counts``.

    Raises:
        ValueError: unknown preset, τ / γ negative, β outside [0, 1), or a zero count for a preset that divides by
            it, takes its logarithm or a power of it (every preset except ``ce``).

    Example:
        >>> v = preset_values("la", [90, 10], tau=1.0)
        >>> [round(x, 4) for x in v["iota"].tolist()]
        [-0.1054, -2.3026]
    """
    _check_preset_options(preset, tau, gamma, beta)
    raw = torch.as_tensor(class_counts, dtype=torch.float64)
    counts = as_group_counts(raw) if raw.dim() == 2 else as_counts(raw)
    if preset != "ce" and (counts <= 0).any():
        if counts.dim() == 1:
            empty = [i for i, c in enumerate(counts.tolist()) if c <= 0]
            raise ValueError(
                f"Preset {preset!r} needs every class to have training samples, but classes {empty} have none: "
                "drop those classes, use preset='ce', or pass counts measured on the data you train on."
            )
        cells = [(g, y) for g, y in torch.nonzero(counts <= 0).tolist()]
        raise ValueError(
            f"Preset {preset!r} divides by, or takes the logarithm or a power of, each (group, class) count, but the "
            f"(group, class) cells {cells} are empty: merge or drop the empty groups / classes, initialise from the "
            "class counts only (group_counts=None repeats the class preset for every group), or use preset='ce'."
        )
    ones = torch.ones_like(counts)
    delta, iota, omega = ones.clone(), torch.zeros_like(counts), ones.clone()
    if preset == "ce":
        return {"delta": delta, "iota": iota, "omega": omega}
    prior = counts / counts.sum()
    if preset == "weighted":
        omega = 1.0 / prior
        omega = omega / (prior * omega).sum()
    if preset == "class_balanced":
        omega = effective_number_weights(counts, beta)
        omega = omega / (prior * omega).sum()
    if preset in ("la", "vs"):
        iota = tau * torch.log(prior)
    if preset == "balanced_softmax":
        iota = torch.log(prior)
    if preset in ("cdt", "vs"):
        delta = (counts / counts.max()) ** gamma
    return {"delta": delta, "iota": iota, "omega": omega}


def frequency_blocks(class_counts: Sequence[float] | Tensor, block_size: int) -> Tensor:
    """Map each class to a block of ``block_size`` classes of similar frequency.

    Classes are sorted by decreasing training count (ties by class index) and cut into consecutive blocks, so the
    ``block_size`` most frequent classes share block 0 (PAPERS.md §1: one parameter per block keeps the number of
    hyperparameters small against the held-out set).

    Args:
        class_counts: training samples per class, shape (K,).
        block_size: number of classes per block (C ≥ 1).

    Returns:
        Long tensor (K,) with the block index of each class.

    Example:
        >>> frequency_blocks([5, 50, 20, 1], block_size=2).tolist()
        [1, 0, 0, 1]
    """
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive number of classes, got {block_size!r}.")
    counts = as_counts(class_counts)
    order = sorted(range(counts.numel()), key=lambda k: (-float(counts[k]), k))
    blocks = torch.empty(counts.numel(), dtype=torch.long)
    for rank, k in enumerate(order):
        blocks[k] = rank // block_size
    return blocks


def check_logits(logits: Tensor, num_classes: int) -> None:
    """Raise a ValueError that names the fix unless ``logits`` has shape (N, num_classes)."""
    if logits.dim() != 2 or logits.shape[1] != num_classes:
        raise ValueError(
            f"The loss was built for num_classes={num_classes} but the logits have shape "
            f"{tuple(logits.shape)}: make the model output (batch, {num_classes}) logits or build the "
            f"loss with num_classes={logits.shape[-1] if logits.dim() else '?'}."
        )


def check_inputs(
    logits: Tensor, targets: Tensor, groups: Tensor | None, num_classes: int, num_groups: int | None = 1
) -> None:
    """Validate a ``(logits, targets, groups)`` call of a loss; raise a :class:`ValueError` that names the fix.

    Args:
        logits: model outputs, expected shape (N, num_classes).
        targets: integer class labels, expected shape (N,) with values in [0, num_classes).
        groups: integer group labels of shape (N,) in [0, num_groups), or ``None``.
        num_classes: the number of classes the loss was built for.
        num_groups: the number of groups the loss was built for; ``None`` for losses that ignore groups.
    """
    check_logits(logits, num_classes)
    if targets.shape != (logits.shape[0],) or targets.is_floating_point():
        raise ValueError(
            f"targets must be integer class labels of shape ({logits.shape[0]},), got dtype {targets.dtype} "
            f"and shape {tuple(targets.shape)}."
        )
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= num_classes):
        raise ValueError(
            f"Labels must lie in [0, {num_classes}), got values in [{int(targets.min())}, "
            f"{int(targets.max())}]: remap the labels or set num_classes to the number of classes."
        )
    if num_groups is None:
        return
    if groups is None:
        if num_groups > 1:
            raise ValueError(
                f"This loss has num_groups={num_groups} but no groups were passed: return (x, y, g) "
                "batches or build the loss with num_groups=1."
            )
        return
    if groups.shape != targets.shape or groups.is_floating_point():
        raise ValueError(
            f"groups must be integer labels with the shape of targets {tuple(targets.shape)}, got dtype "
            f"{groups.dtype} and shape {tuple(groups.shape)}."
        )
    if groups.numel() and (int(groups.min()) < 0 or int(groups.max()) >= num_groups):
        raise ValueError(
            f"Group labels must lie in [0, {num_groups}), got values in [{int(groups.min())}, "
            f"{int(groups.max())}]: build the loss with num_groups={int(groups.max()) + 1}."
        )


def reduce_loss(per_sample: Tensor, reduction: str) -> Tensor:
    """Per-sample losses reduced by ``"mean"``, ``"sum"`` or ``"none"`` (the losses' ``reduction`` argument)."""
    if reduction == "none":
        return per_sample
    if reduction == "sum":
        return per_sample.sum()
    if reduction == "mean":
        return per_sample.mean()
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}.")


def _as_learnable(learnable: Iterable[str] | str) -> tuple[str, ...]:
    kinds = (learnable,) if isinstance(learnable, str) else tuple(learnable)
    unknown = sorted(set(kinds) - set(HPARAM_KINDS))
    if unknown:
        raise ValueError(
            f"Unknown learnable kinds {unknown}: choose any subset of {', '.join(HPARAM_KINDS)} "
            "(e.g. learnable=['delta', 'iota'], the paper's choice), or () for a fixed loss."
        )
    return tuple(k for k in HPARAM_KINDS if k in kinds)


class ParametricCrossEntropy(nn.Module):
    """Cross-entropy with per-class (or per (group, class)) logit scale Δ, logit shift ι and weight ω.

    ``loss = mean_i( −ω[g_i, y_i] · log softmax(Δ[g_i] ⊙ logits_i + ι[g_i])[y_i] )``

    Parameters are stored *raw*, one value per (group, block) with ``blocks`` of classes that share a value
    (by default each class is its own block):

    * Δ = ``delta_max · sigmoid(raw)`` (``delta_parameterization="sigmoid"``, bounded in (0, delta_max), the
      reference implementation's choice) or ``exp(raw)`` (``"exp"``, unbounded positive);
    * ι = raw;
    * ω = ``exp(raw)``;
    * σ (noise) = ``exp(raw)`` and m (mix) = ``MIX_MAX · sigmoid(raw)``, with raw = −∞ for 0 (augmentation off).

    The kinds named in ``learnable`` (any subset of Δ, ι, ω, σ, m) are :class:`~torch.nn.Parameter` s (the
    hyperparameters α that AutoBalance tunes); the others are buffers. Both are in :meth:`state_dict`, so the loss
    saves and restores exactly.

    Args:
        num_classes: number of classes K (the width of the logits).
        num_groups: number of sensitive groups G; parameters have shape (G, blocks).
        delta: initial Δ per class, shape (K,) or (G, K); default 1.
        iota: initial ι per class, shape (K,) or (G, K); default 0.
        omega: initial ω per class, shape (K,) or (G, K); default 1.
        noise: initial logit-noise scale σ ≥ 0 per class, shape (K,) or (G, K); default 0 (off), or 0.5 when
            learnable.
        mix: initial mixing strength m in [0, ½) per class, shape (K,) or (G, K); default 0 (off), or 0.1 when
            learnable.
        learnable: which of ``"delta"``, ``"iota"``, ``"omega"``, ``"noise"``, ``"mix"`` are hyperparameters (a
            single name is accepted).
        blocks: block index of each class, shape (K,) (see :func:`frequency_blocks`); initial values of classes
            sharing a block are averaged.
        delta_parameterization: ``"sigmoid"`` (bounded) or ``"exp"`` (unbounded positive).
        delta_max: upper bound of Δ for the sigmoid parameterisation. The default 2 puts Δ = 1 at raw = 0, so every
            preset is represented exactly; the reference code uses 1 (Δ = sigmoid(raw), starting at sigmoid(1)).

    Example:
        >>> loss_fn = ParametricCrossEntropy(3)
        >>> logits, y = torch.randn(4, 3), torch.tensor([0, 1, 2, 1])
        >>> torch.allclose(loss_fn(logits, y), F.cross_entropy(logits, y))
        True
    """

    def __init__(
        self,
        num_classes: int,
        num_groups: int = 1,
        *,
        delta: Sequence[float] | Tensor | None = None,
        iota: Sequence[float] | Tensor | None = None,
        omega: Sequence[float] | Tensor | None = None,
        noise: Sequence[float] | Tensor | None = None,
        mix: Sequence[float] | Tensor | None = None,
        learnable: Iterable[str] | str = (),
        blocks: Sequence[int] | Tensor | None = None,
        delta_parameterization: DeltaParameterization = "sigmoid",
        delta_max: float = 2.0,
    ) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer ≥ 2, got {num_classes!r}.")
        if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1:
            raise ValueError(f"num_groups must be an integer ≥ 1, got {num_groups!r}.")
        if delta_parameterization not in ("sigmoid", "exp"):
            raise ValueError(
                f"delta_parameterization must be 'sigmoid' (Δ = delta_max·sigmoid(raw), bounded) or 'exp' "
                f"(Δ = exp(raw), unbounded), got {delta_parameterization!r}."
            )
        if not (isinstance(delta_max, (int, float)) and math.isfinite(delta_max) and delta_max > 0):
            raise ValueError(f"delta_max must be a finite positive number, got {delta_max!r}.")
        self.num_classes = num_classes
        self.num_groups = num_groups
        self.delta_parameterization: DeltaParameterization = delta_parameterization
        self.delta_max = float(delta_max)
        self.learnable = _as_learnable(learnable)

        block_index = torch.arange(num_classes) if blocks is None else torch.as_tensor(blocks, dtype=torch.long)
        if block_index.shape != (num_classes,):
            raise ValueError(f"blocks must give one block index per class, shape ({num_classes},).")
        if block_index.min() < 0:
            raise ValueError("blocks must be non-negative block indices.")
        num_blocks = int(block_index.max()) + 1
        if torch.bincount(block_index, minlength=num_blocks).min() == 0:
            raise ValueError(f"blocks must use every index 0..{num_blocks - 1} at least once.")
        self.register_buffer("block_index", block_index, persistent=True)
        self.num_blocks = num_blocks

        initial = {"delta": delta, "iota": iota, "omega": omega, "noise": noise, "mix": mix}
        defaults = {"delta": 1.0, "iota": 0.0, "omega": 1.0, "noise": 0.0, "mix": 0.0}
        for kind in AUGMENTATION_KINDS:
            if kind in self.learnable:
                defaults[kind] = LEARNABLE_AUGMENTATION_INIT[kind]
        # training-mode augmentation draws: seeded by (augmentation_seed, call counter, rank), so a resumed run
        # (the counter is in the state dict) draws the same noise; hyper-steps use fixed_augmentation(seed)
        self.augmentation_seed = 0
        self._fixed_seed: int | None = None
        self.register_buffer("augment_calls", torch.zeros((), dtype=torch.long), persistent=True)
        # added to the logits at prediction time only (see shift_predictions); not part of the training loss, so
        # not in the state dict: the learned-loss file carries it
        self.register_buffer("prediction_shift", torch.zeros(num_groups, num_classes), persistent=False)
        for kind in HPARAM_KINDS:
            values = self._per_group_class(kind, initial[kind], defaults[kind])
            raw = self._to_raw(kind, self._average_blocks(values))
            if kind in self.learnable:
                self.register_parameter(f"raw_{kind}", nn.Parameter(raw))
            else:
                self.register_buffer(f"raw_{kind}", raw)

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def from_preset(
        cls,
        preset: str,
        class_counts: Sequence[float] | Tensor | None = None,
        *,
        group_counts: Sequence[Sequence[float]] | Tensor | None = None,
        tau: float = 1.0,
        gamma: float = 0.3,
        beta: float = 0.9999,
        num_groups: int | None = None,
        learnable: Iterable[str] | str = (),
        block_size: int = 1,
        delta_parameterization: DeltaParameterization = "sigmoid",
        delta_max: float = 2.0,
        noise: float | Sequence[float] | Tensor | None = None,
        mix: float | Sequence[float] | Tensor | None = None,
    ) -> ParametricCrossEntropy:
        """Build the loss initialised at a named preset (see :func:`preset_values` for every formula).

        Without ``group_counts`` the class preset is repeated for each of the ``num_groups`` groups. With
        ``group_counts`` (a (G, K) table) each group's row is the preset computed on the (group, class) cells with
        the joint prior π_{g,y} = n_{g,y} / n (see :func:`preset_values`); with G = 1 this is the class preset.

        Args:
            preset: one of :data:`PRESETS` (``ce``, ``weighted``, ``class_balanced``, ``la``, ``cdt``, ``vs``,
                ``balanced_softmax``).
            class_counts: training samples per class, shape (K,); may be omitted when ``group_counts`` is given
                (it is then ``group_counts.sum(0)``), and must equal that sum when both are given.
            group_counts: training samples per (group, class), shape (G, K), for group-sensitive initialisation.
            tau: logit-adjustment strength τ ≥ 0.
            gamma: CDT / VS exponent γ (negative: Δ of rare classes above 1).
            beta: class-balanced β in [0, 1).
            num_groups: number of groups G; default 1, or G of ``group_counts`` (which it must then equal).
            learnable: which kinds AutoBalance tunes.
            block_size: classes per frequency block sharing one parameter (1 = per class); blocks follow the class
                counts (summed over groups).
            delta_parameterization: ``"sigmoid"`` or ``"exp"``.
            delta_max: bound of Δ with the sigmoid parameterisation.
            noise: initial personalized-augmentation noise σ (a number for every class, or per class / cell);
                default 0, or 0.5 when learnable.
            mix: initial personalized mixing strength m in [0, ½); default 0, or 0.1 when learnable.

        Returns:
            The initialised loss.

        Example:
            >>> loss_fn = ParametricCrossEntropy.from_preset("vs", [100, 10], learnable=["delta", "iota"])
            >>> [round(x, 3) for x in loss_fn.delta()[0].tolist()]
            [1.0, 0.501]
            >>> loss_fn = ParametricCrossEntropy.from_preset("la", group_counts=[[80, 5], [10, 5]])
            >>> [[round(x, 3) for x in row] for row in loss_fn.iota().tolist()]
            [[-0.223, -2.996], [-2.303, -2.996]]
        """
        _check_preset_options(preset, tau, gamma, beta)
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"block_size must be a positive number of classes, got {block_size!r}.")
        if group_counts is None:
            if class_counts is None:
                raise ValueError(
                    f"Preset {preset!r} needs the training counts: pass class_counts (K,) or group_counts (G, K)."
                )
            counts = as_counts(class_counts)
            cells = counts
            groups = 1 if num_groups is None else num_groups
        else:
            cells = as_group_counts(group_counts)
            totals = cells.sum(0)
            if class_counts is not None:
                counts = as_counts(class_counts)
                if counts.shape != totals.shape or not torch.allclose(counts, totals, rtol=1e-9, atol=0):
                    raise ValueError(
                        f"class_counts {counts.tolist()} differ from the class totals of group_counts "
                        f"{totals.tolist()}: pass counts of the same data, or only group_counts."
                    )
            counts = totals
            groups = cells.shape[0]
            if num_groups is not None and num_groups != groups:
                raise ValueError(
                    f"num_groups={num_groups} but group_counts has {groups} rows (one per group): pass a "
                    f"({num_groups}, K) group_counts table or drop num_groups."
                )
        values = preset_values(preset, cells, tau=tau, gamma=gamma, beta=beta)
        blocks = frequency_blocks(counts, block_size) if block_size > 1 else None
        if delta_parameterization == "sigmoid" and bool((values["delta"] >= delta_max).any()):
            raise ValueError(
                f"Preset {preset!r} needs Δ up to {float(values['delta'].max()):.3g} but delta_max={delta_max}: "
                "raise delta_max or use delta_parameterization='exp'."
            )
        augmentation = {
            kind: torch.full(cells.shape, float(value), dtype=torch.float64)
            if isinstance(value, (int, float))
            else value
            for kind, value in (("noise", noise), ("mix", mix))
        }
        return cls(
            counts.numel(),
            groups,
            **augmentation,  # type: ignore[arg-type]
            learnable=learnable,
            blocks=blocks,
            delta_parameterization=delta_parameterization,
            delta_max=delta_max,
            **values,
        )

    def _per_group_class(self, kind: str, values: Sequence[float] | Tensor | None, default: float) -> Tensor:
        shape = (self.num_groups, self.num_classes)
        if values is None:
            return torch.full(shape, default, dtype=torch.float64)
        tensor = torch.as_tensor(values, dtype=torch.float64)
        if tensor.shape == (self.num_classes,):
            tensor = tensor.expand(shape)
        if tensor.shape != shape:
            raise ValueError(f"Initial {kind} has shape {tuple(tensor.shape)}: pass ({self.num_classes},) or {shape}.")
        if not torch.isfinite(tensor).all():
            raise ValueError(f"Initial {kind} must be finite, got {tensor.tolist()}.")
        if kind in ("delta", "omega") and (tensor <= 0).any():
            raise ValueError(f"Initial {kind} must be positive, got {tensor.tolist()}.")
        if kind in AUGMENTATION_KINDS:
            upper = MIX_MAX if kind == "mix" else math.inf
            if (tensor < 0).any() or (tensor >= upper).any():
                raise ValueError(
                    f"Initial {kind} must lie in [0, {upper}) (0 turns the augmentation off), got {tensor.tolist()}."
                )
            if kind in self.learnable and (tensor == 0).any():
                raise ValueError(
                    f"A learnable {kind} must start above 0 (at 0 its hypergradient vanishes), got {tensor.tolist()}: "
                    f"pass a small positive initial {kind} (default {LEARNABLE_AUGMENTATION_INIT[kind]}) or do not "
                    "learn it."
                )
        if kind == "delta" and self.delta_parameterization == "sigmoid" and (tensor >= self.delta_max).any():
            raise ValueError(
                f"Initial delta reaches {float(tensor.max()):.4g} ≥ delta_max={self.delta_max}: raise delta_max "
                "or use delta_parameterization='exp'."
            )
        return tensor

    def _average_blocks(self, values: Tensor) -> Tensor:
        sums = torch.zeros(self.num_groups, self.num_blocks, dtype=values.dtype)
        sums.index_add_(1, self.block_index, values)
        return sums / torch.bincount(self.block_index, minlength=self.num_blocks).to(values.dtype)

    def _to_raw(self, kind: str, values: Tensor) -> Tensor:
        if kind == "iota":
            raw = values
        elif kind == "mix":
            raw = torch.logit(values / MIX_MAX)  # −∞ for 0
        elif kind in ("omega", "noise") or self.delta_parameterization == "exp":
            raw = torch.log(values)  # −∞ for a noise of 0
        else:
            raw = torch.logit(values / self.delta_max)
        return raw.to(torch.get_default_dtype()).contiguous()

    def _from_raw(self, kind: str, raw: Tensor) -> Tensor:
        if kind == "iota":
            return raw
        if kind == "mix":
            return MIX_MAX * torch.sigmoid(raw)
        if kind in ("omega", "noise") or self.delta_parameterization == "exp":
            return torch.exp(raw)
        return self.delta_max * torch.sigmoid(raw)

    # ------------------------------------------------------------------ values
    def hparams(self) -> dict[str, nn.Parameter]:
        """The learnable raw parameters by name (``raw_delta``, ``raw_iota``, ..., ``raw_mix``), i.e. α."""
        return {f"raw_{kind}": getattr(self, f"raw_{kind}") for kind in self.learnable}

    def delta(self) -> Tensor:
        """Per (group, class) logit scale Δ, shape (G, K)."""
        return self._from_raw("delta", self.raw_delta[:, self.block_index])

    def iota(self) -> Tensor:
        """Per (group, class) logit shift ι, shape (G, K)."""
        return self._from_raw("iota", self.raw_iota[:, self.block_index])

    def omega(self) -> Tensor:
        """Per (group, class) loss weight ω, shape (G, K)."""
        return self._from_raw("omega", self.raw_omega[:, self.block_index])

    def noise(self) -> Tensor:
        """Per (group, class) logit-noise scale σ of the personalized augmentation, shape (G, K)."""
        return self._from_raw("noise", self.raw_noise[:, self.block_index])

    def mix(self) -> Tensor:
        """Per (group, class) mixing strength m of the personalized augmentation, shape (G, K)."""
        return self._from_raw("mix", self.raw_mix[:, self.block_index])

    @property
    def is_plain_cross_entropy(self) -> bool:
        """Whether the loss equals plain cross-entropy: Δ = 1, ι = 0, ω = 1, no augmentation, no prediction shift.

        Example:
            >>> ParametricCrossEntropy(3).is_plain_cross_entropy
            True
            >>> ParametricCrossEntropy(3, iota=[0.0, 0.0, 1.0]).is_plain_cross_entropy
            False
        """
        with torch.no_grad():
            return bool(
                torch.allclose(self.delta(), torch.ones_like(self.delta()))
                and not self.iota().any()
                and torch.allclose(self.omega(), torch.ones_like(self.omega()))
                and not self.augments
                and not self.prediction_shift.any()
            )

    @property
    def augments(self) -> bool:
        """Whether the personalized augmentation is on (some σ or m above 0)."""
        return bool((self.raw_noise > -math.inf).any() or (self.raw_mix > -math.inf).any())

    @property
    def couples_samples(self) -> bool:
        """Whether a sample's loss depends on other samples' logits (mixing on): its logit Hessian is not per sample."""
        return bool((self.raw_mix > -math.inf).any())

    @contextmanager
    def fixed_augmentation(self, seed: int) -> Iterator[None]:
        """Draw the augmentation from ``seed`` and the batch's labels, so repeated calls on a batch agree.

        A hyper-step evaluates the training loss of the same batches many times (gradient, Hessian-vector products,
        a re-solve for finite differences); inside this context each evaluation of a batch sees the same noise and
        the same mixing partners, so the inner loss is one smooth function of (θ, α). Under DDP a global batch gets
        the same draws on whichever process holds it.

        Example:
            >>> loss_fn = ParametricCrossEntropy(3, learnable=["noise"])
            >>> logits, y = torch.randn(4, 3), torch.tensor([0, 1, 2, 1])
            >>> with loss_fn.fixed_augmentation(seed=7):
            ...     torch.equal(loss_fn(logits, y), loss_fn(logits, y))
            True
        """
        previous, self._fixed_seed = self._fixed_seed, int(seed)
        try:
            yield
        finally:
            self._fixed_seed = previous

    def _augmentation_generator(self, targets: Tensor, groups: Tensor | None) -> torch.Generator:
        if self._fixed_seed is not None:
            weights = torch.arange(1, targets.numel() + 1, device=targets.device) % 9973 + 1
            key = int((targets.long() * weights).sum()) * 7919 + targets.numel()
            if groups is not None:
                key = key * 31 + int((groups.long() * weights).sum())
            seed = hash((self._fixed_seed, key))
        else:
            rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
            seed = hash((self.augmentation_seed, int(self.augment_calls), rank))
            self.augment_calls += 1
        generator = torch.Generator(device=targets.device)
        generator.manual_seed(seed & 0x7FFF_FFFF_FFFF_FFFF)
        return generator

    def augment(self, logits: Tensor, targets: Tensor, groups: Tensor | None = None) -> Tensor:
        """Apply the personalized augmentation to a batch of training logits (see the module docstring).

        Args:
            logits: (N, K) logits of a training batch.
            targets: (N,) labels; they select each sample's σ and m (and stay the sample's labels).
            groups: (N,) group labels, or None.

        Returns:
            ``(1 − m) ⊙ logits + m ⊙ logits[π] + σ ⊙ ε`` row by row (the logits themselves when both are 0).
        """
        if not self.augments or logits.shape[0] == 0:
            return logits
        generator = self._augmentation_generator(targets, groups)
        rows = 0 if groups is None else groups
        if self.couples_samples:
            mix = self.mix()[rows, targets].to(logits.dtype)[:, None]
            partner = torch.randperm(logits.shape[0], generator=generator, device=logits.device)
            logits = (1 - mix) * logits + mix * logits[partner]
        noise = torch.randn(logits.shape, generator=generator, device=logits.device, dtype=logits.dtype)
        return logits + self.noise()[rows, targets].to(logits.dtype)[:, None] * noise

    def adjusted_logits(self, logits: Tensor, groups: Tensor | None = None) -> Tensor:
        """Return ``Δ[g] ⊙ logits + ι[g]`` for each row (the logits the softmax of the loss sees)."""
        delta, iota = self.delta(), self.iota()
        if groups is None:
            return logits * delta[0] + iota[0]
        return logits * delta[groups] + iota[groups]

    def shift_predictions(self, logits: Tensor, groups: Tensor | None = None) -> Tensor:
        """Return ``logits + prediction_shift[g]``: the logits to predict with (arg-max, metrics).

        The shift is a post-hoc logit adjustment (``−τ·log π``, see :mod:`lightning_autobalance.posthoc`) that the
        AutoBalance callback fits on the held-out split at the end of a search (``posthoc=True``) and the learned-loss
        file carries to the retrained model; it is zero otherwise, so the logits pass unchanged. It never enters the
        training loss.

        Example:
            >>> loss_fn = ParametricCrossEntropy(2)
            >>> loss_fn.set_prediction_shift(torch.tensor([0.0, 1.0]))
            >>> loss_fn.shift_predictions(torch.tensor([[0.5, 0.0]])).tolist()
            [[0.5, 1.0]]
        """
        if not bool(self.prediction_shift.any()):
            return logits  # no post-hoc adjustment: the logits as they are
        check_logits(logits, self.num_classes)
        shift = self.prediction_shift.to(logits.dtype)
        return logits + (shift[0] if groups is None else shift[groups])

    def set_prediction_shift(self, shift: Sequence[float] | Tensor) -> None:
        """Set the post-hoc shift added to the logits at prediction time: shape (K,) (every group) or (G, K)."""
        self.prediction_shift.copy_(self._per_group_class("prediction_shift", shift, 0.0))

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        logits: Tensor,
        targets: Tensor,
        groups: Tensor | None = None,
        reduction: Literal["mean", "sum", "none"] = "mean",
    ) -> Tensor:
        """Compute the loss.

        Args:
            logits: model outputs, shape (N, K).
            targets: class labels in [0, K), shape (N,).
            groups: group labels in [0, G), shape (N,); required when ``num_groups > 1``.
            reduction: ``"mean"`` (Σ_i ℓ_i / N), ``"sum"`` or ``"none"``.

        Returns:
            The reduced loss, or per-sample losses of shape (N,) for ``reduction="none"``.
        """
        self._check_inputs(logits, targets, groups)
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}.")
        if self.training:
            logits = self.augment(logits, targets, groups)
        adjusted = self.adjusted_logits(logits, groups)
        per_sample = F.cross_entropy(adjusted, targets, reduction="none")
        weights = self.omega()[0 if groups is None else groups, targets]
        return reduce_loss(weights * per_sample, reduction)

    def _check_inputs(self, logits: Tensor, targets: Tensor, groups: Tensor | None) -> None:
        check_inputs(logits, targets, groups, self.num_classes, self.num_groups)

    def extra_repr(self) -> str:
        """Summary shown by ``print(module)``."""
        return (
            f"num_classes={self.num_classes}, num_groups={self.num_groups}, blocks={self.num_blocks}, "
            f"learnable={list(self.learnable)}, delta={self.delta_parameterization}, augments={self.augments}"
        )

    # ------------------------------------------------------------------ copies
    def _empty_copy(self, learnable: Iterable[str] | str, blocks: Tensor | None) -> ParametricCrossEntropy:
        return ParametricCrossEntropy(
            self.num_classes,
            self.num_groups,
            learnable=learnable,
            blocks=blocks,
            delta_parameterization=self.delta_parameterization,
            delta_max=self.delta_max,
        )

    def frozen(self) -> ParametricCrossEntropy:
        """Return a copy with the same values and nothing learnable (for the retrain phase)."""
        copy = self._empty_copy((), self.block_index.cpu())
        with torch.no_grad():
            for kind in HPARAM_KINDS:
                getattr(copy, f"raw_{kind}").copy_(getattr(self, f"raw_{kind}").detach().cpu())
            copy.prediction_shift.copy_(self.prediction_shift.cpu())
        return copy.to(self.raw_iota.device)

    def expanded(
        self,
        mode: ExpansionMode = "constant",
        class_counts: Sequence[float] | Tensor | None = None,
        *,
        learnable: Iterable[str] | str | None = None,
    ) -> ParametricCrossEntropy:
        """Return a copy with one parameter per class (no shared blocks), e.g. to retrain or fine-tune per class.

        * ``mode="constant"`` — piecewise constant: every class takes its block's raw value, so the forward pass is
          bit for bit the same as this loss's.
        * ``mode="linear"`` — linear interpolation across the classes sorted by decreasing frequency: each block's
          value (Δ, ι, ω themselves, not their raw parameters) is placed at the mean frequency rank of its classes,
          classes in between are linearly interpolated (``np.interp``) and classes beyond the first / last block's
          anchor keep that block's value. Every group row is interpolated separately. Interpolated Δ and ω stay
          positive and below ``delta_max`` (convex combinations); the values are exact at anchors up to rounding.

        The frequency order is that of ``class_counts`` (decreasing count, ties by class index, as in
        :func:`frequency_blocks`); without counts it is the block order (block index, then class index). Linear
        mode needs every block to be a run of consecutive classes in that order — true for blocks made by
        :func:`frequency_blocks` from the same counts.

        Args:
            mode: ``"constant"`` or ``"linear"``.
            class_counts: training samples per class, shape (K,), to sort classes by frequency (linear mode).
            learnable: kinds learnable in the copy; default: the same as this loss.

        Returns:
            A new :class:`ParametricCrossEntropy` with ``blocks = arange(K)``, on this loss's device.

        Example:
            >>> coarse = ParametricCrossEntropy(4, iota=[0.0, 0.0, 4.0, 4.0], blocks=[0, 0, 1, 1])
            >>> coarse.expanded("linear").iota()[0].tolist()
            [0.0, 1.0, 3.0, 4.0]
        """
        if mode not in ("constant", "linear"):
            raise ValueError(
                f"Unknown expansion mode {mode!r}: use 'constant' (each class takes its block's value, same loss) "
                "or 'linear' (interpolated across classes sorted by frequency)."
            )
        copy = self._empty_copy(self.learnable if learnable is None else learnable, None)
        block_index = self.block_index.cpu()
        with torch.no_grad():
            copy.prediction_shift.copy_(self.prediction_shift.cpu())
            if mode == "constant":
                for kind in HPARAM_KINDS:
                    raw = getattr(self, f"raw_{kind}").detach().cpu()
                    getattr(copy, f"raw_{kind}").copy_(raw[:, block_index])
                return copy.to(self.raw_iota.device)
            rank = self._frequency_ranks(class_counts)
            sizes = torch.bincount(block_index, minlength=self.num_blocks)
            lowest = torch.full((self.num_blocks,), self.num_classes, dtype=torch.long).scatter_reduce(
                0, block_index, rank, reduce="amin"
            )
            highest = torch.zeros(self.num_blocks, dtype=torch.long).scatter_reduce(0, block_index, rank, reduce="amax")
            if bool((highest - lowest + 1 != sizes).any()):
                raise ValueError(
                    "Linear expansion needs every block to hold consecutive classes in frequency order, but the "
                    f"blocks {block_index.tolist()} interleave under that order: pass the class_counts the blocks "
                    "were made from (frequency_blocks), or use mode='constant'."
                )
            anchors = (lowest + highest).double() / 2  # mean rank of a run of consecutive ranks
            order = torch.argsort(anchors)
            xp = anchors[order].numpy()
            x = rank.double().numpy()
            for kind in HPARAM_KINDS:
                block_values = self._from_raw(kind, getattr(self, f"raw_{kind}").detach().cpu().double())
                rows = [np.interp(x, xp, row[order].numpy()) for row in block_values]
                values = torch.from_numpy(np.stack(rows))
                if kind == "delta" and self.delta_parameterization == "sigmoid":
                    values = values.clamp(max=self.delta_max * (1 - 1e-7))  # keep logit finite after rounding
                getattr(copy, f"raw_{kind}").copy_(copy._to_raw(kind, values))
        return copy.to(self.raw_iota.device)

    def _frequency_ranks(self, class_counts: Sequence[float] | Tensor | None) -> Tensor:
        if class_counts is None:
            keys = [(int(b), k) for k, b in enumerate(self.block_index.tolist())]
        else:
            counts = as_counts(class_counts, self.num_classes)
            keys = [(-float(counts[k]), k) for k in range(self.num_classes)]
        order = sorted(range(self.num_classes), key=lambda k: keys[k])
        rank = torch.empty(self.num_classes, dtype=torch.long)
        rank[torch.tensor(order)] = torch.arange(self.num_classes)
        return rank


def make_loss(
    preset: str = "ce",
    class_counts: Sequence[float] | Tensor | None = None,
    group_counts: Sequence[Sequence[float]] | Tensor | None = None,
    **options: object,
) -> ParametricCrossEntropy:
    """Factory of preset losses for Hydra configs (``conf/loss/<preset>.yaml``).

    The configs set ``_partial_: true`` and the preset options; the training counts are only known after the data
    is set up, so the caller completes the partial with them::

        loss = hydra.utils.instantiate(cfg.loss)(class_counts=dm.class_counts, group_counts=None)

    Args:
        preset: one of :data:`PRESETS`.
        class_counts: training samples per class, shape (K,).
        group_counts: training samples per (group, class), shape (G, K), or ``None``.
        **options: keyword arguments of :meth:`ParametricCrossEntropy.from_preset` (``tau``, ``gamma``, ``beta``,
            ``learnable``, ``block_size``, ``delta_parameterization``, ``delta_max``, ``num_groups``).

    Returns:
        The preset loss.

    Example:
        >>> loss_fn = make_loss("balanced_softmax", class_counts=[90, 10])
        >>> [round(x, 4) for x in loss_fn.iota()[0].tolist()]
        [-0.1054, -2.3026]
    """
    options = {key: plain_data(value) for key, value in options.items()}
    return ParametricCrossEntropy.from_preset(
        preset,
        plain_data(class_counts),  # type: ignore[arg-type]
        group_counts=plain_data(group_counts),  # type: ignore[arg-type]
        **options,  # type: ignore[arg-type]
    )


def plain_data(value: object) -> object:
    """Turn config containers (e.g. OmegaConf ``ListConfig``) into plain lists; leave tensors and scalars alone."""
    if value is None or isinstance(value, (str, bytes, Tensor, np.ndarray, int, float)):
        return value
    if isinstance(value, Iterable):
        return [plain_data(item) for item in value]
    return value
