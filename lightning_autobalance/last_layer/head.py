"""The last layer of a module: finding it, reading it, and writing a refit head back into it in place.

The head is an :class:`torch.nn.Linear` submodule, given as the layer itself, as its dotted path (``"net.head"``) or
by the module's ``autobalance_head()`` (see :class:`~lightning_autobalance.last_layer.LastLayerModule`).

Example:
    >>> net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    >>> layer, name = resolve_head(net, "2")
    >>> name, layer is net[2]
    ('2', True)
    >>> head = current_head(layer)
    >>> write_head(layer, LinearHead(2 * head.weight, head.bias))
    >>> bool(torch.equal(net[2].weight, 2 * head.weight))
    True
"""

from __future__ import annotations

import torch
from torch import nn

from lightning_autobalance.llr import LinearHead

__all__ = ["current_head", "resolve_head", "write_head"]


def _linear_names(module: nn.Module) -> list[str]:
    return [name or "<module itself>" for name, sub in module.named_modules() if isinstance(sub, nn.Linear)]


def resolve_head(module: nn.Module, head: nn.Linear | str | None) -> tuple[nn.Linear, str]:
    """The head as a submodule of ``module`` and its dotted name."""
    if head is None:
        getter = getattr(module, "autobalance_head", None)
        if not callable(getter):
            raise ValueError(
                f"Cannot find the last layer of {type(module).__name__}: pass head= (an nn.Linear submodule or its "
                f"dotted path; Linear layers in this module: {_linear_names(module)}) and optionally feature_fn=, or "
                "define autobalance_features(x) and autobalance_head() on the module (see LastLayerModule)."
            )
        head = getter()
        source = f"{type(module).__name__}.autobalance_head()"
    elif isinstance(head, str):
        try:
            head = module.get_submodule(head)
        except AttributeError as err:
            raise ValueError(
                f"head={head!r} is not a submodule of {type(module).__name__} ({err}); Linear layers in this module: "
                f"{_linear_names(module)}."
            ) from None
        source = f"head={head!r}"
    else:
        source = "head"
    if not isinstance(head, nn.Linear):
        raise TypeError(
            f"{source} must be an nn.Linear (the last layer), got {type(head).__name__}; Linear layers in this "
            f"module: {_linear_names(module)}."
        )
    for name, sub in module.named_modules():
        if sub is head:
            return head, name
    raise ValueError(
        f"{source} is an nn.Linear that is not a submodule of {type(module).__name__}: writing a refit head into it "
        f"would not change module(x). Pass the module's own last layer (Linear layers in this module: "
        f"{_linear_names(module)})."
    )


def current_head(head: nn.Linear) -> LinearHead:
    """A float32 CPU copy of ``head`` as a :class:`LinearHead` (a zero bias if the layer has none)."""
    weight = head.weight.detach().to("cpu", torch.float32).clone()
    bias = torch.zeros(head.out_features) if head.bias is None else head.bias.detach().to("cpu", torch.float32).clone()
    return LinearHead(weight, bias)


def write_head(layer: nn.Linear, head: LinearHead) -> None:
    """Copy a :class:`LinearHead` into ``layer`` in place (its device and dtype are kept).

    In-place copies keep every reference to the layer's parameters (optimizers, hooks, tied weights) valid.

    Args:
        layer: the module's last layer.
        head: the head to write, with the same shape.

    Raises:
        ValueError: if the shapes differ, or the head has a non-zero bias and the layer has none.
    """
    if tuple(head.weight.shape) != tuple(layer.weight.shape):
        raise ValueError(f"head weight {tuple(head.weight.shape)} does not fit layer {tuple(layer.weight.shape)}.")
    if layer.bias is None and bool(head.bias.abs().max() > 0):
        raise ValueError("the layer has no bias but the head has a non-zero one; refit with fit_intercept=False.")
    with torch.no_grad():
        layer.weight.copy_(head.weight)
        if layer.bias is not None:
            layer.bias.copy_(head.bias)
