"""Reading a classification batch: ``(x, y)`` or ``(x, y, g)``, the one batch structure the package understands."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

__all__ = ["unpack_batch"]


def unpack_batch(batch: Any, *, user: str, advice: str) -> tuple[Any, Tensor, Tensor | None]:
    """Split ``batch`` into inputs, class labels and group labels (``None`` for an ``(x, y)`` batch).

    Args:
        batch: the batch a data loader gave.
        user: who reads the batch, for the error message (e.g. ``"last-layer retraining"``).
        advice: what to change when the batch has another structure (the end of the error message).

    Raises:
        ValueError: ``batch`` is not a tuple or list of two or three items; the message names its type and length.

    Example:
        >>> import torch
        >>> x, y, g = unpack_batch((torch.zeros(2, 3), torch.tensor([0, 1])), user="a doctest", advice="-")
        >>> y.tolist(), g
        ([0, 1], None)
        >>> unpack_batch({"x": 1}, user="a doctest", advice="return tuples.")
        Traceback (most recent call last):
        ...
        ValueError: a doctest expects (x, y) or (x, y, g) batches, got a dict: return tuples.
    """
    if isinstance(batch, (str, bytes)) or not isinstance(batch, Sequence) or len(batch) not in (2, 3):
        kind = type(batch).__name__
        if isinstance(batch, (tuple, list)):
            kind += f" of length {len(batch)}"
        raise ValueError(f"{user} expects (x, y) or (x, y, g) batches, got a {kind}: {advice}")
    x, y, *rest = batch
    return x, y, rest[0] if rest else None
