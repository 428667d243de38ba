"""What the image datamodules share: their loaders, opening torchvision's local files, and their bases.

:class:`ImageDataModule` gives the training and test loaders; :class:`SplitGroupDataModule` adds the validation loader
for data sets with train / val / test splits and (class, group) labels.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import lightning.pytorch as pl
from torch.utils.data import DataLoader, Dataset

from lightning_autobalance.data.labels import group_class_counts

__all__ = ["ImageDataModule", "SplitGroupDataModule", "image_loader", "open_torchvision"]

_T = TypeVar("_T")


def image_loader(dataset: Dataset, batch_size: int, num_workers: int, shuffle: bool) -> DataLoader:
    """The loader of the image datamodules: worker processes kept alive between epochs when there are any."""
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers, persistent_workers=num_workers > 0
    )


def open_torchvision(build: Callable[[], _T], verify_md5: bool, mismatch: str) -> _T:
    """``build()``, a torchvision data set opened from local files; its failed MD5 check re-raised as ``mismatch``.

    Args:
        build: opens the data set (``download=False``).
        verify_md5: whether ``build`` lets torchvision check the files' MD5 checksums.
        mismatch: the message of the ``RuntimeError`` raised when that check fails (torchvision says "corrupted").
    """
    try:
        return build()
    except RuntimeError as err:
        if not verify_md5 or "corrupted" not in str(err):
            raise
        raise RuntimeError(mismatch) from err


class ImageDataModule(pl.LightningDataModule):
    """Loaders over the ``train_set`` and ``test_set`` of a subclass (see :func:`image_loader`).

    Subclasses set ``batch_size`` and ``num_workers`` and build the sets in ``setup``.
    """

    batch_size: int
    num_workers: int
    train_set: Dataset
    test_set: Dataset

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        return image_loader(dataset, self.batch_size, self.num_workers, shuffle)

    def train_dataloader(self) -> DataLoader:
        """Training set, shuffled."""
        return self._loader(self.train_set, shuffle=True)

    def test_dataloader(self) -> DataLoader:
        """Test set."""
        return self._loader(self.test_set, shuffle=False)


class SplitGroupDataModule(ImageDataModule):
    """Loaders over the ``train_set``, ``val_set`` and ``test_set`` of a subclass, with ``(x, y, g)`` items.

    Subclasses set ``num_classes``, ``num_groups``, ``batch_size`` and ``num_workers``, build the three splits in
    ``setup`` and call :meth:`_count_training_cells`.
    """

    num_classes: int
    num_groups: int
    val_set: Dataset

    def _count_training_cells(self) -> None:
        """Set ``group_class_counts`` (G, K) and ``class_counts`` (K,) of the training split."""
        targets, groups = self.train_set.targets, self.train_set.groups  # type: ignore[attr-defined]
        self.group_class_counts = group_class_counts(targets, groups, self.num_groups, self.num_classes)
        self.class_counts = self.group_class_counts.sum(0)

    def val_dataloader(self) -> DataLoader:
        """Validation split."""
        return self._loader(self.val_set, shuffle=False)
