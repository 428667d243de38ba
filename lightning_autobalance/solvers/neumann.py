"""The truncated Neumann series (the reference implementation's solver).

Example:
    >>> import torch
    >>> H = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    >>> (x,) = Neumann(terms=200, alpha=0.5).solve(lambda v: (H @ v[0],), (torch.ones(2),))
    >>> [round(float(t), 4) for t in x]
    [0.5, 1.0]
"""

from __future__ import annotations

from dataclasses import dataclass

from lightning_autobalance._checks import check_integer
from lightning_autobalance.protocols import MatVec, Vectors
from lightning_autobalance.solvers.base import Solver

__all__ = ["Neumann"]


@dataclass(frozen=True)
class Neumann(Solver):
    """Truncated Neumann series ``H⁻¹ v ≈ η Σ_{j=0..J} (I − ηH)^j v`` (the reference implementation's solver).

    Converges when ``0 < η < 2 / λ_max(H)`` on a positive-definite H; the truncation acts as a damping of the
    small-curvature directions. The reference uses ``terms=5, alpha=1``.

    Args:
        terms: number of terms J after the first.
        alpha: step η.

    Example:
        >>> import torch
        >>> H = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
        >>> (x,) = Neumann(terms=200, alpha=0.5)(lambda v: (H @ v[0],), (torch.ones(2),))
        >>> [round(float(t), 4) for t in x]
        [0.5, 1.0]
    """

    terms: int = 5
    alpha: float = 1.0

    def __post_init__(self) -> None:
        check_integer("Neumann terms", self.terms, 0)
        if not self.alpha > 0:
            raise ValueError(f"Neumann alpha (the step η) must be positive, got {self.alpha}.")

    def solve(self, matvec: MatVec, b: Vectors) -> Vectors:
        """Apply the truncated series to ``b``."""
        current = tuple(v.detach() for v in b)
        total = current
        for _ in range(self.terms):
            product = matvec(current)
            current = tuple(c - self.alpha * h for c, h in zip(current, product, strict=True))
            total = tuple(t + c for t, c in zip(total, current, strict=True))
        return tuple(self.alpha * t for t in total)
