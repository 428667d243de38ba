"""JTT, "Just Train Twice" (Liu et al. 2021), as a baseline: :func:`error_set` and the two-stage driver :func:`jtt`.

1. **Stage 1** trains an ERM model for ``T`` epochs (``stage1_epochs``; deliberately short: the paper's T is a few
   epochs, chosen with λ_up on held-out worst-group accuracy).
2. The **error set** is the set of training samples the stage-1 model misclassifies (evaluation mode, arg-max).
3. **Stage 2** trains a *fresh* model on the training set with the error set up-sampled λ_up times (``upweight``):
   each error sample appears λ_up times per epoch, the others once — the reference code duplicates them
   (:class:`~lightning_autobalance.data.resample.Upsample`), which equals the paper's objective
   ``λ_up Σ_{i ∈ E} ℓ_i + Σ_{i ∉ E} ℓ_i`` in expectation over the epoch.

No group labels are used for training; they are only needed to choose ``T`` and λ_up on held-out data (the paper's
setting) — loop :func:`jtt` over a grid and keep the pair with the best held-out worst-group accuracy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import move_data_to_device, rank_zero_warn
from torch import Tensor, nn
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler

from lightning_autobalance._checks import check_integer
from lightning_autobalance.batches import unpack_batch
from lightning_autobalance.data.labels import dataset_labels, group_class_counts, label_space
from lightning_autobalance.data.resample import Upsample

__all__ = ["JTTReport", "error_set", "jtt"]


def _check_unshuffled(loader: DataLoader) -> None:
    """Refuse a loader that does not yield every sample of its data set once, in the data set's order."""
    if not isinstance(loader, DataLoader):
        raise TypeError(f"error_set needs a torch DataLoader over the training set, got {type(loader).__name__}.")
    batches = loader.batch_sampler
    in_order = (
        isinstance(loader.sampler, SequentialSampler)
        and type(batches) is BatchSampler
        and batches.sampler is loader.sampler
        and not batches.drop_last
    )
    if not in_order:
        raise ValueError(
            f"error_set reads the misclassified samples' indices off the loader's order, but this loader uses "
            f"{type(loader.sampler).__name__}"
            f"{' with drop_last=True' if getattr(batches, 'drop_last', False) else ''}: pass an unshuffled loader "
            "over the whole training set, e.g. DataLoader(train_dataset, batch_size=256, shuffle=False) (no sampler, "
            "no batch_sampler, drop_last=False)."
        )


def _logits_and_targets(model: nn.Module, batch: Any, device: torch.device | None) -> tuple[Tensor, Tensor]:
    if device is not None:
        batch = move_data_to_device(batch, device)
    if hasattr(model, "autobalance_forward"):
        logits, targets, _ = model.autobalance_forward(batch)
        return logits, targets
    x, targets, _ = unpack_batch(
        batch,
        user="error_set",
        advice="give the model an autobalance_forward(batch) -> (logits, targets, groups) (AutoBalanceMixin has one).",
    )
    return model(x), targets


@torch.no_grad()
def error_set(model: nn.Module, loader: DataLoader) -> Tensor:
    """Indices of the samples ``model`` misclassifies, in the order of ``loader``'s data set (JTT's error set).

    The model is evaluated in evaluation mode (its mode is restored afterwards) and predicts the arg-max of its
    logits. Batches are ``(x, y)`` or ``(x, y, g)``, or whatever the model's ``autobalance_forward`` understands.

    Args:
        model: a classifier returning (B, K) logits (any ``nn.Module``, e.g. the stage-1 LightningModule).
        loader: an *unshuffled* DataLoader over the whole training set (``shuffle=False``, no custom sampler,
            ``drop_last=False``); the returned indices are positions in ``loader.dataset``.

    Returns:
        Sorted int64 tensor of the misclassified samples' positions.

    Raises:
        ValueError: a shuffled, sampled, batch-sampled or ``drop_last`` loader, or one that yields a different
            number of samples than its data set has.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> x, y = torch.tensor([[1.0], [-1.0], [2.0]]), torch.tensor([1, 0, 0])
        >>> model = nn.Linear(1, 2)
        >>> with torch.no_grad():
        ...     _ = model.weight.copy_(torch.tensor([[-1.0], [1.0]])), model.bias.zero_()
        >>> error_set(model, DataLoader(TensorDataset(x, y), batch_size=2)).tolist()
        [2]
    """
    _check_unshuffled(loader)
    device = next((p.device for p in model.parameters()), None)
    was_training = model.training
    model.eval()
    try:
        wrong = []
        for batch in loader:
            logits, targets = _logits_and_targets(model, batch, device)
            wrong.append((logits.argmax(-1) != targets).cpu())
    finally:
        model.train(was_training)
    mask = torch.cat(wrong) if wrong else torch.zeros(0, dtype=torch.bool)
    size = len(loader.dataset)  # type: ignore[arg-type]
    if mask.numel() != size:
        raise ValueError(
            f"The loader yielded {mask.numel()} predictions for a data set of {size} samples: error_set needs one "
            "prediction per sample (a DataLoader with shuffle=False and drop_last=False over the training set)."
        )
    return torch.nonzero(mask).flatten()


@dataclass
class JTTReport:
    """What :func:`jtt` did.

    Attributes:
        error_set: positions of the error set in the training data set (that of ``datamodule.train_dataloader()``).
        num_train: training samples of stage 1.
        stage1_epochs: T.
        upweight: λ_up.
        group_class_counts: (G, K) training samples per (group, class) cell (G = 1 without group labels).
        error_group_class_counts: (G, K) error-set samples per cell — which cells JTT up-samples.
        stage1_model: the ERM model of stage 1.
    """

    error_set: Tensor
    num_train: int
    stage1_epochs: int
    upweight: int
    group_class_counts: Tensor
    error_group_class_counts: Tensor
    stage1_model: pl.LightningModule

    @property
    def error_rate(self) -> float:
        """Share of the training set in the error set."""
        return self.error_set.numel() / max(self.num_train, 1)


def jtt(
    make_model: Callable[[], pl.LightningModule],
    datamodule: pl.LightningDataModule,
    *,
    stage1_epochs: int,
    upweight: int,
    trainer_factory: Callable[[int], pl.Trainer],
    epochs: int,
    seed: int | None = None,
) -> tuple[pl.LightningModule, JTTReport]:
    """Just Train Twice: ERM for ``stage1_epochs``, then a fresh model with the ERM errors up-sampled ``upweight``×.

    Args:
        make_model: builds a fresh, untrained model; called once per stage (seed inside it, or call
            ``seed_everything`` before :func:`jtt`, for reproducible initialisations).
        datamodule: the training data; wrap it in a :class:`~lightning_autobalance.data.HeldOutSplit` to keep a
            held-out split for choosing ``stage1_epochs`` and ``upweight`` (both stages then train on its train part
            only). Its ``setup("fit")`` must rebuild the same training set each time it is called.
        stage1_epochs: T ≥ 1, the epochs of the ERM model that finds the error set.
        upweight: λ_up ≥ 1, the total number of copies of each error-set sample in stage 2 (the paper tunes it in
            roughly 5–100).
        trainer_factory: ``max_epochs -> Trainer``; called with ``stage1_epochs``, then with ``epochs``.
        epochs: the epochs of stage 2.
        seed: seed of stage 2's training order (None: follow ``seed_everything``).

    Returns:
        The stage-2 model and a :class:`JTTReport`.

    Under DDP every process computes the (same) error set from its identical stage-1 model on the whole training
    set; stage 2 is then sharded like any fit.

    Raises:
        ValueError: ``stage1_epochs``, ``upweight`` or ``epochs`` below 1, or a datamodule whose training set changed
            between the stages.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> from lightning_autobalance.mixin import AutoBalanceMixin
        >>> class Net(AutoBalanceMixin, pl.LightningModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.net = nn.Linear(2, 2)
        ...     def forward(self, x):
        ...         return self.net(x)
        ...     def training_step(self, batch, batch_idx):
        ...         return self.autobalance_step_loss(batch)
        ...     def configure_optimizers(self):
        ...         return torch.optim.SGD(self.parameters(), lr=0.1)
        >>> class Data(pl.LightningDataModule):
        ...     def train_dataloader(self):
        ...         x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
        ...         return DataLoader(TensorDataset(x, (x[:, 0] > 0).long()), batch_size=16)
        >>> def trainer(max_epochs):
        ...     return pl.Trainer(max_epochs=max_epochs, logger=False, enable_checkpointing=False,
        ...                       enable_progress_bar=False, enable_model_summary=False)
        >>> model, report = jtt(Net, Data(), stage1_epochs=1, upweight=5, trainer_factory=trainer, epochs=2)
        >>> report.num_train, report.upweight, report.error_group_class_counts.sum() == len(report.error_set)
        (64, 5, tensor(True))
    """
    for name, value in (("stage1_epochs", stage1_epochs), ("upweight", upweight), ("epochs", epochs)):
        check_integer(f"jtt: {name}", value, 1)
    stage1 = make_model()
    trainer_factory(stage1_epochs).fit(stage1, datamodule=datamodule)
    template = datamodule.train_dataloader()
    dataset = template.dataset
    ordered = DataLoader(
        dataset, batch_size=template.batch_size or 256, shuffle=False, num_workers=template.num_workers,
        collate_fn=template.collate_fn,
    )  # fmt: skip
    errors = error_set(stage1, ordered)
    targets, groups = dataset_labels(dataset)
    num_classes, num_groups = label_space(datamodule, targets, groups)
    counts = group_class_counts(targets, groups, num_groups, num_classes)
    error_counts = group_class_counts(targets[errors], None if groups is None else groups[errors], *counts.shape)
    report = JTTReport(errors, targets.numel(), stage1_epochs, upweight, counts, error_counts, stage1)
    if errors.numel() == 0:
        rank_zero_warn(
            f"JTT: the stage-1 model misclassifies no training sample after {stage1_epochs} epochs, so stage 2 is "
            "plain ERM: lower stage1_epochs (or regularise stage 1) so that it still errs on the minority groups.",
            category=UserWarning,
        )
    upsampled = Upsample(datamodule, errors, upweight, seed=seed)
    upsampled.setup("fit")  # Lightning calls it again (a no-op) at fit; here to check the data did not change
    trained = upsampled.train_dataset  # a Subset of the wrapped datamodule's training set, as it is now
    again, _ = dataset_labels(trained.dataset)  # type: ignore[attr-defined]
    if not torch.equal(again, targets):
        raise ValueError(
            f"jtt: the training set of {type(datamodule).__name__} changed between the stages (its setup('fit') "
            "rebuilt it differently), so the error set's indices no longer match: make setup idempotent or seeded."
        )
    stage2 = make_model()
    trainer_factory(epochs).fit(stage2, datamodule=upsampled)
    return stage2, report
