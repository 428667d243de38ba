"""The implicit-function-theorem assembly, written once, and the pieces every hypergradient function shares.

At an (approximate) inner optimum the total derivative of the upper objective is (docs/references.md §1)::

    d outer / dα = ∂outer/∂α − (∂²inner/∂α∂θ) · H⁻¹ · ∇_θ outer,      H = ∇²_θ inner

An :class:`ImplicitSystem` holds the pieces of this formula for one problem (the direct term, ``∇_θ outer``, the
curvature product and the mixed term as functions); :meth:`ImplicitSystem.solve` applies a solver and assembles the
:class:`HypergradientResult`. The three entry points differ only in how they build the pieces.

Example:
    >>> # inner: (θ − α)², outer: θ²  at θ = α = 3  ⇒  H = 2, ∇_θ outer = 6, mixed(x) = ∂²inner/∂α∂θ · x = −2x
    >>> from lightning_autobalance.solvers import Exact
    >>> system = ImplicitSystem(
    ...     alpha={"a": torch.tensor([3.0])}, outer=torch.tensor(9.0), direct=(torch.zeros(1),),
    ...     rhs=(torch.tensor([6.0]),), hvp=lambda v: (2 * v[0],), mixed=lambda x: (-2 * x[0],),
    ...     inner=lambda: torch.tensor(0.0),
    ... )
    >>> system.solve(Exact()).grads["a"]
    tensor([6.])
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from lightning_autobalance.protocols import LinearSolver, MatVec, Vectors

__all__ = [
    "Curvature",
    "HypergradientResult",
    "ImplicitSystem",
    "LevelObjective",
    "LogitLoss",
    "Model",
    "check_scalar",
    "flat_reducer",
    "full_precision",
    "grad_or_zeros",
    "hparam_leaves",
    "leaves",
    "logit_mixed_term",
    "logit_outer",
    "loss_gradient",
]

LevelObjective = Callable[[dict[str, Tensor], dict[str, Tensor]], Tensor]
"""``objective(params, hparams) -> scalar``: the inner or outer level of the bilevel problem (not a held-out
objective of :mod:`lightning_autobalance.objectives`, which maps logits, targets and groups to a scalar)."""
Model = Callable[[dict[str, Tensor], Any], tuple[Tensor, Tensor, Tensor | None]]
"""``model(params, batch) -> (logits, targets, groups)`` with the weights substituted (e.g. via functional_call)."""
LogitLoss = Callable[[Tensor, Tensor, Tensor | None, dict[str, Tensor]], Tensor]
"""``loss(logits, targets, groups, hparams) -> scalar`` (mean over the batch)."""
Curvature = Literal["hessian", "gauss_newton"]
Average = Callable[[Vectors], Vectors]


@dataclass(frozen=True)
class HypergradientResult:
    """Hypergradient by hyperparameter name, and the objective values it was computed at."""

    grads: dict[str, Tensor]
    outer: Tensor
    inner: Tensor


def _identity(vectors: Vectors) -> Vectors:
    return vectors


@dataclass(frozen=True)
class ImplicitSystem:
    """The pieces of ``d outer/dα = ∂outer/∂α − mixed(H⁻¹ ∇_θ outer)`` for one problem.

    Attributes:
        alpha: the hyperparameter leaves by name.
        outer: the value of the upper objective.
        direct: ``∂outer/∂α`` per hyperparameter (this process's share).
        rhs: ``∇_θ outer`` (already averaged across processes).
        hvp: ``v ↦ H v`` (averaged across processes).
        mixed: ``x ↦ (∂²inner/∂α∂θ) x`` per hyperparameter (this process's share).
        inner: the value of the inner objective, read after ``mixed`` ran (which may compute it on the way).
        average: cross-process mean of a tuple of tensors, applied to ``direct − mixed``.
    """

    alpha: dict[str, Tensor]
    outer: Tensor
    direct: Vectors
    rhs: Vectors
    hvp: MatVec
    mixed: Callable[[Vectors], Vectors]
    inner: Callable[[], Tensor]
    average: Average = _identity

    def solve(self, solver: LinearSolver) -> HypergradientResult:
        """Apply ``solver`` to ``H x = ∇_θ outer`` and assemble the hypergradient."""
        solution = solver(self.hvp, self.rhs)
        mixed = self.mixed(solution)
        total = self.average(tuple((d - m).detach() for d, m in zip(self.direct, mixed, strict=True)))
        grads = dict(zip(self.alpha, total, strict=True))
        return HypergradientResult(grads=grads, outer=self.outer.detach(), inner=self.inner().detach())


def leaves(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Detached copies that require grad (the variables to differentiate by)."""
    return {name: t.detach().requires_grad_(True) for name, t in tensors.items()}


def hparam_leaves(hparams: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """:func:`leaves` of the hyperparameters, which must not be empty."""
    alpha = leaves(hparams)
    if not alpha:
        raise ValueError("hypergradient needs at least one hyperparameter in hparams: make something learnable.")
    return alpha


def grad_or_zeros(output: Tensor, inputs: dict[str, Tensor], **kwargs: object) -> Vectors:
    """``∂output/∂inputs`` with zeros for the inputs ``output`` does not depend on."""
    grads = torch.autograd.grad(output, tuple(inputs.values()), allow_unused=True, **kwargs)
    return tuple(torch.zeros_like(x) if g is None else g for g, x in zip(grads, inputs.values(), strict=True))


def flat_reducer(reduce: Callable[[Tensor], Tensor] | None) -> Average:
    """Apply ``reduce`` once to the concatenation of a tuple of tensors (one collective per call)."""
    if reduce is None:
        return _identity

    def apply(vectors: Vectors) -> Vectors:
        flat = reduce(torch.cat([v.reshape(-1) for v in vectors]))
        return tuple(part.view_as(v) for part, v in zip(flat.split([v.numel() for v in vectors]), vectors, strict=True))

    return apply


def check_scalar(value: Tensor, name: str) -> None:
    """Raise unless ``value`` is a one-element tensor (the ``name`` objective's value)."""
    if not isinstance(value, Tensor) or value.numel() != 1:
        raise ValueError(
            f"The {name} objective must return a scalar tensor, got {type(value).__name__} "
            f"{getattr(value, 'shape', '')}."
        )


def full_precision(tensor: Tensor) -> Tensor:
    """Half-precision (autocast) tensors back to float32; float32 / float64 unchanged."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def loss_gradient(
    loss: LogitLoss, logits: Tensor, targets: Tensor, groups: Tensor | None, alpha: dict[str, Tensor]
) -> tuple[Tensor, Tensor]:
    """``(z_leaf, ∇_z loss)`` with the graph kept (to α and z) for second derivatives through the loss only."""
    z = full_precision(logits.detach()).requires_grad_(True)
    (grad_z,) = torch.autograd.grad(loss(z, targets, groups, alpha), z, create_graph=True)
    return z, grad_z


def logit_outer(
    objective: LogitLoss, logits: Tensor, targets: Tensor, groups: Tensor | None, alpha: dict[str, Tensor]
) -> tuple[Tensor, Tensor, Vectors]:
    """``(outer, ∂outer/∂z, ∂outer/∂α)`` of an objective of held-out logits ``z`` (a leaf made here)."""
    held_logits = logits.requires_grad_(True)
    outer_value = objective(held_logits, targets, groups, alpha)
    check_scalar(outer_value, "objective")
    grad_z, *direct = torch.autograd.grad(outer_value, (held_logits, *alpha.values()), allow_unused=True)
    direct = tuple(torch.zeros_like(a) if d is None else d for d, a in zip(direct, alpha.values(), strict=True))
    return outer_value, grad_z, direct


def logit_mixed_term(terms: Iterable[tuple[Tensor, Tensor]], alpha: dict[str, Tensor], weight: float) -> Vectors:
    """``Σ_b weight · ∂/∂α ⟨∇_z loss_b(z, α), ż_b⟩`` over ``(∇_z loss_b, ż_b)`` pairs (ż: the logits' direction)."""
    mixed = tuple(torch.zeros_like(a) for a in alpha.values())
    for grad_z, direction in terms:
        parts = torch.autograd.grad((grad_z * direction).sum() * weight, tuple(alpha.values()), allow_unused=True)
        mixed = tuple(m if p is None else m + p for m, p in zip(mixed, parts, strict=True))
    return mixed
