"""Hypergradients of a bilevel problem by the implicit function theorem.

Lower level: weights θ minimise ``inner(θ, α)``; upper level: hyperparameters α minimise ``outer(θ*(α), α)``.
At an (approximate) inner optimum the total derivative is (docs/references.md §1)::

    d outer / dα = ∂outer/∂α − (∂²inner/∂α∂θ) · H⁻¹ · ∇_θ outer,      H = ∇²_θ inner

How ``H⁻¹ v`` is applied is a small solver object passed in (:class:`Neumann`, :class:`ConjugateGradient`,
:class:`OneStep`, :class:`Exact`, from :mod:`lightning_autobalance.solvers`), separate from the differentiation
logic; the assembly of the formula is :class:`~lightning_autobalance.hypergrad.implicit.ImplicitSystem`. Three entry
points:

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

Example:
    >>> import torch
    >>> # inner: (θ − α)², outer: θ²  ⇒  θ*(α) = α and d outer/dα = 2α
    >>> hypergradient(
    ...     lambda p, h: ((p["t"] - h["a"]) ** 2).sum(), lambda p, h: (p["t"] ** 2).sum(),
    ...     {"t": torch.tensor([2.0])}, {"a": torch.tensor([2.0])}, Exact(),
    ... ).grads["a"]
    tensor([4.])
"""

from lightning_autobalance.hypergrad.generic import hypergradient
from lightning_autobalance.hypergrad.head import last_layer_hypergradient
from lightning_autobalance.hypergrad.implicit import (
    Curvature,
    HypergradientResult,
    LevelObjective,
    LogitLoss,
    Model,
)
from lightning_autobalance.hypergrad.logits import logit_hypergradient
from lightning_autobalance.protocols import LinearSolver, Vectors
from lightning_autobalance.solvers import ConjugateGradient, Exact, Neumann, OneStep

__all__ = [
    "ConjugateGradient",
    "Curvature",
    "Exact",
    "HypergradientResult",
    "LevelObjective",
    "LinearSolver",
    "LogitLoss",
    "Model",
    "Neumann",
    "OneStep",
    "Vectors",
    "hypergradient",
    "last_layer_hypergradient",
    "logit_hypergradient",
]
