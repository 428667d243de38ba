"""CelebA with a target and a sensitive attribute chosen by name, read by :class:`torchvision.datasets.CelebA`.

Nothing is downloaded (``download=False``). Expected layout, torchvision's::

    root/celeba/
      img_align_celeba/                  000001.jpg ... (the aligned and cropped 178×218 images)
      list_attr_celeba.txt               count, then the 40 attribute names, then "<file> ±1 ... ±1" rows
      list_eval_partition.txt            "<file> <0|1|2>" (train / valid / test)
      identity_CelebA.txt                "<file> <identity>"
      list_bbox_celeba.txt               count, header, "<file> x_1 y_1 width height"
      list_landmarks_align_celeba.txt    count, header, "<file> <10 coordinates>"

torchvision checks the MD5 of the five text files when it opens the data set. Copies of the annotation files from
other sources (re-saved, converted line endings) fail that check; ``verify_md5=False`` then only checks that the files
exist (the workaround suggested in pytorch/vision issue #8875: a subclass without the checksums).

The label is the ``target`` attribute (e.g. ``Blond_Hair``), the group the ``sensitive`` attribute (e.g. ``Male``),
both mapped to {0, 1}; the four (group, class) cells are the usual CelebA groups. Batches are ``(x, y, g)``.
Transforms follow the group-DRO code: center-crop 178 (the short side), resize to 224, ImageNet normalisation;
``augment=True`` uses ``RandomResizedCrop(scale=(0.7, 1), ratio=(1, 4/3))`` and flips for training.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import transforms as T
from torchvision.datasets import CelebA as TorchvisionCelebA

from lightning_autobalance._checks import check_integer
from lightning_autobalance.data.image_splits import SplitGroupDataModule, open_torchvision
from lightning_autobalance.data.image_transforms import group_dro_transform

__all__ = [
    "CELEBA_ATTRIBUTES",
    "CelebA",
    "CelebAGroupDataset",
    "celeba_transform",
    "check_attribute",
    "open_celeba",
]

CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow",
    "Arched_Eyebrows",
    "Attractive",
    "Bags_Under_Eyes",
    "Bald",
    "Bangs",
    "Big_Lips",
    "Big_Nose",
    "Black_Hair",
    "Blond_Hair",
    "Blurry",
    "Brown_Hair",
    "Bushy_Eyebrows",
    "Chubby",
    "Double_Chin",
    "Eyeglasses",
    "Goatee",
    "Gray_Hair",
    "Heavy_Makeup",
    "High_Cheekbones",
    "Male",
    "Mouth_Slightly_Open",
    "Mustache",
    "Narrow_Eyes",
    "No_Beard",
    "Oval_Face",
    "Pale_Skin",
    "Pointy_Nose",
    "Receding_Hairline",
    "Rosy_Cheeks",
    "Sideburns",
    "Smiling",
    "Straight_Hair",
    "Wavy_Hair",
    "Wearing_Earrings",
    "Wearing_Hat",
    "Wearing_Lipstick",
    "Wearing_Necklace",
    "Wearing_Necktie",
    "Young",
)
FILES = (
    "list_attr_celeba.txt",
    "list_eval_partition.txt",
    "identity_CelebA.txt",
    "list_bbox_celeba.txt",
    "list_landmarks_align_celeba.txt",
)
SPLITS = {"train": 0, "valid": 1, "test": 2}


def check_attribute(name: str, role: str, known: Sequence[str] = CELEBA_ATTRIBUTES) -> int:
    """Index of attribute ``name`` in ``known``; a ``ValueError`` naming close matches otherwise.

    Example:
        >>> check_attribute("Male", "sensitive")
        20
        >>> check_attribute("blond_hair", "target")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: Unknown CelebA target attribute 'blond_hair'. Did you mean 'Blond_Hair'? ...
    """
    if name in known:
        return list(known).index(name)
    lowered = {k.lower(): k for k in known}
    if name.lower() in lowered:  # a wrong case: the intended name is certain
        close = [name.lower()]
    else:
        close = difflib.get_close_matches(name.lower(), list(lowered), n=3, cutoff=0.5)
    hint = f"Did you mean {' or '.join(repr(lowered[c]) for c in close)}? " if close else ""
    raise ValueError(f"Unknown CelebA {role} attribute {name!r}. {hint}The attributes are: {', '.join(known)}.")


def celeba_transform(
    train: bool, augment: bool = False, image_size: int = 224, crop_size: int = 178
) -> Callable[[Any], Tensor]:
    """The group-DRO image transform of CelebA (see the module docstring).

    Example:
        >>> celeba_transform(train=False).transforms[:2]
        [CenterCrop(size=(178, 178)), Resize(size=224, interpolation=bilinear, max_size=None, antialias=True)]
    """
    return group_dro_transform(train and augment, image_size, 1.0, [T.CenterCrop(crop_size), T.Resize(image_size)])


class _UncheckedCelebA(TorchvisionCelebA):
    """torchvision's CelebA with the MD5 checks of the annotation files replaced by existence checks."""

    file_list: ClassVar[list[tuple[str, str | None, str]]] = [
        (file_id, None, filename) for file_id, _, filename in TorchvisionCelebA.file_list
    ]


def open_celeba(root: str | Path, verify_md5: bool = True) -> TorchvisionCelebA:
    """``torchvision.datasets.CelebA(root, split="all", target_type="attr", download=False)`` with clear errors.

    Raises:
        FileNotFoundError: a file or the image folder of the expected layout is missing (all of them are named).
        RuntimeError: the files exist but fail torchvision's MD5 check (pass ``verify_md5=False`` to skip it).
    """
    folder = Path(root).expanduser() / TorchvisionCelebA.base_folder
    missing = [name for name in FILES if not (folder / name).is_file()]
    if not (folder / "img_align_celeba").is_dir():
        missing.append("img_align_celeba/")
    if missing:
        raise FileNotFoundError(
            f"CelebA is incomplete under {folder}: missing {', '.join(missing)}. Expected torchvision's layout "
            f"root/celeba/ with img_align_celeba/ (the extracted img_align_celeba.zip) and {', '.join(FILES)}; "
            "nothing is downloaded."
        )
    cls = TorchvisionCelebA if verify_md5 else _UncheckedCelebA
    return open_torchvision(
        lambda: cls(str(Path(root).expanduser()), split="all", target_type="attr", download=False),
        verify_md5,
        f"The CelebA annotation files under {folder} do not match torchvision's MD5 checksums (a copy from another "
        "source or re-saved files?). Replace them by the originals, or pass verify_md5=False to only check that "
        "they exist.",
    )


class CelebAGroupDataset(Dataset):
    """Items ``(image, target attribute, sensitive attribute)`` of a subset of a torchvision CelebA data set.

    ``targets`` and ``groups`` are tensors (read without opening an image).

    Args:
        base: a ``torchvision.datasets.CelebA`` with ``target_type="attr"`` (``split="all"`` or one split).
        indices: the items of ``base`` to use.
        target: column of the label attribute in ``base.attr``.
        sensitive: column of the group attribute in ``base.attr``.
        transform: applied to the PIL image.
    """

    def __init__(
        self,
        base: TorchvisionCelebA,
        indices: Tensor,
        target: int,
        sensitive: int,
        transform: Callable[[Any], Any] | None = None,
    ) -> None:
        self.base, self.indices, self.transform = base, indices.long(), transform
        attr = base.attr[self.indices]
        self.targets = attr[:, target].long().clone()
        self.groups = attr[:, sensitive].long().clone()

    def __len__(self) -> int:
        return self.indices.numel()

    def __getitem__(self, index: int) -> tuple[Any, Tensor, Tensor]:
        name = self.base.filename[int(self.indices[index])]
        with Image.open(Path(self.base.root) / self.base.base_folder / "img_align_celeba" / name) as image:
            rgb = image.convert("RGB")
        x = self.transform(rgb) if self.transform is not None else rgb
        return x, self.targets[index], self.groups[index]


def _partition(base: TorchvisionCelebA) -> Tensor:
    """Split (0 train, 1 valid, 2 test) of every item of a ``split="all"`` data set, in its order."""
    path = Path(base.root) / base.base_folder / "list_eval_partition.txt"
    split_of: dict[str, int] = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            fields = line.split()
            if len(fields) == 2:
                split_of[fields[0]] = int(fields[1])
    return torch.tensor([split_of[name] for name in base.filename], dtype=torch.long)


class CelebA(SplitGroupDataModule):
    """CelebA datamodule with a binary ``target`` attribute as label and a ``sensitive`` attribute as group.

    ``num_classes = 2``, ``num_groups = 2``. After ``setup``: ``train_set``, ``val_set``, ``test_set``
    (:class:`CelebAGroupDataset`), the training ``group_class_counts`` (G, K) and ``class_counts``.

    Args:
        root: folder holding ``celeba/`` (see the module docstring for the layout).
        target: label attribute, e.g. ``"Blond_Hair"``.
        sensitive: group attribute, e.g. ``"Male"``.
        batch_size: batch size of every loader.
        num_workers: loader worker processes.
        augment: random resized crops and flips for training.
        image_size: side of the network input (224 as group DRO).
        crop_size: side of the center crop before resizing (178, the short side of the aligned images).
        verify_md5: let torchvision check the annotation files against its MD5 checksums.

    Raises:
        ValueError: unknown attribute names (with close matches), or the same attribute as target and group.

    Example:
        >>> CelebA(root="data", target="Blond_Hair", sensitive="Male").target_index
        9
    """

    num_classes = 2
    num_groups = 2

    def __init__(
        self,
        root: str,
        target: str = "Blond_Hair",
        sensitive: str = "Male",
        batch_size: int = 64,
        num_workers: int = 0,
        augment: bool = False,
        image_size: int = 224,
        crop_size: int = 178,
        verify_md5: bool = True,
    ) -> None:
        super().__init__()
        self.target_index = check_attribute(target, "target")
        self.sensitive_index = check_attribute(sensitive, "sensitive")
        if target == sensitive:
            raise ValueError(f"The target and the sensitive attribute are both {target!r}: choose two different ones.")
        check_integer("batch_size", batch_size, 1)
        check_integer("image_size", image_size, 1)
        check_integer("crop_size", crop_size, 1)
        check_integer("num_workers", num_workers, 0)
        self.root, self.target, self.sensitive = root, target, sensitive
        self.batch_size, self.num_workers, self.augment = batch_size, num_workers, augment
        self.image_size, self.crop_size, self.verify_md5 = image_size, crop_size, verify_md5

    def setup(self, stage: str) -> None:
        """Open CelebA once (``split="all"``) and select the three splits of ``list_eval_partition.txt``."""
        if hasattr(self, "train_set"):
            return
        base = open_celeba(self.root, self.verify_md5)
        names = [n for n in base.attr_names if n]  # the real header line ends with a space: drop the empty name
        target = check_attribute(self.target, "target", names)
        sensitive = check_attribute(self.sensitive, "sensitive", names)
        partition = _partition(base)
        train_tf = celeba_transform(True, self.augment, self.image_size, self.crop_size)
        eval_tf = celeba_transform(False, image_size=self.image_size, crop_size=self.crop_size)
        sets = {}
        for split, code in SPLITS.items():
            indices = torch.nonzero(partition == code).flatten()
            if indices.numel() == 0:
                raise ValueError(f"list_eval_partition.txt under {self.root} has no {split} image (code {code}).")
            transform = train_tf if split == "train" else eval_tf
            sets[split] = CelebAGroupDataset(base, indices, target, sensitive, transform)
        self.train_set, self.val_set, self.test_set = sets["train"], sets["valid"], sets["test"]
        self._count_training_cells()
