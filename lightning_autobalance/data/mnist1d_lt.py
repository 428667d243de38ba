"""Offline long-tailed MNIST-1D, generated locally with the ``mnist1d`` package and cached on disk."""

from __future__ import annotations

import hashlib
import json
import os
import random
import zipfile
from abc import ABC, abstractmethod
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from lightning_autobalance._checks import check_integer
from lightning_autobalance.data.profiles import Profile, long_tail_counts
from lightning_autobalance.files import write_atomic

__all__ = ["MNIST1DDataModule", "MNIST1DLongTail", "generate_mnist1d"]

NUM_CLASSES = 10
SEQUENCE_LENGTH = 40


def default_cache_dir() -> Path:
    """``$LIGHTNING_AUTOBALANCE_DATA`` or ``~/.cache/lightning_autobalance``."""
    return Path(os.environ.get("LIGHTNING_AUTOBALANCE_DATA", Path.home() / ".cache" / "lightning_autobalance"))


def generate_mnist1d(per_class: int, seed: int, root: str | os.PathLike[str] | None = None) -> dict[str, np.ndarray]:
    """Generate (or load from the cache) ``per_class`` MNIST-1D sequences of every digit.

    The generator is :func:`mnist1d.data.make_dataset` with its default transformation parameters; the result is cached
    as ``.npz`` (written atomically, read without pickle).

    Returns:
        ``{"x": float32 (10·per_class, 40), "y": int64 (10·per_class,)}``.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.train_split, args.seed = NUM_CLASSES * per_class, 1.0, seed
    key = hashlib.sha256(json.dumps({k: v for k, v in vars(args).items() if k != "url"}, sort_keys=True).encode())
    root = Path(root) if root is not None else default_cache_dir()
    path = root / f"mnist1d_{per_class}x10_seed{seed}_{key.hexdigest()[:10]}.npz"
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as cached:
                return {"x": cached["x"], "y": cached["y"]}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            path.unlink(missing_ok=True)  # a corrupted cache is regenerated
    numpy_state, python_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(args)
    finally:  # mnist1d seeds the global numpy and Python generators: give the user theirs back
        np.random.set_state(numpy_state)
        random.setstate(python_state)
    arrays = {"x": data["x"].astype(np.float32), "y": data["y"].astype(np.int64)}
    write_atomic(path, lambda handle: np.savez(handle, **arrays))
    return arrays


class MNIST1DDataModule(pl.LightningDataModule, ABC):
    """What the MNIST-1D datamodules share: the checked loader sizes, the cached sequences and the two loaders.

    A subclass says how many sequences of every digit it draws from (:meth:`sequences_per_digit`) and sets
    ``train_set`` and ``test_set`` in ``setup``; the training loader shuffles, the test loader reads batches of 512.

    Args:
        batch_size: batch size of the training loader (an integer ≥ 1).
        seed: seed of the generated sequences (an integer ≥ 0).
        root: cache folder (default :func:`default_cache_dir`).
    """

    train_set: Dataset
    test_set: Dataset

    def __init__(self, batch_size: int, seed: int, root: str | None) -> None:
        super().__init__()
        check_integer("batch_size", batch_size, 1, advice=": e.g. batch_size=64")
        check_integer("seed", seed, 0, advice=": e.g. seed=0")
        self.batch_size, self.seed, self.root = batch_size, seed, root

    @abstractmethod
    def sequences_per_digit(self) -> int:
        """How many sequences of every digit the data set draws from (the size of the cached file)."""

    def generate(self) -> dict[str, np.ndarray]:
        """The generated sequences (read from the cache after the first call): ``x`` (N, 40) and ``y`` (N,)."""
        return generate_mnist1d(self.sequences_per_digit(), self.seed, self.root)

    def prepare_data(self) -> None:
        """Generate the sequences once (cached)."""
        self.generate()

    def train_dataloader(self) -> DataLoader:
        """The training set, shuffled."""
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def test_dataloader(self) -> DataLoader:
        """The test set."""
        return DataLoader(self.test_set, batch_size=512)


class MNIST1DLongTail(MNIST1DDataModule):
    """Long-tailed MNIST-1D: 10 classes of 1-D sequences (length 40), imbalanced training set, balanced test set.

    Class ``i`` keeps ``n_max · μ^i`` training sequences (``exponential``) or the step profile, with imbalance ratio
    ``ρ``; the test set has ``test_per_class`` sequences of every class. Everything is generated offline and cached.
    Batches are ``(x, y)`` with ``x`` of shape (B, 1, 40).

    Args:
        imbalance_ratio: ρ = n_max / n_min (100 by default, as CIFAR-LT).
        profile: ``"exponential"`` or ``"step"``.
        n_max: training sequences of the most frequent class.
        test_per_class: test sequences per class.
        batch_size: batch size of every loader.
        seed: seed of the generated sequences (the test set is disjoint from the training pool).
        root: cache folder (default :func:`default_cache_dir`).

    Example:
        >>> dm = MNIST1DLongTail(n_max=50, test_per_class=5, imbalance_ratio=10)  # doctest: +SKIP
        >>> dm.prepare_data(); dm.setup("fit"); dm.class_counts.tolist()  # doctest: +SKIP
        [50, 38, 29, 23, 17, 13, 10, 7, 6, 5]
    """

    num_classes = NUM_CLASSES

    def __init__(
        self,
        imbalance_ratio: float = 100.0,
        profile: Profile = "exponential",
        n_max: int = 1000,
        test_per_class: int = 300,
        batch_size: int = 64,
        seed: int = 0,
        root: str | None = None,
    ) -> None:
        counts = long_tail_counts(n_max, NUM_CLASSES, imbalance_ratio, profile)
        check_integer("test_per_class", test_per_class, 1, advice=": e.g. test_per_class=300")
        super().__init__(batch_size, seed, root)
        self.counts, self.n_max, self.test_per_class = counts, n_max, test_per_class

    def sequences_per_digit(self) -> int:
        """The test sequences and the largest class's training sequences of every digit."""
        return self.n_max + self.test_per_class

    def setup(self, stage: str) -> None:
        """Select the long-tailed training set and the balanced test set."""
        if hasattr(self, "train_set"):
            return
        data = self.generate()
        x, y = torch.from_numpy(data["x"]).unsqueeze(1), torch.from_numpy(data["y"])
        train_idx, test_idx = [], []
        for label, count in enumerate(self.counts):
            members = torch.nonzero(y == label).flatten()
            test_idx.append(members[: self.test_per_class])
            train_idx.append(members[self.test_per_class : self.test_per_class + count])
        train, test = torch.cat(train_idx).sort().values, torch.cat(test_idx).sort().values
        self.train_set = TensorDataset(x[train], y[train])
        self.test_set = TensorDataset(x[test], y[test])
        self.class_counts = torch.bincount(y[train], minlength=NUM_CLASSES)
