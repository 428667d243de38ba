"""Full-batch L-BFGS minimiser used by the cross-entropy head."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = [
    "minimise_lbfgs",
]


def minimise_lbfgs(objective: Callable[[], Tensor], params: list[Tensor], max_iter: int, tol: float) -> float:
    """Minimise ``objective()`` over ``params`` by full-batch L-BFGS (strong Wolfe line search) to a gradient tolerance.

    Returns the largest absolute gradient entry at the end, for a convergence check.

    Example:
        >>> x = torch.zeros(2, dtype=torch.float64, requires_grad=True)
        >>> gmax = minimise_lbfgs(lambda: ((x - 3.0) ** 2).sum(), [x], max_iter=50, tol=1e-10)
        >>> x.detach().tolist(), gmax < 1e-8
        ([3.0, 3.0], True)
    """
    opt = torch.optim.LBFGS(
        params,
        lr=1.0,
        max_iter=max_iter,
        max_eval=2 * max_iter,
        tolerance_grad=tol,
        tolerance_change=1e-16,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        opt.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    opt.step(closure)
    grads = torch.autograd.grad(objective(), params)
    return max(float(g.abs().max()) for g in grads)
