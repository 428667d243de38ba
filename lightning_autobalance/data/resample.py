"""Train on a resampled training set: group-balanced subsampling and up-sampling (JTT's second stage).

Both wrappers change *only* the training set of the datamodule they wrap; its validation, test, predict and (for a
:class:`~lightning_autobalance.data.HeldOutSplit`) held-out loaders are passed through untouched.

* :class:`GroupBalancedSubsample` — every (group, class) cell (or every group) cut at random to the size of the
  smallest one ("SUBG" of Idrissi et al. 2022, "Simple data balancing achieves competitive worst-group-accuracy";
  the subsampling baseline of Sagawa et al. 2020). Without group labels the cells are the classes (class-balanced
  subsampling).
* :class:`Upsample` — the training set with some samples repeated ``factor`` times in total (Liu et al. 2021, "Just
  Train Twice": the error set of an ERM model up-sampled λ_up times; see :mod:`lightning_autobalance.jtt`).

**With a held-out split** wrap the split, not the other way round::

    GroupBalancedSubsample(HeldOutSplit(datamodule, fraction=0.2))

The held-out split is then exactly the one ``HeldOutSplit`` alone builds (same seed, same samples, full size, for
model selection and AutoBalance-style objectives) and the subsample is drawn from its train part only.
``HeldOutSplit(GroupBalancedSubsample(datamodule))`` would instead carve the held-out samples out of the (already
small) subsample. Indices given to :class:`Upsample` refer to the wrapped datamodule's training data set, i.e. to
the train part of a wrapped ``HeldOutSplit``.

Both wrappers set, after ``setup("fit")``: ``train_indices`` (positions in the wrapped training data set, with
repetitions for :class:`Upsample`), ``sample_counts`` (N,) (how often each wrapped training sample is trained on per
epoch), ``num_classes``, ``num_groups``, and ``group_class_counts`` (G, K) / ``class_counts`` (K,) of the resampled
training set. The training order is fixed by ``(seed, epoch)`` and sharded under DDP, like ``HeldOutSplit``'s.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from lightning_autobalance._checks import check_integer
from lightning_autobalance.data.labels import cell_index, dataset_labels, group_class_counts, label_space
from lightning_autobalance.data.split import (
    ResumableLoader,
    ResumableSampler,
    check_resumed_seed,
    check_seed,
    resolve_seed,
)

__all__ = ["GroupBalancedSubsample", "Upsample", "balanced_subsample_indices"]

Over = Literal["class_group", "group"]
_PASSED_THROUGH = ("val_dataloader", "test_dataloader", "predict_dataloader", "heldout_dataloader")


def balanced_subsample_indices(
    targets: Tensor,
    groups: Tensor | None,
    num_classes: int,
    num_groups: int,
    *,
    over: Over = "class_group",
    seed: int = 0,
) -> Tensor:
    """Sorted indices of a random subsample with every cell cut to the size of the smallest cell.

    Args:
        targets: class labels (N,).
        groups: group labels (N,) or ``None`` (then the cells are the classes).
        num_classes: number of classes K (a class without samples is an empty cell).
        num_groups: number of groups G (1 without group labels).
        over: ``"class_group"``: the G·K (group, class) cells; ``"group"``: the G groups.
        seed: seed of the random choice within each cell.

    Returns:
        Sorted long tensor of ``m · cells`` indices into ``targets``, ``m`` the smallest cell's size.

    Raises:
        ValueError: an empty cell (the subsample would be empty), or ``over="group"`` without group labels.

    Example:
        >>> targets, groups = torch.tensor([0, 0, 0, 1, 1, 0, 1]), torch.tensor([0, 0, 0, 0, 0, 1, 1])
        >>> idx = balanced_subsample_indices(targets, groups, 2, 2, seed=0)
        >>> group_class_counts(targets[idx], groups[idx], 2, 2).tolist()
        [[1, 1], [1, 1]]
    """
    if over not in ("class_group", "group"):
        raise ValueError(f"over must be 'class_group' or 'group', got {over!r}.")
    if over == "group" and groups is None:
        raise ValueError(
            "over='group' balances the groups, but the training data has no group labels: use over='class_group' "
            "(class-balanced subsampling without groups) or give the data (x, y, g) items."
        )
    if over == "group":
        cells, sizes = groups, torch.bincount(groups, minlength=num_groups)  # type: ignore[arg-type]
        names = [f"group {g}" for g in range(num_groups)]
    else:
        cells = cell_index(targets, groups, num_classes)
        sizes = group_class_counts(targets, groups, num_groups if groups is not None else 1, num_classes).flatten()
        names = (
            [f"class {k}" for k in range(num_classes)]
            if groups is None
            else [f"(group {g}, class {k})" for g in range(num_groups) for k in range(num_classes)]
        )
    empty = [names[i] for i in torch.nonzero(sizes == 0).flatten().tolist()]
    if empty:
        raise ValueError(
            f"Group-balanced subsampling cuts every cell to the smallest one's size, but the training cell(s) "
            f"{', '.join(empty)} have no sample, so the subsample would be empty: merge or drop those groups / "
            "classes, balance over='group' instead of (group, class) cells, or use group re-weighting "
            "(conf/loss/group_weighted.yaml) or Group DRO."
        )
    smallest = int(sizes.min())
    generator = torch.Generator().manual_seed(int(seed))
    chosen = []
    for cell in range(sizes.numel()):
        members = torch.nonzero(cells == cell).flatten()
        chosen.append(members[torch.randperm(members.numel(), generator=generator)[:smallest]])
    return torch.cat(chosen).sort().values


class _TrainingResample(pl.LightningDataModule, ABC):
    """A datamodule whose training set is a resampling (``train_indices``) of the wrapped datamodule's."""

    def __init__(self, datamodule: pl.LightningDataModule, seed: int | None) -> None:
        super().__init__()
        name = type(self).__name__
        if not isinstance(datamodule, pl.LightningDataModule):
            raise TypeError(f"{name} wraps a LightningDataModule, got {type(datamodule).__name__}.")
        check_seed(name, seed)
        self.datamodule, self.seed = datamodule, seed
        self.run_seed = 0 if seed is None else seed  # resolved at setup
        self._template: DataLoader | None = None
        # The wrapped loaders are bound as they are, so Lightning sees a validation / test / predict loader exactly
        # when the wrapped datamodule defines one (its `is_overridden` checks), and a HeldOutSplit's held-out loader
        # stays reachable.
        for hook in _PASSED_THROUGH:
            if hook == "heldout_dataloader" and hasattr(datamodule, hook):
                setattr(self, hook, datamodule.heldout_dataloader)  # type: ignore[attr-defined]
            elif hook != "heldout_dataloader" and is_overridden(hook, datamodule):
                setattr(self, hook, getattr(datamodule, hook))

    @abstractmethod
    def _choose(self, targets: Tensor, groups: Tensor | None) -> Tensor:
        """Indices (into the wrapped training set, repeats allowed) of this resample's training set."""

    # ------------------------------------------------------------------ Lightning hooks
    def prepare_data(self) -> None:
        """Delegate to the wrapped datamodule."""
        self.datamodule.prepare_data()

    def setup(self, stage: str) -> None:
        """Set up the wrapped datamodule and, for fitting, draw the training resample (once)."""
        self.datamodule.trainer = self.trainer
        self.datamodule.setup(stage)
        if stage != "fit" or self._template is not None:
            return
        template = self.datamodule.train_dataloader()
        if not isinstance(template, DataLoader):
            raise TypeError(
                f"{type(self).__name__} resamples the data set of the wrapped train_dataloader(), which returned "
                f"{type(template).__name__}: return a single torch DataLoader over a map-style data set."
            )
        targets, groups = dataset_labels(template.dataset)
        if targets.numel() == 0:
            raise ValueError(f"The training data of {type(self.datamodule).__name__} is empty: nothing to resample.")
        self.run_seed = resolve_seed(self.seed)
        self.num_classes, self.num_groups = label_space(self.datamodule, targets, groups)
        if int(targets.min()) < 0 or int(targets.max()) >= self.num_classes:
            raise ValueError(f"Training labels must lie in [0, {self.num_classes}): remap them.")
        if groups is not None and (int(groups.min()) < 0 or int(groups.max()) >= self.num_groups):
            raise ValueError(f"Training group labels must lie in [0, {self.num_groups}): renumber them.")
        self.train_indices = self._choose(targets, groups)
        self.sample_counts = torch.bincount(self.train_indices, minlength=targets.numel())
        chosen_groups = None if groups is None else groups[self.train_indices]
        self.group_class_counts = group_class_counts(
            targets[self.train_indices], chosen_groups, self.num_groups, self.num_classes
        )
        self.class_counts = self.group_class_counts.sum(0)
        self.train_dataset: Dataset = Subset(template.dataset, self.train_indices.tolist())
        self._template = template

    def train_dataloader(self) -> DataLoader:
        """The resampled training set, in an order fixed by ``(seed, epoch)``, sharded across processes under DDP."""
        if self._template is None:
            raise RuntimeError(f"{type(self).__name__}.setup('fit') must run before its train loader is used.")
        template, trainer = self._template, self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = ResumableSampler(self.train_dataset, num_replicas=world, rank=rank, shuffle=True, seed=self.run_seed)
        loader = ResumableLoader(
            self.train_dataset,
            batch_size=template.batch_size,
            sampler=sampler,
            num_workers=template.num_workers,
            collate_fn=template.collate_fn,
            pin_memory=template.pin_memory,
            drop_last=template.drop_last,
            persistent_workers=template.persistent_workers,
        )
        loader.split = self  # type: ignore[assignment]  # its position in the epoch is read from self.trainer
        return loader

    def state_dict(self) -> dict[str, Any]:
        """The resample's seed and the wrapped datamodule's state (saved in Lightning checkpoints)."""
        if self._template is None:
            return {}
        return {"seed": self.run_seed, "wrapped": self.datamodule.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Refuse to resume on another resample than the checkpoint's; restore the wrapped datamodule's state."""
        if self._template is not None:
            check_resumed_seed(type(self).__name__, state_dict.get("seed"), self.run_seed)
        if state_dict.get("wrapped"):
            self.datamodule.load_state_dict(state_dict["wrapped"])

    def teardown(self, stage: str) -> None:
        """Delegate to the wrapped datamodule."""
        self.datamodule.teardown(stage)


class GroupBalancedSubsample(_TrainingResample):
    """Train on a random subsample with every (group, class) cell cut to the smallest cell's size.

    The subsample is drawn once, at ``setup("fit")``, from the wrapped datamodule's training data set (the train
    part of a :class:`~lightning_autobalance.data.HeldOutSplit`: wrap the split, see the module docstring). Its
    validation, test, predict and held-out loaders are the wrapped datamodule's.

    Args:
        datamodule: the datamodule to wrap; its ``train_dataloader()`` must be a DataLoader over a map-style data set
            of ``(x, y)`` or ``(x, y, g)`` items (see :func:`~lightning_autobalance.data.labels.dataset_labels`).
        seed: seed of the subsample and of the training order (None: the seed given to ``seed_everything``, or 0
            without one; see :func:`~lightning_autobalance.data.split.resolve_seed`).
        over: ``"class_group"`` (default): balance the (group, class) cells — the Waterbirds "groups"; without group
            labels the classes; ``"group"``: balance the groups only (needs group labels).

    Raises:
        ValueError: at ``setup``, when a cell has no training sample (the error names it).

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> class Data(pl.LightningDataModule):
        ...     def train_dataloader(self):
        ...         y, g = torch.tensor([0, 0, 0, 1, 1, 0, 1]), torch.tensor([0, 0, 0, 0, 0, 1, 1])
        ...         return DataLoader(TensorDataset(torch.randn(7, 2), y, g), batch_size=4)
        >>> sub = GroupBalancedSubsample(Data(), seed=0)
        >>> sub.setup("fit")
        >>> sub.group_class_counts.tolist(), len(sub.train_dataset)
        ([[1, 1], [1, 1]], 4)
    """

    def __init__(self, datamodule: pl.LightningDataModule, seed: int | None = None, over: Over = "class_group") -> None:
        if over not in ("class_group", "group"):
            raise ValueError(
                f"over must be 'class_group' (balance the (group, class) cells) or 'group' (the groups), got {over!r}."
            )
        super().__init__(datamodule, seed)
        self.over = over

    def _choose(self, targets: Tensor, groups: Tensor | None) -> Tensor:
        return balanced_subsample_indices(
            targets, groups, self.num_classes, self.num_groups, over=self.over, seed=self.run_seed
        )


class Upsample(_TrainingResample):
    """Train on the wrapped training set with the samples ``indices`` repeated ``factor`` times in total.

    JTT's second stage (Liu et al. 2021) with ``indices`` the error set and ``factor`` = λ_up: each listed sample
    appears ``factor`` times per epoch, every other sample once (the reference duplicates the samples, rather than
    weighting their loss). Validation, test, predict and held-out loaders are the wrapped datamodule's.

    Args:
        datamodule: the datamodule to wrap (see :class:`GroupBalancedSubsample`).
        indices: distinct positions in the wrapped datamodule's training data set (the train part of a wrapped
            :class:`~lightning_autobalance.data.HeldOutSplit`); may be empty.
        factor: total number of copies of each listed sample, an integer ≥ 1 (1: the data unchanged).
        seed: seed of the training order (None: follow ``seed_everything``).

    Raises:
        ValueError: ``factor`` < 1, repeated indices, or (at ``setup``) indices outside the training set.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> class Data(pl.LightningDataModule):
        ...     def train_dataloader(self):
        ...         return DataLoader(TensorDataset(torch.randn(4, 2), torch.tensor([0, 1, 0, 1])), batch_size=4)
        >>> up = Upsample(Data(), indices=[1, 3], factor=3)
        >>> up.setup("fit")
        >>> up.sample_counts.tolist(), len(up.train_dataset)
        ([1, 3, 1, 3], 8)
    """

    def __init__(
        self,
        datamodule: pl.LightningDataModule,
        indices: Sequence[int] | Tensor | np.ndarray,
        factor: int,
        seed: int | None = None,
    ) -> None:
        check_integer("factor", factor, 1, meaning=" (the total number of copies of each listed sample, JTT's λ_up)")
        index = indices.detach().cpu() if isinstance(indices, Tensor) else torch.as_tensor(np.asarray(indices))
        if index.numel() == 0:
            index = torch.zeros(0, dtype=torch.long)
        if index.dim() != 1 or index.is_floating_point() or index.dtype == torch.bool:
            raise ValueError(
                f"indices must be a 1-D sequence of integer sample positions, got shape {tuple(index.shape)} and "
                f"dtype {index.dtype}: pass e.g. torch.nonzero(mask).flatten()."
            )
        index = index.long()
        if index.unique().numel() != index.numel():
            raise ValueError(
                "indices must be distinct (each listed sample is repeated `factor` times in total): pass "
                "indices.unique(), or raise factor for samples that should count more."
            )
        super().__init__(datamodule, seed)
        self.indices, self.factor = index.sort().values, int(factor)

    def _choose(self, targets: Tensor, groups: Tensor | None) -> Tensor:
        n = targets.numel()
        if self.indices.numel() and (int(self.indices.min()) < 0 or int(self.indices.max()) >= n):
            bad = self.indices[(self.indices < 0) | (self.indices >= n)][:5].tolist()
            raise ValueError(
                f"Upsample indices {bad} lie outside the wrapped training data set of {n} samples: they must be "
                "positions in the wrapped datamodule's training set (for a wrapped HeldOutSplit, in its train part)."
            )
        return torch.cat([torch.arange(n), self.indices.repeat(self.factor - 1)])
