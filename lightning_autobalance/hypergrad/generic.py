"""The reference procedure: any ``inner`` / ``outer`` callables, Hessian-vector products by double backward.

Example:
    >>> from lightning_autobalance.solvers import Exact
    >>> inner = lambda p, h: ((p["t"] - h["a"]) ** 2).sum()  # θ*(α) = α
    >>> outer = lambda p, h: (p["t"] ** 2 + h["a"]).sum()  # so d outer/dα = 2α + 1
    >>> params, hparams = {"t": torch.tensor([1.0])}, {"a": torch.tensor([1.0])}
    >>> hypergradient(inner, outer, params, hparams, Exact()).grads["a"]
    tensor([3.])
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from lightning_autobalance.hypergrad.implicit import (
    HypergradientResult,
    ImplicitSystem,
    LevelObjective,
    check_scalar,
    flat_reducer,
    grad_or_zeros,
    hparam_leaves,
    leaves,
)
from lightning_autobalance.protocols import LinearSolver, Vectors
from lightning_autobalance.solvers import Neumann

__all__ = ["hypergradient"]


def hypergradient(
    inner: LevelObjective,
    outer: LevelObjective,
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
        >>> from lightning_autobalance.solvers import ConjugateGradient
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
    theta = leaves(params)
    if not theta:
        raise ValueError("hypergradient needs at least one weight tensor in params.")
    alpha = hparam_leaves(hparams)

    outer_value = outer(theta, alpha)
    check_scalar(outer_value, "outer")
    outer_grads = grad_or_zeros(outer_value, {**theta, **alpha})
    average = flat_reducer(reduce)
    v = average(tuple(g.detach() for g in outer_grads[: len(theta)]))
    direct = outer_grads[len(theta) :]

    inner_value = inner(theta, alpha)
    check_scalar(inner_value, "inner")
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

    def mixed(solution: Vectors) -> Vectors:
        if linked:
            terms = torch.autograd.grad(
                linked_grads, tuple(alpha.values()), [solution[i] for i in linked], allow_unused=True
            )
        else:
            terms = (None,) * len(alpha)
        return tuple(torch.zeros_like(a) if m is None else m for m, a in zip(terms, alpha.values(), strict=True))

    system = ImplicitSystem(alpha, outer_value, direct, v, hvp, mixed, lambda: inner_value, average)
    return system.solve(solver)
