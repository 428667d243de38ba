"""The α update of a hyper-step: check, clip and apply a hypergradient to the loss hyperparameters, or refuse it.

:func:`apply_hypergradient` is the last part of every AutoBalance hyper-step. It skips a non-finite hypergradient,
clips it to a maximum norm, writes it to ``.grad`` and steps the hyper-optimizer; a step that makes α non-finite is
undone (α and the hyper-optimizer state restored exactly); α is then projected into its bounds. It decides and
reports (:class:`UpdateResult`); the caller warns, counts and logs.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.optim import Optimizer

from lightning_autobalance.losses import ParametricCrossEntropy

__all__ = ["UpdateResult", "apply_hypergradient"]

OBJECTIVE_NOT_FINITE = "the held-out objective itself is not finite: check the held-out inputs and labels for NaN/inf"
GRADIENT_NOT_FINITE = "lower the hyper-learning rate or raise the solver's damping if this repeats"


@dataclass(frozen=True)
class UpdateResult:
    """What :func:`apply_hypergradient` did.

    Attributes:
        applied: whether α was updated.
        cause: why a non-finite hypergradient was refused (what to check or change); ``""`` otherwise.
        broken: the hyperparameters the optimizer step made non-finite (the step was then undone); ``()`` otherwise.
        grad_norm: Euclidean norm of the hypergradient before clipping (NaN when it was not finite).
        clipped: whether the hypergradient was scaled down to the maximum norm.
    """

    applied: bool
    cause: str = ""
    broken: tuple[str, ...] = ()
    grad_norm: float = math.nan
    clipped: bool = False


def apply_hypergradient(
    loss: ParametricCrossEntropy,
    optimizer: Optimizer,
    grads: Mapping[str, Tensor],
    *,
    outer: Tensor | float = 0.0,
    max_norm: float | None = None,
    bounds: Mapping[str, tuple[float, float]] | None = None,
) -> UpdateResult:
    """Step ``optimizer`` on ``loss``'s hyperparameters α with the hypergradient ``grads``, unless it is unsafe.

    1. A hypergradient with a NaN or an infinity is refused: nothing changes (``cause`` tells whether the held-out
       objective ``outer`` itself was not finite).
    2. Its Euclidean norm (over all of ``grads``, flattened) is scaled down to ``max_norm`` when above it.
    3. It is written to each hyperparameter's ``.grad`` and the optimizer steps (the gradients are then cleared).
    4. If the step made a finite entry of α non-finite, α and the optimizer state are restored to their values
       before the step and the update is refused (``broken`` names the hyperparameters).
    5. α is projected into ``bounds`` (``{kind: (low, high)}``, see :meth:`ParametricCrossEntropy.project_`).

    Args:
        loss: the loss whose ``hparams()`` the optimizer steps.
        optimizer: the hyper-optimizer over ``loss.hparams()``.
        grads: the hypergradient by hyperparameter name (``raw_delta``, ...), in the order to flatten them.
        outer: the held-out objective the hypergradient is of (only read to explain a non-finite hypergradient).
        max_norm: clip the hypergradient's norm to this value (None: no clipping).
        bounds: box constraints on the learned values (None or empty: none).

    Returns:
        An :class:`UpdateResult`.

    Example:
        >>> loss = ParametricCrossEntropy(2, learnable=["iota"])
        >>> optimizer = torch.optim.SGD(list(loss.hparams().values()), lr=1.0)
        >>> result = apply_hypergradient(loss, optimizer, {"raw_iota": torch.tensor([[3.0, 4.0]])}, max_norm=1.0)
        >>> result.applied, result.grad_norm, result.clipped, loss.iota().tolist()
        (True, 5.0, True, [[-0.6000000238418579, -0.800000011920929]])
        >>> apply_hypergradient(loss, optimizer, {"raw_iota": torch.tensor([[math.nan, 0.0]])}).cause
        "lower the hyper-learning rate or raise the solver's damping if this repeats"
    """
    names = list(grads)
    flat = torch.cat([grads[name].reshape(-1) for name in names])
    if not torch.isfinite(flat).all():
        finite_outer = bool(torch.isfinite(torch.as_tensor(outer)).all())
        return UpdateResult(applied=False, cause=GRADIENT_NOT_FINITE if finite_outer else OBJECTIVE_NOT_FINITE)
    grad_norm = flat.norm()  # reported before clipping
    clipped = max_norm is not None and bool(grad_norm > max_norm)
    if clipped:
        flat = flat * (max_norm / grad_norm)
    hparams = loss.hparams()
    offset = 0
    for name in names:
        param = hparams[name]
        param.grad = flat[offset : offset + param.numel()].view_as(param).clone()
        offset += param.numel()
    # α and the optimizer state before the step, to undo a step that makes α non-finite (α is small)
    previous = {name: param.detach().clone() for name, param in hparams.items()}
    previous_state = copy.deepcopy(optimizer.state_dict())
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    # finite before, non-finite after (a raw -inf is an augmentation that is off, not a fault)
    broken = [n for n, p in hparams.items() if (torch.isfinite(previous[n]) & ~torch.isfinite(p.detach())).any()]
    if broken:
        with torch.no_grad():
            for name, param in hparams.items():
                param.copy_(previous[name])
        optimizer.load_state_dict(previous_state)
        return UpdateResult(applied=False, broken=tuple(broken), grad_norm=float(grad_norm), clipped=clipped)
    if bounds:
        loss.project_(bounds)  # the box in raw units, within the parameterisation's range
    return UpdateResult(applied=True, grad_norm=float(grad_norm), clipped=clipped)
