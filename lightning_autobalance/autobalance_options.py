"""``AutoBalanceOptions``: every setting of the :class:`~lightning_autobalance.AutoBalance` callback, checked once.

The callback keeps its flat keyword arguments (``AutoBalance(warmup_epochs=2, every_n_steps=20)``), which the README,
``conf/autobalance/*.yaml`` and users' code pass; their names, types, defaults and argument checks are declared here,
in one frozen dataclass, and ``AutoBalance``'s signature is built from it
(:func:`~lightning_autobalance.options.keyword_signature`).
"""

import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.optim import Optimizer

from lightning_autobalance._checks import check_integer, is_finite_number
from lightning_autobalance.data.split import HeldOutSplit, check_seed
from lightning_autobalance.hypergrad import LinearSolver
from lightning_autobalance.hyperstep import HyperStepEngine
from lightning_autobalance.losses import HPARAM_KINDS, PRESETS, ParametricCrossEntropy
from lightning_autobalance.objectives import Objective, balanced_cross_entropy, get_objective

__all__ = ["AutoBalanceOptions", "HyperOptimizerFactory"]

HyperOptimizerFactory = Callable[[Iterable[Tensor]], Optimizer]


@dataclass(frozen=True)
class AutoBalanceOptions:
    """The settings of an :class:`~lightning_autobalance.AutoBalance` search; see its docstring for each one.

    Every check of the arguments runs at construction and raises the error ``AutoBalance(...)`` raises. ``learn`` is
    stored as a tuple (a single kind name is accepted); the other values are stored as given.

    Example:
        >>> options = AutoBalanceOptions(preset="la", warmup_epochs=2)
        >>> options.learn, options.every_n_steps
        (('delta', 'iota'), 10)
        >>> AutoBalanceOptions(every_n_steps=0)
        Traceback (most recent call last):
        ...
        ValueError: every_n_steps must be an integer ≥ 1, got 0.
    """

    preset: str = "ce"
    learn: Sequence[str] = ("delta", "iota")
    tau: float = 1.0
    gamma: float = 0.3
    block_size: int = 1
    delta_parameterization: str = "sigmoid"
    loss: ParametricCrossEntropy | None = None
    objective: str | Objective = "balanced"
    warmup_epochs: int = 10
    every_n_steps: int = 10
    train_batches: int = 2
    heldout_batches: int = 2
    batch_size: int | None = 256
    hyper_optimizer: HyperOptimizerFactory | None = None
    hyper_lr: float = 0.01
    engine: str | HyperStepEngine = "default"
    solver: LinearSolver | None = None
    export_path: str | os.PathLike[str] | None = None
    seed: int | None = None
    check_sync: bool = True
    max_hypergrad_norm: float | None = None
    bounds: Mapping[str, Sequence[float]] | None = None
    posthoc: bool = False

    def __post_init__(self) -> None:
        learn = (self.learn,) if isinstance(self.learn, str) else tuple(self.learn)  # a single name is accepted
        object.__setattr__(self, "learn", learn)
        self._check_loss()
        self._check_numbers()
        _check_bounds(self.bounds, self.learned)
        check_seed("AutoBalance", self.seed)
        if not isinstance(self.posthoc, bool):
            raise TypeError(f"posthoc must be True or False, got {self.posthoc!r}.")
        if self.posthoc and get_objective(self.objective) is not balanced_cross_entropy:
            raise ValueError(
                f"posthoc=True fits a logit adjustment for the balanced error, but the objective is "
                f"{self.objective!r}: use objective='balanced' or posthoc=False."
            )

    @property
    def learned(self) -> tuple[str, ...]:
        """The kinds the search tunes: the given loss's learnable ones, else ``learn``."""
        return tuple(self.loss.learnable) if self.loss is not None else tuple(self.learn)

    def starting_loss(self, datamodule: HeldOutSplit) -> ParametricCrossEntropy:
        """The loss the search starts from: ``loss`` if given, else ``preset`` from the training split's counts.

        Each group's row starts at the preset of its own (group, class) cells (with one group, the class preset).
        """
        if self.loss is not None:
            if self.loss.num_classes != datamodule.num_classes:
                raise ValueError(
                    f"The loss given to AutoBalance has num_classes={self.loss.num_classes} but the data has "
                    f"{datamodule.num_classes} classes."
                )
            return self.loss
        cells = datamodule.group_class_counts
        empty = torch.nonzero(cells == 0).tolist()
        if self.preset != "ce" and empty:
            raise ValueError(
                f"Preset {self.preset!r} starts each (group, class) cell from its training count, but the cells "
                f"(group, class) {empty} have no training sample: use preset='ce', merge the empty groups, or pass "
                f"loss=ParametricCrossEntropy.from_preset({self.preset!r}, class_counts, "
                f"num_groups={datamodule.num_groups}) to start every group from the class preset."
            )
        return ParametricCrossEntropy.from_preset(
            self.preset,
            group_counts=cells.tolist(),
            tau=self.tau,
            gamma=self.gamma,
            learnable=self.learn,
            block_size=self.block_size,
            delta_parameterization=self.delta_parameterization,  # type: ignore[arg-type]
        )

    def _check_loss(self) -> None:
        if self.loss is None and self.preset not in PRESETS:
            raise ValueError(f"Unknown loss preset {self.preset!r}: choose one of {', '.join(PRESETS)}.")
        if self.loss is None and (not self.learn or set(self.learn) - set(HPARAM_KINDS)):
            raise ValueError(f"learn must name at least one of {', '.join(HPARAM_KINDS)}, got {list(self.learn)}.")
        if self.loss is not None and not self.loss.learnable:
            raise ValueError(
                "The loss passed to AutoBalance has nothing learnable (learnable=()): build it with learnable=[...], "
                "e.g. ParametricCrossEntropy(num_classes, learnable=['delta', 'iota'])."
            )

    def _check_numbers(self) -> None:
        for name, minimum in (
            ("warmup_epochs", 0),
            ("every_n_steps", 1),
            ("train_batches", 1),
            ("heldout_batches", 1),
            ("block_size", 1),
        ):
            check_integer(name, getattr(self, name), minimum)
        if self.batch_size is not None:
            check_integer("batch_size", self.batch_size, 1, meaning=", or None for the training loader's")
        if not _positive_number(self.hyper_lr):
            raise ValueError(f"hyper_lr must be a positive number, got {self.hyper_lr!r}: e.g. hyper_lr=0.01.")
        if self.max_hypergrad_norm is not None and not _positive_number(self.max_hypergrad_norm):
            raise ValueError(
                f"max_hypergrad_norm must be a finite positive number (e.g. 1.0) or None for no clipping, got "
                f"{self.max_hypergrad_norm!r}."
            )


def _positive_number(value: object) -> bool:
    """Whether ``value`` is a finite positive number (not a bool)."""
    return is_finite_number(value) and value > 0  # type: ignore[operator]


def _check_bounds(bounds: object, learned: Sequence[str]) -> None:
    """Refuse bounds that are not ``{learned kind: (low, high)}`` with low < high (low ≥ 0 for positive kinds)."""
    if bounds is not None and not isinstance(bounds, Mapping):
        raise TypeError(f"bounds must be a dict {{kind: (low, high)}} such as {{'iota': (-5, 5)}}, got {bounds!r}.")
    for kind, pair in (bounds or {}).items():
        if kind not in learned:
            raise ValueError(
                f"bounds names {kind!r}, which this AutoBalance does not learn (learn={list(learned)}): use one of "
                f"{', '.join(map(repr, learned))} or add {kind!r} to learn."
            )
        if (
            not isinstance(pair, Sequence)
            or isinstance(pair, str)
            or len(pair) != 2
            or any(isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v) for v in pair)
            or not pair[0] < pair[1]
        ):
            raise ValueError(
                f"bounds[{kind!r}] must be a pair (low, high) of numbers with low < high (±inf allowed), got "
                f"{pair!r}: e.g. bounds={{{kind!r}: (-5.0, 5.0)}}."
            )
        if kind != "iota" and pair[0] < 0:
            raise ValueError(
                f"bounds[{kind!r}] = {tuple(pair)!r} has a negative low, but {kind} is positive: use a low ≥ 0 "
                f"(0 for no lower bound), e.g. (0, {pair[1]})."
            )
