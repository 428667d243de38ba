"""The full-network engine: every weight, batches streamed one graph at a time.

Example:
    >>> FullNetwork(curvature="gauss_newton").curvature
    'gauss_newton'
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lightning_autobalance.hypergrad import Curvature, HypergradientResult, logit_hypergradient
from lightning_autobalance.hyperstep.context import DrawnBatchesEngine, HyperStepContext
from lightning_autobalance.hyperstep.functional import method_runner, trainable_tensors
from lightning_autobalance.protocols import LinearSolver
from lightning_autobalance.solvers import ConjugateGradient

__all__ = ["FullNetwork"]


@dataclass(frozen=True)
class FullNetwork(DrawnBatchesEngine):
    """Every weight, streamed: one batch graph at a time, mixed term by a JVP of the logits.

    Args:
        solver: how H⁻¹ is applied (default conjugate gradient, 10 iterations, damping 0.1).
        curvature: ``"hessian"`` or ``"gauss_newton"`` (``Jᵀ H_z J``: positive semi-definite, no double backward
            through the network).
        autocast: e.g. ``torch.bfloat16`` to run the network's forward passes under autocast.
    """

    solver: LinearSolver = field(default_factory=lambda: ConjugateGradient(iters=10, damping=0.1))
    curvature: Curvature = "hessian"
    autocast: torch.dtype | None = None

    def __call__(self, context: HyperStepContext) -> HypergradientResult:
        """Compute the hypergradient."""
        params, buffers = trainable_tensors(context.module)
        return logit_hypergradient(
            method_runner(context.module, "autobalance_forward", buffers),
            context.loss_fn,
            context.objective_fn,
            list(context.train),
            list(context.heldout),
            params,
            context.loss.hparams(),
            self.solver,
            curvature=self.curvature,
            train_weight=context.train_weight,
            reduce=context.reduce,
            autocast=self.autocast,
        )
