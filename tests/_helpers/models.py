"""Tiny AutoBalance-ready classifiers: Linear → Tanh → Linear, trained by SGD on ``autobalance_step_loss``."""

import lightning.pytorch as pl
import torch
from torch import nn

from lightning_autobalance import AutoBalanceMixin


class TanhNet(AutoBalanceMixin, pl.LightningModule):
    """``net = Linear(num_features, hidden) → Tanh → Linear(hidden, num_classes)``; SGD with ``lr`` and ``momentum``."""

    def __init__(self, num_classes=3, num_features=6, hidden=16, lr=0.05, momentum=0.9):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(num_features, hidden), nn.Tanh(), nn.Linear(hidden, num_classes))
        self.lr, self.momentum = lr, momentum

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        return self.autobalance_step_loss(batch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=self.momentum)


class TanhNetWithHead(TanhNet):
    """:class:`TanhNet` with the feature hook of the last-layer (default) engine: body ``net[:2]``, head ``net[2]``."""

    def autobalance_features(self, x):
        return self.net[:2](x)

    def autobalance_head(self):
        return self.net[2]
