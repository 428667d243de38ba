"""Reading the class (and group) labels of a map-style data set without loading its inputs where possible."""

from __future__ import annotations

from collections.abc import Sized
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset, TensorDataset

__all__ = ["cell_index", "dataset_labels", "group_class_counts", "label_space"]


def cell_index(targets: Tensor, groups: Tensor | None, num_classes: int) -> Tensor:
    """The (group, class) cell of every sample, ``g * num_classes + y`` (the class itself when ``groups`` is ``None``).

    This is the one place the package numbers cells: cell ``c`` is group ``c // num_classes``, class
    ``c % num_classes``, so a ``(num_groups, num_classes)`` table is the cells' counts ``view``-ed.

    Example:
        >>> cell_index(torch.tensor([0, 1, 1]), torch.tensor([0, 0, 1]), num_classes=2).tolist()
        [0, 1, 3]
        >>> cell_index(torch.tensor([0, 1, 1]), None, num_classes=2).tolist()
        [0, 1, 1]
    """
    targets = targets.long()
    return targets if groups is None else groups.to(targets.device).long() * num_classes + targets


def group_class_counts(targets: Tensor, groups: Tensor | None, num_groups: int, num_classes: int) -> Tensor:
    """Samples per (group, class) cell, shape (num_groups, num_classes); one row when ``groups`` is ``None``.

    Example:
        >>> group_class_counts(torch.tensor([0, 1, 1]), torch.tensor([0, 0, 1]), 2, 2).tolist()
        [[1, 1], [0, 1]]
    """
    cells = cell_index(targets, groups, num_classes)
    return torch.bincount(cells, minlength=num_groups * num_classes).view(num_groups, num_classes)


def label_space(datamodule: object, targets: Tensor, groups: Tensor | None) -> tuple[int, int]:
    """``(num_classes, num_groups)`` of training labels: what the datamodule declares, else one past the largest label.

    ``num_classes`` and ``num_groups`` are optional attributes of a user's datamodule (a missing or zero one is
    read off the labels); without group labels there is one group.

    Example:
        >>> class Data:
        ...     num_classes = 5
        >>> label_space(Data(), torch.tensor([0, 2]), torch.tensor([1, 0]))
        (5, 2)
        >>> label_space(object(), torch.tensor([3]), None)
        (4, 1)
    """
    num_classes = int(getattr(datamodule, "num_classes", None) or int(targets.max()) + 1)
    num_groups = 1 if groups is None else int(getattr(datamodule, "num_groups", None) or int(groups.max()) + 1)
    return num_classes, num_groups


def _as_long(values: Any, name: str = "labels") -> Tensor:
    """``values`` as a flat int64 tensor; float (or complex) values are rejected, never truncated."""
    if isinstance(values, (list, tuple)):  # items read one by one: 0-d tensors, numpy or Python scalars
        values = [
            v.item() if isinstance(v, Tensor) and v.numel() == 1 and not v.is_floating_point() else v for v in values
        ]
    tensor = torch.as_tensor(values)
    if tensor.numel() == 0:
        return torch.zeros(0, dtype=torch.long)  # no sample: as_tensor([]) would say float32
    if tensor.is_floating_point() or tensor.is_complex():
        raise TypeError(
            f"{name} must be integer {'group' if 'group' in name else 'class'} indices, got dtype {tensor.dtype}: "
            "store them as integers 0, 1, ... (e.g. torch.long), or convert whole-number floats with .long() before "
            "building the data set."
        )
    return tensor.long().reshape(-1)


def dataset_labels(dataset: Dataset) -> tuple[Tensor, Tensor | None]:
    """Class labels (N,) and group labels (N,) or ``None`` of every item of ``dataset``.

    Fast paths: a ``targets`` attribute (and ``groups`` if present), a :class:`~torch.utils.data.TensorDataset`
    whose second (and third) tensor holds the labels (groups), and :class:`~torch.utils.data.Subset` of either.
    Otherwise every item is read and must be a tuple ``(x, y)`` or ``(x, y, g)``.

    Example:
        >>> ds = TensorDataset(torch.zeros(3, 2), torch.tensor([0, 2, 1]))
        >>> dataset_labels(ds)
        (tensor([0, 2, 1]), None)
    """
    if isinstance(dataset, Subset):
        targets, groups = dataset_labels(dataset.dataset)
        index = torch.as_tensor(dataset.indices, dtype=torch.long)
        return targets[index], None if groups is None else groups[index]
    if isinstance(dataset, TensorDataset):
        if len(dataset.tensors) < 2:
            raise ValueError("A TensorDataset for classification needs (inputs, labels[, groups]) tensors.")
        groups = _as_long(dataset.tensors[2], "group labels") if len(dataset.tensors) > 2 else None
        return _as_long(dataset.tensors[1]), groups
    if hasattr(dataset, "targets"):
        groups = getattr(dataset, "groups", None)
        return _as_long(dataset.targets), None if groups is None else _as_long(groups, "group labels")
    if not isinstance(dataset, Sized):
        raise TypeError(f"{type(dataset).__name__} has no length: a map-style data set is needed for a split.")
    targets, groups = [], []
    for i in range(len(dataset)):
        item = dataset[i]
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise ValueError(
                f"Item {i} of {type(dataset).__name__} is not an (x, y) or (x, y, g) tuple: give the data set a "
                "`targets` attribute or return tuples."
            )
        targets.append(item[1])
        if len(item) > 2:
            groups.append(item[2])
    return _as_long(targets), _as_long(groups, "group labels") if groups else None
