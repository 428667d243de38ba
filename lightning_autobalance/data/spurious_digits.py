"""Spurious-correlation digits: scikit-learn's bundled 8×8 handwritten digits on a coloured background (offline).

The second group benchmark made from real images, a small offline stand-in for Waterbirds (a foreground object whose
shape is the label, pasted on a background that usually agrees with it). Built on the 1,797 images of
:func:`sklearn.datasets.load_digits` (shipped with scikit-learn, nothing downloaded):

* **label** ``y``: digit 0–4 → class 0, digit 5–9 → class 1 (as in :class:`~lightning_autobalance.data.spurious.
  SpuriousMNIST1D`: each class pools five shapes, so the core feature is harder to learn than the background);
* **group** ``g`` ∈ {0, 1}: the background colour. Every pixel of ink ``i`` ∈ [0, 1] (the grey level / 16) becomes
  ``i · white + (1 − i) · background[g]`` with ``background[0] = strength · red`` and ``background[1] = strength ·
  blue``: white digits on a red or a blue background, inputs (3, 8, 8) in [0, 1]. The green channel is the digit
  alone in both groups (the core feature is shared); the red and blue channels tell the background at a glance;
* **training set**: in each class a share ``correlation`` (95% by default, like Waterbirds) has the background of its
  class (``g = y``, the majority cells (0, 0), (1, 1)), the rest the other one (the minority cells);
* **validation and test sets**: ``val_per_cell`` / ``test_per_cell`` images of every (group, class) cell, so the
  background is independent of the label there and a model that reads the background errs on the minority cells
  (the worst-group error).

The split of the 1,797 images is fixed by ``seed`` (per class: a seeded permutation; test first, then validation,
the rest is training). Cell sizes with the defaults (901 images of digits 0–4 and 896 of digits 5–9):

* train: majority cells (g=0, y=0) 571 and (g=1, y=1) 566, minority cells (g=1, y=0) 30 and (g=0, y=1) 30
  (1,197 images; the command line's search phase holds out 20% of every cell, 6 of each minority cell);
* validation: 50 in every cell (200 images); test: 100 in every cell (400 images).

``strength=0`` makes the background invisible: the control without a spurious feature.

Batches are ``(x, y, g)`` with ``x`` of shape (B, 3, 8, 8).
"""

from __future__ import annotations

from functools import lru_cache
from numbers import Real

import torch
from torch import Tensor

from lightning_autobalance._checks import check_integer
from lightning_autobalance.data.image_splits import SplitGroupDataModule
from lightning_autobalance.data.spurious import GroupTensorDataset, split_spurious_cells

__all__ = ["DIGITS_CLASS_SIZES", "SpuriousDigits", "load_digit_images"]

# Images of digits 0–4 and of digits 5–9 in sklearn.datasets.load_digits (checked by the tests).
DIGITS_CLASS_SIZES = (901, 896)
# Background colours (R, G, B) of group 0 and group 1 at strength 1: red and blue; the digit's ink is white.
_BACKGROUNDS = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])


@lru_cache(maxsize=1)
def load_digit_images() -> tuple[Tensor, Tensor]:
    """The 1,797 digits of :func:`sklearn.datasets.load_digits`: ink (N, 8, 8) float32 in [0, 1] and digits (N,).

    Cached; do not modify the tensors in place.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    ink = torch.from_numpy(digits.images).float() / 16.0
    return ink, torch.from_numpy(digits.target).long()


class SpuriousDigits(SplitGroupDataModule):
    """Binary 8×8 digits (0–4 vs 5–9) on a red or blue background that is a spurious group; see the module docstring.

    Attributes after ``setup``: ``train_set``, ``val_set`` and ``test_set`` (:class:`GroupTensorDataset`),
    ``split_indices`` (the rows of ``load_digits`` in each split), ``group_class_counts`` (G, K) of the training set,
    ``class_counts`` (K,). ``num_classes = 2``, ``num_groups = 2``.

    Args:
        correlation: share of each training class whose background agrees with the label, in (0.5, 1).
        strength: saturation of the background colour in [0, 1] (0: no visible attribute, a control).
        val_per_cell: validation images of every (group, class) cell.
        test_per_cell: test images of every (group, class) cell.
        batch_size: batch size of the loaders.
        seed: seed of the split and of the background assignment (an integer ≥ 0).

    Example:
        >>> dm = SpuriousDigits()
        >>> dm.expected_group_class_counts().tolist()  # training cells; rows: group, columns: class
        [[571, 30], [30, 566]]
        >>> dm.setup("fit")
        >>> x, y, g = dm.train_set[0]
        >>> tuple(x.shape), len(dm.train_set), len(dm.val_set), len(dm.test_set)
        ((3, 8, 8), 1197, 200, 400)
    """

    num_classes = 2
    num_groups = 2
    num_workers = 0

    def __init__(
        self,
        correlation: float = 0.95,
        strength: float = 1.0,
        val_per_cell: int = 50,
        test_per_cell: int = 100,
        batch_size: int = 64,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not isinstance(correlation, Real) or isinstance(correlation, bool) or not 0.5 < correlation < 1.0:
            raise ValueError(
                f"correlation must lie strictly between 0.5 and 1 (the share of each training class whose background "
                f"agrees with the label; 1 would leave the minority cells empty), got {correlation!r}: e.g. "
                "correlation=0.95 (Waterbirds-like)."
            )
        if not isinstance(strength, Real) or isinstance(strength, bool) or not 0.0 <= strength <= 1.0:
            raise ValueError(
                f"strength must lie in [0, 1] (the saturation of the background colour; 0 hides it), got "
                f"{strength!r}: e.g. strength=1.0."
            )
        for name, value, example in (
            ("val_per_cell", val_per_cell, 50),
            ("test_per_cell", test_per_cell, 100),
            ("batch_size", batch_size, 64),
        ):
            check_integer(name, value, 1, advice=f": e.g. {name}={example}")
        check_integer("seed", seed, 0, meaning=" (it fixes the split)", advice=": e.g. seed=0")
        self.correlation, self.strength = float(correlation), float(strength)
        self.val_per_cell, self.test_per_cell = val_per_cell, test_per_cell
        self.batch_size, self.seed = batch_size, seed
        minority = int(self.expected_group_class_counts().min())
        if minority < 2:
            held = 2 * (val_per_cell + test_per_cell)
            raise ValueError(
                f"val_per_cell={val_per_cell} and test_per_cell={test_per_cell} take {held} images of each class "
                f"(of {min(DIGITS_CLASS_SIZES)}), which with correlation={correlation} leaves {minority} training "
                "image(s) in a minority cell: lower val_per_cell / test_per_cell (defaults 50 / 100) or correlation "
                "so each cell keeps at least 2 (one for the held-out split)."
            )

    def expected_group_class_counts(self) -> Tensor:
        """Training counts (G, K) per (group, class) cell; known before the images are loaded."""
        held = 2 * (self.val_per_cell + self.test_per_cell)
        train = [max(size - held, 0) for size in DIGITS_CLASS_SIZES]
        majority = [round(self.correlation * n) for n in train]
        return torch.tensor([[majority[0], train[1] - majority[1]], [train[0] - majority[0], majority[1]]])

    def prepare_data(self) -> None:
        """Nothing to download: the digits ship with scikit-learn."""

    def setup(self, stage: str) -> None:
        """Split the images (seeded, per class) and paint the backgrounds of the three splits."""
        if hasattr(self, "train_set"):
            return
        ink, digits = load_digit_images()
        labels = (digits >= 5).long()
        majority = self.expected_group_class_counts().diagonal().tolist()
        held = (self.test_per_cell, self.val_per_cell)
        test, val, train = split_spurious_cells(labels, majority, held, self.seed)
        self.split_indices = {"train": train[0], "val": val[0], "test": test[0]}
        self.train_set, self.val_set, self.test_set = (self._build(ink, labels, *cells) for cells in (train, val, test))
        self._count_training_cells()

    def _build(self, ink: Tensor, labels: Tensor, index: Tensor, groups: Tensor) -> GroupTensorDataset:
        background = (self.strength * _BACKGROUNDS[groups]).view(-1, 3, 1, 1)
        pixels = ink[index].unsqueeze(1)  # (N, 1, 8, 8), broadcast over the colour channels
        images = pixels + (1.0 - pixels) * background
        return GroupTensorDataset(images.contiguous(), labels[index], groups)
