"""Hyper-step engines: how the AutoBalance callback computes one hypergradient (pure PyTorch).

An engine (:class:`~lightning_autobalance.protocols.HyperStepEngine`) is a small object called with a
:class:`HyperStepContext` (the module, the tunable loss, the objective, this process's share of the hyper-batches
and the cross-process collectives) that returns a :class:`~lightning_autobalance.hypergrad.HypergradientResult`.
Every built-in engine also says whether the callback must draw train hyper-batches
(:class:`~lightning_autobalance.protocols.TrainBatchPolicy`). Three engines, selected by name with
:func:`make_engine` (``AutoBalance(engine=...)``) or passed as objects:

* ``"default"`` / ``"last_layer"`` — :class:`LastLayer`: θ restricted to the last layer. Train and held-out features
  are computed without a graph through the body on the hyper-batches the callback draws (stateless, so a resumed run
  and a DDP run reproduce the single uninterrupted process); the head's small Hessian is formed exactly, averaged
  across processes and solved densely (:class:`~lightning_autobalance.solvers.Exact`; matrix-free CG to tolerance
  above 2048 head weights). A hyper-step costs one no-grad forward pass per hyper-batch plus small linear algebra.
  Needs the feature hook (``module.autobalance_features(x) -> (B, d)`` and ``module.autobalance_head() ->
  nn.Linear``, the :class:`~lightning_autobalance.protocols.FeatureHookModule` contract); without it the engine warns
  once and falls back to :class:`FullNetwork`. Opt-in ``LastLayer(train_features="cached")`` reuses the features of
  the last weight steps instead (cheaper, but neither resume-exact nor equal to one process under DDP).
* ``"full"`` / ``"gauss_newton"`` — :class:`FullNetwork`: every weight, batches streamed one graph at a time, the mixed
  term by a Jacobian-vector product of the logits, curvature the Hessian or the Gauss-Newton product.
* ``"reference"`` — :class:`Reference`: the reference procedure (full-network Hessian by double backward, all
  train-batch graphs held, Neumann 5 terms step 1), for comparison.

No engine touches the module's buffers: every forward pass runs on clones, so BatchNorm running statistics are
never updated by a hyper-step.

Example:
    >>> engine = make_engine("full")
    >>> type(engine).__name__, engine.solver
    ('FullNetwork', ConjugateGradient(iters=10, damping=0.1, tol=1e-10, warm_start=False))
"""

from lightning_autobalance.hyperstep.cache import FeatureCache
from lightning_autobalance.hyperstep.context import Gather, HyperStepContext
from lightning_autobalance.hyperstep.factory import ENGINES, make_engine
from lightning_autobalance.hyperstep.full import FullNetwork
from lightning_autobalance.hyperstep.functional import has_feature_hook, phi_device
from lightning_autobalance.hyperstep.last_layer import LastLayer
from lightning_autobalance.hyperstep.reference import Reference
from lightning_autobalance.protocols import HyperStepEngine

__all__ = [
    "ENGINES",
    "FeatureCache",
    "FullNetwork",
    "Gather",
    "HyperStepContext",
    "HyperStepEngine",
    "LastLayer",
    "Reference",
    "has_feature_hook",
    "make_engine",
    "phi_device",
]
