"""The feature cache of the last-layer engine: the head inputs and targets of the last weight steps.

Example:
    >>> import torch
    >>> from lightning_autobalance.models import MNIST1DConvNet
    >>> net, loss = MNIST1DConvNet(num_classes=3, channels=4).train(), torch.nn.CrossEntropyLoss()
    >>> cache = FeatureCache(size=2)
    >>> cache.attach(net, loss)
    >>> for _ in range(3):  # three weight steps: the cache keeps the last two
    ...     loss(net(torch.randn(5, 1, 40)), torch.randint(0, 3, (5,))).backward()
    >>> len(cache), cache.full, cache[-1][0].shape
    (2, True, torch.Size([5, 40]))
    >>> with cache.paused():  # the owner's own forward passes are not recorded
    ...     loss(net(torch.randn(7, 1, 40)), torch.randint(0, 3, (7,))).backward()
    >>> cache[-1][0].shape[0]
    5
    >>> cache.detach()
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["CachedBatch", "FeatureCache"]

CachedBatch = tuple[Tensor, Tensor, Tensor | None]
"""``(head inputs (B, d), targets, groups)`` of one weight step."""


class FeatureCache:
    """The head inputs, targets and groups of the last ``size`` weight steps of one module and loss.

    Forward hooks on the module's head (its input) and on the loss (its targets) record a training step: the head
    runs in training mode with gradients enabled and with its own weights, then the loss is called on a batch of the
    same size. Not recorded: passes while the cache is :meth:`paused` (its owner's computations) and passes with
    substituted head weights (the other engines run the network through :func:`torch.func.functional_call`).

    Args:
        size: the number of weight steps kept.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.entries: deque[CachedBatch] = deque(maxlen=size)
        self.module: nn.Module | None = None
        self.loss: nn.Module | None = None
        self._pending: list[Tensor] = []
        self._pauses = 0
        self._handles: tuple[Any, ...] = ()

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> CachedBatch:
        return self.entries[index]

    def __iter__(self) -> Iterator[CachedBatch]:
        return iter(self.entries)

    @property
    def full(self) -> bool:
        """Whether ``size`` weight steps are recorded."""
        return len(self.entries) == self.size

    def attach(self, module: nn.Module, loss: nn.Module) -> None:
        """Watch ``module`` (its ``autobalance_head()``) and ``loss``; watching other ones before empties the cache."""
        if self.module is module and self.loss is loss:
            return
        self.detach()
        self.module, self.loss = module, loss
        self._handles = (
            module.autobalance_head().register_forward_pre_hook(self._on_head),
            loss.register_forward_pre_hook(self._on_loss),
        )

    def detach(self) -> None:
        """Remove the hooks and forget the recorded steps."""
        for handle in self._handles:
            handle.remove()
        self._handles, self.module, self.loss = (), None, None
        self.entries.clear()
        self._pending.clear()

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Record nothing inside (re-entrant)."""
        self._pauses += 1
        try:
            yield
        finally:
            self._pauses -= 1

    def _on_head(self, head: nn.Module, args: tuple[Any, ...]) -> None:
        own_weights = isinstance(getattr(head, "weight", None), nn.Parameter)
        if head.training and torch.is_grad_enabled() and not self._pauses and own_weights and args:
            self._pending[:] = [args[0].detach()]

    def _on_loss(self, _: nn.Module, args: tuple[Any, ...]) -> None:
        if self._pauses or not self._pending or len(args) < 2:
            return
        features = self._pending.pop()
        targets, groups = args[1], args[2] if len(args) > 2 else None
        if isinstance(targets, Tensor) and features.shape[0] == targets.shape[0]:
            self.entries.append((features, targets.detach(), None if groups is None else groups.detach()))
