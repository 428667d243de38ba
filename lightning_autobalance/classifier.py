"""``ImbalancedClassifier``: the LightningModule the command-line app trains (and a template for your own)."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from lightning_autobalance.losses import ParametricCrossEntropy
from lightning_autobalance.mixin import AutoBalanceMixin

__all__ = ["ImbalancedClassifier"]


class ImbalancedClassifier(AutoBalanceMixin, pl.LightningModule):
    """Classifier trained with the AutoBalance loss (plain cross-entropy until a callback or you install another).

    Logs ``train/loss``; validation and test metrics come from :class:`AutoBalanceMixin`. SGD with momentum and a
    cosine learning-rate schedule over ``trainer.max_epochs``.

    Args:
        net: the network mapping inputs to (B, num_classes) logits.
        num_classes: number of classes K.
        lr: initial learning rate.
        momentum: SGD momentum.
        weight_decay: L2 penalty of the weights.
        num_groups: number of groups G of ``(x, y, g)`` batches (the initial loss is plain CE for every group).

    Example:
        >>> from lightning_autobalance.models import MNIST1DConvNet
        >>> model = ImbalancedClassifier(MNIST1DConvNet(), num_classes=10)
        >>> model.autobalance_loss.learnable
        ()
    """

    def __init__(
        self,
        net: nn.Module,
        num_classes: int,
        lr: float = 0.05,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        num_groups: int = 1,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["net"])
        self.net = net
        self.autobalance_loss = ParametricCrossEntropy(num_classes, num_groups)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def autobalance_features(self, x: Tensor) -> Tensor:
        """Penultimate features, when the network exposes ``features(x)`` (the last-layer protocol)."""
        if not hasattr(self.net, "features"):
            raise AttributeError(f"{type(self.net).__name__} has no features(x): pass feature_fn= explicitly.")
        return self.net.features(x)

    def autobalance_head(self) -> nn.Linear:
        """The last linear layer, when the network names it ``head``."""
        head = getattr(self.net, "head", None)
        if not isinstance(head, nn.Linear):
            raise AttributeError(f"{type(self.net).__name__} has no nn.Linear `head`: pass head= explicitly.")
        return head

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        loss = self.autobalance_step_loss(batch)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, sync_dist=True)
        return loss

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(
            self.parameters(),
            lr=self.hparams.lr,
            momentum=self.hparams.momentum,
            weight_decay=self.hparams.weight_decay,
        )
        epochs = max(1, self.trainer.max_epochs or 1) if self._trainer is not None else 1
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
