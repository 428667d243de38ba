"""The identity approximation of the inverse Hessian (one weight step).

Example:
    >>> import torch
    >>> OneStep(lr=0.5).solve(lambda v: v, (torch.ones(2),))
    (tensor([0.5000, 0.5000]),)
"""

from __future__ import annotations

from dataclasses import dataclass

from lightning_autobalance.protocols import MatVec, Vectors
from lightning_autobalance.solvers.base import Solver

__all__ = ["OneStep"]


@dataclass(frozen=True)
class OneStep(Solver):
    """The identity approximation ``H⁻¹ ≈ η·I`` (T1–T2 / DARTS-like: the effect of one weight step of size η).

    Costs no Hessian-vector product; the hypergradient direction ignores the curvature.

    Args:
        lr: the step η (e.g. the model's learning rate).

    Example:
        >>> import torch
        >>> (x,) = OneStep(lr=0.1)(lambda v: v, (torch.ones(2),))
        >>> x
        tensor([0.1000, 0.1000])
    """

    lr: float = 1.0

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"OneStep lr (the step η) must be positive, got {self.lr}.")

    def solve(self, matvec: MatVec, b: Vectors) -> Vectors:
        """Return ``η · b``."""
        return tuple(self.lr * v.detach() for v in b)
