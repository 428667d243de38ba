"""What an engine receives for one hyper-step: :class:`HyperStepContext`.

Example:
    >>> import torch
    >>> from lightning_autobalance.losses import ParametricCrossEntropy
    >>> from lightning_autobalance.objectives import balanced_cross_entropy
    >>> loss = ParametricCrossEntropy.from_preset("la", [4, 2], learnable=("iota",))
    >>> context = HyperStepContext(nn.Linear(2, 2), loss, balanced_cross_entropy, [], [], train_weight=1.0)
    >>> logits, targets = torch.zeros(2, 2), torch.tensor([0, 1])
    >>> round(float(context.objective_fn(logits, targets, None, {})), 4)
    0.6931
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn
from torch.func import functional_call

__all__ = ["DrawnBatchesEngine", "Gather", "HyperStepContext"]

Gather = Callable[[Tensor, Tensor, Tensor | None], tuple[Tensor, Tensor, Tensor | None]]
"""Differentiable all-gather of held-out ``(logits, targets, groups)``."""


@dataclass
class HyperStepContext:
    """Everything an engine needs for one hyper-step on this process.

    Attributes:
        module: the (unwrapped) module; ``module.autobalance_forward(batch) -> (logits, targets, groups)``.
        loss: the tunable loss module (a :class:`~lightning_autobalance.protocols.TunableLoss`: ``loss.hparams()``
            are α; called as ``loss(logits, targets, groups)``).
        objective: ``(logits, targets, groups) -> scalar`` on all held-out logits.
        train: this process's train hyper-batches.
        heldout: this process's held-out hyper-batches.
        train_weight: weight of each local train batch in ``inner`` (``world / number of global train batches``, so
            the mean over processes is the global mean).
        reduce: cross-process mean of a flat tensor, or None on one process.
        gather: differentiable all-gather of held-out ``(logits, targets, groups)``, or None on one process.
    """

    module: nn.Module
    loss: nn.Module
    objective: Callable[[Tensor, Tensor, Tensor | None], Tensor]
    train: Sequence[Any]
    heldout: Sequence[Any]
    train_weight: float
    reduce: Callable[[Tensor], Tensor] | None = None
    gather: Gather | None = None

    def loss_fn(self, logits: Tensor, targets: Tensor, groups: Tensor | None, alpha: dict[str, Tensor]) -> Tensor:
        """The training loss with α substituted."""
        return functional_call(self.loss, alpha, (logits, targets, groups))

    def objective_fn(self, logits: Tensor, targets: Tensor, groups: Tensor | None, alpha: dict[str, Tensor]) -> Tensor:
        """The objective of the union of the held-out logits of all processes (α does not enter it)."""
        if self.gather is not None:
            logits, targets, groups = self.gather(logits, targets, groups)
        return self.objective(logits, targets, groups)


class DrawnBatchesEngine:
    """Base of the engines that differentiate the train hyper-batches the callback draws.

    Every engine but a last-layer one with cached features; it declares that policy
    (:class:`~lightning_autobalance.protocols.TrainBatchPolicy`).

    Example:
        >>> DrawnBatchesEngine().needs_train_batches(nn.Linear(2, 2), nn.CrossEntropyLoss())
        True
    """

    def needs_train_batches(self, module: nn.Module, loss: nn.Module) -> bool:
        """Always: the callback must draw train hyper-batches for this engine."""
        return True
