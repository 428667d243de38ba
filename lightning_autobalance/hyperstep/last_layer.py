"""The last-layer engine (the default): θ restricted to the head, solved exactly over fixed features.

Example:
    >>> import warnings
    >>> with warnings.catch_warnings(record=True):
    ...     warnings.simplefilter("always")
    ...     LastLayer().uses_fallback(nn.Linear(2, 2))  # no feature hook: the fallback engine runs
    True
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lightning_autobalance._checks import check_integer
from lightning_autobalance.batches import unpack_batch
from lightning_autobalance.hypergrad import HypergradientResult, last_layer_hypergradient
from lightning_autobalance.hyperstep.cache import FeatureCache
from lightning_autobalance.hyperstep.context import HyperStepContext
from lightning_autobalance.hyperstep.full import FullNetwork
from lightning_autobalance.hyperstep.functional import has_feature_hook, method_runner, phi_device, trainable_tensors
from lightning_autobalance.protocols import HyperStepEngine, LinearSolver, SampleCoupling
from lightning_autobalance.solvers import Exact

__all__ = ["LastLayer"]

Sample = tuple[Tensor, Tensor, Tensor | None]


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
    * ``"cached"`` (opt-in): the head inputs and targets of the last ``cache_size`` *weight steps* (a
      :class:`~lightning_autobalance.hyperstep.cache.FeatureCache` owned by the engine, fed by hooks on the head and
      on the loss; stale by at most ``cache_size`` steps, and free), with fresh draws until the cache is full. **Not
      resume-exact** (the cache is not checkpointed: a resumed run refills it with fresh draws) and, under DDP, the
      inner objective is the mean over each process's own recent batches (with per-process BatchNorm statistics), so
      α differs from a single-process run.

    Args:
        solver: applied to the head's system (default :class:`~lightning_autobalance.solvers.Exact` with damping 0.1:
            ``‖(H + 0.1·I)⁻¹‖ ≤ 10``, the scale of the reference Neumann series, so hyper-learning rates carry over).
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
        check_integer("cache_size", self.cache_size, 1)

    def _cache(self, module: nn.Module, loss: nn.Module) -> FeatureCache:
        """The engine's feature cache, watching ``module`` and ``loss`` (created on first use)."""
        cache = self._state.get("cache")
        if cache is None:
            cache = self._state["cache"] = FeatureCache(self.cache_size)
        cache.attach(module, loss)
        return cache

    def needs_train_batches(self, module: nn.Module, loss: nn.Module) -> bool:
        """Whether the callback must draw train hyper-batches (False once the cache is full)."""
        if self.train_features == "fresh" or not has_feature_hook(module):
            return True
        return not self._cache(module, loss).full

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
        if self.train_features == "fresh":
            return self._compute(context, None)
        cache = self._cache(module, context.loss)
        with cache.paused():
            return self._compute(context, cache)

    def _features(self, module: nn.Module) -> Any:
        """``batch -> (features, targets, groups)``: the head inputs of a batch, without a graph."""
        _, buffers = trainable_tensors(module)
        run = method_runner(module, "autobalance_features", buffers)

        def features(batch: Any) -> Sample:
            x, y, g = unpack_batch(
                batch, user="The last-layer hyper-step engine", advice="use engine='full' for other batch structures."
            )
            with torch.no_grad():
                if self.autocast is None:
                    phi = run({}, x)
                else:
                    with torch.autocast(phi_device(x), dtype=self.autocast):
                        phi = run({}, x)
            return phi.to(torch.promote_types(phi.dtype, torch.float32)), y, g

        return features

    def _compute(self, context: HyperStepContext, cache: FeatureCache | None) -> HypergradientResult:
        head = context.module.autobalance_head()
        if not isinstance(head, nn.Linear):
            raise TypeError(f"autobalance_head() must return an nn.Linear, got {type(head).__name__}.")
        features = self._features(context.module)
        if cache is not None and cache.full:
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
            coupled=isinstance(context.loss, SampleCoupling) and bool(context.loss.couples_samples),
        )
