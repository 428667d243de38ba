"""The dense solve (pseudo-inverse), for systems small enough to form.

Example:
    >>> import torch
    >>> H = torch.tensor([[2.0, 0.0], [0.0, 0.0]])  # singular: the null direction is dropped
    >>> (x,) = Exact().solve(lambda v: (H @ v[0],), (torch.ones(2),))
    >>> x.tolist()
    [0.5, 0.0]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_autobalance._checks import check_integer
from lightning_autobalance.protocols import DenseOperator, MatVec, Vectors
from lightning_autobalance.solvers.base import Solver, flatten, unflatten
from lightning_autobalance.solvers.conjugate_gradient import ConjugateGradient

__all__ = ["Exact", "dense_matrix"]


def dense_matrix(matvec: MatVec, like: Vectors) -> Tensor:
    """The matrix of ``matvec`` over the flattened ``like``, formed column by column (one product per entry).

    Example:
        >>> H = torch.tensor([[2.0, 1.0], [1.0, 3.0]])
        >>> dense_matrix(lambda v: (H @ v[0],), (torch.zeros(2),)).tolist()
        [[2.0, 1.0], [1.0, 3.0]]
    """
    size = sum(v.numel() for v in like)
    columns = []
    for i in range(size):
        unit = torch.zeros(size, dtype=like[0].dtype, device=like[0].device)
        unit[i] = 1
        columns.append(torch.cat([c.reshape(-1) for c in matvec(unflatten(unit, like))]))
    return torch.stack(columns, dim=1)


@dataclass(frozen=True)
class Exact(Solver):
    """Dense solve of ``(H + damping·I) x = v`` (pseudo-inverse: eigen-directions with ``|λ| ≤ rcond·|λ|_max`` dropped).

    Builds H column by column from Hessian-vector products (one per weight: for small models and tests) unless the
    operator is a :class:`~lightning_autobalance.protocols.DenseOperator` that gives its matrix as ``dense`` (as the
    head operator of :func:`~lightning_autobalance.hypergrad.last_layer_hypergradient` does). The
    eigen-decomposition runs in float64. The zero-curvature directions of softmax losses (adding the same vector to
    every row of the last layer) are dropped by ``rcond`` instead of blowing up.

    Args:
        damping: Tikhonov damping added to H (like a weight decay of the inner problem).
        rcond: relative cut-off of the pseudo-inverse.
        max_dense: above this many weights the system is solved without forming H, by conjugate gradient to a
            relative residual of 1e-6 (at most 1000 iterations; needs ``H + damping·I`` positive definite, as for the
            convex last-layer problem with ``damping > 0``): a dense factorisation costs O(P³).

    Example:
        A coupled 2 × 2 system, solved in one dense step:

        >>> H = torch.tensor([[2.0, 1.0], [1.0, 2.0]])
        >>> (x,) = Exact()(lambda v: (H @ v[0],), (torch.tensor([3.0, 3.0]),))
        >>> torch.allclose(x, torch.ones(2))
        True
    """

    damping: float = 0.0
    rcond: float = 1e-7
    max_dense: int = 2048

    def __post_init__(self) -> None:
        if self.damping < 0:
            raise ValueError(f"Exact damping must be ≥ 0, got {self.damping}.")
        check_integer("Exact max_dense", self.max_dense, 1)
        if not 0 <= self.rcond < 1:
            raise ValueError(f"Exact rcond must lie in [0, 1), got {self.rcond}.")

    def solve(self, matvec: MatVec | Tensor, b: Vectors | Tensor) -> Vectors | Tensor:
        """Solve densely; a matrix and a flat ``b`` (the former ``solve(matrix, rhs)``) go to :meth:`solve_dense`."""
        if isinstance(matvec, Tensor):
            return self.solve_dense(matvec, b)
        if sum(v.numel() for v in b) > self.max_dense:
            return ConjugateGradient(iters=1000, damping=self.damping, tol=1e-6)(matvec, b)
        matrix = matvec.dense if isinstance(matvec, DenseOperator) else dense_matrix(matvec, b)
        return unflatten(self.solve_dense(matrix, flatten(b)), b)

    def solve_dense(self, matrix: Tensor, rhs: Tensor) -> Tensor:
        """``(matrix + damping·I)⁺ rhs`` for a symmetric ``matrix`` (symmetrised first)."""
        dense = matrix.detach().to(torch.float64)
        values, vectors = torch.linalg.eigh(0.5 * (dense + dense.T))
        values = values + self.damping
        keep = values.abs() > self.rcond * values.abs().max().clamp_min(torch.finfo(torch.float64).tiny)
        inverse = torch.where(keep, 1.0 / torch.where(keep, values, torch.ones_like(values)), torch.zeros_like(values))
        coefficients = vectors.T @ rhs.to(torch.float64)
        return (vectors @ (inverse * coefficients)).to(rhs.dtype)
