"""Offline spurious-correlation MNIST-1D: a binary task with a group attribute that is easier to learn than the label.

A small, offline stand-in for Waterbirds, built on MNIST-1D sequences generated locally (cached on disk):

* **label** ``y``: digit 0–4 → class 0, digit 5–9 → class 1 (the "core" feature is the shape of the digit);
* **group** ``g`` ∈ {0, 1}: a constant offset ``strength · (2g − 1)`` added to the whole sequence (the "background":
  a shift of the mean, read off by any filter with a non-zero sum, so it is learned much faster than the shape);
* **training set**: both classes equally frequent, and in each class a share ``majority_fraction`` (95% by default,
  like Waterbirds) of the samples has ``g = y`` (the majority groups (g=0, y=0), (g=1, y=1)) and the rest
  ``g ≠ y`` (the minority groups);
* **test set**: ``test_per_cell`` samples of every (group, class) cell (balanced groups), so that a model relying on
  the offset has a high error on the two minority cells (the worst-group error).

Batches are ``(x, y, g)`` with ``x`` of shape (B, 1, 40).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

from lightning_autobalance._checks import check_integer, is_integer
from lightning_autobalance.data.labels import group_class_counts
from lightning_autobalance.data.mnist1d_lt import MNIST1DDataModule

__all__ = ["GroupTensorDataset", "SpuriousMNIST1D", "split_spurious_cells"]


def split_spurious_cells(
    labels: Tensor, majority: Sequence[int], held_per_cell: Sequence[int], seed: int, train_per_class: int | None = None
) -> list[tuple[Tensor, Tensor]]:
    """Split a binary task into group-balanced held-out splits and a spuriously correlated training split.

    Per class ``y`` (a permutation of its members seeded by ``seed``, class 0 first): ``2·n`` samples for each
    held-out split with ``n`` in ``held_per_cell`` (``n`` in group 0, then ``n`` in group 1, so the group is
    independent of the label there), then the training samples (``train_per_class`` of them, or all the rest):
    the first ``majority[y]`` in group ``y`` (the majority cell), the others in group ``1 − y`` (the minority cell).
    :class:`SpuriousMNIST1D` and :class:`~lightning_autobalance.data.spurious_digits.SpuriousDigits` split with it.

    Args:
        labels: binary class labels (N,).
        majority: training samples of the majority cell of class 0 and of class 1.
        held_per_cell: samples per (group, class) cell of each held-out split, in the order they are drawn.
        seed: seed of the permutations.
        train_per_class: training samples per class; ``None`` takes all that the held-out splits leave.

    Returns:
        ``(index, groups)`` of every held-out split in the order of ``held_per_cell``, then of the training split,
        each sorted by index (an order independent of how the cells were drawn).

    Example:
        >>> labels = torch.tensor([0, 1] * 6)
        >>> (test, test_groups), (train, train_groups) = split_spurious_cells(labels, (3, 2), (1,), seed=0)
        >>> splits = ((test, test_groups), (train, train_groups))
        >>> [group_class_counts(labels[i], g, 2, 2).tolist() for i, g in splits]  # rows: group, columns: class
        [[[1, 1], [1, 1]], [[3, 2], [1, 2]]]
    """
    generator = torch.Generator().manual_seed(seed)
    parts: list[tuple[list[Tensor], list[Tensor]]] = [([], []) for _ in range(len(held_per_cell) + 1)]
    for label in (0, 1):
        members = torch.nonzero(labels == label).flatten()
        members = members[torch.randperm(members.numel(), generator=generator)]
        start = 0
        for (index, groups), per_cell in zip(parts[:-1], held_per_cell, strict=True):
            index.append(members[start : start + 2 * per_cell])
            groups.append(torch.arange(2).repeat_interleave(per_cell))
            start += 2 * per_cell
        train = members[start : None if train_per_class is None else start + train_per_class]
        groups = torch.full((train.numel(),), 1 - label)
        groups[: int(majority[label])] = label
        parts[-1][0].append(train)
        parts[-1][1].append(groups)
    splits = []
    for index_parts, group_parts in parts:
        index, groups = torch.cat(index_parts), torch.cat(group_parts)
        order = torch.argsort(index)
        splits.append((index[order], groups[order]))
    return splits


class GroupTensorDataset(Dataset):
    """In-memory ``(x, y, g)`` data set with ``targets`` and ``groups`` attributes (``dataset_labels``' fast path).

    Args:
        inputs: inputs (N, ...).
        targets: class labels (N,).
        groups: group labels (N,).

    Example:
        >>> ds = GroupTensorDataset(torch.zeros(2, 1, 3), torch.tensor([0, 1]), torch.tensor([1, 1]))
        >>> len(ds), ds[1][1:]
        (2, (tensor(1), tensor(1)))
    """

    def __init__(self, inputs: Tensor, targets: Tensor, groups: Tensor) -> None:
        if not inputs.shape[0] == targets.shape[0] == groups.shape[0]:
            raise ValueError(
                f"inputs, targets and groups must have the same length, got {inputs.shape[0]}, {targets.shape[0]} "
                f"and {groups.shape[0]}."
            )
        self.inputs, self.targets, self.groups = inputs, targets.long(), groups.long()

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, Tensor]:
        return self.inputs[index], self.targets[index], self.groups[index]


class SpuriousMNIST1D(MNIST1DDataModule):
    """Binary MNIST-1D (digits 0–4 vs 5–9) with a spurious offset group; see the module docstring.

    Attributes after ``setup``: ``train_set`` and ``test_set`` (:class:`GroupTensorDataset`), ``group_class_counts``
    (G, K) of the training set, ``class_counts`` (K,). ``num_classes = 2``, ``num_groups = 2``.

    Args:
        n_train: training sequences (half of each class; even).
        majority_fraction: share of each class whose group agrees with the label, in [0.5, 1).
        strength: size of the offset (MNIST-1D sequences have unit standard deviation).
        test_per_cell: test sequences of every (group, class) cell.
        batch_size: batch size of the training loader.
        seed: seed of the generated sequences and of the group assignment.
        root: cache folder of the generated sequences (default ``$LIGHTNING_AUTOBALANCE_DATA`` or
            ``~/.cache/lightning_autobalance``).

    Example:
        >>> dm = SpuriousMNIST1D(n_train=200, test_per_cell=10)
        >>> dm.expected_group_class_counts().tolist()  # rows: group, columns: class
        [[95, 5], [5, 95]]
    """

    num_classes = 2
    num_groups = 2

    def __init__(
        self,
        n_train: int = 4000,
        majority_fraction: float = 0.95,
        strength: float = 1.0,
        test_per_cell: int = 250,
        batch_size: int = 64,
        seed: int = 0,
        root: str | None = None,
    ) -> None:
        if not is_integer(n_train) or n_train < 8 or n_train % 2:
            raise ValueError(f"n_train must be an even integer ≥ 8 (half of each class), got {n_train!r}.")
        if not 0.5 <= majority_fraction < 1.0:
            raise ValueError(
                f"majority_fraction must lie in [0.5, 1) so every (group, class) cell has samples, got "
                f"{majority_fraction}: 0.95 is the Waterbirds-like default."
            )
        check_integer("test_per_cell", test_per_cell, 1, advice=": e.g. test_per_cell=250")
        super().__init__(batch_size, seed, root)
        self.n_train, self.majority_fraction, self.strength = n_train, majority_fraction, float(strength)
        self.test_per_cell = test_per_cell
        minority = self.expected_group_class_counts()[0, 1]
        if minority < 2:
            raise ValueError(
                f"With n_train={n_train} and majority_fraction={majority_fraction} a minority cell has {minority} "
                "sample(s): raise n_train or lower majority_fraction so each cell has at least 2 (one for the "
                "held-out split)."
            )

    def expected_group_class_counts(self) -> Tensor:
        """Training counts (G, K) per (group, class) cell; known before the data is generated."""
        per_class = self.n_train // 2
        majority = round(self.majority_fraction * per_class)
        return torch.tensor([[majority, per_class - majority], [per_class - majority, majority]])

    def sequences_per_digit(self) -> int:
        """Enough sequences of every digit for both splits (each class pools five digits)."""
        return math.ceil((self.n_train // 2 + 2 * self.test_per_cell) / 5)

    _per_digit = sequences_per_digit  # the name older code (and tests) use

    def setup(self, stage: str) -> None:
        """Build the training set (spuriously correlated groups) and the group-balanced test set."""
        if hasattr(self, "train_set"):
            return
        data = self.generate()
        x, digits = torch.from_numpy(data["x"]).unsqueeze(1), torch.from_numpy(data["y"])
        labels = (digits >= 5).long()
        majority = self.expected_group_class_counts().diagonal().tolist()
        test, train = split_spurious_cells(labels, majority, (self.test_per_cell,), self.seed, self.n_train // 2)
        self.train_set = self._build(x, labels, *train)
        self.test_set = self._build(x, labels, *test)
        train = self.train_set
        self.group_class_counts = group_class_counts(train.targets, train.groups, self.num_groups, self.num_classes)
        self.class_counts = self.group_class_counts.sum(0)

    def _build(self, x: Tensor, labels: Tensor, index: Tensor, groups: Tensor) -> GroupTensorDataset:
        offset = self.strength * (2.0 * groups.to(x.dtype) - 1.0)
        return GroupTensorDataset(x[index] + offset.view(-1, 1, 1), labels[index], groups)
