"""Parameterisation of the loss hyperparameters: the maps between raw parameters and the values Δ, ι, ω, σ, m.

:class:`~lightning_autobalance.losses.ParametricCrossEntropy` stores every kind *raw* (unconstrained), so gradient
steps on α never leave the valid range:

* Δ = ``delta_max · sigmoid(raw)`` (``"sigmoid"``, bounded in (0, delta_max)) or ``exp(raw)`` (``"exp"``);
* ι = raw;
* ω = ``exp(raw)``;
* σ (noise) = ``exp(raw)`` and m (mix) = ``MIX_MAX · sigmoid(raw)``, with raw = −∞ for 0 (augmentation off).

This module holds those maps (:class:`Parameterization`), the box of a kind in raw units (for projecting α onto
bounds), and the validation of initial values.

Example:
    >>> p = Parameterization("sigmoid", delta_max=2.0)
    >>> p.from_raw("delta", torch.tensor([0.0])).tolist()
    [1.0]
    >>> p.raw_interval("mix", 0.0, 1.0)
    (-inf, inf)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "AUGMENTATION_KINDS",
    "HPARAM_KINDS",
    "LEARNABLE_AUGMENTATION_INIT",
    "MIX_MAX",
    "DeltaParameterization",
    "Parameterization",
    "as_learnable",
    "average_blocks",
    "initial_values",
]

HPARAM_KINDS: tuple[str, ...] = ("delta", "iota", "omega", "noise", "mix")
AUGMENTATION_KINDS: tuple[str, ...] = ("noise", "mix")
MIX_MAX = 0.5
#: initial σ and m of an augmentation kind that is learnable but not given (0 would be a fixed point: raw = −∞)
LEARNABLE_AUGMENTATION_INIT: dict[str, float] = {"noise": 0.5, "mix": 0.1}
DeltaParameterization = Literal["sigmoid", "exp"]


def as_learnable(learnable: Iterable[str] | str) -> tuple[str, ...]:
    """The learnable kinds in the order of :data:`HPARAM_KINDS` (a single name is accepted); unknown kinds raise.

    Example:
        >>> as_learnable(["iota", "delta"])
        ('delta', 'iota')
    """
    kinds = (learnable,) if isinstance(learnable, str) else tuple(learnable)
    unknown = sorted(set(kinds) - set(HPARAM_KINDS))
    if unknown:
        raise ValueError(
            f"Unknown learnable kinds {unknown}: choose any subset of {', '.join(HPARAM_KINDS)} "
            "(e.g. learnable=['delta', 'iota'], the paper's choice), or () for a fixed loss."
        )
    return tuple(k for k in HPARAM_KINDS if k in kinds)


@dataclass(frozen=True)
class Parameterization:
    """The raw ↔ value maps of every kind, given the parameterisation of Δ (see the module docstring).

    Args:
        delta: ``"sigmoid"`` (Δ = delta_max · sigmoid(raw), bounded) or ``"exp"`` (Δ = exp(raw), unbounded).
        delta_max: upper bound of Δ for the sigmoid parameterisation (finite, positive).
    """

    delta: DeltaParameterization = "sigmoid"
    delta_max: float = 2.0

    def __post_init__(self) -> None:
        if self.delta not in ("sigmoid", "exp"):
            raise ValueError(
                f"delta_parameterization must be 'sigmoid' (Δ = delta_max·sigmoid(raw), bounded) or 'exp' "
                f"(Δ = exp(raw), unbounded), got {self.delta!r}."
            )
        delta_max = self.delta_max
        if not (isinstance(delta_max, (int, float)) and math.isfinite(delta_max) and delta_max > 0):
            raise ValueError(f"delta_max must be a finite positive number, got {delta_max!r}.")

    def to_raw(self, kind: str, values: Tensor) -> Tensor:
        """Raw parameters of ``values`` of a kind, in the default dtype (−∞ for a σ or m of 0)."""
        if kind == "iota":
            raw = values
        elif kind == "mix":
            raw = torch.logit(values / MIX_MAX)  # −∞ for 0
        elif kind in ("omega", "noise") or self.delta == "exp":
            raw = torch.log(values)  # −∞ for a noise of 0
        else:
            raw = torch.logit(values / self.delta_max)
        return raw.to(torch.get_default_dtype()).contiguous()

    def from_raw(self, kind: str, raw: Tensor) -> Tensor:
        """Values of a kind from its raw parameters (the inverse of :meth:`to_raw`)."""
        if kind == "iota":
            return raw
        if kind == "mix":
            return MIX_MAX * torch.sigmoid(raw)
        if kind in ("omega", "noise") or self.delta == "exp":
            return torch.exp(raw)
        return self.delta_max * torch.sigmoid(raw)

    def raw_interval(self, kind: str, low: float, high: float) -> tuple[float, float]:
        """The box ``[low, high]`` of a kind's values in raw units.

        The ends are first clipped to the range the parameterisation can represent, then mapped by :meth:`to_raw`
        (so e.g. m ≤ 1 becomes raw ≤ +∞, and ω ≥ 0 becomes raw ≥ −∞).
        """
        ends = torch.tensor([low, high], dtype=torch.float64)
        span = self.from_raw(kind, torch.tensor([-math.inf, math.inf], dtype=torch.float64))
        raw = self.to_raw(kind, torch.maximum(torch.minimum(ends, span[1]), span[0]))
        return float(raw[0]), float(raw[1])


def initial_values(
    kind: str,
    values: Sequence[float] | Tensor | None,
    default: float,
    *,
    shape: tuple[int, int],
    learnable: Iterable[str] = (),
    parameterization: Parameterization | None = None,
) -> Tensor:
    """Validated initial values of a kind as a float64 (G, K) table; a (K,) vector is repeated for every group.

    Args:
        kind: a kind of :data:`HPARAM_KINDS`, or another name (e.g. ``"prediction_shift"``) checked only for shape
            and finiteness.
        values: the values given, shape (K,) or (G, K), or ``None`` for ``default`` everywhere.
        default: value of every cell when ``values`` is None.
        shape: (G, K).
        learnable: the learnable kinds (a learnable σ or m must start above 0).
        parameterization: the Δ parameterisation (a sigmoid Δ must stay below ``delta_max``); default sigmoid, 2.

    Example:
        >>> initial_values("iota", [0.0, 1.0], 0.0, shape=(2, 2)).tolist()
        [[0.0, 1.0], [0.0, 1.0]]
    """
    parameterization = Parameterization() if parameterization is None else parameterization
    num_classes = shape[1]
    if values is None:
        return torch.full(shape, default, dtype=torch.float64)
    tensor = torch.as_tensor(values, dtype=torch.float64)
    if tensor.shape == (num_classes,):
        tensor = tensor.expand(shape)
    if tensor.shape != shape:
        raise ValueError(f"Initial {kind} has shape {tuple(tensor.shape)}: pass ({num_classes},) or {shape}.")
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
        if kind in learnable and (tensor == 0).any():
            raise ValueError(
                f"A learnable {kind} must start above 0 (at 0 its hypergradient vanishes), got {tensor.tolist()}: "
                f"pass a small positive initial {kind} (default {LEARNABLE_AUGMENTATION_INIT[kind]}) or do not "
                "learn it."
            )
    delta_max = parameterization.delta_max
    if kind == "delta" and parameterization.delta == "sigmoid" and (tensor >= delta_max).any():
        raise ValueError(
            f"Initial delta reaches {float(tensor.max()):.4g} ≥ delta_max={delta_max}: raise delta_max "
            "or use delta_parameterization='exp'."
        )
    return tensor


def average_blocks(values: Tensor, block_index: Tensor, num_blocks: int) -> Tensor:
    """Average a (G, K) table over the classes of each block: the (G, blocks) table of block values.

    Example:
        >>> average_blocks(torch.tensor([[1.0, 3.0, 5.0]]), torch.tensor([0, 0, 1]), 2).tolist()
        [[2.0, 5.0]]
    """
    sums = torch.zeros(values.shape[0], num_blocks, dtype=values.dtype)
    sums.index_add_(1, block_index, values)
    return sums / torch.bincount(block_index, minlength=num_blocks).to(values.dtype)
