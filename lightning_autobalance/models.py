"""Small reference networks (pure PyTorch)."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["MNIST1DConvNet"]


class MNIST1DConvNet(nn.Module):
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

    def features(self, x: Tensor) -> Tensor:
        """Penultimate-layer features (B, channels · length / 4)."""
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))
