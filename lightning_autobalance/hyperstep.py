"""Hyper-step engines: how the AutoBalance callback computes one hypergradient (pure PyTorch).

An engine is a small object called with a :class:`HyperStepContext` (the module, the tunable loss, the objective,
this process's share of the hyper-batches and the cross-process collectives) that returns a
:class:`~lightning_autobalance.hypergrad.HypergradientResult`. Three engines, selected by name with
:func:`make_engine` (``AutoBalance(engine=...)``) or passed as objects:

* ``"default"`` / ``"last_layer"`` — :class:`LastLayer`: θ restricted to the last layer. Train and held-out features
  are computed without a graph through the body on the hyper-batches the callback draws (stateless, so a resumed run
  and a DDP run reproduce the single uninterrupted process); the head's small Hessian is formed exactly, averaged
  across processes and solved densely (:class:`~lightning_autobalance.hypergrad.Exact`; matrix-free CG to tolerance
  above 2048 head weights). A hyper-step costs one no-grad forward pass per hyper-batch plus small linear algebra.
  Needs the feature hook (``module.autobalance_features(x) -> (B, d)`` and ``module.autobalance_head() ->
  nn.Linear``); without it the engine warns once and falls back to :class:`FullNetwork`. Opt-in
  ``LastLayer(train_features="cached")`` reuses the features of the last weight steps instead (cheaper, but neither
  resume-exact nor equal to one process under DDP).
* ``"full"`` / ``"gauss_newton"`` — :class:`FullNetwork`: every weight, batches streamed one graph at a time, the mixed
  term by a Jacobian-vector product of the logits, curvature the Hessian or the Gauss-Newton product.
* ``"reference"`` — :class:`Reference`: the reference procedure (full-network Hessian by double backward, all
  train-batch graphs held, Neumann 5 terms step 1), for comparison.

No engine touches the module's buffers: every forward pass runs on clones, so BatchNorm running statistics are
never updated by a hyper-step.
"""

from __future__ import annotations

import warnings
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch
from torch import Tensor, nn
from torch.func import functional_call

from lightning_autobalance.hypergrad import (
    ConjugateGradient,
    Curvature,
    Exact,
    HypergradientResult,
    LinearSolver,
    Neumann,
    hypergradient,
    last_layer_hypergradient,
    logit_hypergradient,
)

__all__ = [
    "ENGINES",
    "FullNetwork",
    "HyperStepContext",
    "HyperStepEngine",
    "LastLayer",
    "Reference",
    "make_engine",
]

ENGINES: tuple[str, ...] = ("default", "last_layer", "full", "gauss_newton", "reference")
Gather = Callable[[Tensor, Tensor, Tensor | None], tuple[Tensor, Tensor, Tensor | None]]


@dataclass
class HyperStepContext:
    """Everything an engine needs for one hyper-step on this process.

    Attributes:
        module: the (unwrapped) module; ``module.autobalance_forward(batch) -> (logits, targets, groups)``.
        loss: the tunable loss module (``loss.hparams()`` are α; called as ``loss(logits, targets, groups)``).
        objective: ``(logits, targets, groups) -> scalar`` on all held-out logits.
        train: this process's train hyper-batches.
        heldout: this process's held-out hyper-batches.
        train_weight: weight of each local train batch in ``inner`` (``world / number of global train batches``, so
            the mean over processes is the global mean).
        reduce: cross-process mean of a flat tensor, or None on one process.
        gather: differentiable all-gather of held-out ``(logits, targets, groups)``, or None on one process.
    """

    module: nn.Module
    loss: nn.Module
    objective: Callable[[Tensor, Tensor, Tensor | None], Tensor]
    train: Sequence[Any]
    heldout: Sequence[Any]
    train_weight: float
    reduce: Callable[[Tensor], Tensor] | None = None
    gather: Gather | None = None

    def loss_fn(self, logits: Tensor, targets: Tensor, groups: Tensor | None, alpha: dict[str, Tensor]) -> Tensor:
        """The training loss with α substituted."""
        return functional_call(self.loss, alpha, (logits, targets, groups))

    def objective_fn(self, logits: Tensor, targets: Tensor, groups: Tensor | None, alpha: dict[str, Tensor]) -> Tensor:
        """The objective of the union of the held-out logits of all processes (α does not enter it)."""
        if self.gather is not None:
            logits, targets, groups = self.gather(logits, targets, groups)
        return self.objective(logits, targets, groups)


class HyperStepEngine(Protocol):
    """Computes the hypergradient of one hyper-step."""

    def __call__(self, context: HyperStepContext) -> HypergradientResult:
        """Return the hypergradient (identical on every process)."""
        ...


_ACTIVE: list[int] = [0]  # > 0 while any engine computes: the last-layer cache must not record its forward passes


class _Busy:
    """Marks an engine computation (re-entrant)."""

    def __enter__(self) -> None:
        _ACTIVE[0] += 1

    def __exit__(self, *exc: object) -> None:
        _ACTIVE[0] -= 1


class _Call(nn.Module):
    """Calls a method of ``module`` so :func:`functional_call` can substitute its weights and buffers."""

    def __init__(self, module: nn.Module, method: str) -> None:
        super().__init__()
        self.module, self.method = module, method

    def forward(self, *args: Any) -> Any:
        return getattr(self.module, self.method)(*args)


def _tensors(module: nn.Module) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    params = {f"module.{name}": p for name, p in module.named_parameters() if p.requires_grad}
    buffers = {f"module.{name}": b for name, b in module.named_buffers()}
    return params, buffers


def _runner(module: nn.Module, method: str, buffers: dict[str, Tensor]) -> Callable[[dict[str, Tensor], Any], Any]:
    wrapper = _Call(module, method)

    def run(theta: dict[str, Tensor], *args: Any) -> Any:
        # Buffers are cloned per pass, so BatchNorm running statistics of the model are never touched.
        return functional_call(wrapper, {**{k: b.clone() for k, b in buffers.items()}, **theta}, args)

    return run


@dataclass(frozen=True)
class Reference:
    """The reference procedure: :func:`~lightning_autobalance.hypergrad.hypergradient` on the whole network.

    All train-batch graphs are held at once and Hessian-vector products run by double backward through the network;
    default solver Neumann with 5 terms and step 1 (docs/references.md §1).

    Args:
        solver: how H⁻¹ is applied.
    """

    solver: LinearSolver = field(default_factory=lambda: Neumann(terms=5, alpha=1.0))

    def __call__(self, context: HyperStepContext) -> HypergradientResult:
        """Compute the hypergradient."""
        params, buffers = _tensors(context.module)
        run = _runner(context.module, "autobalance_forward", buffers)

        def inner(theta: dict[str, Tensor], alpha: dict[str, Tensor]) -> Tensor:
            losses = [context.loss_fn(*run(theta, batch), alpha) for batch in context.train]
            return torch.stack(losses).sum() * context.train_weight

        def outer(theta: dict[str, Tensor], alpha: dict[str, Tensor]) -> Tensor:
            outputs = [run(theta, batch) for batch in context.heldout]
            logits = torch.cat([o[0] for o in outputs])
            targets = torch.cat([o[1] for o in outputs])
            groups = None if outputs[0][2] is None else torch.cat([o[2] for o in outputs])
            return context.objective_fn(logits, targets, groups, alpha)

        with _Busy():
            return hypergradient(inner, outer, params, context.loss.hparams(), self.solver, reduce=context.reduce)


@dataclass(frozen=True)
class FullNetwork:
    """Every weight, streamed: one batch graph at a time, mixed term by a JVP of the logits.

    Args:
        solver: how H⁻¹ is applied (default conjugate gradient, 10 iterations, damping 0.1).
        curvature: ``"hessian"`` or ``"gauss_newton"`` (``Jᵀ H_z J``: positive semi-definite, no double backward
            through the network).
        autocast: e.g. ``torch.bfloat16`` to run the network's forward passes under autocast.
    """

    solver: LinearSolver = field(default_factory=lambda: ConjugateGradient(iters=10, damping=0.1))
    curvature: Curvature = "hessian"
    autocast: torch.dtype | None = None

    def __call__(self, context: HyperStepContext) -> HypergradientResult:
        """Compute the hypergradient."""
        params, buffers = _tensors(context.module)
        with _Busy():
            return self._compute(context, params, buffers)

    def _compute(
        self, context: HyperStepContext, params: dict[str, Tensor], buffers: dict[str, Tensor]
    ) -> HypergradientResult:
        return logit_hypergradient(
            _runner(context.module, "autobalance_forward", buffers),
            context.loss_fn,
            context.objective_fn,
            list(context.train),
            list(context.heldout),
            params,
            context.loss.hparams(),
            self.solver,
            curvature=self.curvature,
            train_weight=context.train_weight,
            reduce=context.reduce,
            autocast=self.autocast,
        )


def has_feature_hook(module: nn.Module) -> bool:
    """Whether ``module`` defines ``autobalance_features(x)`` and ``autobalance_head()``."""
    return callable(getattr(module, "autobalance_features", None)) and callable(
        getattr(module, "autobalance_head", None)
    )


@dataclass(frozen=True)
class LastLayer:
    """θ restricted to the last layer, solved exactly over fixed features (the default engine).

    The hypergradient treats the body as fixed: features come from forward passes without a graph (under ``autocast``
    if given; on clones of the buffers, in the module's current mode), the head's exact Hessian is averaged across
    processes and solved.

    Train-side features:

    * ``"fresh"`` (default): computed on the train hyper-batches the callback draws (one no-grad forward pass each).
      The engine keeps no state: the draws are seeded by (seed, hyper-step) and the weights are in the checkpoint, so a
      resumed run repeats the uninterrupted one bit for bit, and under DDP (batches dealt whole to the processes,
      Hessians averaged) α equals the single process's on the same global batches.
    * ``"cached"`` (opt-in): the head inputs and targets of the last ``cache_size`` *weight steps* (captured by hooks on
      the head and on the loss; stale by at most ``cache_size`` steps, and free), with fresh draws until the cache is
      full. **Not resume-exact** (the cache is not checkpointed: a resumed run refills it with fresh draws) and, under
      DDP, the inner objective is the mean over each process's own recent batches (with per-process BatchNorm
      statistics), so α differs from a single-process run.

    Args:
        solver: applied to the head's system (default :class:`Exact` with damping 0.1: ``‖(H + 0.1·I)⁻¹‖ ≤ 10``, the
            scale of the reference Neumann series, so hyper-learning rates carry over).
        fallback: engine used when the module has no feature hook (warned about once).
        autocast: e.g. ``torch.bfloat16`` for the feature forward passes.
        train_features: ``"fresh"`` (default) or ``"cached"``.
        cache_size: weight steps kept by the cache (``"cached"`` only; the reference schedule's 10 train batches).
    """

    solver: LinearSolver = field(default_factory=lambda: Exact(damping=0.1))
    fallback: HyperStepEngine = field(default_factory=FullNetwork)
    autocast: torch.dtype | None = None
    train_features: Literal["fresh", "cached"] = "fresh"
    cache_size: int = 10
    _state: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.train_features not in ("cached", "fresh"):
            raise ValueError(f"train_features must be 'cached' or 'fresh', got {self.train_features!r}.")
        if self.cache_size < 1:
            raise ValueError(f"cache_size must be ≥ 1, got {self.cache_size}.")

    # -------------------------------------------------------------- cache of recent weight steps
    def _attach(self, module: nn.Module, loss: nn.Module) -> None:
        """Hook the head (its input) and the loss (its targets) to remember the last training batches."""
        if self._state.get("module") is module and self._state.get("loss") is loss:
            return
        for handle in self._state.get("handles", ()):
            handle.remove()
        cache: deque[tuple[Tensor, Tensor, Tensor | None]] = deque(maxlen=self.cache_size)
        pending: list[Tensor] = []
        state = self._state
        state.update(module=module, loss=loss, cache=cache)

        def on_head(head: nn.Module, args: tuple[Any, ...]) -> None:
            if head.training and torch.is_grad_enabled() and not _ACTIVE[0] and args:
                pending[:] = [args[0].detach()]

        def on_loss(_: nn.Module, args: tuple[Any, ...]) -> None:
            if _ACTIVE[0] or not pending or len(args) < 2:
                return
            features = pending.pop()
            targets, groups = args[1], args[2] if len(args) > 2 else None
            if isinstance(targets, Tensor) and features.shape[0] == targets.shape[0]:
                cache.append((features, targets.detach(), None if groups is None else groups.detach()))

        state["handles"] = (
            module.autobalance_head().register_forward_pre_hook(on_head),
            loss.register_forward_pre_hook(on_loss),
        )

    def needs_train_batches(self, module: nn.Module, loss: nn.Module) -> bool:
        """Whether the callback must draw train hyper-batches (False once the cache is full)."""
        if self.train_features == "fresh" or not has_feature_hook(module):
            return True
        self._attach(module, loss)
        return len(self._state["cache"]) < self.cache_size

    def uses_fallback(self, module: nn.Module) -> bool:
        """Whether ``module`` lacks the feature hook, so the fallback runs; warns once (the callback asks at fit start).

        Example:
            >>> import warnings
            >>> with warnings.catch_warnings(record=True) as caught:
            ...     warnings.simplefilter("always")
            ...     LastLayer().uses_fallback(nn.Linear(2, 2))
            True
            >>> "no feature hook" in str(caught[0].message)
            True
        """
        if has_feature_hook(module):
            return False
        if not self._state.get("warned"):
            self._state["warned"] = True
            warnings.warn(
                f"AutoBalance: {type(module).__name__} has no feature hook, so the last-layer hyper-step engine "
                f"falls back to {type(self.fallback).__name__} over all weights (about twice the fit time). Define "
                "`autobalance_features(x) -> (B, d)` and `autobalance_head() -> nn.Linear` on the module to use "
                "it, or pass `engine='full'` to silence this warning.",
                UserWarning,
                stacklevel=2,
            )
        return True

    def __call__(self, context: HyperStepContext) -> HypergradientResult:
        """Compute the hypergradient (or the fallback's, without the feature hook)."""
        module = context.module
        if self.uses_fallback(module):
            return self.fallback(context)
        if self.train_features == "cached":
            self._attach(module, context.loss)
        with _Busy():
            return self._compute(context)

    def _compute(self, context: HyperStepContext) -> HypergradientResult:
        module = context.module
        head = module.autobalance_head()
        if not isinstance(head, nn.Linear):
            raise TypeError(f"autobalance_head() must return an nn.Linear, got {type(head).__name__}.")
        _, buffers = _tensors(module)
        run = _runner(module, "autobalance_features", buffers)

        def features(batch: Any) -> tuple[Tensor, Tensor, Tensor | None]:
            if not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
                raise ValueError(
                    "The last-layer hyper-step engine expects (x, y) or (x, y, g) batches; use engine='full' for "
                    f"other batch structures (got {type(batch).__name__})."
                )
            x, y, *rest = batch
            with torch.no_grad():
                if self.autocast is None:
                    phi = run({}, x)
                else:
                    with torch.autocast(phi_device(x), dtype=self.autocast):
                        phi = run({}, x)
            return phi.to(torch.promote_types(phi.dtype, torch.float32)), y, rest[0] if rest else None

        cache = self._state.get("cache")
        if self.train_features == "cached" and cache is not None and len(cache) == self.cache_size:
            train, train_weight = list(cache), 1.0 / len(cache)
        else:
            train, train_weight = [features(batch) for batch in context.train], context.train_weight
        held = [features(batch) for batch in context.heldout]
        heldout = (
            torch.cat([h[0] for h in held]),
            torch.cat([h[1] for h in held]),
            None if held[0][2] is None else torch.cat([h[2] for h in held]),
        )
        return last_layer_hypergradient(
            context.loss_fn,
            context.objective_fn,
            train,
            heldout,
            head.weight,
            head.bias,
            context.loss.hparams(),
            self.solver,
            train_weight=train_weight,
            reduce=context.reduce,
            coupled=bool(getattr(context.loss, "couples_samples", False)),
        )


def phi_device(x: Any) -> str:
    """Device type of a batch input (for autocast)."""
    return x.device.type if isinstance(x, Tensor) else "cpu"


def make_engine(
    engine: str | HyperStepEngine = "default", solver: LinearSolver | None = None, cache_size: int = 10
) -> HyperStepEngine:
    """The engine named ``engine`` (see the module docstring), with ``solver`` if given; objects pass through.

    ``cache_size`` is the number of recent weight steps whose features the last-layer engine reuses (the callback
    passes its ``train_batches``).

    Example:
        >>> make_engine("reference")
        Reference(solver=Neumann(terms=5, alpha=1.0))
    """
    if not isinstance(engine, str):
        if not callable(engine):
            raise TypeError(f"engine must be one of {', '.join(ENGINES)} or a callable engine, got {engine!r}.")
        return engine
    extra = {} if solver is None else {"solver": solver}
    if engine in ("default", "last_layer"):
        # a dense solve fits the head, not every weight: the fallback then keeps its own solver
        fallback = FullNetwork() if isinstance(solver, Exact) else FullNetwork(**extra)
        return LastLayer(**extra, fallback=fallback, cache_size=cache_size)
    if engine == "full":
        return FullNetwork(**extra)
    if engine == "gauss_newton":
        return FullNetwork(**extra, curvature="gauss_newton")
    if engine == "reference":
        return Reference(**extra)
    raise ValueError(f"Unknown hyper-step engine {engine!r}: choose one of {', '.join(ENGINES)}.")
