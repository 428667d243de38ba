"""Running a module's methods with substituted weights, on clones of its buffers (what every engine does).

Example:
    >>> import torch
    >>> net = nn.BatchNorm1d(2).train()
    >>> _, buffers = trainable_tensors(net)
    >>> run = method_runner(net, "forward", buffers)
    >>> _ = run({}, torch.randn(4, 2))
    >>> net.running_mean.tolist()  # the module's own running statistics are untouched
    [0.0, 0.0]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn
from torch.func import functional_call

__all__ = ["ModuleMethod", "has_feature_hook", "method_runner", "phi_device", "trainable_tensors"]


class ModuleMethod(nn.Module):
    """Calls a method of ``module`` so :func:`functional_call` can substitute its weights and buffers.

    Example:
        >>> import torch
        >>> ModuleMethod(nn.Identity(), "forward")(torch.ones(1))
        tensor([1.])
    """

    def __init__(self, module: nn.Module, method: str) -> None:
        super().__init__()
        self.module, self.method = module, method

    def forward(self, *args: Any) -> Any:
        """``module.<method>(*args)``."""
        return getattr(self.module, self.method)(*args)


def trainable_tensors(module: nn.Module) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """The trainable parameters and the buffers of ``module``, named as :class:`ModuleMethod` sees them."""
    params = {f"module.{name}": p for name, p in module.named_parameters() if p.requires_grad}
    buffers = {f"module.{name}": b for name, b in module.named_buffers()}
    return params, buffers


def method_runner(
    module: nn.Module, method: str, buffers: dict[str, Tensor]
) -> Callable[[dict[str, Tensor], Any], Any]:
    """``run(theta, *args)``: ``module.<method>(*args)`` with the weights ``theta`` and clones of ``buffers``."""
    wrapper = ModuleMethod(module, method)

    def run(theta: dict[str, Tensor], *args: Any) -> Any:
        # Buffers are cloned per pass, so BatchNorm running statistics of the model are never touched.
        return functional_call(wrapper, {**{k: b.clone() for k, b in buffers.items()}, **theta}, args)

    return run


def has_feature_hook(module: nn.Module) -> bool:
    """Whether ``module`` defines ``autobalance_features(x)`` and ``autobalance_head()``.

    That is the :class:`~lightning_autobalance.protocols.FeatureHookModule` contract, with both members callable.

    Example:
        >>> has_feature_hook(nn.Linear(2, 2))
        False
    """
    return callable(getattr(module, "autobalance_features", None)) and callable(
        getattr(module, "autobalance_head", None)
    )


def phi_device(x: Any) -> str:
    """Device type of a batch input (for autocast).

    Example:
        >>> import torch
        >>> phi_device(torch.zeros(1)), phi_device([1, 2])
        ('cpu', 'cpu')
    """
    return x.device.type if isinstance(x, Tensor) else "cpu"
