"""What every linear solver shares: the call form ``solver(hvp, rhs)`` around its core ``solve(matvec, b)``.

A solver's core is ``solve(matvec, b) -> x`` with ``matvec(v) = H v`` on tuples of tensors (the TorchOpt / JAXopt
style); :class:`Solver` gives it the :class:`~lightning_autobalance.protocols.LinearSolver` call form the engines use.
The vector helpers work on such tuples.

Example:
    >>> import torch
    >>> class Halve(Solver):
    ...     def solve(self, matvec, b):
    ...         return tuple(0.5 * v for v in b)
    >>> Halve()(lambda v: v, (torch.ones(2),))
    (tensor([0.5000, 0.5000]),)
    >>> dot((torch.ones(2), torch.ones(3)), (torch.ones(2), torch.ones(3)))
    tensor(5.)
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor

from lightning_autobalance.protocols import MatVec, Vectors

__all__ = ["Solver", "dot", "flatten", "unflatten"]


class Solver(ABC):
    """Base of the solvers: calling one, ``solver(hvp, rhs)``, runs ``solve(hvp, rhs)``."""

    @abstractmethod
    def solve(self, matvec: MatVec, b: Vectors) -> Vectors:
        """Return an approximation of ``H⁻¹ b`` with the structure of ``b`` (``matvec(v) = H v``)."""

    def __call__(self, hvp: MatVec, rhs: Vectors) -> Vectors:
        """``solve(hvp, rhs)``."""
        return self.solve(hvp, rhs)


def dot(a: Vectors, b: Vectors) -> Tensor:
    """The inner product of two tuples of tensors (summed over every tensor)."""
    return sum((x * y).sum() for x, y in zip(a, b, strict=True))


def flatten(vectors: Vectors) -> Tensor:
    """The concatenation of the flattened (detached) tensors."""
    return torch.cat([v.detach().reshape(-1) for v in vectors])


def unflatten(flat: Tensor, like: Vectors) -> Vectors:
    """Split ``flat`` back into tensors shaped like ``like`` (the inverse of :func:`flatten`)."""
    return tuple(p.view_as(v) for p, v in zip(flat.split([v.numel() for v in like]), like, strict=True))
