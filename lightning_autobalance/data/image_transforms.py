"""The image transforms of the group-DRO data sets (Waterbirds, CelebA): one recipe, normalised as ImageNet."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor
from torchvision import transforms as T

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "group_dro_transform"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def group_dro_transform(
    augment: bool, image_size: int, min_aspect: float, eval_steps: list[Callable[[Any], Any]]
) -> Callable[[Any], Tensor]:
    """The group-DRO recipe of the image data sets, normalised with the ImageNet statistics.

    Args:
        augment: a random resized crop (scale 0.7–1, aspect ``min_aspect``–4/3) and a horizontal flip; else
            ``eval_steps``.
        image_size: side of the augmented crop.
        min_aspect: smallest aspect ratio of the augmented crop.
        eval_steps: the resizing and cropping of the images that are not augmented.

    Example:
        >>> group_dro_transform(True, 32, 0.75, []).transforms[1]
        RandomHorizontalFlip(p=0.5)
    """
    normalize = [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    if augment:
        crop = T.RandomResizedCrop(image_size, scale=(0.7, 1.0), ratio=(min_aspect, 4.0 / 3.0))
        return T.Compose([crop, T.RandomHorizontalFlip(), *normalize])
    return T.Compose([*eval_steps, *normalize])
