"""Tiny data for the tests: Gaussian blobs, one per class, and data modules made ready for a fit."""

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset


def prepared(datamodule):
    """``datamodule`` after ``prepare_data()`` and ``setup("fit")``."""
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


class Blobs(pl.LightningDataModule):
    """``counts[k]`` samples of class ``k`` around a random centre (scaled by 1.2) with unit Gaussian noise.

    The generator (seeded ``seed``) draws the centres, then the training samples, then ``val_per_class`` validation
    samples per class (in ``val``, without a ``val_dataloader``: a subclass adds one where a test wants validation).
    The training loader shuffles and drops the last incomplete batch.
    """

    def __init__(self, counts, batch_size=16, seed=0, num_features=6, val_per_class=0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        y = torch.cat([torch.full((n,), k) for k, n in enumerate(counts)])
        centers = torch.randn(len(counts), num_features, generator=gen) * 1.2
        self.train = TensorDataset(centers[y] + torch.randn(len(y), num_features, generator=gen), y)
        yv = torch.arange(len(counts)).repeat(val_per_class)
        self.val = TensorDataset(centers[yv] + torch.randn(len(yv), num_features, generator=gen), yv)
        self.batch_size = batch_size

    def train_dataloader(self):
        return DataLoader(self.train, batch_size=self.batch_size, shuffle=True, drop_last=True)
