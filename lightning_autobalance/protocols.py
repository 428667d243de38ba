"""The declared contracts between the package's parts, as :class:`typing.Protocol` classes.

Each protocol names what one side needs from the other and nothing more: a hyper-step engine, a linear solver, the
operator a solver may read densely, the tunable loss the engines differentiate and the hooks a module defines for the
last-layer engine, and the optional abilities of a loss or an objective the callback, the mixin and the checks
ask about. They are structural: an object conforms by having the members, without inheriting from anything.
The ``runtime_checkable`` ones are what the package itself checks with :func:`isinstance`.

Example:
    >>> import torch
    >>> from lightning_autobalance.hypergrad import Exact, Neumann
    >>> isinstance(Neumann(), LinearSolver), isinstance(Exact(), LinearSolver)
    (True, True)
    >>> isinstance(lambda v: v, DenseOperator)
    False
    >>> isinstance(torch.nn.Linear(2, 2), FeatureHookModule)
    False
    >>> from lightning_autobalance.losses import ParametricCrossEntropy
    >>> from lightning_autobalance.objectives import WorstGroup, balanced_cross_entropy
    >>> isinstance(ParametricCrossEntropy(num_classes=3), SeededAugmentation)
    True
    >>> isinstance(WorstGroup(), GroupObjective), isinstance(balanced_cross_entropy, GroupObjective)
    (True, False)
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from torch import Tensor, nn

if TYPE_CHECKING:
    from lightning_autobalance.hypergrad.implicit import HypergradientResult
    from lightning_autobalance.hyperstep.context import HyperStepContext

__all__ = [
    "DenseOperator",
    "EpochScheduled",
    "FeatureHookModule",
    "GroupObjective",
    "HyperStepEngine",
    "LinearSolver",
    "MatVec",
    "SampleCoupling",
    "SeededAugmentation",
    "TrainBatchPolicy",
    "TunableLoss",
    "Vectors",
]

Vectors = tuple[Tensor, ...]
"""A point of the weight space: one tensor per weight tensor."""
MatVec = Callable[[Vectors], Vectors]
"""A linear operator given by its product, ``matvec(v) = H v`` (a Hessian-vector product)."""


@runtime_checkable
class LinearSolver(Protocol):
    """Approximates ``H⁻¹ rhs`` given a Hessian-vector product ``hvp(v) = H v`` on tuples of tensors."""

    def __call__(self, hvp: MatVec, rhs: Vectors) -> Vectors:
        """Return an approximation of ``H⁻¹ rhs`` with the structure of ``rhs``."""
        ...


@runtime_checkable
class DenseOperator(Protocol):
    """A linear operator that also gives its matrix, so a dense solver need not form it column by column.

    ``dense`` is the square matrix over the concatenation of the flattened vectors (row-major, in the order of the
    tuple); :class:`~lightning_autobalance.hypergrad.Exact` reads it instead of one product per column.
    """

    def __call__(self, vectors: Vectors) -> Vectors:
        """Return ``H v``."""
        ...

    @property
    def dense(self) -> Tensor:
        """The matrix ``H``."""
        ...


class HyperStepEngine(Protocol):
    """Computes the hypergradient of one hyper-step (any callable of a context is an engine)."""

    def __call__(self, context: HyperStepContext) -> HypergradientResult:
        """Return the hypergradient (identical on every process)."""
        ...


@runtime_checkable
class TrainBatchPolicy(Protocol):
    """An engine that says whether the callback must draw train hyper-batches (every built-in engine does)."""

    def needs_train_batches(self, module: nn.Module, loss: nn.Module) -> bool:
        """False when the engine brings its own train-side data (e.g. features cached from recent weight steps)."""
        ...


@runtime_checkable
class TunableLoss(Protocol):
    """The training loss whose hyperparameters α the engines differentiate (an ``nn.Module``).

    ``hparams()`` are α by name (the module's parameters that are learned); the engines substitute them with
    :func:`torch.func.functional_call` when they call the loss.
    """

    def hparams(self) -> dict[str, Tensor]:
        """α by name."""
        ...

    def __call__(self, logits: Tensor, targets: Tensor, groups: Tensor | None = None) -> Tensor:
        """The mean loss of a batch of logits."""
        ...


@runtime_checkable
class SampleCoupling(Protocol):
    """A loss that says whether one sample's loss depends on other samples' logits (e.g. by mixing them)."""

    @property
    def couples_samples(self) -> bool:
        """True when samples are coupled: the last-layer engine then forms the head's Hessian batch by batch."""
        ...


@runtime_checkable
class FeatureHookModule(Protocol):
    """A module that exposes its last layer to the last-layer engine: ``head(features(x))`` are its logits."""

    def autobalance_features(self, x: Any) -> Tensor:
        """The head's ``(B, d)`` inputs."""
        ...

    def autobalance_head(self) -> nn.Linear:
        """The last layer."""
        ...


@runtime_checkable
class SeededAugmentation(Protocol):
    """A loss with training-time augmentation whose random draws follow a seed and can be held fixed.

    The callback sets ``augmentation_seed`` to the run's seed (so a resumed run draws the same) and evaluates every
    hyper-step inside ``fixed_augmentation(seed)``, so the engine sees the same draws each time it calls the loss.
    """

    augmentation_seed: int

    def fixed_augmentation(self, seed: int) -> AbstractContextManager[None]:
        """A context in which every batch's draws are a function of ``seed`` and the batch."""
        ...


@runtime_checkable
class EpochScheduled(Protocol):
    """A loss that changes with the epoch (e.g. LDAM's deferred re-weighting); the mixin calls ``set_epoch``."""

    def set_epoch(self, epoch: int) -> None:
        """Tell the loss which epoch starts."""
        ...


@runtime_checkable
class GroupObjective(Protocol):
    """A held-out objective that says whether it needs group labels (an objective without the flag does not)."""

    requires_groups: bool
