"""What an AutoBalance search checks before it trains: the module, the strategy, the data and the schedule.

Each check raises the error :class:`~lightning_autobalance.AutoBalance` raises at ``setup`` / ``on_fit_start``, with
what to change, so that a search that cannot learn anything fails before the first weight step.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from torch._dynamo import OptimizedModule  # what torch.compile(module) returns (Lightning imports it so too)

from lightning_autobalance.data.split import HeldOutSplit
from lightning_autobalance.mixin import AutoBalanceMixin
from lightning_autobalance.objectives import requires_groups

__all__ = ["check_compiled", "check_module", "check_schedule", "check_search_data", "check_strategy"]


def check_module(pl_module: pl.LightningModule) -> None:
    """Refuse a module without :class:`AutoBalanceMixin` (the search installs its loss through the mixin).

    Example:
        >>> check_module(pl.LightningModule())
        Traceback (most recent call last):
        ...
        TypeError: AutoBalance needs a LightningModule with AutoBalanceMixin, got LightningModule: declare ...
    """
    if not isinstance(pl_module, AutoBalanceMixin):
        raise TypeError(
            f"AutoBalance needs a LightningModule with AutoBalanceMixin, got {type(pl_module).__name__}: declare "
            f"`class {type(pl_module).__name__}(AutoBalanceMixin, LightningModule)` and compute the training "
            "loss with `self.autobalance_loss(logits, y)`."
        )


def check_strategy(trainer: Any) -> None:
    """Refuse a strategy other than single-device or DDP (the hyper-step's collectives assume one of them)."""
    strategy = trainer.strategy
    supported = (
        isinstance(strategy, (SingleDeviceStrategy, DDPStrategy)) and "deepspeed" not in type(strategy).__name__.lower()
    )
    if not supported:
        raise ValueError(
            f"AutoBalance supports single-device training and the DDP strategies (ddp, ddp_spawn, "
            f"ddp_find_unused_parameters_*), not {type(strategy).__name__}: use `Trainer(strategy='ddp')`."
        )


def check_search_data(datamodule: object, objective: object, posthoc: bool) -> HeldOutSplit:
    """``datamodule`` if it is a set-up :class:`HeldOutSplit` whose held-out part the ``objective`` can see.

    Every class, and every group for a group objective, must have held-out samples; a group objective needs group
    labels and ``posthoc`` needs data without groups.
    """
    if not isinstance(datamodule, HeldOutSplit):
        raise TypeError(
            "AutoBalance tunes the loss on a held-out split of the training data: pass the datamodule wrapped as "
            "`trainer.fit(model, datamodule=HeldOutSplit(datamodule, fraction=0.2))`"
            f" (got {type(datamodule).__name__})."
        )
    if requires_groups(objective) and datamodule.num_groups == 1:
        raise ValueError(
            f"The objective {type(objective).__name__} needs group labels, but the training data has none: "
            "return (x, y, g) batches (or a data set with a `groups` attribute), or use objective='balanced'."
        )
    if requires_groups(objective):
        missing = torch.nonzero(datamodule.heldout_group_class_counts.sum(1) == 0).flatten().tolist()
        if missing:
            raise ValueError(
                f"Groups {missing} have no held-out sample, so {type(objective).__name__} cannot see them: "
                f"group labels must be 0..{datamodule.num_groups - 1} with every group present (renumber them), "
                "or add samples of these groups."
            )
    if posthoc and datamodule.num_groups > 1:
        raise ValueError(
            f"posthoc=True fits one logit adjustment for the balanced error, but the data has "
            f"{datamodule.num_groups} groups: use posthoc=False with group objectives."
        )
    absent = torch.nonzero(datamodule.heldout_class_counts == 0).flatten().tolist()
    if absent:
        raise ValueError(
            f"Classes {absent} have no held-out sample, so the held-out objective cannot see them: add samples "
            "of these classes, raise the HeldOutSplit fraction, or set num_classes to the classes present."
        )
    return datamodule


def check_schedule(max_epochs: int | None, warmup_epochs: int) -> None:
    """Refuse a fit that ends before the first hyper-step (the 'learned' loss would be the initial one).

    Example:
        >>> check_schedule(max_epochs=20, warmup_epochs=10)
        >>> check_schedule(max_epochs=5, warmup_epochs=10)
        Traceback (most recent call last):
        ...
        ValueError: AutoBalance(warmup_epochs=10) keeps α frozen for the first 10 epochs, but the Trainer stops ...
    """
    if max_epochs is not None and max_epochs >= 0 and max_epochs <= warmup_epochs:
        raise ValueError(
            f"AutoBalance(warmup_epochs={warmup_epochs}) keeps α frozen for the first {warmup_epochs} "
            f"epochs, but the Trainer stops after max_epochs={max_epochs}: no hyper-step would run and the "
            f"exported loss would be the initial one. Lower warmup_epochs (e.g. AutoBalance(warmup_epochs="
            f"{max(0, max_epochs // 3)})) or raise the Trainer's max_epochs above {warmup_epochs}."
        )


def check_compiled(pl_module: pl.LightningModule, engine: object, all_weights: bool) -> None:
    """Refuse ``torch.compile``-d submodules when the hyper-step ``engine`` differentiates all weights.

    Such an engine calls the network with substituted weights, which a compiled module does not support.
    """
    compiled = [name for name, module in pl_module.named_modules() if isinstance(module, OptimizedModule)]
    if all_weights and compiled:
        raise ValueError(
            f"AutoBalance: {type(pl_module).__name__} has torch.compile-d submodules ({', '.join(compiled)}), but "
            f"the hyper-step engine {type(engine).__name__} differentiates the whole network with substituted "
            "weights, which compiled modules do not support. Define `autobalance_features(x)` and "
            "`autobalance_head()` on the module so the default last-layer engine runs (it works with compiled "
            "networks), or do not compile during the search (e.g. model.compile=false) and compile for retraining."
        )
