"""Small reference networks (pure PyTorch)."""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["BodyHeadNetwork", "CIFARResNet", "DigitsConvNet", "ImageResNet", "MNIST1DConvNet", "resnet32"]


class BodyHeadNetwork(nn.Module):
    """A network ``head(body(x))`` with a linear ``head``: exposes the last-layer feature hook.

    Subclasses build ``self.body`` (inputs → features) and ``self.head`` (an :class:`torch.nn.Linear`).
    """

    body: nn.Module
    head: nn.Linear

    def features(self, x: Tensor) -> Tensor:
        """Penultimate-layer features (B, head.in_features)."""
        return self.body(x)

    def autobalance_features(self, x: Tensor) -> Tensor:
        """The feature hook of AutoBalance's last-layer engine and of last-layer retraining (= :meth:`features`)."""
        return self.body(x)

    def autobalance_head(self) -> nn.Linear:
        """The last layer."""
        return self.head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


class MNIST1DConvNet(BodyHeadNetwork):
    """A small 1-D CNN for MNIST-1D (inputs (B, 1, 40)): three conv + BatchNorm + ReLU blocks and a linear head.

    The last layer is ``self.head`` and the features it reads are returned by :meth:`features`.

    Example:
        >>> import torch
        >>> MNIST1DConvNet()(torch.zeros(2, 1, 40)).shape
        torch.Size([2, 10])
    """

    def __init__(self, num_classes: int = 10, channels: int = 32, length: int = 40) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv1d(1, channels, 5, padding=2),
            nn.BatchNorm1d(channels),
            nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1),
            nn.BatchNorm1d(channels),
            nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1),
            nn.BatchNorm1d(channels),
            nn.ReLU(),
            nn.Flatten(),
        )
        self.head = nn.Linear(channels * ((length + 3) // 4), num_classes)


class DigitsConvNet(BodyHeadNetwork):
    """A small 2-D CNN for 8×8 images (the spurious digits, inputs (B, 3, 8, 8)): three conv + BatchNorm + ReLU blocks.

    Two 3×3 convolutions at full resolution, one with stride 2, then an adaptive average pooling to 2×2 (so any image
    of at least 2×2 pixels runs) and a linear head on the ``4 · 2 · channels`` features returned by :meth:`features`.

    Args:
        num_classes: outputs of the head.
        in_channels: colour channels of the inputs.
        channels: width of the first two convolutions (the third has twice as many).

    Example:
        >>> import torch
        >>> net = DigitsConvNet(num_classes=2)
        >>> net(torch.zeros(2, 3, 8, 8)).shape, net.features(torch.zeros(2, 3, 8, 8)).shape
        (torch.Size([2, 2]), torch.Size([2, 256]))
    """

    def __init__(self, num_classes: int = 2, in_channels: int = 3, channels: int = 32) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, padding=1),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=1),
            nn.BatchNorm2d(2 * channels),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
        )
        self.head = nn.Linear(2 * channels * 4, num_classes)


class _BasicBlock(nn.Module):
    """Two 3×3 convolutions with BatchNorm and an identity (option A: strided, zero-padded) shortcut."""

    def __init__(self, inputs: int, outputs: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, outputs, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(outputs)
        self.conv2 = nn.Conv2d(outputs, outputs, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(outputs)
        self.stride, self.pad = stride, outputs - inputs

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x[:, :, :: self.stride, :: self.stride] if self.stride > 1 else x
        if self.pad:
            shortcut = F.pad(shortcut, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return F.relu(out + shortcut)


class CIFARResNet(BodyHeadNetwork):
    """The CIFAR ResNet of He et al. 2016 (6n + 2 layers; n = 5 is ResNet-32, the AutoBalance paper's CIFAR model).

    Inputs (B, 3, 32, 32); widths 16-32-64; global average pooling and a linear head. Exposes the feature hook
    (:meth:`autobalance_features`, :meth:`autobalance_head`).

    Args:
        num_classes: number of classes.
        blocks: residual blocks per stage (n).

    Example:
        >>> import torch
        >>> resnet32(num_classes=10)(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(self, num_classes: int = 10, blocks: int = 5) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU()]
        width = 16
        for stage, outputs in enumerate((16, 32, 64)):
            for block in range(blocks):
                layers.append(_BasicBlock(width, outputs, 2 if stage and not block else 1))
                width = outputs
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(64, num_classes)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight)


def resnet32(num_classes: int = 10) -> CIFARResNet:
    """ResNet-32 for CIFAR-shaped inputs."""
    return CIFARResNet(num_classes, blocks=5)


_TORCHVISION_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


class ImageResNet(BodyHeadNetwork):
    """A torchvision ImageNet ResNet (18/34/50/101/152) split into a body and a linear head, for Waterbirds / CelebA.

    The body is torchvision's network up to the global average pooling (the group-DRO / DFR backbone); ``head`` is a
    new :class:`torch.nn.Linear` with ``num_classes`` outputs. Exposes the feature hook (:meth:`autobalance_features`,
    :meth:`autobalance_head`) used by AutoBalance's last-layer engine and by last-layer retraining.

    Nothing is downloaded by default (``weights=None``: random initialisation). The published Waterbirds / CelebA
    results start from ImageNet weights; pass them where you have them:

    * ``checkpoint="/path/resnet50-11ad3fa6.pth"``: a torchvision-format state dict on disk (its ``fc`` entries
      are ignored, the head is always new);
    * ``weights="IMAGENET1K_V1"`` (or ``"DEFAULT"``): torchvision's weight enum, which downloads into the torch hub
      cache unless the file is already there (``$TORCH_HOME``).

    Args:
        num_classes: outputs of the head.
        arch: ``resnet18``, ``resnet34``, ``resnet50``, ``resnet101`` or ``resnet152``.
        weights: torchvision weight name (e.g. ``"IMAGENET1K_V1"``) or None.
        checkpoint: path of a torchvision-format state dict to load into the body, or None.

    Example:
        >>> import torch
        >>> net = ImageResNet(num_classes=2, arch="resnet18")
        >>> net(torch.zeros(2, 3, 32, 32)).shape, net.autobalance_features(torch.zeros(2, 3, 32, 32)).shape
        (torch.Size([2, 2]), torch.Size([2, 512]))
    """

    def __init__(
        self,
        num_classes: int = 2,
        arch: str = "resnet50",
        weights: str | None = None,
        checkpoint: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__()
        from torchvision import models

        if arch not in _TORCHVISION_RESNETS:
            raise ValueError(f"Unknown ResNet {arch!r}: choose one of {', '.join(_TORCHVISION_RESNETS)}.")
        if weights is not None and checkpoint is not None:
            raise ValueError("Pass either weights= (a torchvision weight name) or checkpoint= (a file), not both.")
        network = getattr(models, arch)(weights=weights)
        if checkpoint is not None:
            if not os.path.isfile(checkpoint):
                raise FileNotFoundError(
                    f"ResNet checkpoint {checkpoint} not found: give the path of a torchvision-format state dict "
                    f"(e.g. the {arch} ImageNet weights), or checkpoint=null to start from random weights."
                )
            state = torch.load(checkpoint, map_location="cpu", weights_only=True)
            state = {k: v for k, v in state.get("state_dict", state).items() if not k.startswith("fc.")}
            expected = {k: v.shape for k, v in network.state_dict().items() if not k.startswith("fc.")}
            missing = [k for k in expected if k not in state]
            unexpected = [k for k in state if k not in expected]
            resized = [k for k in expected if k in state and state[k].shape != expected[k]]
            if missing or unexpected or resized:
                raise ValueError(
                    f"{checkpoint} does not fit torchvision's {arch}: missing {missing[:3]}, unexpected "
                    f"{unexpected[:3]}, other shapes {resized[:3]} (keys and shapes as in "
                    f"torchvision.models.{arch}().state_dict())."
                )
            network.load_state_dict(state, strict=False)  # everything but fc
        features = network.fc.in_features
        network.fc = nn.Identity()
        self.arch = arch
        self.body = network  # torchvision forward: ... → avgpool → flatten → fc (= identity)
        self.head = nn.Linear(features, num_classes)
