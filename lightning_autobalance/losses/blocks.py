"""Frequency blocks of classes that share one parameter, and their expansion back to one parameter per class.

One parameter per block keeps the number of hyperparameters small against the held-out set (docs/references.md §1);
:meth:`~lightning_autobalance.losses.ParametricCrossEntropy.expanded` turns a block loss into a per-class one with
the helpers here (:func:`frequency_ranks`, :func:`linear_expansion`).

Example:
    >>> block_layout([0, 0, 1], num_classes=3)
    (tensor([0, 0, 1]), 2)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from lightning_autobalance._checks import is_integer
from lightning_autobalance.losses.inputs import as_counts

__all__ = [
    "ExpansionMode",
    "block_layout",
    "check_block_size",
    "frequency_blocks",
    "frequency_ranks",
    "linear_expansion",
]

ExpansionMode = Literal["constant", "linear"]


def check_block_size(block_size: int) -> int:
    """Return ``block_size`` if it is a whole number of classes ≥ 1, else raise a ValueError naming it.

    Example:
        >>> check_block_size(0)
        Traceback (most recent call last):
        ...
        ValueError: block_size must be a positive number of classes, got 0.
    """
    if not is_integer(block_size) or block_size < 1:
        raise ValueError(f"block_size must be a positive number of classes, got {block_size!r}.")
    return block_size


def frequency_blocks(class_counts: Sequence[float] | Tensor, block_size: int) -> Tensor:
    """Map each class to a block of ``block_size`` classes of similar frequency.

    Classes are sorted by decreasing training count (ties by class index) and cut into consecutive blocks, so the
    ``block_size`` most frequent classes share block 0 (docs/references.md §1: one parameter per block keeps the
    number of hyperparameters small against the held-out set).

    Args:
        class_counts: training samples per class, shape (K,).
        block_size: number of classes per block (C ≥ 1).

    Returns:
        Long tensor (K,) with the block index of each class.

    Example:
        >>> frequency_blocks([5, 50, 20, 1], block_size=2).tolist()
        [1, 0, 0, 1]
    """
    check_block_size(block_size)
    counts = as_counts(class_counts)
    order = sorted(range(counts.numel()), key=lambda k: (-float(counts[k]), k))
    blocks = torch.empty(counts.numel(), dtype=torch.long)
    for rank, k in enumerate(order):
        blocks[k] = rank // block_size
    return blocks


def block_layout(blocks: Sequence[int] | Tensor | None, num_classes: int) -> tuple[Tensor, int]:
    """Validated block index of each class (default: every class its own block) and the number of blocks.

    Example:
        >>> block_layout(None, num_classes=2)
        (tensor([0, 1]), 2)
    """
    block_index = torch.arange(num_classes) if blocks is None else torch.as_tensor(blocks, dtype=torch.long)
    if block_index.shape != (num_classes,):
        raise ValueError(f"blocks must give one block index per class, shape ({num_classes},).")
    if block_index.min() < 0:
        raise ValueError("blocks must be non-negative block indices.")
    num_blocks = int(block_index.max()) + 1
    if torch.bincount(block_index, minlength=num_blocks).min() == 0:
        raise ValueError(f"blocks must use every index 0..{num_blocks - 1} at least once.")
    return block_index, num_blocks


def frequency_ranks(block_index: Tensor, class_counts: Sequence[float] | Tensor | None = None) -> Tensor:
    """Rank of each class in frequency order.

    The order is decreasing ``class_counts`` (ties by class index), or without counts the block order (block index,
    then class index).

    Example:
        >>> frequency_ranks(torch.tensor([0, 1, 2]), [5, 50, 20]).tolist()
        [2, 0, 1]
    """
    num_classes = block_index.numel()
    if class_counts is None:
        keys = [(int(b), k) for k, b in enumerate(block_index.tolist())]
    else:
        counts = as_counts(class_counts, num_classes)
        keys = [(-float(counts[k]), k) for k in range(num_classes)]
    order = sorted(range(num_classes), key=lambda k: keys[k])
    rank = torch.empty(num_classes, dtype=torch.long)
    rank[torch.tensor(order)] = torch.arange(num_classes)
    return rank


def linear_expansion(
    block_values: Mapping[str, Tensor], block_index: Tensor, rank: Tensor, num_blocks: int
) -> dict[str, Tensor]:
    """Per-class values linearly interpolated across the frequency ranks from per-block values.

    Each block's value is placed at the mean frequency rank of its classes, classes in between are interpolated
    (``np.interp``) and classes beyond the first / last anchor keep that block's value; every row is interpolated
    separately. Every block must be a run of consecutive ranks.

    Args:
        block_values: (G, blocks) float64 tables by kind.
        block_index: block of each class, shape (K,).
        rank: frequency rank of each class, shape (K,) (see :func:`frequency_ranks`).
        num_blocks: number of blocks.

    Returns:
        (G, K) float64 tables by kind.

    Example:
        >>> values = {"iota": torch.tensor([[0.0, 4.0]], dtype=torch.float64)}
        >>> linear_expansion(values, torch.tensor([0, 0, 1, 1]), torch.arange(4), 2)["iota"].tolist()
        [[0.0, 1.0, 3.0, 4.0]]
    """
    num_classes = block_index.numel()
    sizes = torch.bincount(block_index, minlength=num_blocks)
    lowest = torch.full((num_blocks,), num_classes, dtype=torch.long).scatter_reduce(
        0, block_index, rank, reduce="amin"
    )
    highest = torch.zeros(num_blocks, dtype=torch.long).scatter_reduce(0, block_index, rank, reduce="amax")
    if bool((highest - lowest + 1 != sizes).any()):
        raise ValueError(
            "Linear expansion needs every block to hold consecutive classes in frequency order, but the "
            f"blocks {block_index.tolist()} interleave under that order: pass the class_counts the blocks "
            "were made from (frequency_blocks), or use mode='constant'."
        )
    anchors = (lowest + highest).double() / 2  # mean rank of a run of consecutive ranks
    order = torch.argsort(anchors)
    xp = anchors[order].numpy()
    x = rank.double().numpy()
    expanded = {}
    for kind, values in block_values.items():
        rows = [np.interp(x, xp, row[order].numpy()) for row in values]
        expanded[kind] = torch.from_numpy(np.stack(rows))
    return expanded
