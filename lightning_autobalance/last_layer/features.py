"""Features of a data set under the frozen backbone of a module: the input of its last layer, with the labels.

How the features are found (a feature function, ``module.autobalance_features``, or a forward pre-hook on the head)
is described in :mod:`lightning_autobalance.last_layer`; :class:`LastLayerModule` is the protocol of a module that
needs no arguments. :func:`extract_features` returns a :class:`RetrainingFeatures`, which can be passed instead of a
loader to refit the head several times cheaply.

Example:
    >>> net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    >>> batches = [(torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1]), torch.tensor([0, 0, 1, 1, 1]))]
    >>> data = extract_features(net, batches, feature_fn=net[:2])
    >>> len(data), data.features.shape, data.groups.tolist()
    (5, torch.Size([5, 6]), [0, 0, 1, 1, 1])
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from lightning.pytorch.utilities import move_data_to_device
from torch import Tensor, nn
from torch.utils.data import Dataset, IterableDataset

from lightning_autobalance.batches import unpack_batch
from lightning_autobalance.last_layer.head import resolve_head

__all__ = ["Data", "FeatureFn", "LastLayerModule", "RetrainingFeatures", "extract_features"]

FeatureFn = Callable[[Tensor], Tensor]


@runtime_checkable
class LastLayerModule(Protocol):
    """Optional protocol of a module whose last layer can be retrained without arguments.

    ``autobalance_features(x)`` returns the ``(B, d)`` input of the last layer, ``autobalance_head()`` the last layer
    itself (an :class:`torch.nn.Linear` with ``d`` inputs and one output per class), so that
    ``module(x) == module.autobalance_head()(module.autobalance_features(x))`` in eval mode.

    Example:
        >>> class Net(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.body, self.head = nn.Sequential(nn.Linear(4, 8), nn.ReLU()), nn.Linear(8, 3)
        ...     def forward(self, x):
        ...         return self.head(self.body(x))
        ...     def autobalance_features(self, x):
        ...         return self.body(x)
        ...     def autobalance_head(self):
        ...         return self.head
        >>> isinstance(Net(), LastLayerModule)
        True
    """

    def autobalance_features(self, x: Tensor) -> Tensor:
        """Features ``(B, d)`` read by the last layer."""
        ...

    def autobalance_head(self) -> nn.Linear:
        """The last layer."""
        ...


@dataclass(frozen=True)
class RetrainingFeatures:
    """Features of a data set under a frozen backbone, with their labels.

    Attributes:
        features: ``(N, d)`` float32 CPU features.
        targets: ``(N,)`` int64 class labels.
        groups: ``(N,)`` int64 group labels, or ``None`` if the batches had none.
    """

    features: Tensor
    targets: Tensor
    groups: Tensor | None = None

    def __len__(self) -> int:
        return self.features.shape[0]


Data = Iterable[Any] | RetrainingFeatures
"""A retraining or evaluation set: an iterable of ``(x, y)`` / ``(x, y, g)`` batches, or extracted features."""


def _resolve_feature_fn(module: nn.Module, feature_fn: FeatureFn | None) -> FeatureFn | None:
    if feature_fn is not None:
        if not callable(feature_fn):
            raise TypeError(f"feature_fn must be a callable x -> (B, d) features, got {type(feature_fn).__name__}.")
        return feature_fn
    method = getattr(module, "autobalance_features", None)
    return method if callable(method) else None


class _TrainingFlags:
    """Put a module (all submodules) in eval mode and restore every submodule's own flag afterwards."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __enter__(self) -> None:
        self.flags = [(m, m.training) for m in self.module.modules()]
        self.module.eval()

    def __exit__(self, *exc: object) -> None:
        for m, flag in self.flags:
            m.training = flag


def _module_device(module: nn.Module) -> torch.device:
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


def _unpack(batch: Any, index: int) -> tuple[Any, Tensor, Tensor | None]:
    return unpack_batch(
        batch,
        user=f"batch {index}: last-layer retraining",
        advice="map your batches to that form (e.g. a wrapping generator) before passing the loader.",
    )


def _labels(values: Any, n: int, name: str, index: int) -> Tensor:
    values = torch.as_tensor(values)
    if values.is_floating_point() or values.is_complex() or values.dtype == torch.bool:
        raise ValueError(f"batch {index}: {name} must hold integer labels, got dtype {values.dtype}.")
    values = values.reshape(-1) if values.ndim == 2 and values.shape[1] == 1 else values
    if values.ndim != 1 or values.shape[0] != n:
        raise ValueError(
            f"batch {index}: {name} has shape {tuple(values.shape)} but the features have {n} rows; pass one label "
            "per sample."
        )
    return values.detach().to("cpu", torch.long)


def _check_feature_block(block: Any, index: int, where: str) -> Tensor:
    if not isinstance(block, Tensor):
        raise TypeError(f"batch {index}: {where} returned a {type(block).__name__}, expected a (B, d) tensor.")
    if block.ndim != 2:
        raise ValueError(
            f"batch {index}: {where} returned features of shape {tuple(block.shape)}, expected (B, d); flatten them "
            "(e.g. feature_fn=lambda x: body(x).flatten(1)) or pass a head that reads 2-D features."
        )
    return block.detach().to("cpu", torch.float32)


def _consistent(outputs: Any, head: nn.Linear, block: Tensor) -> bool:
    if not isinstance(outputs, Tensor) or outputs.ndim != 2 or outputs.shape[0] != block.shape[0]:
        return True  # not comparable: nothing to check
    expected = head(block.to(head.weight.device, head.weight.dtype)).float().cpu()
    if outputs.shape != expected.shape:
        return False
    scale = float(expected.abs().max()) + 1e-6
    return bool((outputs.detach().float().cpu() - expected).abs().max() <= 1e-3 * scale)


def extract_features(
    module: nn.Module,
    loader: Iterable[Any],
    *,
    feature_fn: FeatureFn | None = None,
    head: nn.Linear | str | None = None,
    check_forward: bool = True,
) -> RetrainingFeatures:
    """Run the frozen backbone of ``module`` over ``loader`` and collect the last layer's input features.

    The module is put in eval mode and the features are computed under :func:`torch.no_grad`; the training flag of
    every submodule is restored afterwards. See the module docstring for how ``feature_fn`` and ``head`` are found.

    Args:
        module: the trained model.
        loader: an iterable of ``(x, y)`` or ``(x, y, g)`` batches (e.g. a :class:`~torch.utils.data.DataLoader`).
        feature_fn: ``x -> (B, d)`` features; default ``module.autobalance_features`` if defined, else the input of
            the head recorded by a forward pre-hook during ``module(x)``.
        head: the last layer (an :class:`torch.nn.Linear` submodule or its dotted path); default
            ``module.autobalance_head()``. Needed only when there is no feature function, and for the check.
        check_forward: on the first batch, warn if ``module(x)`` differs from ``head(features)``.

    Returns:
        The :class:`RetrainingFeatures` (float32 CPU features, int64 labels).

    Raises:
        ValueError: no feature function and no head, malformed batches, non-2-D features, features whose width is
            not the head's ``in_features``, an empty loader, or some batches with group labels and some without.
        TypeError: a map-style data set instead of a loader of batches.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
        >>> loader = [(torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1]))]
        >>> data = extract_features(net, loader, head="2")
        >>> data.features.shape, data.targets.tolist()
        (torch.Size([5, 6]), [0, 1, 2, 0, 1])
    """
    if isinstance(loader, Dataset) and not isinstance(loader, IterableDataset):
        raise TypeError(
            f"got a {type(loader).__name__} (a data set of single samples); pass batches, e.g. "
            "DataLoader(dataset, batch_size=256)."
        )
    fn = _resolve_feature_fn(module, feature_fn)
    layer: nn.Linear | None = None
    if fn is None or head is not None or callable(getattr(module, "autobalance_head", None)):
        layer, _ = resolve_head(module, head)  # without a feature function the head is required: raises if absent

    captured: list[Tensor] = []

    def record(_: nn.Module, args: tuple[Any, ...]) -> None:
        captured.append(args[0])

    device = _module_device(module)
    features, targets, groups = [], [], []
    has_groups: bool | None = None
    handle = layer.register_forward_pre_hook(record) if fn is None and layer is not None else None
    try:
        with _TrainingFlags(module), torch.no_grad():
            for index, batch in enumerate(loader):
                x, y, g = _unpack(batch, index)
                x = move_data_to_device(x, device)
                block = _batch_features(module, x, index, fn, layer, captured, check_forward and index == 0)
                if has_groups is None:
                    has_groups = g is not None
                elif has_groups != (g is not None):
                    raise ValueError(
                        f"batch {index} {'has' if g is not None else 'lacks'} group labels unlike the first batch; "
                        "every batch must be (x, y) or every batch (x, y, g)."
                    )
                features.append(block)
                targets.append(_labels(y, block.shape[0], "y", index))
                if g is not None:
                    groups.append(_labels(g, block.shape[0], "g", index))
    finally:
        if handle is not None:
            handle.remove()
    if not features:
        raise ValueError("the loader yielded no batch; pass a non-empty retraining set.")
    return RetrainingFeatures(torch.cat(features), torch.cat(targets), torch.cat(groups) if groups else None)


def _batch_features(
    module: nn.Module,
    x: Any,
    index: int,
    fn: FeatureFn | None,
    layer: nn.Linear | None,
    captured: list[Tensor],
    check: bool,
) -> Tensor:
    """The ``(B, d)`` features of one batch (from ``fn``, or recorded by the head's hook), checked against the head.

    With ``check`` (the first batch), warn if ``module(x)`` differs from ``head(features)``.
    """
    if fn is None:
        captured.clear()
        outputs = module(x)
        if len(captured) != 1:
            raise ValueError(
                f"batch {index}: the head was called {len(captured)} times during module(x); the forward "
                "hook needs exactly one call per forward. Pass feature_fn= (x -> (B, d) features)."
            )
        block = _check_feature_block(captured[0], index, "the head's input")
    else:
        block = _check_feature_block(fn(x), index, "the feature function")
        outputs = module(x) if check and layer is not None else None
    if layer is not None and block.shape[1] != layer.in_features:
        raise ValueError(
            f"batch {index}: the features have width {block.shape[1]} but the head has in_features="
            f"{layer.in_features}; the feature function must return the head's input (pass the matching "
            "feature_fn= / head=)."
        )
    if check and layer is not None and not _consistent(outputs, layer, block):
        warnings.warn(
            "module(x) differs from head(features) on the first batch: the module post-processes the "
            "head's output, or the feature function / head are not the module's last layer and its "
            "input. The refit head is still written back, but the reported errors are those of "
            "head(features). Pass check_forward=False to silence this.",
            UserWarning,
            stacklevel=3,
        )
    return block
