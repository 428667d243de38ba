"""Hypergradients of a bilevel problem by the implicit function theorem.

Lower level: weights θ minimise ``inner(θ, α)``; upper level: hyperparameters α minimise ``outer(θ*(α), α)``.
At an (approximate) inner optimum the total derivative is (PAPERS.md §1)::

    d outer / dα = ∂outer/∂α − (∂²inner/∂α∂θ) · H⁻¹ · ∇_θ outer,      H = ∇²_θ inner

How ``H⁻¹ v`` is applied is a small solver object passed in (:class:`Neumann`, :class:`ConjugateGradient`), separate
from the differentiation logic. Only Hessian-vector products are used; H is never formed.

Pure PyTorch: works on any callables of ``(params, hparams)`` dictionaries, for example built with
:func:`torch.func.functional_call` on an ``nn.Module``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

__all__ = ["ConjugateGradient", "HypergradientResult", "LinearSolver", "Neumann", "hypergradient"]

Vectors = tuple[Tensor, ...]
Objective = Callable[[dict[str, Tensor], dict[str, Tensor]], Tensor]


class LinearSolver(Protocol):
    """Approximates ``H⁻¹ rhs`` given a Hessian-vector product ``hvp(v) = H v`` on tuples of tensors."""

    def __call__(self, hvp: Callable[[Vectors], Vectors], rhs: Vectors) -> Vectors:
        """Return an approximation of ``H⁻¹ rhs`` with the structure of ``rhs``."""
        ...


def _dot(a: Vectors, b: Vectors) -> Tensor:
    return sum((x * y).sum() for x, y in zip(a, b, strict=True))


@dataclass(frozen=True)
class Neumann:
    """Truncated Neumann series ``H⁻¹ v ≈ η Σ_{j=0..J} (I − ηH)^j v`` (the reference implementation's solver).

    Converges when ``0 < η < 2 / λ_max(H)`` on a positive-definite H; the truncation acts as a damping of the
    small-curvature directions. The reference uses ``terms=5, alpha=1``.

    Args:
        terms: number of terms J after the first.
        alpha: step η.

    Example:
        >>> H = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
        >>> (x,) = Neumann(terms=200, alpha=0.5)(lambda v: (H @ v[0],), (torch.ones(2),))
        >>> [round(float(t), 4) for t in x]
        [0.5, 1.0]
    """

    terms: int = 5
    alpha: float = 1.0

    def __post_init__(self) -> None:
        if self.terms < 0:
            raise ValueError(f"Neumann terms must be ≥ 0, got {self.terms}.")
        if not self.alpha > 0:
            raise ValueError(f"Neumann alpha (the step η) must be positive, got {self.alpha}.")

    def __call__(self, hvp: Callable[[Vectors], Vectors], rhs: Vectors) -> Vectors:
        """Apply the truncated series to ``rhs``."""
        current = tuple(v.detach() for v in rhs)
        total = current
        for _ in range(self.terms):
            product = hvp(current)
            current = tuple(c - self.alpha * h for c, h in zip(current, product, strict=True))
            total = tuple(t + c for t, c in zip(total, current, strict=True))
        return tuple(self.alpha * t for t in total)


@dataclass(frozen=True)
class ConjugateGradient:
    """Conjugate gradient on ``(H + damping·I) x = v``, starting from 0.

    Exact after as many iterations as distinct eigenvalues on a positive-definite H; with ``damping > 0`` it also
    tolerates the slightly indefinite Hessians of non-convex inner problems.

    Args:
        iters: maximum number of iterations.
        damping: Tikhonov damping added to H.
        tol: stop when the residual norm falls below ``tol`` times the norm of ``v``.

    Example:
        >>> H = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
        >>> (x,) = ConjugateGradient(iters=5)(lambda v: (H @ v[0],), (torch.ones(2),))
        >>> [round(float(t), 4) for t in x]
        [0.5, 1.0]
    """

    iters: int = 10
    damping: float = 0.0
    tol: float = 1e-10

    def __post_init__(self) -> None:
        if self.iters < 1:
            raise ValueError(f"ConjugateGradient iters must be ≥ 1, got {self.iters}.")
        if self.damping < 0:
            raise ValueError(f"ConjugateGradient damping must be ≥ 0, got {self.damping}.")

    def __call__(self, hvp: Callable[[Vectors], Vectors], rhs: Vectors) -> Vectors:
        """Run CG on ``rhs``."""

        def operator(v: Vectors) -> Vectors:
            return tuple(h + self.damping * x for h, x in zip(hvp(v), v, strict=True))

        x = tuple(torch.zeros_like(v) for v in rhs)
        residual = tuple(v.detach().clone() for v in rhs)
        direction = residual
        rs_old = _dot(residual, residual)
        stop = self.tol**2 * rs_old
        for _ in range(self.iters):
            if rs_old <= stop:
                break
            product = operator(direction)
            curvature = _dot(direction, product)
            if curvature <= 0:
                break
            step = rs_old / curvature
            x = tuple(xi + step * di for xi, di in zip(x, direction, strict=True))
            residual = tuple(ri - step * pi for ri, pi in zip(residual, product, strict=True))
            rs_new = _dot(residual, residual)
            direction = tuple(ri + (rs_new / rs_old) * di for ri, di in zip(residual, direction, strict=True))
            rs_old = rs_new
        return x


@dataclass(frozen=True)
class HypergradientResult:
    """Hypergradient by hyperparameter name, and the objective values it was computed at."""

    grads: dict[str, Tensor]
    outer: Tensor
    inner: Tensor


def _leaves(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {name: t.detach().requires_grad_(True) for name, t in tensors.items()}


def _grad_or_zeros(output: Tensor, inputs: dict[str, Tensor], **kwargs: object) -> Vectors:
    grads = torch.autograd.grad(output, tuple(inputs.values()), allow_unused=True, **kwargs)
    return tuple(torch.zeros_like(x) if g is None else g for g, x in zip(grads, inputs.values(), strict=True))


def hypergradient(
    inner: Objective,
    outer: Objective,
    params: Mapping[str, Tensor],
    hparams: Mapping[str, Tensor],
    solver: LinearSolver | None = None,
    reduce: Callable[[Tensor], Tensor] | None = None,
) -> HypergradientResult:
    """Implicit-function-theorem hypergradient of ``outer`` with respect to ``hparams``.

    Args:
        inner: lower-level objective ``inner(params, hparams) -> scalar`` (the training loss).
        outer: upper-level objective ``outer(params, hparams) -> scalar`` (e.g. balanced loss on held-out data).
        params: weights θ at which to evaluate (an approximate minimiser of ``inner``), by name.
        hparams: hyperparameters α, by name.
        solver: how to apply H⁻¹ (default :class:`Neumann` with the reference's 5 terms and step 1).
        reduce: for data-parallel use, a function that averages a flat tensor across processes (e.g. an all-reduce
            mean). Each process passes its share of the problem — ``inner`` such that the global inner objective is the
            mean over processes, and ``outer`` whose gradients, averaged over processes, are the global ones — and
            ``reduce`` is applied to ∇_θ outer, to every Hessian-vector product and to the result, so every process
            returns the hypergradient of the global problem (the same on all of them).

    Returns:
        The hypergradient per hyperparameter (same shapes as ``hparams``) and the values of ``outer`` and
        ``inner``. Nothing is written into ``.grad`` of the given tensors.

    Example:
        >>> # inner: (θ − α)², outer: θ²  ⇒  θ*(α) = α and d outer/dα = 2α
        >>> result = hypergradient(
        ...     lambda p, h: ((p["t"] - h["a"]) ** 2).sum(),
        ...     lambda p, h: (p["t"] ** 2).sum(),
        ...     {"t": torch.tensor([3.0])}, {"a": torch.tensor([3.0])},
        ...     ConjugateGradient(iters=3),
        ... )
        >>> result.grads["a"]
        tensor([6.])
    """
    solver = Neumann() if solver is None else solver
    theta, alpha = _leaves(params), _leaves(hparams)
    if not theta:
        raise ValueError("hypergradient needs at least one weight tensor in params.")
    if not alpha:
        raise ValueError("hypergradient needs at least one hyperparameter in hparams: make something learnable.")

    outer_value = outer(theta, alpha)
    _check_scalar(outer_value, "outer")
    outer_grads = _grad_or_zeros(outer_value, {**theta, **alpha})
    average = _flat_reducer(reduce)
    v = average(tuple(g.detach() for g in outer_grads[: len(theta)]))
    direct = outer_grads[len(theta) :]

    inner_value = inner(theta, alpha)
    _check_scalar(inner_value, "inner")
    inner_grads = torch.autograd.grad(inner_value, tuple(theta.values()), create_graph=True, allow_unused=True)
    # Only gradient components that still depend on something carry second-order information.
    linked = [i for i, g in enumerate(inner_grads) if g is not None and g.requires_grad]
    linked_grads = [inner_grads[i] for i in linked]
    weights = tuple(theta.values())

    def hvp(vectors: Vectors) -> Vectors:
        if not linked:
            return tuple(torch.zeros_like(w) for w in weights)
        products = torch.autograd.grad(
            linked_grads, weights, [vectors[i] for i in linked], retain_graph=True, allow_unused=True
        )
        return average(
            tuple(torch.zeros_like(w) if p is None else p.detach() for p, w in zip(products, weights, strict=True))
        )

    solution = solver(hvp, v)
    if linked:
        mixed = torch.autograd.grad(
            linked_grads, tuple(alpha.values()), [solution[i] for i in linked], allow_unused=True
        )
    else:
        mixed = (None,) * len(alpha)
    mixed = tuple(torch.zeros_like(a) if m is None else m for m, a in zip(mixed, alpha.values(), strict=True))
    total = average(tuple((d - m).detach() for d, m in zip(direct, mixed, strict=True)))
    grads = dict(zip(alpha, total, strict=True))
    return HypergradientResult(grads=grads, outer=outer_value.detach(), inner=inner_value.detach())


def _flat_reducer(reduce: Callable[[Tensor], Tensor] | None) -> Callable[[Vectors], Vectors]:
    """Apply ``reduce`` once to the concatenation of a tuple of tensors (one collective per call)."""
    if reduce is None:
        return lambda vectors: vectors

    def apply(vectors: Vectors) -> Vectors:
        flat = reduce(torch.cat([v.reshape(-1) for v in vectors]))
        return tuple(part.view_as(v) for part, v in zip(flat.split([v.numel() for v in vectors]), vectors, strict=True))

    return apply


def _check_scalar(value: Tensor, name: str) -> None:
    if not isinstance(value, Tensor) or value.numel() != 1:
        raise ValueError(
            f"The {name} objective must return a scalar tensor, got {type(value).__name__} "
            f"{getattr(value, 'shape', '')}."
        )
