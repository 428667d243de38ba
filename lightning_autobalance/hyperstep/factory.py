"""Engines by name: :func:`make_engine` (``AutoBalance(engine=...)``).

Example:
    >>> make_engine("gauss_newton").curvature
    'gauss_newton'
    >>> make_engine("last_layer", Exact(damping=1.0)).fallback.solver  # a dense solve is for the head only
    ConjugateGradient(iters=10, damping=0.1, tol=1e-10, warm_start=False)
"""

from __future__ import annotations

from lightning_autobalance.hyperstep.full import FullNetwork
from lightning_autobalance.hyperstep.last_layer import LastLayer
from lightning_autobalance.hyperstep.reference import Reference
from lightning_autobalance.protocols import HyperStepEngine, LinearSolver
from lightning_autobalance.solvers import Exact

__all__ = ["ENGINES", "make_engine"]

ENGINES: tuple[str, ...] = ("default", "last_layer", "full", "gauss_newton", "reference")


def make_engine(
    engine: str | HyperStepEngine = "default", solver: LinearSolver | None = None, cache_size: int = 10
) -> HyperStepEngine:
    """The engine named ``engine`` (see :mod:`lightning_autobalance.hyperstep`), with ``solver`` if given.

    Objects pass through. ``cache_size`` is the number of recent weight steps whose features the last-layer engine
    reuses (the callback passes its ``train_batches``).

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
