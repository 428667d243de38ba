"""Hypergradients of a bilevel problem by the implicit function theorem.

Lower level: weights θ minimise ``inner(θ, α)``; upper level: hyperparameters α minimise ``outer(θ*(α), α)``.
At an (approximate) inner optimum the total derivative is (docs/references.md §1)::

    d outer / dα = ∂outer/∂α − (∂²inner/∂α∂θ) · H⁻¹ · ∇_θ outer,      H = ∇²_θ inner

How ``H⁻¹ v`` is applied is a small solver object passed in (:class:`Neumann`, :class:`ConjugateGradient`,
:class:`OneStep`, :class:`Exact`), separate from the differentiation logic. Three entry points:

* :func:`hypergradient` — any ``inner`` / ``outer`` callables; Hessian-vector products by double backward, all graphs
  of ``inner`` held at once (the reference procedure).
* :func:`logit_hypergradient` — the loss hyperparameters act only on the logits, so the mixed term
  ``(∂²inner/∂α∂θ)·p`` is a Jacobian-vector product of the logits along ``p`` followed by a tiny double backward through
  the loss; batches are streamed (one graph at a time); curvature is the true Hessian or the Gauss-Newton product
  ``Jᵀ H_z J`` (positive semi-definite, no double backward through the network).
* :func:`last_layer_hypergradient` — the inverse restricted to a linear head over fixed features: the head's Hessian
  is formed exactly (it is ``Σ_i φ̃_i φ̃_iᵀ ⊗ H_{z,i}``) and solved densely; cost a few matrix products.

Pure PyTorch: works on any callables of ``(params, hparams)`` dictionaries, for example built with
:func:`torch.func.functional_call` on an ``nn.Module``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch
from torch import Tensor

__all__ = [
    "ConjugateGradient",
    "Curvature",
    "Exact",
    "HypergradientResult",
    "LinearSolver",
    "Neumann",
    "OneStep",
    "hypergradient",
    "last_layer_hypergradient",
    "logit_hypergradient",
]

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
        if self.iters < 1:
            raise ValueError(f"ConjugateGradient iters must be ≥ 1, got {self.iters}.")
        if self.damping < 0:
            raise ValueError(f"ConjugateGradient damping must be ≥ 0, got {self.damping}.")

    def __call__(self, hvp: Callable[[Vectors], Vectors], rhs: Vectors) -> Vectors:
        """Run CG on ``rhs``."""

        def operator(v: Vectors) -> Vectors:
            return tuple(h + self.damping * x for h, x in zip(hvp(v), v, strict=True))

        previous = self._memory.get("x") if self.warm_start else None
        if previous is not None and [p.shape for p in previous] == [v.shape for v in rhs]:
            x = tuple(p.to(v) for p, v in zip(previous, rhs, strict=True))
            residual = tuple(v.detach() - a for v, a in zip(rhs, operator(x), strict=True))
        else:
            x = tuple(torch.zeros_like(v) for v in rhs)
            residual = tuple(v.detach().clone() for v in rhs)
        direction = residual
        rs_old = _dot(residual, residual)
        stop = self.tol**2 * _dot(rhs, rhs)
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
        if self.warm_start:
            self._memory["x"] = tuple(xi.detach().clone() for xi in x)
        return x


@dataclass(frozen=True)
class OneStep:
    """The identity approximation ``H⁻¹ ≈ η·I`` (T1–T2 / DARTS-like: the effect of one weight step of size η).

    Costs no Hessian-vector product; the hypergradient direction ignores the curvature.

    Args:
        lr: the step η (e.g. the model's learning rate).

    Example:
        >>> (x,) = OneStep(lr=0.1)(lambda v: v, (torch.ones(2),))
        >>> x
        tensor([0.1000, 0.1000])
    """

    lr: float = 1.0

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"OneStep lr (the step η) must be positive, got {self.lr}.")

    def __call__(self, hvp: Callable[[Vectors], Vectors], rhs: Vectors) -> Vectors:
        """Return ``η · rhs``."""
        return tuple(self.lr * v.detach() for v in rhs)


@dataclass(frozen=True)
class Exact:
    """Dense solve of ``(H + damping·I) x = v`` (pseudo-inverse: eigen-directions with ``|λ| ≤ rcond·|λ|_max`` dropped).

    Builds H column by column from Hessian-vector products (one per weight: for small models and tests) unless the
    ``hvp`` callable carries the dense matrix as ``hvp.dense`` (as :func:`last_layer_hypergradient` does). The
    eigen-decomposition runs in float64. The zero-curvature directions of softmax losses (adding the same vector to
    every row of the last layer) are dropped by ``rcond`` instead of blowing up.

    Args:
        damping: Tikhonov damping added to H (like a weight decay of the inner problem).
        rcond: relative cut-off of the pseudo-inverse.
        max_dense: above this many weights the system is solved without forming H, by conjugate gradient to a
            relative residual of 1e-6 (at most 1000 iterations; needs ``H + damping·I`` positive definite, as for the
            convex last-layer problem with ``damping > 0``): a dense factorisation costs O(P³).

    Example:
        >>> H = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
        >>> (x,) = Exact()(lambda v: (H @ v[0],), (torch.ones(2),))
        >>> [round(float(t), 4) for t in x]
        [0.5, 1.0]
    """

    damping: float = 0.0
    rcond: float = 1e-7
    max_dense: int = 2048

    def __post_init__(self) -> None:
        if self.damping < 0:
            raise ValueError(f"Exact damping must be ≥ 0, got {self.damping}.")
        if self.max_dense < 1:
            raise ValueError(f"Exact max_dense must be ≥ 1, got {self.max_dense}.")
        if not 0 <= self.rcond < 1:
            raise ValueError(f"Exact rcond must lie in [0, 1), got {self.rcond}.")

    def __call__(self, hvp: Callable[[Vectors], Vectors], rhs: Vectors) -> Vectors:
        """Solve densely."""
        sizes = [v.numel() for v in rhs]
        if sum(sizes) > self.max_dense:
            return ConjugateGradient(iters=1000, damping=self.damping, tol=1e-6)(hvp, rhs)
        matrix = getattr(hvp, "dense", None)
        if matrix is None:
            columns = []
            for i in range(sum(sizes)):
                unit = torch.zeros(sum(sizes), dtype=rhs[0].dtype, device=rhs[0].device)
                unit[i] = 1
                parts = tuple(p.view_as(v) for p, v in zip(unit.split(sizes), rhs, strict=True))
                columns.append(torch.cat([c.reshape(-1) for c in hvp(parts)]))
            matrix = torch.stack(columns, dim=1)
        flat = torch.cat([v.detach().reshape(-1) for v in rhs])
        solution = self.solve(matrix, flat)
        return tuple(p.view_as(v) for p, v in zip(solution.split(sizes), rhs, strict=True))

    def solve(self, matrix: Tensor, rhs: Tensor) -> Tensor:
        """``(matrix + damping·I)⁺ rhs`` for a symmetric ``matrix`` (symmetrised first)."""
        dense = matrix.detach().to(torch.float64)
        values, vectors = torch.linalg.eigh(0.5 * (dense + dense.T))
        values = values + self.damping
        keep = values.abs() > self.rcond * values.abs().max().clamp_min(torch.finfo(torch.float64).tiny)
        inverse = torch.where(keep, 1.0 / torch.where(keep, values, torch.ones_like(values)), torch.zeros_like(values))
        coefficients = vectors.T @ rhs.to(torch.float64)
        return (vectors @ (inverse * coefficients)).to(rhs.dtype)


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


# ----------------------------------------------------------------------------------------------------------------
# Structured engines: α acts only on the logits
# ----------------------------------------------------------------------------------------------------------------
Model = Callable[[dict[str, Tensor], Any], tuple[Tensor, Tensor, Tensor | None]]
"""``model(params, batch) -> (logits, targets, groups)`` with the weights substituted (e.g. via functional_call)."""
LogitLoss = Callable[[Tensor, Tensor, Tensor | None, dict[str, Tensor]], Tensor]
"""``loss(logits, targets, groups, hparams) -> scalar`` (mean over the batch)."""
Curvature = Literal["hessian", "gauss_newton"]


class _HeadHVP:
    """Hessian-vector product of a linear head, ``Σ_i φ̃_i ⊗ H_{z,i} (S φ̃_i)``, without forming H.

    ``dense`` (read by :class:`Exact`) forms and caches the matrix ``Σ_i (φ̃_i φ̃_iᵀ) ⊗ H_{z,i}``; both are averaged
    across processes with ``average``, so every process solves the global system.
    """

    def __init__(self, parts: list[tuple[Tensor, Tensor]], scale: float, average: Callable[[Vectors], Vectors]):
        self.parts, self.scale, self.average = parts, scale, average
        self._dense: Tensor | None = None

    def __call__(self, vectors: Vectors) -> Vectors:
        (matrix,) = vectors  # (K, D)
        total = torch.zeros_like(matrix)
        for phi, blocks in self.parts:
            curved = torch.einsum("nac,nc->na", blocks, phi @ matrix.T)
            total += curved.T @ phi * self.scale
        return self.average((total,))

    @property
    def dense(self) -> Tensor:
        if self._dense is None:
            phi0, blocks0 = self.parts[0]
            k, width = blocks0.shape[1], phi0.shape[1]
            hessian = phi0.new_zeros(k, k, width, width)
            for phi, blocks in self.parts:
                pairs = (phi[:, :, None] * phi[:, None, :]).reshape(phi.shape[0], -1)
                hessian += (blocks.reshape(blocks.shape[0], -1).T @ pairs).view(k, k, width, width) * self.scale
            (self._dense,) = self.average((hessian.permute(0, 2, 1, 3).reshape(k * width, k * width),))
        return self._dense


class _DenseHeadHVP:
    """The head's Hessian formed column by column (losses whose samples are coupled, e.g. by mixing)."""

    def __init__(self, matrix: Tensor, average: Callable[[Vectors], Vectors]):
        (self.dense,) = average((matrix,))

    def __call__(self, vectors: Vectors) -> Vectors:
        (matrix,) = vectors
        return ((self.dense @ matrix.reshape(-1)).view_as(matrix),)


def _coupled_head_hessian(phi: Tensor, z: Tensor, grad_z: Tensor, k: int) -> Tensor:
    """``Σ_ij (φ̃_i ⊗ e_a)ᵀ H_z[i, a; j, c] (φ̃_j ⊗ e_c)`` for a batch loss whose logit Hessian couples samples.

    One batched backward through the loss (``is_grads_batched``): the logit direction of every head coordinate
    (c, e) is ``φ̃[:, e] e_cᵀ``; ``H_z`` applied to it and contracted with φ̃ gives that column of the head Hessian.
    """
    width = phi.shape[1]
    basis = torch.eye(k * width, dtype=phi.dtype, device=phi.device).view(k * width, k, width)
    directions = torch.einsum("jcd,bd->jbc", basis, phi)  # (kd, B, K)
    (curved,) = torch.autograd.grad(grad_z, z, grad_outputs=directions, retain_graph=True, is_grads_batched=True)
    return torch.einsum("jba,be->jae", curved, phi).reshape(k * width, k * width)


def _loss_gradient(loss: LogitLoss, logits: Tensor, targets: Tensor, groups: Tensor | None, alpha: dict[str, Tensor]):
    """``(z_leaf, ∇_z loss)`` with the graph kept (to α and z) for second derivatives through the loss only."""
    z = _full_precision(logits.detach()).requires_grad_(True)
    (grad_z,) = torch.autograd.grad(loss(z, targets, groups, alpha), z, create_graph=True)
    return z, grad_z


def _full_precision(tensor: Tensor) -> Tensor:
    """Half-precision (autocast) tensors back to float32; float32 / float64 unchanged."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def _split_aux(out: tuple[Tensor, Tensor, Tensor | None]) -> tuple[Tensor, list[Tensor]]:
    logits, targets, groups = out
    return logits, [targets] if groups is None else [targets, groups]


def _join_aux(aux: list[Tensor]) -> tuple[Tensor, Tensor | None]:
    return aux[0], aux[1] if len(aux) > 1 else None


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
            across processes (differentiably), as the reduce contract of :func:`hypergradient` says.
        train: the train batches of ``inner``.
        heldout: the held-out batches of ``objective``.
        params: weights θ by name.
        hparams: hyperparameters α by name.
        solver: how H⁻¹ is applied (default :class:`ConjugateGradient` with 10 iterations).
        curvature: ``"hessian"`` (double backward through the network per product) or ``"gauss_newton"``.
        train_weight: weight of each batch's loss in ``inner`` (default ``1 / len(train)``: the mean).
        reduce: cross-process mean, applied to ∇_θ outer, every curvature product and the result.
        autocast: e.g. ``torch.bfloat16``: run the network's forward passes under autocast (the loss stays float32).

    Returns:
        The hypergradient (see :func:`hypergradient`).
    """
    solver = ConjugateGradient(iters=10) if solver is None else solver
    if curvature not in ("hessian", "gauss_newton"):
        raise ValueError(f"curvature must be 'hessian' or 'gauss_newton', got {curvature!r}.")
    if not train or not heldout:
        raise ValueError("logit_hypergradient needs at least one train and one held-out batch.")
    theta, alpha = _leaves(params), _leaves(hparams)
    if not alpha:
        raise ValueError("hypergradient needs at least one hyperparameter in hparams: make something learnable.")
    weight = 1.0 / len(train) if train_weight is None else train_weight
    names, weights = list(theta), tuple(theta.values())
    average = _flat_reducer(reduce)
    device_type = weights[0].device.type

    def forward(p: dict[str, Tensor], batch: Any) -> tuple[Tensor, list[Tensor]]:
        if autocast is None:
            logits, aux = _split_aux(model(p, batch))
        else:
            with torch.autocast(device_type, dtype=autocast):
                logits, aux = _split_aux(model(p, batch))
        return _full_precision(logits), aux

    def jvp(batch: Any, tangent: Vectors) -> tuple[Tensor, Tensor, list[Tensor]]:
        primals = {n: w.detach() for n, w in zip(names, weights, strict=True)}
        tangents = dict(zip(names, (t.detach() for t in tangent), strict=True))
        logits, direction, aux = torch.func.jvp(lambda p: forward(p, batch), (primals,), (tangents,), has_aux=True)
        return logits.detach(), direction.detach(), aux

    def vjp(batch: Any, cotangent: Tensor) -> Vectors:
        logits, _ = forward(theta, batch)
        grads = torch.autograd.grad(logits, weights, cotangent, allow_unused=True)
        return tuple(torch.zeros_like(w) if g is None else g for g, w in zip(grads, weights, strict=True))

    # ∇_θ outer by streaming: the logits without graph, ∂outer/∂z on all of them, then one vjp per batch
    with torch.no_grad():
        outputs = [forward(theta, batch) for batch in heldout]
    held_logits = torch.cat([o[0] for o in outputs]).requires_grad_(True)
    targets, groups = _join_aux([torch.cat(parts) for parts in zip(*(o[1] for o in outputs), strict=True)])
    outer_value = objective(held_logits, targets, groups, alpha)
    _check_scalar(outer_value, "objective")
    grad_z, *direct = torch.autograd.grad(outer_value, (held_logits, *alpha.values()), allow_unused=True)
    direct = tuple(torch.zeros_like(a) if d is None else d for d, a in zip(direct, alpha.values(), strict=True))
    v: Vectors = tuple(torch.zeros_like(w) for w in weights)
    for batch, part in zip(heldout, grad_z.split([o[0].shape[0] for o in outputs]), strict=True):
        v = tuple(a + b for a, b in zip(v, vjp(batch, part), strict=True))
    v = average(v)
    inner_values: list[Tensor] = []

    def hvp(vectors: Vectors) -> Vectors:
        total = tuple(torch.zeros_like(w) for w in weights)
        for batch in train:
            if curvature == "gauss_newton":
                logits, direction, aux = jvp(batch, vectors)
                z, g = _loss_gradient(loss, logits, *_join_aux(aux), alpha)
                (curved,) = torch.autograd.grad(g, z, direction)
                product = vjp(batch, curved * weight)
            else:
                logits, aux = forward(theta, batch)
                value = loss(logits, *_join_aux(aux), alpha) * weight
                grads = torch.autograd.grad(value, weights, create_graph=True, allow_unused=True)
                linked = [i for i, gr in enumerate(grads) if gr is not None and gr.requires_grad]
                products = torch.autograd.grad(
                    [grads[i] for i in linked], weights, [vectors[i] for i in linked], allow_unused=True
                )
                product = tuple(torch.zeros_like(w) if p is None else p for p, w in zip(products, weights, strict=True))
            total = tuple(a + b.detach() for a, b in zip(total, product, strict=True))
        return average(total)

    solution = solver(hvp, v)
    mixed = tuple(torch.zeros_like(a) for a in alpha.values())
    for batch in train:
        logits, direction, aux = jvp(batch, solution)
        z, g = _loss_gradient(loss, logits, *_join_aux(aux), alpha)
        with torch.no_grad():
            inner_values.append(loss(z, *_join_aux(aux), alpha) * weight)
        parts = torch.autograd.grad((g * direction).sum() * weight, tuple(alpha.values()), allow_unused=True)
        mixed = tuple(m if p is None else m + p for m, p in zip(mixed, parts, strict=True))
    total = average(tuple((d - m).detach() for d, m in zip(direct, mixed, strict=True)))
    return HypergradientResult(
        grads=dict(zip(alpha, total, strict=True)), outer=outer_value.detach(), inner=torch.stack(inner_values).sum()
    )


def last_layer_hypergradient(
    loss: LogitLoss,
    objective: LogitLoss,
    train: list[tuple[Tensor, Tensor, Tensor | None]],
    heldout: tuple[Tensor, Tensor, Tensor | None],
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
    solved by ``solver`` (default :class:`Exact`). Gauss-Newton and Hessian coincide here (z is linear in the head).

    Args:
        loss: ``(logits, targets, groups, hparams) -> scalar`` mean training loss of a batch.
        objective: upper objective of the held-out logits (may gather across processes, differentiably).
        train: ``(features (B, d), targets, groups)`` per train batch.
        heldout: this process's held-out ``(features, targets, groups)``.
        weight: the head's ``(K, d)`` weight.
        bias: the head's ``(K,)`` bias, or None.
        hparams: α by name.
        solver: applied to the small system (an ``hvp`` carrying ``.dense`` for :class:`Exact`).
        train_weight: weight of each batch's loss in ``inner`` (default ``1 / len(train)``).
        reduce: cross-process mean of ∇ outer, of the dense Hessian and of the result.
        coupled: the loss of one sample depends on other samples' logits (personalized mixing): the head Hessian is
            then formed from full logit-Hessian products of each batch (one batched backward per batch, memory
            ``K·(d+1)·B·K``) instead of per-sample K×K blocks.

    Returns:
        The hypergradient (see :func:`hypergradient`).
    """
    solver = Exact() if solver is None else solver
    alpha = _leaves(hparams)
    if not alpha:
        raise ValueError("hypergradient needs at least one hyperparameter in hparams: make something learnable.")
    if not train:
        raise ValueError("last_layer_hypergradient needs at least one train batch.")
    scale = 1.0 / len(train) if train_weight is None else train_weight
    average = _flat_reducer(reduce)
    head = _full_precision(weight.detach() if bias is None else torch.cat([weight, bias[:, None]], 1).detach())
    k = head.shape[0]

    def augment(features: Tensor) -> Tensor:
        features = _full_precision(features.detach()).to(head.dtype)
        return features if bias is None else torch.cat([features, features.new_ones(features.shape[0], 1)], 1)

    phi_v = augment(heldout[0])
    held_logits = (phi_v @ head.T).requires_grad_(True)
    outer_value = objective(held_logits, heldout[1], heldout[2], alpha)
    _check_scalar(outer_value, "objective")
    grad_z, *direct = torch.autograd.grad(outer_value, (held_logits, *alpha.values()), allow_unused=True)
    direct = tuple(torch.zeros_like(a) if d is None else d for d, a in zip(direct, alpha.values(), strict=True))
    (v,) = average((grad_z.T @ phi_v,))

    parts, cached = [], []
    inner_value = head.new_zeros(())
    coupled_hessian: Tensor | None = None
    for features, targets, groups in train:
        phi = augment(features)
        z, g = _loss_gradient(loss, phi @ head.T, targets, groups, alpha)
        with torch.no_grad():
            inner_value = inner_value + loss(z, targets, groups, alpha) * scale
        if coupled:
            batch_hessian = _coupled_head_hessian(phi, z, g, k).detach() * scale
            coupled_hessian = batch_hessian if coupled_hessian is None else coupled_hessian + batch_hessian
        else:
            blocks = torch.stack(
                [torch.autograd.grad(g[:, c].sum(), z, retain_graph=True)[0] for c in range(k)], dim=2
            )  # (B, K, K): blocks[i, a, c] = ∂²ℓ/∂z_a∂z_c of sample i
            parts.append((phi, blocks.detach()))
        cached.append((phi, g))
    operator = _HeadHVP(parts, scale, average) if coupled_hessian is None else _DenseHeadHVP(coupled_hessian, average)
    (solution,) = solver(operator, (v,))
    mixed = tuple(torch.zeros_like(a) for a in alpha.values())
    for phi, g in cached:
        direction = phi @ solution.T
        parts = torch.autograd.grad((g * direction).sum() * scale, tuple(alpha.values()), allow_unused=True)
        mixed = tuple(m if p is None else m + p for m, p in zip(mixed, parts, strict=True))
    total = average(tuple((d - m).detach() for d, m in zip(direct, mixed, strict=True)))
    grads = dict(zip(alpha, total, strict=True))
    return HypergradientResult(grads=grads, outer=outer_value.detach(), inner=inner_value)
