"""Waterbirds (Sagawa et al., group DRO) from a local folder in the group-DRO / WILDS layout.

Expected layout (nothing is downloaded)::

    root/
      metadata.csv          columns img_filename, y, place, split (others, e.g. img_id, place_filename, are ignored)
      <img_filename>        the images, at the paths in metadata.csv relative to root (001.Black_footed_Albatross/...)

``y`` is the bird (0 = landbird, 1 = waterbird), ``place`` the background (0 = land, 1 = water), ``split`` 0 = train,
1 = validation, 2 = test. The group attribute is ``place`` (``num_groups = 2``); the four Waterbirds groups are the
(place, y) cells, so :func:`~lightning_autobalance.metrics.worst_group_error` with its default ``over="class_group"``
is the usual Waterbirds worst-group error. Batches are ``(x, y, g)``.

Transforms follow the group-DRO code: evaluation resizes to ``image_size · 256/224`` (256 for 224), center-crops
``image_size`` and normalises with the ImageNet statistics; ``augment=True`` trains with ``RandomResizedCrop(scale=(0.7,
1))`` and horizontal flips instead (group DRO's ``--augment_data``; off by default, as in its Waterbirds runs).
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import transforms as T

from lightning_autobalance._checks import check_integer
from lightning_autobalance.data.image_splits import SplitGroupDataModule
from lightning_autobalance.data.image_transforms import IMAGENET_MEAN, IMAGENET_STD, group_dro_transform

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "Waterbirds", "WaterbirdsDataset", "waterbirds_transform"]

REQUIRED_COLUMNS = ("img_filename", "y", "place", "split")
SPLITS = {"train": 0, "val": 1, "test": 2}


def waterbirds_transform(train: bool, augment: bool = False, image_size: int = 224) -> Callable[[Any], Tensor]:
    """The group-DRO image transform of Waterbirds (see the module docstring).

    Example:
        >>> waterbirds_transform(train=False).transforms[:2]
        [Resize(size=(256, 256), interpolation=bilinear, max_size=None, antialias=True), CenterCrop(size=(224, 224))]
    """
    resize = int(image_size * 256 / 224)
    return group_dro_transform(
        train and augment, image_size, 0.75, [T.Resize((resize, resize)), T.CenterCrop(image_size)]
    )


def _read_metadata(root: Path) -> list[dict[str, str]]:
    path = root / "metadata.csv"
    if not path.is_file():
        raise FileNotFoundError(
            f"Waterbirds metadata not found at {path}. Expected the group-DRO / WILDS layout: {root}/metadata.csv with "
            f"columns {', '.join(REQUIRED_COLUMNS)} (split 0 = train, 1 = val, 2 = test) and the images at the paths "
            "of its img_filename column, relative to the root (e.g. the extracted waterbird_complete95_forest2water2 "
            "or waterbirds_v1.0 folder)."
        )
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in reader.fieldnames or []]
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise ValueError(
                f"{path} lacks the column(s) {', '.join(missing)}: Waterbirds needs {', '.join(REQUIRED_COLUMNS)}, "
                f"found {', '.join(columns) or 'none'}."
            )
        return [{k.strip(): (v or "").strip() for k, v in row.items() if k is not None} for row in reader]


def _as_int(row: dict[str, str], column: str, line: int, allowed: tuple[int, ...], path: Path) -> int:
    try:
        value = int(float(row[column]))
    except ValueError:
        value = None
    if value not in allowed:
        raise ValueError(f"{path}, line {line}: column {column} must be one of {list(allowed)}, got {row[column]!r}.")
    return value


class WaterbirdsDataset(Dataset):
    """One split of Waterbirds: items ``(image, y, place)``; ``targets`` and ``groups`` attributes (no image read).

    Args:
        root: folder holding ``metadata.csv`` and the images.
        split: ``"train"``, ``"val"`` or ``"test"``.
        transform: applied to the RGB PIL image (default: the evaluation transform of group DRO).

    Raises:
        FileNotFoundError: missing ``metadata.csv`` or images of the split (the first few are named).
        ValueError: missing columns, values out of range, or an unknown split.
    """

    def __init__(self, root: str | Path, split: str = "train", transform: Callable[[Any], Any] | None = None) -> None:
        if split not in SPLITS:
            raise ValueError(f"Unknown Waterbirds split {split!r}: choose one of {', '.join(SPLITS)}.")
        self.root, self.split = Path(root).expanduser(), split
        self.transform = transform if transform is not None else waterbirds_transform(train=False)
        path = self.root / "metadata.csv"
        rows = _read_metadata(self.root)
        files, targets, groups = [], [], []
        for line, row in enumerate(rows, start=2):
            if _as_int(row, "split", line, (0, 1, 2), path) != SPLITS[split]:
                continue
            files.append(row["img_filename"])
            targets.append(_as_int(row, "y", line, (0, 1), path))
            groups.append(_as_int(row, "place", line, (0, 1), path))
        if not files:
            raise ValueError(f"{path} has no row with split = {SPLITS[split]} ({split}).")
        missing = [f for f in files if not (self.root / f).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} image(s) of the Waterbirds {split} split listed in {path} are missing under "
                f"{self.root}, e.g. {', '.join(missing[:3])}: img_filename paths are relative to the root folder."
            )
        self.filenames = files
        self.targets = torch.tensor(targets, dtype=torch.long)
        self.groups = torch.tensor(groups, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.filenames)

    def __getitem__(self, index: int) -> tuple[Any, Tensor, Tensor]:
        with Image.open(self.root / self.filenames[index]) as image:
            x = self.transform(image.convert("RGB"))
        return x, self.targets[index], self.groups[index]


class Waterbirds(SplitGroupDataModule):
    """Waterbirds datamodule: train / val / test splits of ``metadata.csv``, batches ``(x, y, place)``.

    ``num_classes = 2`` (landbird, waterbird), ``num_groups = 2`` (land, water background). After ``setup``:
    ``train_set``, ``val_set``, ``test_set``, and the training ``group_class_counts`` (G, K) and ``class_counts``.

    Args:
        root: the data folder (see the module docstring for the layout).
        batch_size: batch size of every loader.
        num_workers: loader worker processes.
        augment: random resized crops and flips for training (group DRO's ``--augment_data``).
        image_size: side of the network input (224 as group DRO).

    Example:
        >>> dm = Waterbirds(root="data/waterbird_complete95_forest2water2")  # doctest: +SKIP
        >>> trainer.fit(model, datamodule=HeldOutSplit(dm, fraction=0.2))  # doctest: +SKIP
    """

    num_classes = 2
    num_groups = 2

    def __init__(
        self, root: str, batch_size: int = 64, num_workers: int = 0, augment: bool = False, image_size: int = 224
    ) -> None:
        super().__init__()
        check_integer("batch_size", batch_size, 1)
        check_integer("image_size", image_size, 1)
        check_integer("num_workers", num_workers, 0)
        self.root, self.batch_size, self.num_workers = root, batch_size, num_workers
        self.augment, self.image_size = augment, image_size

    def setup(self, stage: str) -> None:
        """Read the metadata and check the images of every split (once)."""
        if hasattr(self, "train_set"):
            return
        train_transform = waterbirds_transform(True, self.augment, self.image_size)
        eval_transform = waterbirds_transform(False, image_size=self.image_size)
        self.train_set = WaterbirdsDataset(self.root, "train", train_transform)
        self.val_set = WaterbirdsDataset(self.root, "val", eval_transform)
        self.test_set = WaterbirdsDataset(self.root, "test", eval_transform)
        self._count_training_cells()
