"""Small reference networks (pure PyTorch)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["BodyHeadNetwork", "CIFARResNet", "MNIST1DConvNet", "resnet32"]


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
