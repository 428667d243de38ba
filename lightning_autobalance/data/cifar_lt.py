"""CIFAR10-LT and CIFAR100-LT (Cao et al. 2019; the AutoBalance paper's CIFAR benchmarks) from local files.

Read by :class:`torchvision.datasets.CIFAR10` / :class:`~torchvision.datasets.CIFAR100` with ``download=False``.
Expected layout, torchvision's (the extracted ``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz``)::

    root/cifar-10-batches-py/     data_batch_1 ... data_batch_5, test_batch, batches.meta   (pickles)
    root/cifar-100-python/        train, test, meta                                         (pickles)

The training set keeps ``n_i`` images of class ``i`` following the long-tail profile
(:func:`~lightning_autobalance.data.profiles.long_tail_counts`: exponential ``n_max · μ^i`` or step, ratio ρ), drawn
at random with ``seed`` (as the reference ``IMBALANCECIFAR`` code does); the test set stays balanced. Training images
get the standard CIFAR augmentation (random crop 32 with 4-pixel padding, horizontal flip); all images are normalised
with the CIFAR statistics. Batches are ``(x, y)`` with ``x`` of shape (B, 3, 32, 32).

torchvision checks every file against its MD5 checksum; ``verify_md5=False`` only checks that the files exist (for
re-pickled copies, and for the tiny generated files of the tests).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
from torch.utils.data import Dataset, Subset
from torchvision import transforms as T
from torchvision.datasets import CIFAR10, CIFAR100

from lightning_autobalance._checks import check_integer
from lightning_autobalance.data.image_splits import ImageDataModule, open_torchvision
from lightning_autobalance.data.profiles import Profile, long_tail_counts

__all__ = [
    "CIFAR10LongTail",
    "CIFAR100LongTail",
    "CIFARLongTail",
    "check_cifar_files",
    "cifar_transform",
    "open_cifar",
]

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


def cifar_transform(train: bool) -> T.Compose:
    """Standard CIFAR transform: random crop (padding 4) and horizontal flip for training, then normalisation.

    Example:
        >>> cifar_transform(train=True).transforms[:2]
        [RandomCrop(size=(32, 32), padding=4), RandomHorizontalFlip(p=0.5)]
    """
    normalize = [T.ToTensor(), T.Normalize(CIFAR_MEAN, CIFAR_STD)]
    if train:
        return T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), *normalize])
    return T.Compose(normalize)


class _UncheckedCIFAR10(CIFAR10):
    """torchvision's CIFAR10 with the MD5 checksums removed: only the files' existence is checked."""

    train_list: ClassVar[list[list[str | None]]] = [[name, None] for name, _ in CIFAR10.train_list]
    test_list: ClassVar[list[list[str | None]]] = [[name, None] for name, _ in CIFAR10.test_list]
    meta: ClassVar[dict[str, str | None]] = {**CIFAR10.meta, "md5": None}


class _UncheckedCIFAR100(CIFAR100):
    """torchvision's CIFAR100 with the MD5 checksums removed: only the files' existence is checked."""

    train_list: ClassVar[list[list[str | None]]] = [[name, None] for name, _ in CIFAR100.train_list]
    test_list: ClassVar[list[list[str | None]]] = [[name, None] for name, _ in CIFAR100.test_list]
    meta: ClassVar[dict[str, str | None]] = {**CIFAR100.meta, "md5": None}


def _unchecked(cls: type[CIFAR10]) -> type[CIFAR10]:
    """``cls`` without checksums (module-level classes, so loader worker processes can unpickle the data set)."""
    return _UncheckedCIFAR100 if issubclass(cls, CIFAR100) else _UncheckedCIFAR10


def _files(cls: type[CIFAR10]) -> list[str]:
    return [name for name, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]


def check_cifar_files(cls: type[CIFAR10], root: str | Path) -> Path:
    """The expanded ``root``, after checking that torchvision's files of ``cls`` are in ``root/cls.base_folder``.

    Raises:
        FileNotFoundError: naming the root, the expected folder and the missing files.
    """
    root = Path(root).expanduser()
    folder = root / cls.base_folder
    expected = _files(cls)
    missing = [name for name in expected if not (folder / name).is_file()]
    if missing:
        where = f"the folder {folder} does not exist" if not folder.is_dir() else f"{folder} lacks {', '.join(missing)}"
        raise FileNotFoundError(
            f"{cls.__name__} not found under the root {root}: {where}. Expected torchvision's layout "
            f"{root}/{cls.base_folder}/ with {', '.join(expected)} (the extracted {cls.filename} from "
            f"{cls.url}); nothing is downloaded: point root at the folder that holds {cls.base_folder}/."
        )
    return root


def open_cifar(
    cls: type[CIFAR10], root: str | Path, train: bool, transform: Any = None, verify_md5: bool = True
) -> CIFAR10:
    """``cls(root, train=train, transform=transform, download=False)`` with errors that name what is missing.

    Args:
        cls: ``torchvision.datasets.CIFAR10`` or ``CIFAR100``.
        root: folder holding ``cls.base_folder`` (``cifar-10-batches-py`` or ``cifar-100-python``).
        train: the training (True) or test (False) split.
        transform: applied to the PIL image.
        verify_md5: let torchvision check every file against its MD5 checksum.

    Raises:
        FileNotFoundError: the folder or some of its files are missing (all of them are named).
        RuntimeError: the files exist but fail torchvision's MD5 check (pass ``verify_md5=False`` to skip it).
    """
    root = check_cifar_files(cls, root)
    folder = root / cls.base_folder
    return open_torchvision(
        lambda: (cls if verify_md5 else _unchecked(cls))(str(root), train=train, transform=transform, download=False),
        verify_md5,
        f"The {cls.__name__} files under {folder} do not match torchvision's MD5 checksums (a re-pickled copy?). "
        "Replace them by the originals, or pass verify_md5=False to only check that they exist.",
    )


class CIFARLongTail(ImageDataModule):
    """Long-tailed CIFAR: imbalanced training subsample, balanced test set, batches ``(x, y)``.

    Subclasses set ``dataset_class`` (torchvision's CIFAR10 or CIFAR100) and ``num_classes``. After ``setup``:
    ``train_set`` (a :class:`~torch.utils.data.Subset` of the augmented training data), ``test_set``
    and the training ``class_counts``.

    Args:
        root: folder holding torchvision's CIFAR folder (see the module docstring).
        imbalance_ratio: ρ = n_0 / n_{K−1} (100 in the AutoBalance paper).
        profile: ``"exponential"`` or ``"step"``.
        n_max: training images of class 0 (default: all of them, 5000 for CIFAR-10, 500 for CIFAR-100).
        batch_size: batch size of every loader.
        num_workers: loader worker processes.
        augment: random crop and flip for training images.
        seed: seed of the choice of the kept training images.
        verify_md5: let torchvision check the files against its MD5 checksums.
    """

    dataset_class: ClassVar[type[CIFAR10]]
    num_classes: ClassVar[int]

    def __init__(
        self,
        root: str,
        imbalance_ratio: float = 100.0,
        profile: Profile = "exponential",
        n_max: int | None = None,
        batch_size: int = 128,
        num_workers: int = 0,
        augment: bool = True,
        seed: int = 0,
        verify_md5: bool = True,
    ) -> None:
        super().__init__()
        check_integer("batch_size", batch_size, 1)
        check_integer("num_workers", num_workers, 0)
        if n_max is not None:
            long_tail_counts(n_max, self.num_classes, imbalance_ratio, profile)  # validate early
        else:
            long_tail_counts(1, self.num_classes, imbalance_ratio, profile)
        self.root, self.imbalance_ratio, self.profile, self.n_max = root, imbalance_ratio, profile, n_max
        self.batch_size, self.num_workers, self.augment, self.seed = batch_size, num_workers, augment, seed
        self.verify_md5 = verify_md5

    def _open(self, train: bool) -> CIFAR10:
        return open_cifar(
            self.dataset_class,
            self.root,
            train=train,
            transform=cifar_transform(train=train and self.augment),
            verify_md5=self.verify_md5,
        )

    def prepare_data(self) -> None:
        """Check that the files are there (nothing is downloaded)."""
        check_cifar_files(self.dataset_class, self.root)

    def setup(self, stage: str) -> None:
        """Select the long-tailed training subsample and load the balanced test set."""
        if hasattr(self, "train_set"):
            return
        train = self._open(train=True)
        targets = torch.as_tensor(train.targets, dtype=torch.long)
        available = torch.bincount(targets, minlength=self.num_classes)
        n_max = self.n_max if self.n_max is not None else int(available.min())
        counts = long_tail_counts(n_max, self.num_classes, self.imbalance_ratio, self.profile)
        short = [(c, n, int(available[c])) for c, n in enumerate(counts) if n > available[c]]
        if short:
            c, n, have = short[0]
            raise ValueError(
                f"The long-tail profile asks {n} training images of class {c} but {self.root} has {have}: "
                f"lower n_max (now {n_max})."
            )
        generator = torch.Generator().manual_seed(self.seed)
        keep = []
        for label, count in enumerate(counts):
            members = torch.nonzero(targets == label).flatten()
            keep.append(members[torch.randperm(members.numel(), generator=generator)[:count]])
        index = torch.cat(keep).sort().values
        self.train_set: Dataset = Subset(train, index.tolist())
        self.test_set: Dataset = self._open(train=False)
        self.class_counts = torch.bincount(targets[index], minlength=self.num_classes)


class CIFAR10LongTail(CIFARLongTail):
    """CIFAR10-LT: 10 classes, up to 5000 training images per class (see :class:`CIFARLongTail`).

    Example:
        >>> CIFAR10LongTail(root="data", imbalance_ratio=100).num_classes
        10
    """

    dataset_class = CIFAR10
    num_classes = 10


class CIFAR100LongTail(CIFARLongTail):
    """CIFAR100-LT: 100 classes, up to 500 training images per class (see :class:`CIFARLongTail`).

    Example:
        >>> CIFAR100LongTail(root="data", imbalance_ratio=100).num_classes
        100
    """

    dataset_class = CIFAR100
    num_classes = 100
