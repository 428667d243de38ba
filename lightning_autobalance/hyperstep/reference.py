"""The reference engine: the generic hypergradient on the whole network (the paper's procedure).

Example:
    >>> Reference()
    Reference(solver=Neumann(terms=5, alpha=1.0))
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from lightning_autobalance.hypergrad import HypergradientResult, hypergradient
from lightning_autobalance.hyperstep.context import DrawnBatchesEngine, HyperStepContext
from lightning_autobalance.hyperstep.functional import method_runner, trainable_tensors
from lightning_autobalance.protocols import LinearSolver
from lightning_autobalance.solvers import Neumann

__all__ = ["Reference"]


@dataclass(frozen=True)
class Reference(DrawnBatchesEngine):
    """The reference procedure: :func:`~lightning_autobalance.hypergrad.hypergradient` on the whole network.

    All train-batch graphs are held at once and Hessian-vector products run by double backward through the network;
    default solver Neumann with 5 terms and step 1 (docs/references.md §1).

    Args:
        solver: how H⁻¹ is applied.
    """

    solver: LinearSolver = field(default_factory=lambda: Neumann(terms=5, alpha=1.0))

    def __call__(self, context: HyperStepContext) -> HypergradientResult:
        """Compute the hypergradient."""
        params, buffers = trainable_tensors(context.module)
        run = method_runner(context.module, "autobalance_forward", buffers)

        def inner(theta: dict[str, Tensor], alpha: dict[str, Tensor]) -> Tensor:
            losses = [context.loss_fn(*run(theta, batch), alpha) for batch in context.train]
            return torch.stack(losses).sum() * context.train_weight

        def outer(theta: dict[str, Tensor], alpha: dict[str, Tensor]) -> Tensor:
            outputs = [run(theta, batch) for batch in context.heldout]
            logits = torch.cat([o[0] for o in outputs])
            targets = torch.cat([o[1] for o in outputs])
            groups = None if outputs[0][2] is None else torch.cat([o[2] for o in outputs])
            return context.objective_fn(logits, targets, groups, alpha)

        return hypergradient(inner, outer, params, context.loss.hparams(), self.solver, reduce=context.reduce)
