"""``ImbalancedClassifier``: the LightningModule the command-line app trains (and a template for your own)."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from lightning_autobalance.losses import ParametricCrossEntropy
from lightning_autobalance.metrics import BalancedError, WorstClassError
from lightning_autobalance.mixin import AutoBalanceMixin

__all__ = ["ImbalancedClassifier"]


class ImbalancedClassifier(AutoBalanceMixin, pl.LightningModule):
    """Classifier trained with the AutoBalance loss (plain cross-entropy until a callback or you install another).

    Logs ``train/loss``, and on validation / test ``{stage}/balanced_error``, ``{stage}/worst_class_error`` and
    ``{stage}/error``. SGD with momentum and a cosine learning-rate schedule over ``trainer.max_epochs``.

    Args:
        net: the network mapping inputs to (B, num_classes) logits.
        num_classes: number of classes K.
        lr: initial learning rate.
        momentum: SGD momentum.
        weight_decay: L2 penalty of the weights.

    Example:
        >>> from lightning_autobalance.models import MNIST1DConvNet
        >>> model = ImbalancedClassifier(MNIST1DConvNet(), num_classes=10)
        >>> model.autobalance_loss.learnable
        ()
    """

    def __init__(
        self, net: nn.Module, num_classes: int, lr: float = 0.05, momentum: float = 0.9, weight_decay: float = 5e-4
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["net"])
        self.net = net
        self.autobalance_loss = ParametricCrossEntropy(num_classes)
        self.metrics = nn.ModuleDict(
            {
                stage: MetricCollection(
                    {
                        "balanced_error": BalancedError(num_classes),
                        "worst_class_error": WorstClassError(num_classes),
                        "accuracy": MulticlassAccuracy(num_classes, average="micro"),
                    },
                    prefix=f"{stage}/",
                )
                for stage in ("val", "test")
            }
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        loss = self.autobalance_step_loss(batch)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, sync_dist=True)
        return loss

    def _evaluate(self, stage: str, batch: Any) -> None:
        logits, targets, _ = self.autobalance_forward(batch)
        self.metrics[stage].update(logits, targets)

    def _log_epoch(self, stage: str) -> None:
        values = self.metrics[stage].compute()
        values[f"{stage}/error"] = 1 - values.pop(f"{stage}/accuracy")
        self.log_dict(values, prog_bar=stage == "val")
        self.metrics[stage].reset()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate("val", batch)

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate("test", batch)

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

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
