"""The settings of a last-layer refit: one declaration of every name, type and default, checked in one place.

:func:`~lightning_autobalance.last_layer.retrain_last_layer` and the
:class:`~lightning_autobalance.last_layer.LastLayerRetraining` callback take them as flat keywords.

Example:
    >>> options = RefitOptions(mode="priors", ridge=1.0)
    >>> options.mode, options.bilevel, options.prefix
    ('priors', {}, 'llr')
    >>> check_options("thumb", "hinge", 0.0, 0.99, 10.0)
    Traceback (most recent call last):
        ...
    ValueError: loss must be 'square' (the paper's, closed form) or 'ce', got 'hinge'.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from torch import nn

from lightning_autobalance.group_last_layer import GROUP_MODES
from lightning_autobalance.last_layer.features import FeatureFn
from lightning_autobalance.llr import DEFAULT_MAX_WEIGHT, MODES

__all__ = ["RefitOptions", "check_options"]


def check_options(mode: str, loss: str, ridge: float, variance: float, max_weight: float) -> None:
    """Raise a :class:`ValueError` naming the first bad option of a refit."""
    if mode not in MODES + GROUP_MODES:
        raise ValueError(f"mode must be one of {MODES + GROUP_MODES}, got {mode!r}.")
    if loss not in ("square", "ce"):
        raise ValueError(f"loss must be 'square' (the paper's, closed form) or 'ce', got {loss!r}.")
    if not (math.isfinite(float(ridge)) and float(ridge) >= 0):
        raise ValueError(f"ridge must be a finite number >= 0, got {ridge}.")
    if not 0.0 < float(variance) <= 1.0:
        raise ValueError(f"variance must be in (0, 1], got {variance}.")
    if not (math.isfinite(float(max_weight)) and float(max_weight) >= 1):
        raise ValueError(f"max_weight must be a finite number >= 1, got {max_weight}.")


@dataclass(frozen=True)
class RefitOptions:
    """What to refit and how: the settings :func:`retrain_last_layer` and :class:`LastLayerRetraining` share.

    The fields are documented at :func:`~lightning_autobalance.last_layer.retrain_last_layer`; ``bilevel`` and
    ``group_head`` are copied into plain dictionaries.

    Raises:
        ValueError: a bad ``mode``, ``loss``, ``ridge``, ``variance`` or ``max_weight`` (:func:`check_options`).
    """

    mode: str = "thumb"
    loss: Literal["square", "ce"] = "square"
    ridge: float = 0.0
    variance: float = 0.99
    delta: float | None = None
    max_weight: float = DEFAULT_MAX_WEIGHT
    bilevel: Mapping[str, Any] | None = None
    group_head: Mapping[str, Any] | None = None
    seed: int = 0
    feature_fn: FeatureFn | None = None
    head: nn.Linear | str | None = None
    use_groups: bool = True
    prefix: str = "llr"

    def __post_init__(self) -> None:
        check_options(self.mode, self.loss, self.ridge, self.variance, self.max_weight)
        object.__setattr__(self, "bilevel", dict(self.bilevel or {}))
        object.__setattr__(self, "group_head", dict(self.group_head or {}))

    def as_kwargs(self) -> dict[str, Any]:
        """The settings as keyword arguments (of :func:`retrain_last_layer`)."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
