"""``AutoBalanceMixin``: gives a LightningModule a tunable loss without making it part of the model."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
from torch import Tensor, nn
from torch.nn import functional as F
from torchmetrics import MetricCollection

from lightning_autobalance import metrics as M
from lightning_autobalance.batches import unpack_batch
from lightning_autobalance.learned_loss import CHECKPOINT_KEY, loss_from_dict, loss_to_dict
from lightning_autobalance.losses import ParametricCrossEntropy
from lightning_autobalance.protocols import EpochScheduled

__all__ = ["AutoBalanceMixin", "PlainCrossEntropy"]

_LOSS_ATTRIBUTE = "_autobalance_loss_module"
_PLAIN_ATTRIBUTE = "_autobalance_plain_loss"


class PlainCrossEntropy(nn.Module):
    """Cross-entropy with the loss call signature ``(logits, targets, groups=None)``; the mixin's loss until one is set.

    Its width is the logits' (``num_classes`` is ``None``); groups are ignored.

    Example:
        >>> import torch
        >>> loss = PlainCrossEntropy()
        >>> logits, targets = torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1])
        >>> bool(torch.isclose(loss(logits, targets), torch.nn.functional.cross_entropy(logits, targets)))
        True
    """

    num_classes: int | None = None

    def forward(self, logits: Tensor, targets: Tensor, groups: Tensor | None = None) -> Tensor:
        return F.cross_entropy(logits, targets)


class AutoBalanceMixin:
    """Mixin for a :class:`~lightning.pytorch.LightningModule` trained with a loss that AutoBalance designs.

    Replace ``F.cross_entropy(logits, y)`` by ``self.autobalance_loss(logits, y[, groups])``. The loss module is held
    *outside* the module tree: its hyperparameters α never appear in ``self.parameters()``, so they never enter the
    model optimizer or DDP's gradient reducer, and they move with the module on ``.to(device)``. The
    :class:`~lightning_autobalance.AutoBalance` callback installs a tunable loss at ``setup``; for the retrain phase
    assign a frozen one, e.g. ``self.autobalance_loss = load_loss(path)``.

    Override :meth:`autobalance_forward` if your batches are not ``(x, y)`` or ``(x, y, g)`` tuples or your model is
    not called as ``self(x)``.

    Validation and test come for free: the default ``validation_step`` / ``test_step`` log, per epoch and exact under
    DDP, ``{stage}/balanced_error``, ``{stage}/worst_class_error`` and ``{stage}/error``, plus
    ``{stage}/worst_group_error``, ``{stage}/demographic_parity_gap``, ``{stage}/equal_opportunity_gap`` and
    ``{stage}/equalized_odds_gap`` when the loss has several groups. Define your own steps to replace them, or call
    :meth:`autobalance_evaluate` from them.

    Example:
        >>> import lightning.pytorch as pl, torch
        >>> class Model(AutoBalanceMixin, pl.LightningModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.net = torch.nn.Linear(4, 3)
        ...         self.autobalance_loss = ParametricCrossEntropy(3)
        ...     def forward(self, x):
        ...         return self.net(x)
        ...     def training_step(self, batch, batch_idx):
        ...         return self.autobalance_loss(*self.autobalance_forward(batch))
        >>> model = Model()
        >>> [name for name, _ in model.named_parameters()]
        ['net.weight', 'net.bias']
    """

    @property
    def autobalance_loss(self) -> nn.Module:
        """The loss ``(logits, targets, groups=None) -> scalar``; installed by the callback or assigned by you.

        Until one is installed it is :class:`PlainCrossEntropy`: a model with the mixin trains as with plain
        cross-entropy when neither a callback nor you gave it a loss.
        """
        loss = self.__dict__.get(_LOSS_ATTRIBUTE)
        if loss is None:
            loss = self.__dict__.setdefault(_PLAIN_ATTRIBUTE, PlainCrossEntropy())
        # the loss is outside the module tree, so train()/eval() (and Lightning's restoring of each submodule's
        # flag) never reach it: it follows the module here (its personalized augmentation acts in training only)
        loss.training = bool(getattr(self, "training", True))
        return loss

    @autobalance_loss.setter
    def autobalance_loss(self, loss: ParametricCrossEntropy) -> None:
        if not isinstance(loss, nn.Module) or not hasattr(loss, "num_classes"):
            raise TypeError(
                "autobalance_loss must be a ParametricCrossEntropy or a baseline loss module with the same call "
                f"signature and a num_classes attribute (e.g. LDAMLoss, FocalLoss(num_classes=K)), got "
                f"{type(loss).__name__}."
            )
        device = next((p.device for p in self.parameters()), None)  # type: ignore[attr-defined]
        self.__dict__[_LOSS_ATTRIBUTE] = loss if device is None else loss.to(device)
        loss.train(bool(getattr(self, "training", True)))

    @property
    def has_autobalance_loss(self) -> bool:
        """Whether a loss has been installed."""
        return self.__dict__.get(_LOSS_ATTRIBUTE) is not None

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "autobalance_loss":  # nn.Module.__setattr__ would register the loss as a submodule
            type(self).autobalance_loss.fset(self, value)  # type: ignore[attr-defined]
            return
        super().__setattr__(name, value)

    def _apply(self, fn: Callable[[Tensor], Tensor], *args: Any, **kwargs: Any) -> Any:
        result = super()._apply(fn, *args, **kwargs)  # type: ignore[misc]
        loss = self.__dict__.get(_LOSS_ATTRIBUTE)
        if loss is not None:
            loss._apply(fn)
        return result

    def autobalance_forward(self, batch: Any) -> tuple[Tensor, Tensor, Tensor | None]:
        """Map a batch to ``(logits, targets, groups)``; the default understands ``(x, y)`` and ``(x, y, g)``.

        The AutoBalance callback calls this with substituted weights during hyper-steps, so it must compute the
        logits from the module's own parameters (``self(x)`` does).
        """
        x, y, groups = unpack_batch(
            batch,
            user="The default autobalance_forward",
            advice="override autobalance_forward(batch) -> (logits, targets, groups) in your LightningModule.",
        )
        return self(x), y, groups  # type: ignore[operator]

    def autobalance_step_loss(self, batch: Any) -> Tensor:
        """Loss of a batch under the current AutoBalance loss (for ``training_step``)."""
        logits, targets, groups = self.autobalance_forward(batch)
        return self.autobalance_loss(logits, targets, groups)

    def autobalance_metrics(self, stage: str, num_classes: int | None = None) -> MetricCollection:
        """The metrics of ``stage`` (e.g. ``"val"``, ``"test"``), created on first use from the loss's K and G.

        ``num_classes`` sizes them when the loss does not know its width (:class:`PlainCrossEntropy`).
        """
        name = f"autobalance_{stage}_metrics"
        collection = self._modules.get(name) if hasattr(self, "_modules") else None  # type: ignore[attr-defined]
        if collection is None:
            loss = self.autobalance_loss
            k, g = loss.num_classes or num_classes, getattr(loss, "num_groups", None) or 1
            if k is None:
                raise ValueError(f"autobalance_metrics({stage!r}) needs num_classes: the loss does not know its width.")
            members = {"balanced_error": M.BalancedError(k, g), "worst_class_error": M.WorstClassError(k, g),
                       "error": M.Error(k, g)}  # fmt: skip
            if g > 1:
                members.update(
                    worst_group_error=M.WorstGroupError(k, g),
                    demographic_parity_gap=M.DemographicParityGap(k, g),
                    equal_opportunity_gap=M.EqualOpportunityGapMetric(k, g),
                    equalized_odds_gap=M.EqualizedOddsGapMetric(k, g),
                )
            device = next((p.device for p in self.parameters()), None)  # type: ignore[attr-defined]
            collection = MetricCollection(members, prefix=f"{stage}/").to(device)
            self.add_module(name, collection)  # type: ignore[attr-defined]
        return collection

    def autobalance_evaluate(self, stage: str, batch: Any) -> None:
        """Update the metrics of ``stage`` with a batch and log them (epoch-level, stable names).

        Predictions use the loss's post-hoc ``prediction_shift`` (zero unless a search fitted one, see
        :meth:`ParametricCrossEntropy.shift_predictions`).
        """
        logits, targets, groups = self.autobalance_forward(batch)
        loss = self.autobalance_loss
        if isinstance(loss, ParametricCrossEntropy):
            logits = loss.shift_predictions(logits, groups)
        else:
            groups = groups if getattr(loss, "num_groups", 1) > 1 else None
        collection = self.autobalance_metrics(stage, num_classes=logits.shape[-1])
        collection.update(logits, targets, groups)
        attribute = f"autobalance_{stage}_metrics"
        for key, metric in collection.items(keep_base=True):
            # naming the attribute lets Lightning find metrics created after it indexed the module's metrics (the
            # user's own torchmetrics logged first)
            self.log(  # type: ignore[attr-defined]
                f"{stage}/{key}", metric, on_step=False, on_epoch=True, prog_bar=stage == "val",
                metric_attribute=f"{attribute}.{key}",
            )  # fmt: skip

    def validation_step(self, batch: Any, batch_idx: int, *args: Any, **kwargs: Any) -> Any:
        """Log the validation metrics (see :meth:`autobalance_evaluate`), unless a class after the mixin has its own.

        In ``class Mine(AutoBalanceMixin, TheirModel)`` the ``validation_step`` of ``TheirModel`` runs instead.
        """
        if _defined_after_mixin(type(self), "validation_step"):
            return super().validation_step(batch, batch_idx, *args, **kwargs)  # type: ignore[misc]
        self.autobalance_evaluate("val", batch)
        return None

    def test_step(self, batch: Any, batch_idx: int, *args: Any, **kwargs: Any) -> Any:
        """Log the test metrics (see :meth:`autobalance_evaluate`), unless a class after the mixin has its own."""
        if _defined_after_mixin(type(self), "test_step"):
            return super().test_step(batch, batch_idx, *args, **kwargs)  # type: ignore[misc]
        self.autobalance_evaluate("test", batch)
        return None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the loss in the module's checkpoints (it lives outside the module tree, so outside its state dict).

        A model retrained with a learned loss, or with a post-hoc prediction shift, predicts with it again after
        ``load_from_checkpoint``; :func:`~lightning_autobalance.load_loss` also reads it from such a checkpoint.
        """
        super().on_save_checkpoint(checkpoint)  # type: ignore[misc]
        loss = self.__dict__.get(_LOSS_ATTRIBUTE)
        if isinstance(loss, ParametricCrossEntropy):
            checkpoint[CHECKPOINT_KEY] = loss_to_dict(loss)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Install the checkpoint's loss, frozen, unless a loss is already installed (e.g. by the callback)."""
        super().on_load_checkpoint(checkpoint)  # type: ignore[misc]
        data = checkpoint.get(CHECKPOINT_KEY)
        if data is not None and not self.has_autobalance_loss:
            self.autobalance_loss = loss_from_dict(data, "the checkpoint's autobalance_loss")

    def on_train_epoch_start(self) -> None:
        """Tell an epoch-scheduled loss (e.g. LDAM with deferred re-weighting) which epoch starts."""
        loss = self.__dict__.get(_LOSS_ATTRIBUTE)
        if isinstance(loss, EpochScheduled):
            loss.set_epoch(self.current_epoch)  # type: ignore[attr-defined]


def _defined_after_mixin(cls: type, name: str) -> bool:
    """Whether a class between :class:`AutoBalanceMixin` and ``LightningModule`` in ``cls.__mro__`` defines ``name``."""
    mro = cls.__mro__
    for base in mro[mro.index(AutoBalanceMixin) + 1 :]:
        if base is pl.LightningModule:
            return False
        if name in base.__dict__:
            return True
    return False
