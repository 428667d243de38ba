"""A long-tailed version of scikit-learn's bundled digits (8x8 images, 10 classes), as a LightningDataModule."""

import lightning.pytorch as pl
import torch
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset


class DigitsLTDataModule(pl.LightningDataModule):
    """Train: ``round(n_max * imbalance_ratio ** (-k / 9))`` images of class k; validation and test: balanced."""

    def __init__(
        self,
        imbalance_ratio: float = 10.0,
        n_max: int = 120,
        val_per_class: int = 20,
        test_per_class: int = 30,
        batch_size: int = 32,
        num_workers: int = 0,
        split_seed: int = 42,
    ):
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.data_train = self.data_val = self.data_test = None

    @property
    def num_classes(self) -> int:
        return 10

    def setup(self, stage=None):
        if self.data_train is not None:
            return
        hp = self.hparams
        digits = load_digits()
        x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
        y = torch.tensor(digits.target, dtype=torch.long)
        generator = torch.Generator().manual_seed(hp.split_seed)
        parts = {"train": [], "val": [], "test": []}
        for k in range(self.num_classes):
            members = torch.nonzero(y == k).flatten()
            members = members[torch.randperm(members.numel(), generator=generator)]
            test, val = hp.test_per_class, hp.val_per_class
            n_train = round(hp.n_max * hp.imbalance_ratio ** (-k / (self.num_classes - 1)))
            parts["test"].append(members[:test])
            parts["val"].append(members[test : test + val])
            parts["train"].append(members[test + val : test + val + n_train])
        self.data_train, self.data_val, self.data_test = (
            TensorDataset(x[torch.cat(parts[name])], y[torch.cat(parts[name])]) for name in ("train", "val", "test")
        )

    def train_dataloader(self):
        hp = self.hparams
        return DataLoader(self.data_train, batch_size=hp.batch_size, shuffle=True, num_workers=hp.num_workers)

    def val_dataloader(self):
        return DataLoader(self.data_val, batch_size=self.hparams.batch_size, num_workers=self.hparams.num_workers)

    def test_dataloader(self):
        return DataLoader(self.data_test, batch_size=self.hparams.batch_size, num_workers=self.hparams.num_workers)
