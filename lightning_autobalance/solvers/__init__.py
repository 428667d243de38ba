"""Linear solvers for ``H x = b``: one file per solver, each with the core ``solve(matvec, b)``.

A solver approximates ``H⁻¹ b`` from the products ``matvec(v) = H v`` on tuples of tensors (the weights' structure);
calling it, ``solver(hvp, rhs)``, is the :class:`~lightning_autobalance.protocols.LinearSolver` form the
hypergradient functions and the hyper-step engines use. The solvers are frozen dataclasses that check their fields.

* :class:`Neumann` — truncated Neumann series (the reference implementation's).
* :class:`ConjugateGradient` — matrix-free CG with damping and optional warm start.
* :class:`OneStep` — ``H⁻¹ ≈ η·I`` (no curvature).
* :class:`Exact` — dense pseudo-inverse (reads a :class:`~lightning_autobalance.protocols.DenseOperator`'s matrix).

Example:
    >>> import torch
    >>> H = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    >>> [round(float(t), 4) for t in Exact().solve(lambda v: (H @ v[0],), (torch.ones(2),))[0]]
    [0.5, 1.0]
"""

from lightning_autobalance.protocols import DenseOperator, LinearSolver, MatVec, Vectors
from lightning_autobalance.solvers.base import Solver, dot, flatten, unflatten
from lightning_autobalance.solvers.conjugate_gradient import ConjugateGradient
from lightning_autobalance.solvers.exact import Exact, dense_matrix
from lightning_autobalance.solvers.neumann import Neumann
from lightning_autobalance.solvers.one_step import OneStep

__all__ = [
    "ConjugateGradient",
    "DenseOperator",
    "Exact",
    "LinearSolver",
    "MatVec",
    "Neumann",
    "OneStep",
    "Solver",
    "Vectors",
    "dense_matrix",
    "dot",
    "flatten",
    "unflatten",
]
