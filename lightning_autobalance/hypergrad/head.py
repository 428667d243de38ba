"""Hypergradients with the inverse restricted to a linear head over fixed features.

The head's Hessian is formed exactly (it is ``Σ_i φ̃_i φ̃_iᵀ ⊗ H_{z,i}``) and solved densely; cost a few matrix
products. The head operators are :class:`~lightning_autobalance.protocols.DenseOperator` objects: they apply the
Hessian to a vector and give its matrix to a dense solver.

Example:
    >>> # one feature, one logit; inner: (z − a)², outer: z  ⇒  d outer/da = 1
    >>> phi = torch.ones(2, 1)
    >>> result = last_layer_hypergradient(
    ...     lambda z, t, g, h: ((z - h["a"]) ** 2).mean(), lambda z, t, g, h: z.mean(),
    ...     [(phi, torch.zeros(2), None)], (phi, torch.zeros(2), None), torch.ones(1, 1), None,
    ...     {"a": torch.tensor(1.0)},
    ... )
    >>> round(float(result.grads["a"]), 4)
    1.0
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from lightning_autobalance.hypergrad.implicit import (
    HypergradientResult,
    ImplicitSystem,
    LogitLoss,
    flat_reducer,
    full_precision,
    hparam_leaves,
    logit_mixed_term,
    logit_outer,
    loss_gradient,
)
from lightning_autobalance.protocols import DenseOperator, LinearSolver, Vectors
from lightning_autobalance.solvers import Exact

__all__ = ["CoupledHeadOperator", "HeadOperator", "coupled_head_hessian", "last_layer_hypergradient"]

Average = Callable[[Vectors], Vectors]
Sample = tuple[Tensor, Tensor, Tensor | None]


class HeadOperator:
    """Hessian-vector product of a linear head, ``Σ_i φ̃_i ⊗ H_{z,i} (S φ̃_i)``, without forming H.

    ``dense`` (read by :class:`~lightning_autobalance.solvers.Exact`) forms and caches the matrix
    ``Σ_i (φ̃_i φ̃_iᵀ) ⊗ H_{z,i}``; both are averaged across processes with ``average``, so every process solves the
    global system.

    Args:
        parts: ``(φ̃ (B, D), H_z blocks (B, K, K))`` per train batch.
        scale: weight of each batch.
        average: cross-process mean of a tuple of tensors.

    Example:
        >>> operator = HeadOperator([(torch.ones(1, 1), torch.eye(2)[None])], 1.0, lambda v: v)
        >>> operator.dense
        tensor([[1., 0.],
                [0., 1.]])
        >>> operator((torch.tensor([[2.0], [3.0]]),))
        (tensor([[2.],
                [3.]]),)
    """

    def __init__(self, parts: list[tuple[Tensor, Tensor]], scale: float, average: Average):
        self.parts, self.scale, self.average = parts, scale, average
        self._dense: Tensor | None = None

    def __call__(self, vectors: Vectors) -> Vectors:
        """``H`` applied to the ``(K, D)`` head direction."""
        (matrix,) = vectors  # (K, D)
        total = torch.zeros_like(matrix)
        for phi, blocks in self.parts:
            curved = torch.einsum("nac,nc->na", blocks, phi @ matrix.T)
            total += curved.T @ phi * self.scale
        return self.average((total,))

    @property
    def dense(self) -> Tensor:
        """The ``(K·D, K·D)`` Hessian (formed once)."""
        if self._dense is None:
            phi0, blocks0 = self.parts[0]
            k, width = blocks0.shape[1], phi0.shape[1]
            hessian = phi0.new_zeros(k, k, width, width)
            for phi, blocks in self.parts:
                pairs = (phi[:, :, None] * phi[:, None, :]).reshape(phi.shape[0], -1)
                hessian += (blocks.reshape(blocks.shape[0], -1).T @ pairs).view(k, k, width, width) * self.scale
            (self._dense,) = self.average((hessian.permute(0, 2, 1, 3).reshape(k * width, k * width),))
        return self._dense


class CoupledHeadOperator:
    """The head's Hessian given as a matrix (losses whose samples are coupled, e.g. by mixing), averaged once.

    Example:
        >>> operator = CoupledHeadOperator(2 * torch.eye(2), lambda v: v)
        >>> operator((torch.tensor([[1.0], [2.0]]),))
        (tensor([[2.],
                [4.]]),)
    """

    def __init__(self, matrix: Tensor, average: Average):
        (self._matrix,) = average((matrix,))

    @property
    def dense(self) -> Tensor:
        """The ``(K·D, K·D)`` Hessian."""
        return self._matrix

    def __call__(self, vectors: Vectors) -> Vectors:
        """``H`` applied to the ``(K, D)`` head direction."""
        (matrix,) = vectors
        return ((self._matrix @ matrix.reshape(-1)).view_as(matrix),)


def coupled_head_hessian(phi: Tensor, z: Tensor, grad_z: Tensor, k: int) -> Tensor:
    """``Σ_ij (φ̃_i ⊗ e_a)ᵀ H_z[i, a; j, c] (φ̃_j ⊗ e_c)`` for a batch loss whose logit Hessian couples samples.

    One batched backward through the loss (``is_grads_batched``): the logit direction of every head coordinate
    (c, e) is ``φ̃[:, e] e_cᵀ``; ``H_z`` applied to it and contracted with φ̃ gives that column of the head Hessian.

    Example:
        >>> z = torch.zeros(1, 2, requires_grad=True)
        >>> (grad_z,) = torch.autograd.grad((z**2).sum(), z, create_graph=True)
        >>> coupled_head_hessian(torch.ones(1, 1), z, grad_z, 2)
        tensor([[2., 0.],
                [0., 2.]])
    """
    width = phi.shape[1]
    basis = torch.eye(k * width, dtype=phi.dtype, device=phi.device).view(k * width, k, width)
    directions = torch.einsum("jcd,bd->jbc", basis, phi)  # (kd, B, K)
    (curved,) = torch.autograd.grad(grad_z, z, grad_outputs=directions, retain_graph=True, is_grads_batched=True)
    return torch.einsum("jba,be->jae", curved, phi).reshape(k * width, k * width)


def _head_curvature(
    loss: LogitLoss, train: list[tuple[Tensor, Sample]], head: Tensor, alpha: dict[str, Tensor], scale: float, *,
    coupled: bool, average: Average,
) -> tuple[DenseOperator, list[tuple[Tensor, Tensor]], Tensor]:  # fmt: skip
    """The head's Hessian operator, ``(φ̃, ∇_z loss)`` per batch (for the mixed term) and the inner value."""
    k = head.shape[0]
    parts, cached = [], []
    inner_value = head.new_zeros(())
    coupled_hessian: Tensor | None = None
    for phi, (_, targets, groups) in train:
        z, g = loss_gradient(loss, phi @ head.T, targets, groups, alpha)
        with torch.no_grad():
            inner_value = inner_value + loss(z, targets, groups, alpha) * scale
        if coupled:
            batch_hessian = coupled_head_hessian(phi, z, g, k).detach() * scale
            coupled_hessian = batch_hessian if coupled_hessian is None else coupled_hessian + batch_hessian
        else:
            blocks = torch.stack(
                [torch.autograd.grad(g[:, c].sum(), z, retain_graph=True)[0] for c in range(k)], dim=2
            )  # (B, K, K): blocks[i, a, c] = ∂²ℓ/∂z_a∂z_c of sample i
            parts.append((phi, blocks.detach()))
        cached.append((phi, g))
    operator = (
        HeadOperator(parts, scale, average)
        if coupled_hessian is None
        else CoupledHeadOperator(coupled_hessian, average)
    )
    return operator, cached, inner_value


def last_layer_hypergradient(
    loss: LogitLoss,
    objective: LogitLoss,
    train: list[Sample],
    heldout: Sample,
    weight: Tensor,
    bias: Tensor | None,
    hparams: Mapping[str, Tensor],
    solver: LinearSolver | None = None,
    *,
    train_weight: float | None = None,
    reduce: Callable[[Tensor], Tensor] | None = None,
    coupled: bool = False,
) -> HypergradientResult:
    """Hypergradient with θ restricted to a linear head ``z = φ Wᵀ + b`` over fixed features φ.

    The inner Hessian over ``[W | b]`` is formed exactly, ``Σ_i (φ̃_i φ̃_iᵀ) ⊗ H_{z,i}`` with ``φ̃ = [φ, 1]`` and
    ``H_{z,i}`` the loss's K×K Hessian in the logits of sample i (K backward passes through the loss of a batch), and
    solved by ``solver`` (default :class:`~lightning_autobalance.solvers.Exact`). Gauss-Newton and Hessian coincide
    here (z is linear in the head).

    Args:
        loss: ``(logits, targets, groups, hparams) -> scalar`` mean training loss of a batch.
        objective: upper objective of the held-out logits (may gather across processes, differentiably).
        train: ``(features (B, d), targets, groups)`` per train batch.
        heldout: this process's held-out ``(features, targets, groups)``.
        weight: the head's ``(K, d)`` weight.
        bias: the head's ``(K,)`` bias, or None.
        hparams: α by name.
        solver: applied to the small system (a :class:`~lightning_autobalance.protocols.DenseOperator`, whose matrix
            :class:`~lightning_autobalance.solvers.Exact` reads).
        train_weight: weight of each batch's loss in ``inner`` (default ``1 / len(train)``).
        reduce: cross-process mean of ∇ outer, of the dense Hessian and of the result.
        coupled: the loss of one sample depends on other samples' logits (personalized mixing): the head Hessian is
            then formed from full logit-Hessian products of each batch (one batched backward per batch, memory
            ``K·(d+1)·B·K``) instead of per-sample K×K blocks.

    Returns:
        The hypergradient (see :func:`~lightning_autobalance.hypergrad.hypergradient`).
    """
    solver = Exact() if solver is None else solver
    alpha = hparam_leaves(hparams)
    if not train:
        raise ValueError("last_layer_hypergradient needs at least one train batch.")
    scale = 1.0 / len(train) if train_weight is None else train_weight
    average = flat_reducer(reduce)
    head = full_precision(weight.detach() if bias is None else torch.cat([weight, bias[:, None]], 1).detach())

    def augment(features: Tensor) -> Tensor:
        features = full_precision(features.detach()).to(head.dtype)
        return features if bias is None else torch.cat([features, features.new_ones(features.shape[0], 1)], 1)

    phi_v = augment(heldout[0])
    outer_value, grad_z, direct = logit_outer(objective, phi_v @ head.T, heldout[1], heldout[2], alpha)
    (v,) = average((grad_z.T @ phi_v,))
    augmented = [(augment(sample[0]), sample) for sample in train]
    operator, cached, inner_value = _head_curvature(
        loss, augmented, head, alpha, scale, coupled=coupled, average=average
    )

    def mixed(solution: Vectors) -> Vectors:
        return logit_mixed_term(((g, phi @ solution[0].T) for phi, g in cached), alpha, scale)

    return ImplicitSystem(alpha, outer_value, direct, (v,), operator, mixed, lambda: inner_value, average).solve(solver)
