"""Conjugate gradient, matrix-free, with optional damping and warm start.

Example:
    >>> import torch
    >>> H = torch.tensor([[4.0, 1.0], [1.0, 3.0]])
    >>> (x,) = ConjugateGradient(iters=2).solve(lambda v: (H @ v[0],), (torch.tensor([1.0, 2.0]),))
    >>> [round(float(t), 4) for t in x]
    [0.0909, 0.6364]
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lightning_autobalance._checks import check_integer
from lightning_autobalance.protocols import MatVec, Vectors
from lightning_autobalance.solvers.base import Solver, dot

__all__ = ["ConjugateGradient"]


@dataclass(frozen=True)
class ConjugateGradient(Solver):
    """Conjugate gradient on ``(H + damping·I) x = v``, starting from 0 (or from the previous solution).

    Exact after as many iterations as distinct eigenvalues on a positive-definite H; with ``damping > 0`` it also
    tolerates the slightly indefinite Hessians of non-convex inner problems.

    Args:
        iters: maximum number of iterations.
        damping: Tikhonov damping added to H.
        tol: stop when the residual norm falls below ``tol`` times the norm of ``v``.
        warm_start: start from the solution of the previous call (when the shapes match). Successive hyper-steps
            solve nearby systems, so a few iterations go further. The remembered solution is not checkpointed:
            a resumed run restarts from 0 once.

    Example:
        >>> import torch
        >>> H = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
        >>> (x,) = ConjugateGradient(iters=5)(lambda v: (H @ v[0],), (torch.ones(2),))
        >>> [round(float(t), 4) for t in x]
        [0.5, 1.0]
    """

    iters: int = 10
    damping: float = 0.0
    tol: float = 1e-10
    warm_start: bool = False
    _memory: dict[str, Vectors] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        check_integer("ConjugateGradient iters", self.iters, 1)
        if self.damping < 0:
            raise ValueError(f"ConjugateGradient damping must be ≥ 0, got {self.damping}.")

    def solve(self, matvec: MatVec, b: Vectors) -> Vectors:
        """Run CG on ``b``."""

        def operator(v: Vectors) -> Vectors:
            return tuple(h + self.damping * x for h, x in zip(matvec(v), v, strict=True))

        previous = self._memory.get("x") if self.warm_start else None
        if previous is not None and [p.shape for p in previous] == [v.shape for v in b]:
            x = tuple(p.to(v) for p, v in zip(previous, b, strict=True))
            residual = tuple(v.detach() - a for v, a in zip(b, operator(x), strict=True))
        else:
            x = tuple(torch.zeros_like(v) for v in b)
            residual = tuple(v.detach().clone() for v in b)
        direction = residual
        rs_old = dot(residual, residual)
        stop = self.tol**2 * dot(b, b)
        for _ in range(self.iters):
            if rs_old <= stop:
                break
            product = operator(direction)
            curvature = dot(direction, product)
            if curvature <= 0:
                break
            step = rs_old / curvature
            x = tuple(xi + step * di for xi, di in zip(x, direction, strict=True))
            residual = tuple(ri - step * pi for ri, pi in zip(residual, product, strict=True))
            rs_new = dot(residual, residual)
            direction = tuple(ri + (rs_new / rs_old) * di for ri, di in zip(residual, direction, strict=True))
            rs_old = rs_new
        if self.warm_start:
            self._memory["x"] = tuple(xi.detach().clone() for xi in x)
        return x
