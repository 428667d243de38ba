"""``HeldOutSplit``: carve a stratified held-out split out of a datamodule's training data."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from lightning_autobalance._checks import is_integer
from lightning_autobalance.data.labels import cell_index, dataset_labels, group_class_counts

__all__ = [
    "HeldOutSplit",
    "ResumableLoader",
    "ResumableSampler",
    "check_resumed_seed",
    "check_seed",
    "resolve_seed",
    "stratified_split",
]


def stratified_split(targets: Tensor, groups: Tensor | None, fraction: float, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Split indices into (train, held-out), stratified by (group, class) cell.

    Each cell sends ``round(fraction · n)`` samples (at least one) to the held-out split and keeps at least one for
    training.

    Args:
        targets: class labels (N,).
        groups: group labels (N,) or ``None``.
        fraction: share of each cell that goes to the held-out split, in (0, 1).
        seed: seed of the random choice.

    Returns:
        Sorted train indices and sorted held-out indices.

    Raises:
        ValueError: ``fraction`` outside (0, 1), or a cell with a single sample (it cannot be in both splits).

    Example:
        >>> train, held_out = stratified_split(torch.tensor([0, 0, 0, 0, 1, 1]), None, 0.25)
        >>> len(train), len(held_out)
        (4, 2)
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"The held-out fraction must lie strictly between 0 and 1, got {fraction}: e.g. 0.2.")
    cells = cell_index(targets, groups, int(targets.max()) + 1)
    generator = torch.Generator().manual_seed(seed)
    train, held_out = [], []
    for cell in torch.unique(cells).tolist():
        members = torch.nonzero(cells == cell).flatten()
        if members.numel() < 2:
            where = f"class {cell}" if groups is None else f"(group, class) cell {divmod(cell, int(targets.max()) + 1)}"
            raise ValueError(
                f"{where} has a single training sample, so it cannot be in both the train and the held-out split: "
                "add samples of it, merge it with another class, or lower the imbalance."
            )
        members = members[torch.randperm(members.numel(), generator=generator)]
        n_held = min(max(1, round(fraction * members.numel())), members.numel() - 1)
        held_out.append(members[:n_held])
        train.append(members[n_held:])
    return torch.cat(train).sort().values, torch.cat(held_out).sort().values


class ResumableSampler(DistributedSampler):
    """A :class:`DistributedSampler` that can start its next epoch after the samples a checkpoint says were trained."""

    resume: tuple[int, int] | None = None  # (epoch, samples already trained in it)

    def __iter__(self) -> Iterator[Any]:
        resume, self.resume = self.resume, None
        indices = list(super().__iter__())
        if resume is not None and resume[0] == self.epoch:  # not when the checkpoint was at the end of its epoch
            indices = indices[resume[1] :]
        return iter(indices)


class ResumableLoader(DataLoader):
    """The train loader, with its position in the epoch saved in checkpoints (Lightning's loader ``state_dict``).

    A run resumed from a mid-epoch checkpoint then continues with the next batch of the same ``(seed, epoch)`` order,
    exactly as the uninterrupted run (without it Lightning replays the epoch's first batches).
    """

    split: HeldOutSplit | None = None

    def state_dict(self) -> dict[str, int]:
        trainer = None if self.split is None else self.split.trainer
        if trainer is None:
            return {}
        return {"epoch": self.sampler.epoch, "batches": trainer.fit_loop.epoch_loop.batch_progress.current.ready}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state:
            self.sampler.resume = (int(state["epoch"]), int(state["batches"]) * (self.batch_size or 1))


def resolve_seed(seed: int | None) -> int:
    """``seed`` if given, else the seed of the last ``seed_everything`` call (``PL_GLOBAL_SEED``), else 0.

    Example:
        >>> import lightning.pytorch as pl
        >>> _ = pl.seed_everything(7, verbose=False)
        >>> resolve_seed(None), resolve_seed(3)
        (7, 3)
    """
    if seed is not None:
        return int(seed)
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


def check_seed(owner: str, seed: object) -> None:
    """Refuse a seed that is neither an integer nor None (None follows ``seed_everything``, see :func:`resolve_seed`).

    Example:
        >>> check_seed("HeldOutSplit", "abc")
        Traceback (most recent call last):
        ...
        TypeError: HeldOutSplit seed must be an integer or None (follow seed_everything), got 'abc'.
    """
    if seed is not None and (not is_integer(seed)):
        raise TypeError(f"{owner} seed must be an integer or None (follow seed_everything), got {seed!r}.")


def check_resumed_seed(owner: str, saved: object, current: int) -> None:
    """Refuse to resume from a checkpoint whose ``owner`` drew its samples with another seed than this run's."""
    if saved is not None and int(saved) != current:  # type: ignore[call-overload]
        raise ValueError(
            f"The checkpoint was trained on the {owner} of seed {saved}, but this run drew it with seed {current}: "
            f"resume with {owner}(..., seed={saved}) or the same seed_everything({saved})."
        )


class HeldOutSplit(pl.LightningDataModule):
    """Wrap a datamodule so its training data is split into a train part and a held-out part.

    The model trains on the train part; :class:`~lightning_autobalance.AutoBalance` tunes the loss on the held-out
    part (the upper level of the bilevel problem). The split is stratified by class (and by (group, class) when the
    data set has groups) and deterministic given ``seed``. Validation and test loaders are those of the wrapped
    datamodule; a datamodule without a validation loader validates on the held-out split.

    Args:
        datamodule: the datamodule to wrap; its ``train_dataloader()`` must be a map-style data set of ``(x, y)`` or
            ``(x, y, g)`` items (see :func:`~lightning_autobalance.data.labels.dataset_labels`).
        fraction: share of every class that is held out, in (0, 1); the paper uses 0.2.
        seed: seed of the split and of the training order (None: the seed given to ``seed_everything``, or 0
            without one; see :func:`resolve_seed`).
        num_classes: number of classes; labels outside ``[0, num_classes)`` are rejected (default: max label + 1).

    After ``setup("fit")``: ``num_classes``, ``num_groups`` (1 without group labels), ``class_counts`` (K,) and
    ``group_class_counts`` (G, K) of the train part, ``heldout_class_counts`` and ``heldout_group_class_counts`` of
    the held-out part.

    Example:
        >>> from lightning_autobalance.data import MNIST1DLongTail
        >>> split = HeldOutSplit(MNIST1DLongTail(), fraction=0.2)  # doctest: +SKIP
    """

    def __init__(
        self,
        datamodule: pl.LightningDataModule,
        fraction: float = 0.2,
        seed: int | None = None,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(datamodule, pl.LightningDataModule):
            raise TypeError(f"HeldOutSplit wraps a LightningDataModule, got {type(datamodule).__name__}.")
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"The held-out fraction must lie strictly between 0 and 1, got {fraction}: e.g. 0.2.")
        check_seed("HeldOutSplit", seed)
        self.datamodule, self.fraction, self.seed, self.num_classes = datamodule, fraction, seed, num_classes
        self.run_seed = 0 if seed is None else seed  # resolved when the split is built
        self._template: DataLoader | None = None

    # ------------------------------------------------------------------ Lightning hooks
    def prepare_data(self) -> None:
        """Delegate to the wrapped datamodule."""
        self.datamodule.prepare_data()

    def setup(self, stage: str) -> None:
        """Set up the wrapped datamodule and, for fitting, build the split."""
        self.datamodule.trainer = self.trainer
        self.datamodule.setup(stage)
        if stage == "fit" and self._template is None:
            self._template = self.datamodule.train_dataloader()
            dataset = self._template.dataset
            targets, groups = dataset_labels(dataset)
            if targets.numel() == 0:
                raise ValueError(
                    f"The training data of {type(self.datamodule).__name__} is empty (its train_dataloader() has no "
                    "samples): check the data path and filters."
                )
            self.run_seed = resolve_seed(self.seed)
            num_classes = self.num_classes or int(targets.max()) + 1
            bad = (targets < 0) | (targets >= num_classes)
            if bad.any():
                raise ValueError(
                    f"Training labels must lie in [0, {num_classes}), found {sorted(set(targets[bad].tolist()))[:5]}: "
                    "remap the labels or pass the right num_classes."
                )
            self.num_classes = num_classes
            train_idx, held_idx = stratified_split(targets, groups, self.fraction, self.run_seed)
            self.train_dataset: Dataset = Subset(dataset, train_idx.tolist())
            self.heldout_dataset: Dataset = Subset(dataset, held_idx.tolist())
            self.num_groups = 1 if groups is None else int(groups.max()) + 1
            train_groups, held_groups = (None, None) if groups is None else (groups[train_idx], groups[held_idx])
            shape = (self.num_groups, num_classes)
            self.group_class_counts = group_class_counts(targets[train_idx], train_groups, *shape)
            self.heldout_group_class_counts = group_class_counts(targets[held_idx], held_groups, *shape)
            self.class_counts = self.group_class_counts.sum(0)
            self.heldout_class_counts = self.heldout_group_class_counts.sum(0)

    def state_dict(self) -> dict[str, Any]:
        """The seed the split was built with (saved in Lightning checkpoints)."""
        return {"seed": self.run_seed} if self._template is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Refuse to resume on another split than the checkpoint's (the held-out data would leak into training)."""
        if self._template is not None:
            check_resumed_seed("HeldOutSplit", state_dict.get("seed"), self.run_seed)

    def _require_setup(self) -> DataLoader:
        if self._template is None:
            raise RuntimeError("HeldOutSplit.setup('fit') must run before its loaders are used.")
        return self._template

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        template = self._require_setup()
        sampler = None
        if shuffle:
            # The order depends only on (seed, epoch) — Lightning calls set_epoch — so a resumed run sees the same
            # batches; under DDP each process takes every world_size-th index of the same permutation, so the global
            # batches equal a single process's batches of world_size × batch_size.
            trainer = self.trainer
            world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
            sampler = ResumableSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=self.run_seed)
        loader = (ResumableLoader if shuffle else DataLoader)(
            dataset,
            batch_size=template.batch_size,
            sampler=sampler,
            num_workers=template.num_workers,
            collate_fn=template.collate_fn,
            pin_memory=template.pin_memory,
            drop_last=template.drop_last if shuffle else False,
            persistent_workers=template.persistent_workers,
        )
        if isinstance(loader, ResumableLoader):
            loader.split = self
        return loader

    def sample_batches(
        self,
        dataset: Dataset,
        count: int,
        generator: torch.Generator,
        *,
        batch_size: int | None = None,
        world_size: int = 1,
        rank: int = 0,
        to_device: Callable[[Any], Any] | None = None,
    ) -> tuple[list[Any], int]:
        """This process's share of ``count`` global batches of ``dataset`` drawn with ``generator``.

        ``min(len(dataset), count · batch_size)`` samples are drawn without replacement and cut into nearly equal
        global batches (a remainder never makes a tiny batch: BatchNorm rejects a batch of one), collated with the
        training loader's ``collate_fn``. Global batch ``b`` goes whole to process ``b mod world_size``: with the same
        ``generator`` state on every process, the union over processes is exactly the draw of a single process and no
        sample is drawn twice.

        Args:
            dataset: the data set to draw from (e.g. :attr:`train_dataset` or :attr:`heldout_dataset`).
            count: global batches to draw (fewer when the data set is smaller than ``count · batch_size``).
            generator: the random source (seed it identically on every process).
            batch_size: samples per global batch (None: the training loader's, or 1 without one).
            world_size: number of processes.
            rank: this process's rank.
            to_device: applied to each collated batch (e.g. ``trainer.strategy.batch_to_device``).

        Returns:
            This process's batches and the number of global batches.

        Example:
            >>> from torch.utils.data import TensorDataset
            >>> class Data(pl.LightningDataModule):
            ...     def train_dataloader(self):
            ...         x = torch.arange(20.0).unsqueeze(1)
            ...         return DataLoader(TensorDataset(x, torch.arange(20) % 2), batch_size=4)
            >>> split = HeldOutSplit(Data(), fraction=0.2, seed=0)
            >>> split.setup("fit")
            >>> batches, total = split.sample_batches(split.train_dataset, 3, torch.Generator().manual_seed(0))
            >>> total, [len(y) for _, y in batches]
            (3, [4, 4, 4])
            >>> mine, _ = split.sample_batches(split.train_dataset, 3, torch.Generator().manual_seed(0), world_size=2)
            >>> len(mine)
            2
        """
        template = self._require_setup()
        batch_size = batch_size or template.batch_size or 1
        total = min(len(dataset), count * batch_size)  # type: ignore[arg-type]
        order = torch.randperm(len(dataset), generator=generator)[:total]  # type: ignore[arg-type]
        chunks = torch.tensor_split(order, max(world_size, math.ceil(total / batch_size)))
        batches = [template.collate_fn([dataset[i] for i in chunk.tolist()]) for chunk in chunks[rank::world_size]]
        return (batches if to_device is None else [to_device(batch) for batch in batches]), len(chunks)

    def train_dataloader(self) -> DataLoader:
        """Train part, in an order fixed by ``(seed, epoch)``, sharded across processes under DDP."""
        self._require_setup()
        return self._loader(self.train_dataset, shuffle=True)

    def heldout_dataloader(self) -> DataLoader:
        """Held-out part, in a fixed order."""
        self._require_setup()
        return self._loader(self.heldout_dataset, shuffle=False)

    def val_dataloader(self):
        """The wrapped datamodule's validation loader, or the held-out split if it has none."""
        if is_overridden("val_dataloader", self.datamodule):
            return self.datamodule.val_dataloader()
        return self.heldout_dataloader()

    def test_dataloader(self):
        """The wrapped datamodule's test loader."""
        return self.datamodule.test_dataloader()

    def predict_dataloader(self):
        """The wrapped datamodule's predict loader."""
        return self.datamodule.predict_dataloader()

    def teardown(self, stage: str) -> None:
        """Delegate to the wrapped datamodule."""
        self.datamodule.teardown(stage)
