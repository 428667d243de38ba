"""Hypergradients when α acts only on the logits, streaming one batch graph at a time.

The mixed term ``(∂²inner/∂α∂θ)·p`` is a Jacobian-vector product of the logits along ``p`` followed by a tiny double
backward through the loss; batches are streamed (one graph at a time); curvature is the true Hessian or the
Gauss-Newton product ``Jᵀ H_z J`` (positive semi-definite, no double backward through the network).

Example:
    >>> from lightning_autobalance.solvers import Exact
    >>> # a linear model z = x·w; inner: (z − a)² per sample, outer: z on a held-out x  ⇒  d outer/da = 1
    >>> x = torch.ones(2, 1)
    >>> model = lambda p, batch: (batch @ p["w"], torch.zeros(2), None)
    >>> loss = lambda z, t, g, h: ((z - h["a"]) ** 2).mean()
    >>> objective = lambda z, t, g, h: z.mean()
    >>> result = logit_hypergradient(
    ...     model, loss, objective, [x], [x], {"w": torch.ones(1, 1)}, {"a": torch.tensor(1.0)}, Exact()
    ... )
    >>> round(float(result.grads["a"]), 4)
    1.0
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor

from lightning_autobalance.hypergrad.implicit import (
    Curvature,
    HypergradientResult,
    ImplicitSystem,
    LogitLoss,
    Model,
    flat_reducer,
    full_precision,
    hparam_leaves,
    leaves,
    logit_mixed_term,
    logit_outer,
    loss_gradient,
)
from lightning_autobalance.protocols import LinearSolver, Vectors
from lightning_autobalance.solvers import ConjugateGradient

__all__ = ["StreamedModel", "logit_hypergradient"]


def _split_aux(out: tuple[Tensor, Tensor, Tensor | None]) -> tuple[Tensor, list[Tensor]]:
    logits, targets, groups = out
    return logits, [targets] if groups is None else [targets, groups]


def _join_aux(aux: list[Tensor]) -> tuple[Tensor, Tensor | None]:
    return aux[0], aux[1] if len(aux) > 1 else None


class StreamedModel:
    """A network's logits as functions of its weights θ, one batch at a time: forward, JVP, VJP, curvature products.

    Args:
        model: ``(params, batch) -> (logits, targets, groups)``.
        theta: the weight leaves by name.
        autocast: e.g. ``torch.bfloat16``: run the forward passes under autocast (logits back to float32).

    Example:
        >>> theta = {"w": torch.eye(2, requires_grad=True)}
        >>> net = StreamedModel(lambda p, b: (b @ p["w"], torch.zeros(2), None), theta, None)
        >>> net.vjp(torch.eye(2), torch.ones(2, 2))
        (tensor([[1., 1.],
                [1., 1.]]),)
    """

    def __init__(self, model: Model, theta: dict[str, Tensor], autocast: torch.dtype | None) -> None:
        self.model, self.theta, self.autocast = model, theta, autocast
        self.names, self.weights = list(theta), tuple(theta.values())
        self.device_type = self.weights[0].device.type

    def zeros(self) -> Vectors:
        """A zero vector of the weight space."""
        return tuple(torch.zeros_like(w) for w in self.weights)

    def forward(self, params: dict[str, Tensor], batch: Any) -> tuple[Tensor, list[Tensor]]:
        """``(logits in full precision, [targets, groups?])`` of ``batch`` with the weights ``params``."""
        if self.autocast is None:
            logits, aux = _split_aux(self.model(params, batch))
        else:
            with torch.autocast(self.device_type, dtype=self.autocast):
                logits, aux = _split_aux(self.model(params, batch))
        return full_precision(logits), aux

    def jvp(self, batch: Any, tangent: Vectors) -> tuple[Tensor, Tensor, list[Tensor]]:
        """The logits and their directional derivative along ``tangent`` (forward mode)."""
        primals = {n: w.detach() for n, w in zip(self.names, self.weights, strict=True)}
        tangents = dict(zip(self.names, (t.detach() for t in tangent), strict=True))
        logits, direction, aux = torch.func.jvp(lambda p: self.forward(p, batch), (primals,), (tangents,), has_aux=True)
        return logits.detach(), direction.detach(), aux

    def vjp(self, batch: Any, cotangent: Tensor) -> Vectors:
        """``Jᵀ cotangent`` for the logits of ``batch``."""
        logits, _ = self.forward(self.theta, batch)
        grads = torch.autograd.grad(logits, self.weights, cotangent, allow_unused=True)
        return tuple(torch.zeros_like(w) if g is None else g for g, w in zip(grads, self.weights, strict=True))

    def heldout_gradient(
        self, objective: LogitLoss, heldout: list[Any], alpha: dict[str, Tensor]
    ) -> tuple[Tensor, Vectors, Vectors]:
        """``(outer, ∂outer/∂α, ∇_θ outer)``: the logits without graph, ∂outer/∂z on all of them, a vjp per batch."""
        with torch.no_grad():
            outputs = [self.forward(self.theta, batch) for batch in heldout]
        targets, groups = _join_aux([torch.cat(parts) for parts in zip(*(o[1] for o in outputs), strict=True)])
        outer_value, grad_z, direct = logit_outer(objective, torch.cat([o[0] for o in outputs]), targets, groups, alpha)
        v = self.zeros()
        for batch, part in zip(heldout, grad_z.split([o[0].shape[0] for o in outputs]), strict=True):
            v = tuple(a + b for a, b in zip(v, self.vjp(batch, part), strict=True))
        return outer_value, direct, v

    def gauss_newton_product(
        self, batch: Any, vectors: Vectors, loss: LogitLoss, alpha: dict[str, Tensor], weight: float
    ) -> Vectors:
        """``weight · Jᵀ H_z J v`` for one batch (a jvp, a double backward through the loss, a vjp)."""
        logits, direction, aux = self.jvp(batch, vectors)
        z, g = loss_gradient(loss, logits, *_join_aux(aux), alpha)
        (curved,) = torch.autograd.grad(g, z, direction)
        return self.vjp(batch, curved * weight)

    def hessian_product(
        self, batch: Any, vectors: Vectors, loss: LogitLoss, alpha: dict[str, Tensor], weight: float
    ) -> Vectors:
        """``weight · ∇²_θ loss · v`` for one batch (double backward through the network)."""
        logits, aux = self.forward(self.theta, batch)
        value = loss(logits, *_join_aux(aux), alpha) * weight
        grads = torch.autograd.grad(value, self.weights, create_graph=True, allow_unused=True)
        linked = [i for i, gr in enumerate(grads) if gr is not None and gr.requires_grad]
        products = torch.autograd.grad(
            [grads[i] for i in linked], self.weights, [vectors[i] for i in linked], allow_unused=True
        )
        return tuple(torch.zeros_like(w) if p is None else p for p, w in zip(products, self.weights, strict=True))

    def loss_directions(
        self,
        train: list[Any],
        loss: LogitLoss,
        alpha: dict[str, Tensor],
        weight: float,
        solution: Vectors,
        values: list[Tensor],
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """``(∇_z loss_b, J_b solution)`` per train batch; appends ``weight ·`` each batch's loss to ``values``."""
        for batch in train:
            logits, direction, aux = self.jvp(batch, solution)
            z, g = loss_gradient(loss, logits, *_join_aux(aux), alpha)
            with torch.no_grad():
                values.append(loss(z, *_join_aux(aux), alpha) * weight)
            yield g, direction


def logit_hypergradient(
    model: Model,
    loss: LogitLoss,
    objective: LogitLoss,
    train: list[Any],
    heldout: list[Any],
    params: Mapping[str, Tensor],
    hparams: Mapping[str, Tensor],
    solver: LinearSolver | None = None,
    *,
    curvature: Curvature = "hessian",
    train_weight: float | None = None,
    reduce: Callable[[Tensor], Tensor] | None = None,
    autocast: torch.dtype | None = None,
) -> HypergradientResult:
    """Hypergradient when α acts only on the logits, streaming one batch graph at a time.

    ``inner(θ, α) = train_weight · Σ_b loss(model(θ, b), α)`` over ``train``; ``outer = objective`` of the
    concatenated held-out logits. The mixed term is ``∂/∂α ⟨∇_z loss(z, α), J p⟩`` with ``J p`` the logits' directional
    derivative (forward-mode ``jvp``) — no double backward through the network. ``curvature="gauss_newton"`` replaces
    H by ``Jᵀ H_z J`` (positive semi-definite; a jvp, a double backward through the loss and a vjp per batch).

    Args:
        model: ``(params, batch) -> (logits, targets, groups)``.
        loss: the training loss of a batch of logits, ``(logits, targets, groups, hparams) -> scalar``.
        objective: the upper objective of the (local) held-out logits; under data parallelism it may gather them
            across processes (differentiably), as the reduce contract of
            :func:`~lightning_autobalance.hypergrad.hypergradient` says.
        train: the train batches of ``inner``.
        heldout: the held-out batches of ``objective``.
        params: weights θ by name.
        hparams: hyperparameters α by name.
        solver: how H⁻¹ is applied (default :class:`~lightning_autobalance.solvers.ConjugateGradient`, 10 iterations).
        curvature: ``"hessian"`` (double backward through the network per product) or ``"gauss_newton"``.
        train_weight: weight of each batch's loss in ``inner`` (default ``1 / len(train)``: the mean).
        reduce: cross-process mean, applied to ∇_θ outer, every curvature product and the result.
        autocast: e.g. ``torch.bfloat16``: run the network's forward passes under autocast (the loss stays float32).

    Returns:
        The hypergradient (see :func:`~lightning_autobalance.hypergrad.hypergradient`).
    """
    solver = ConjugateGradient(iters=10) if solver is None else solver
    if curvature not in ("hessian", "gauss_newton"):
        raise ValueError(f"curvature must be 'hessian' or 'gauss_newton', got {curvature!r}.")
    if not train or not heldout:
        raise ValueError("logit_hypergradient needs at least one train and one held-out batch.")
    theta, alpha = leaves(params), hparam_leaves(hparams)
    weight = 1.0 / len(train) if train_weight is None else train_weight
    net = StreamedModel(model, theta, autocast)
    average = flat_reducer(reduce)
    outer_value, direct, v = net.heldout_gradient(objective, heldout, alpha)
    product = net.gauss_newton_product if curvature == "gauss_newton" else net.hessian_product

    def hvp(vectors: Vectors) -> Vectors:
        total = net.zeros()
        for batch in train:
            total = tuple(
                a + b.detach() for a, b in zip(total, product(batch, vectors, loss, alpha, weight), strict=True)
            )
        return average(total)

    values: list[Tensor] = []

    def mixed(solution: Vectors) -> Vectors:
        return logit_mixed_term(net.loss_directions(train, loss, alpha, weight, solution, values), alpha, weight)

    system = ImplicitSystem(
        alpha, outer_value, direct, average(v), hvp, mixed, lambda: torch.stack(values).sum(), average
    )
    return system.solve(solver)
