"""Named members of the loss family: the presets of the literature and their (Δ, ι, ω) from the training counts.

:func:`preset_values` holds every formula; :func:`preset_arguments` turns a preset and the counts into the
constructor arguments of :class:`~lightning_autobalance.losses.ParametricCrossEntropy` (what
:meth:`~lightning_autobalance.losses.ParametricCrossEntropy.from_preset` builds).

Example:
    >>> [round(x, 4) for x in preset_values("weighted", [90, 10])["omega"].tolist()]
    [0.5556, 5.0]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lightning_autobalance.losses.blocks import check_block_size, frequency_blocks
from lightning_autobalance.losses.inputs import Counts, as_counts, as_group_counts
from lightning_autobalance.losses.priors import class_priors, inverse_prior_weights, normalise_to_prior
from lightning_autobalance.options import options_from, options_signature

__all__ = [
    "PRESETS",
    "PresetOptions",
    "check_preset_options",
    "effective_number_weights",
    "preset_arguments",
    "preset_counts",
    "preset_values",
]

PRESETS: tuple[str, ...] = ("ce", "weighted", "class_balanced", "la", "cdt", "vs", "balanced_softmax")


def check_preset_options(preset: str, tau: float, gamma: float, beta: float) -> None:
    """Raise a :class:`ValueError` that names the fix unless the preset and its options are valid."""
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
    class_counts: Counts,
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
    check_preset_options(preset, tau, gamma, beta)
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
    prior = class_priors(counts)
    if preset == "weighted":
        omega = inverse_prior_weights(counts)
    if preset == "class_balanced":
        omega = normalise_to_prior(effective_number_weights(counts, beta), prior)
    if preset in ("la", "vs"):
        iota = tau * torch.log(prior)
    if preset == "balanced_softmax":
        iota = torch.log(prior)
    if preset in ("cdt", "vs"):
        delta = (counts / counts.max()) ** gamma
    return {"delta": delta, "iota": iota, "omega": omega}


def preset_counts(
    preset: str,
    class_counts: Sequence[float] | Tensor | None,
    group_counts: Sequence[Sequence[float]] | Tensor | None,
    num_groups: int | None,
) -> tuple[Tensor, Tensor, int]:
    """Validated counts of a preset loss: the class counts (K,), the cells the preset is computed on and G.

    Without ``group_counts`` the cells are the class counts and G is ``num_groups`` (default 1); with them the cells
    are the (G, K) table, the class counts its column sums (``class_counts``, if given, must equal them) and G its
    number of rows (``num_groups``, if given, must equal it).

    Example:
        >>> counts, cells, groups = preset_counts("la", None, [[80, 5], [10, 5]], None)
        >>> counts.tolist(), tuple(cells.shape), groups
        ([90.0, 10.0], (2, 2), 2)
    """
    if group_counts is None:
        if class_counts is None:
            raise ValueError(
                f"Preset {preset!r} needs the training counts: pass class_counts (K,) or group_counts (G, K)."
            )
        counts = as_counts(class_counts)
        return counts, counts, 1 if num_groups is None else num_groups
    cells = as_group_counts(group_counts)
    totals = cells.sum(0)
    if class_counts is not None:
        counts = as_counts(class_counts)
        if counts.shape != totals.shape or not torch.allclose(counts, totals, rtol=1e-9, atol=0):
            raise ValueError(
                f"class_counts {counts.tolist()} differ from the class totals of group_counts "
                f"{totals.tolist()}: pass counts of the same data, or only group_counts."
            )
    groups = cells.shape[0]
    if num_groups is not None and num_groups != groups:
        raise ValueError(
            f"num_groups={num_groups} but group_counts has {groups} rows (one per group): pass a "
            f"({num_groups}, K) group_counts table or drop num_groups."
        )
    return totals, cells, groups


@dataclass(frozen=True)
class PresetOptions:
    """The settings of a preset loss besides the counts; checked by :func:`preset_arguments`.

    They are documented at :meth:`~lightning_autobalance.losses.ParametricCrossEntropy.from_preset`.

    Example:
        >>> PresetOptions(tau=0.5).tau, PresetOptions().delta_parameterization
        (0.5, 'sigmoid')
    """

    tau: float = 1.0
    gamma: float = 0.3
    beta: float = 0.9999
    num_groups: int | None = None
    block_size: int = 1
    delta_parameterization: str = "sigmoid"
    delta_max: float = 2.0
    noise: float | Sequence[float] | Tensor | None = None
    mix: float | Sequence[float] | Tensor | None = None


def preset_arguments(
    preset: str,
    class_counts: Sequence[float] | Tensor | None = None,
    group_counts: Sequence[Sequence[float]] | Tensor | None = None,
    **options: Any,
) -> dict[str, object]:
    """Constructor arguments of the loss initialised at a preset (the work of ``ParametricCrossEntropy.from_preset``).

    The arguments are those of :meth:`~lightning_autobalance.losses.ParametricCrossEntropy.from_preset`, which
    documents them, without ``learnable``.

    Returns:
        ``num_classes``, ``num_groups``, ``delta``, ``iota``, ``omega``, ``noise``, ``mix``, ``blocks``,
        ``delta_parameterization`` and ``delta_max``.

    Example:
        >>> arguments = preset_arguments("la", [90, 10])
        >>> arguments["num_classes"], [round(x, 4) for x in arguments["iota"].tolist()]
        (2, [-0.1054, -2.3026])
    """
    settings: PresetOptions = options_from(PresetOptions, "preset_arguments", options)
    check_preset_options(preset, settings.tau, settings.gamma, settings.beta)
    block_size, delta_max = settings.block_size, settings.delta_max
    check_block_size(block_size)
    counts, cells, groups = preset_counts(preset, class_counts, group_counts, settings.num_groups)
    values = preset_values(preset, cells, tau=settings.tau, gamma=settings.gamma, beta=settings.beta)
    blocks = frequency_blocks(counts, block_size) if block_size > 1 else None
    if settings.delta_parameterization == "sigmoid" and bool((values["delta"] >= delta_max).any()):
        raise ValueError(
            f"Preset {preset!r} needs Δ up to {float(values['delta'].max()):.3g} but delta_max={delta_max}: "
            "raise delta_max or use delta_parameterization='exp'."
        )
    augmentation = {
        kind: torch.full(cells.shape, float(value), dtype=torch.float64) if isinstance(value, (int, float)) else value
        for kind, value in (("noise", settings.noise), ("mix", settings.mix))
    }
    return {
        "num_classes": counts.numel(),
        "num_groups": groups,
        **augmentation,
        "blocks": blocks,
        "delta_parameterization": settings.delta_parameterization,
        "delta_max": delta_max,
        **values,
    }


preset_arguments.__signature__ = options_signature(preset_arguments, PresetOptions)  # type: ignore[attr-defined]
