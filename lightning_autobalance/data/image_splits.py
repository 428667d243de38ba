"""A datamodule base for image data sets that come with train / val / test splits and (class, group) labels."""

from __future__ import annotations

import lightning.pytorch as pl
from torch.utils.data import DataLoader, Dataset

from lightning_autobalance.data.labels import group_class_counts

__all__ = ["SplitGroupDataModule", "image_loader"]


def image_loader(dataset: Dataset, batch_size: int, num_workers: int, shuffle: bool) -> DataLoader:
    """The loader of the image datamodules: worker processes kept alive between epochs when there are any."""
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers, persistent_workers=num_workers > 0
    )


class SplitGroupDataModule(pl.LightningDataModule):
    """Loaders over the ``train_set``, ``val_set`` and ``test_set`` of a subclass, with ``(x, y, g)`` items.

    Subclasses set ``num_classes``, ``num_groups``, ``batch_size`` and ``num_workers``, build the three splits in
    ``setup`` and call :meth:`_count_training_cells`.
    """

    num_classes: int
    num_groups: int
    batch_size: int
    num_workers: int
    train_set: Dataset
    val_set: Dataset
    test_set: Dataset

    def _count_training_cells(self) -> None:
        """Set ``group_class_counts`` (G, K) and ``class_counts`` (K,) of the training split."""
        targets, groups = self.train_set.targets, self.train_set.groups  # type: ignore[attr-defined]
        self.group_class_counts = group_class_counts(targets, groups, self.num_groups, self.num_classes)
        self.class_counts = self.group_class_counts.sum(0)

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        return image_loader(dataset, self.batch_size, self.num_workers, shuffle)

    def train_dataloader(self) -> DataLoader:
        """Training split, shuffled."""
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Validation split."""
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Test split."""
        return self._loader(self.test_set, shuffle=False)
