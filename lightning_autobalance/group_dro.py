r"""Group DRO (Sagawa et al. 2020) as a baseline: :class:`GroupDROLoss` and the :class:`GroupDRO` callback.

Online group distributionally robust optimisation keeps a distribution ``q`` over the DRO groups and, at every
training step, moves it towards the groups with the largest loss by an exponentiated-gradient step::

    a_g = ℓ_g + C / √n_g                    (ℓ_g: mean loss of group g in the batch; n_g: its training size)
    q_g ← q_g · exp(η · a_g) / Σ_h q_h · exp(η · a_h)
    loss = Σ_g q_g ℓ_g                      (q held fixed: no gradient flows through the update)

with step size η (``step_size``) and the "group adjustment" C (``adjustment``; 0 in plain Group DRO). As in the
reference code (``kohpangwei/group_DRO``, ``loss.py``, ``LossComputer.compute_robust_loss``) ``q`` is updated with
the current batch *before* the loss is formed from it, and a group absent from the batch has ℓ_g = 0 there, so its
unnormalised weight keeps its value (only the renormalisation moves it). One deliberate difference: the reference
also adds ``C / √n_g`` to an absent group's (zero) loss, which raises groups it did not see; here an absent group's
exponent is 0 with or without the adjustment. (The reference's returned loss also includes the constant adjustment,
through an in-place addition; this loss does not — the gradient is the same.)

The DRO group is the (group, class) cell by default (``over="class_group"``, G·K DRO groups, the Waterbirds
convention where a group is (label, attribute)); ``over="group"`` uses the data's G groups. Without group labels
(G = 1) the class-group cells are the classes (class DRO).

**Under DDP** every process sees a shard of the global batch. The per-group loss *sums* and *counts* of the shard
(detached) are all-reduced in one collective, so every process updates ``q`` from the statistics of the global
batch: ``q`` is identical on every rank and equal to a single process's on the same global batches. The loss of
rank r is ``W · Σ_g q_g S_g^r / n_g`` (W processes, S_g^r the differentiable sum of the shard's losses in group g, n_g
the *global* count): DDP averages gradients over the W processes, so the applied gradient is
``Σ_g q_g ∇(Σ_r S_g^r) / n_g``, the single-process gradient on the global batch — also when shards are uneven or a
group appears on one rank only. Its *value* is replaced (without changing the gradient) by the global loss
``Σ_g q_g S_g / n_g``, so every rank reports the single-process loss. This assumes the gradient is averaged over the
default process group, as DDP does; pass ``sync=False`` to keep every process on its own batch.

This module's loss is pure PyTorch; the callback is the Lightning side.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import lightning.pytorch as pl
import torch
import torch.distributed as dist
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from lightning_autobalance._checks import check_integer
from lightning_autobalance.callback import AutoBalance
from lightning_autobalance.data.labels import cell_index, dataset_labels, group_class_counts
from lightning_autobalance.data.split import HeldOutSplit
from lightning_autobalance.losses import ParametricCrossEntropy, as_counts, as_group_counts, check_inputs, plain_data
from lightning_autobalance.mixin import AutoBalanceMixin, PlainCrossEntropy

__all__ = ["GroupDRO", "GroupDROLoss"]

Over = Literal["class_group", "group"]
OVER: tuple[str, ...] = ("class_group", "group")
STATE_VERSION = 1
_STATE = ("q", "group_loss", "num_updates")  # the buffers a checkpoint restores
_FLOAT64 = ("q", "group_loss", "adjust")  # kept in float64 whatever dtype the model is cast to


def _check_options(step_size: Any, adjustment: Any, over: Any) -> None:
    if isinstance(step_size, bool) or not (
        isinstance(step_size, (int, float)) and math.isfinite(step_size) and step_size >= 0
    ):
        raise ValueError(
            f"step_size must be a finite number ≥ 0 (η of the exponentiated-gradient update of q; the reference uses "
            f"0.01, 0 keeps q uniform), got {step_size!r}."
        )
    if isinstance(adjustment, bool) or not (
        isinstance(adjustment, (int, float)) and math.isfinite(adjustment) and adjustment >= 0
    ):
        raise ValueError(
            f"adjustment must be a finite number ≥ 0 (C of the group adjustment C/√n_g; 0 is plain Group DRO, the "
            f"paper tunes C in [0, 5]), got {adjustment!r}."
        )
    if over not in OVER:
        raise ValueError(
            f"over must be 'class_group' (a DRO group per (group, class) cell, the default) or 'group' (the data's "
            f"groups), got {over!r}."
        )


def _check_state_version(state: dict[str, Any]) -> None:
    """A checkpoint's GroupDRO state is of the version this package reads, or a ``ValueError`` naming both."""
    if state.get("version") != STATE_VERSION:
        raise ValueError(
            f"This checkpoint holds GroupDRO state version {state.get('version')!r}, this version reads "
            f"{STATE_VERSION}: resume with the lightning-autobalance version that wrote it."
        )


def _all_reduce_sum(tensor: Tensor) -> int:
    """Sum ``tensor`` in place over the default process group; return the world size (1 without one)."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return dist.get_world_size()


class GroupDROLoss(nn.Module):
    r"""Group DRO loss: ``Σ_g q_g ℓ_g`` with ``q`` updated online by exponentiated gradient (Sagawa et al. 2020).

    Call signature ``loss(logits, targets, groups=None) -> scalar`` (cross-entropy per sample), usable as
    ``model.autobalance_loss``. See the module docstring for the update, the group adjustment and DDP. In training
    mode every call updates ``q`` with the batch, then returns the loss with the new ``q`` (held fixed for the
    gradient); in eval mode ``q`` is left alone and no collective runs.

    Args:
        num_classes: number of classes K ≥ 2.
        num_groups: number of data groups G ≥ 1 (1 without group labels).
        step_size: η ≥ 0 (the reference's ``robust_step_size``, default 0.01).
        adjustment: C ≥ 0 of the group adjustment ``C/√n_g`` (the reference's ``generalization_adjustment``).
        group_counts: training samples per (group, class) cell, shape (G, K); needed when ``adjustment > 0`` (every
            DRO group then needs a training sample).
        over: ``"class_group"`` (DRO groups are the G·K cells, ``g * K + y``) or ``"group"`` (the G groups).
        sync: all-reduce the batch statistics across processes when ``torch.distributed`` is initialised.

    Attributes:
        q: the DRO group weights, shape (D,), float64, uniform at the start; D = G·K or G.
        group_loss: the (global) mean loss of every DRO group in the last training batch, NaN where absent.
        num_updates: how many training batches updated ``q``.

    Example:
        >>> loss_fn = GroupDROLoss(num_classes=2, num_groups=1, step_size=1.0)  # one group: the DRO groups are classes
        >>> logits = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 2.0]])
        >>> targets = torch.tensor([0, 0, 1, 1])  # class 0 loss log 2 ≈ 0.693, class 1 losses 0.693 and 0.127
        >>> loss = loss_fn(logits, targets)
        >>> [round(v, 4) for v in loss_fn.q.tolist()]  # q ∝ (½·e^0.693, ½·e^0.410)
        [0.5703, 0.4297]
        >>> round(float(loss), 4)  # 0.5703 · 0.693 + 0.4297 · 0.410
        0.5715
        >>> loss_fn.group_names()
        ['g0c0', 'g0c1']
    """

    q: Tensor
    group_loss: Tensor
    num_updates: Tensor
    adjust: Tensor

    def __init__(
        self,
        num_classes: int,
        num_groups: int = 1,
        *,
        step_size: float = 0.01,
        adjustment: float = 0.0,
        group_counts: Sequence[Sequence[float]] | Tensor | None = None,
        over: Over = "class_group",
        sync: bool = True,
    ) -> None:
        super().__init__()
        self.num_classes = check_integer("num_classes", num_classes, 2)
        self.num_groups = check_integer("num_groups", num_groups, 1)
        _check_options(step_size, adjustment, over)
        if over == "group" and num_groups == 1:
            raise ValueError(
                "over='group' with num_groups=1 has a single DRO group (plain ERM): pass the data's num_groups, or "
                "use over='class_group' (DRO over the classes when there are no groups)."
            )
        self.step_size, self.adjustment, self.over, self.sync = float(step_size), float(adjustment), over, bool(sync)
        self.num_dro_groups = num_classes * num_groups if over == "class_group" else num_groups
        counts = None
        if group_counts is not None:
            counts = as_group_counts(plain_data(group_counts))  # type: ignore[arg-type]
            if tuple(counts.shape) != (num_groups, num_classes):
                raise ValueError(
                    f"group_counts must have shape (num_groups, num_classes) = ({num_groups}, {num_classes}), got "
                    f"{tuple(counts.shape)}: pass the training samples per (group, class) cell."
                )
        adjust = torch.zeros(self.num_dro_groups, dtype=torch.float64)
        if self.adjustment > 0:
            if counts is None:
                raise ValueError(
                    f"adjustment={adjustment} adds C/√n_g with n_g the training size of each DRO group: pass "
                    "group_counts, the (num_groups, num_classes) training counts (or use adjustment=0)."
                )
            sizes = counts.reshape(-1) if over == "class_group" else counts.sum(1)
            empty = torch.nonzero(sizes == 0).flatten().tolist()
            if empty:
                names = [self.group_names()[i] for i in empty]
                raise ValueError(
                    f"group_counts has no training sample in the DRO groups {names}, where C/√n_g is infinite: use "
                    "adjustment=0, over='group', or merge the empty cells."
                )
            adjust = self.adjustment / sizes.sqrt()
        self.register_buffer("group_counts", None if counts is None else counts.to(torch.get_default_dtype()))
        self.register_buffer("adjust", adjust)
        self.register_buffer("q", torch.full((self.num_dro_groups,), 1.0 / self.num_dro_groups, dtype=torch.float64))
        self.register_buffer("group_loss", torch.full((self.num_dro_groups,), math.nan, dtype=torch.float64))
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    @classmethod
    def from_counts(
        cls,
        class_counts: Sequence[float] | Tensor | None = None,
        group_counts: Sequence[Sequence[float]] | Tensor | None = None,
        *,
        name: str = "group_dro",
        **options: Any,
    ) -> GroupDROLoss:
        """Build from the training counts: the factory of ``conf/loss/group_dro.yaml`` (a ``_partial_``).

        Args:
            class_counts: training samples per class (K,); used when ``group_counts`` is ``None`` (one group).
            group_counts: training samples per (group, class) cell (G, K); gives K and G.
            name: ``"group_dro"``, the label of the CLI's result table (as ``make_baseline``'s ``name``).
            **options: keyword arguments of :class:`GroupDROLoss` (``step_size``, ``adjustment``, ``over``,
                ``sync``).

        Example:
            >>> loss = GroupDROLoss.from_counts(class_counts=[30, 10], group_counts=[[25, 2], [5, 8]], adjustment=1.0)
            >>> loss.num_classes, loss.num_groups, [round(v, 3) for v in loss.adjust.tolist()]
            (2, 2, [0.2, 0.707, 0.447, 0.354])
        """
        if name != "group_dro":
            raise ValueError(f"GroupDROLoss.from_counts builds the 'group_dro' loss, got name={name!r}.")
        options = {key: plain_data(value) for key, value in options.items()}
        counts = None if class_counts is None else as_counts(plain_data(class_counts))  # type: ignore[arg-type]
        if group_counts is not None:
            cells = as_group_counts(plain_data(group_counts))  # type: ignore[arg-type]
            totals = cells.sum(0)
            if counts is not None and (counts.shape != totals.shape or not torch.allclose(counts, totals, rtol=1e-9)):
                raise ValueError(
                    f"class_counts {counts.tolist()} differ from the class totals of group_counts {totals.tolist()}: "
                    "pass counts of the same data, or only group_counts."
                )
        elif counts is not None:
            cells = counts[None]
        else:
            raise ValueError("GroupDROLoss.from_counts needs class_counts (K,) or group_counts (G, K).")
        return cls(cells.shape[1], cells.shape[0], group_counts=cells, **options)

    # ------------------------------------------------------------------ groups
    def group_names(self) -> list[str]:
        """Stable names of the DRO groups: ``g{g}c{k}`` (class-group cells) or ``g{g}``."""
        if self.over == "class_group":
            return [f"g{g}c{k}" for g in range(self.num_groups) for k in range(self.num_classes)]
        return [f"g{g}" for g in range(self.num_groups)]

    def dro_groups(self, targets: Tensor, groups: Tensor | None) -> Tensor:
        """The DRO group of every sample: ``g * K + y`` (class-group cells) or ``g``."""
        if self.over == "class_group":
            return cell_index(targets, groups, self.num_classes)
        return torch.zeros_like(targets) if groups is None else groups.to(targets.device)

    def worst_group_loss(self) -> float:
        """The largest mean loss among the DRO groups present in the last training batch (NaN before any)."""
        present = self.group_loss[~torch.isnan(self.group_loss)]
        return float(present.max()) if present.numel() else math.nan

    # ------------------------------------------------------------------ update
    @torch.no_grad()
    def update(self, sums: Tensor, counts: Tensor) -> None:
        """One exponentiated-gradient step of ``q`` from per-group loss sums and sample counts (D,) of a batch.

        Groups with no sample keep their unnormalised weight (exponent 0); then ``q`` is renormalised.
        """
        present = counts > 0
        means = sums.double() / counts.double().clamp(min=1)
        exponent = torch.where(present, means + self.adjust, torch.zeros_like(means))
        # q_g·exp(η a_g) / Σ_h q_h·exp(η a_h), computed as a softmax of the logs: no overflow for large η·a
        self.q.copy_(torch.softmax(self.q.log() + self.step_size * exponent, dim=0))
        self.group_loss.copy_(torch.where(present, means, torch.full_like(means, math.nan)))
        self.num_updates += 1

    def forward(self, logits: Tensor, targets: Tensor, groups: Tensor | None = None) -> Tensor:
        """Update ``q`` with the batch (training mode only), then return ``Σ_g q_g ℓ_g``.

        Args:
            logits: model outputs, shape (N, K).
            targets: class labels in [0, K), shape (N,).
            groups: group labels in [0, G), shape (N,); may be ``None`` when G = 1.

        Returns:
            The scalar loss (on each DDP rank the global loss, with a gradient DDP's averaging makes exact).
        """
        check_inputs(logits, targets, groups, self.num_classes, self.num_groups)
        cells = self.dro_groups(targets, groups)
        per_sample = F.cross_entropy(logits, targets, reduction="none")
        sums = per_sample.new_zeros(self.num_dro_groups).index_add(0, cells, per_sample)
        counts = torch.bincount(cells, minlength=self.num_dro_groups)
        if not self.training:  # evaluation: the batch's own group means, q unchanged, no collective
            return (self._q_copy(sums.dtype) * sums / counts.clamp(min=1).to(sums.dtype)).sum()
        stats = torch.stack([sums.detach().double(), counts.double()])
        world = _all_reduce_sum(stats) if self.sync else 1
        total_sums, total_counts = stats
        self.update(total_sums, total_counts)
        denominators = total_counts.clamp(min=1)
        # rank r: W · Σ_g q_g S_g^r / n_g — DDP's mean over the W ranks is the gradient of Σ_g q_g S_g / n_g
        local = world * (self._q_copy(sums.dtype) * sums / denominators.to(sums.dtype)).sum()
        if world == 1:
            return local
        global_value = (self.q * total_sums / denominators).sum().to(local.dtype)
        return local + (global_value - local).detach()  # the global loss's value, the local gradient

    def _q_copy(self, dtype: torch.dtype) -> Tensor:
        """``q`` as a constant of the graph: a copy, since later updates change ``q`` in place before backward."""
        return self.q.to(dtype, copy=True)

    def _apply(self, fn: Any, recurse: bool = True) -> GroupDROLoss:
        super()._apply(fn, recurse)
        for name in _FLOAT64:  # the update multiplies many exponentials: a half-precision q would drift
            self._buffers[name] = self._buffers[name].to(torch.float64)  # type: ignore[union-attr]
        return self

    def extra_repr(self) -> str:
        """Summary shown by ``print(module)``."""
        return (
            f"num_classes={self.num_classes}, num_groups={self.num_groups}, over={self.over!r}, "
            f"step_size={self.step_size}, adjustment={self.adjustment}"
        )


class GroupDRO(Callback):
    """Train an :class:`AutoBalanceMixin` module with Group DRO: install a :class:`GroupDROLoss`, log and save ``q``.

    At ``setup("fit")`` the callback builds the loss from the training data's (group, class) counts — those of a
    :class:`HeldOutSplit`, otherwise counted from ``trainer.datamodule.train_dataloader().dataset`` with
    :func:`~lightning_autobalance.data.labels.dataset_labels` — and assigns it to ``model.autobalance_loss``. A
    :class:`GroupDROLoss` you assigned yourself is kept (the callback then only logs and checkpoints it). After every
    training batch it logs ``group_dro/q/<group>`` (``g{g}c{k}`` or ``g{g}``) and ``group_dro/worst_group_loss``;
    ``q`` and its counters are saved in checkpoints and restored, so a resumed fit continues exactly.

    ``q`` is updated once per training forward (per micro-batch under gradient accumulation). Under DDP ``q`` is the
    same on every rank (see :class:`GroupDROLoss`).

    Args:
        step_size: η ≥ 0 of the exponentiated-gradient update (0.01 in the reference code).
        adjustment: C ≥ 0 of the group adjustment ``C/√n_g``.
        over: ``"class_group"`` (default) or ``"group"``.
        num_classes: number of classes (default: from the data, largest label + 1).
        num_groups: number of groups (default: from the data, largest group label + 1, or 1 without groups).

    Example:
        >>> GroupDRO(step_size=0.01, adjustment=1.0)
        GroupDRO(step_size=0.01, adjustment=1.0, over='class_group')
    """

    def __init__(
        self,
        step_size: float = 0.01,
        adjustment: float = 0.0,
        *,
        over: Over = "class_group",
        num_classes: int | None = None,
        num_groups: int | None = None,
    ) -> None:
        _check_options(step_size, adjustment, over)
        if num_classes is not None:
            check_integer("num_classes", num_classes, 2)
        if num_groups is not None:
            check_integer("num_groups", num_groups, 1)
        self.step_size, self.adjustment, self.over = float(step_size), float(adjustment), over
        self.num_classes, self.num_groups = num_classes, num_groups
        self.loss: GroupDROLoss | None = None
        self._pending_state: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"GroupDRO(step_size={self.step_size}, adjustment={self.adjustment}, over={self.over!r})"

    # ------------------------------------------------------------------ set-up
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Install the Group DRO loss (built from the training counts) on the module."""
        if stage != "fit":
            return
        if not isinstance(pl_module, AutoBalanceMixin):
            raise TypeError(
                f"GroupDRO needs a LightningModule with AutoBalanceMixin, got {type(pl_module).__name__}: declare "
                f"`class {type(pl_module).__name__}(AutoBalanceMixin, LightningModule)` and compute the training "
                "loss with `self.autobalance_loss(logits, y, groups)`."
            )
        if any(isinstance(c, AutoBalance) for c in trainer.callbacks):  # type: ignore[attr-defined]
            raise ValueError(
                "GroupDRO and AutoBalance both install the training loss: pass only one of them to the Trainer."
            )
        current = pl_module.autobalance_loss if pl_module.has_autobalance_loss else None
        if isinstance(current, GroupDROLoss):
            self.loss = current  # the user's own Group DRO loss wins
            mine = (self.step_size, self.adjustment, self.over)
            if (current.step_size, current.adjustment, current.over) != mine:
                rank_zero_warn(
                    f"GroupDRO keeps the GroupDROLoss already on {type(pl_module).__name__} (step_size="
                    f"{current.step_size}, adjustment={current.adjustment}, over={current.over!r}); the callback's "
                    f"step_size={self.step_size}, adjustment={self.adjustment}, over={self.over!r} are not used.",
                    category=UserWarning,
                )
        else:
            if current is not None and not _is_plain(current):
                rank_zero_warn(
                    f"GroupDRO replaces the loss already on {type(pl_module).__name__} ({type(current).__name__}) "
                    "with a GroupDROLoss.",
                    category=UserWarning,
                )
            counts = self._training_counts(trainer)
            pl_module.autobalance_loss = GroupDROLoss(
                counts.shape[1], counts.shape[0], step_size=self.step_size, adjustment=self.adjustment,
                group_counts=counts, over=self.over,
            )  # fmt: skip
            self.loss = pl_module.autobalance_loss  # type: ignore[assignment]  # on the module's device
        if self._pending_state is not None:
            self._apply_state(self._pending_state)
            self._pending_state = None

    def _training_counts(self, trainer: pl.Trainer) -> Tensor:
        """The (G, K) training counts of the fit's data."""
        datamodule = trainer.datamodule
        if isinstance(datamodule, HeldOutSplit):
            counts = datamodule.group_class_counts
            self._check_sizes(counts.shape[0], counts.shape[1])
            return counts
        if datamodule is None:
            raise TypeError(
                "GroupDRO counts the training (group, class) cells of trainer.datamodule, but the fit has no "
                "datamodule: pass `trainer.fit(model, datamodule=...)`, or assign `model.autobalance_loss = "
                "GroupDROLoss(K, G, group_counts=...)` yourself (GroupDRO then logs and checkpoints it)."
            )
        targets, groups = dataset_labels(datamodule.train_dataloader().dataset)
        num_classes = self.num_classes or (int(targets.max()) + 1 if targets.numel() else 0)
        num_groups = self.num_groups or (1 if groups is None or not groups.numel() else int(groups.max()) + 1)
        if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= num_classes):
            raise ValueError(
                f"GroupDRO: the training labels lie in [{int(targets.min())}, {int(targets.max())}] but "
                f"num_classes={num_classes}: remap the labels or pass GroupDRO(num_classes=...)."
            )
        if groups is not None and groups.numel() and (int(groups.min()) < 0 or int(groups.max()) >= num_groups):
            raise ValueError(
                f"GroupDRO: the training group labels lie in [{int(groups.min())}, {int(groups.max())}] but "
                f"num_groups={num_groups}: renumber the groups 0..G-1 or pass GroupDRO(num_groups=...)."
            )
        check_integer("num_classes (from the training labels)", num_classes, 2)
        return group_class_counts(targets, groups, num_groups, num_classes)

    def _check_sizes(self, num_groups: int, num_classes: int) -> None:
        for name, given, found in (("num_classes", self.num_classes, num_classes),
                                   ("num_groups", self.num_groups, num_groups)):  # fmt: skip
            if given is not None and given != found:
                raise ValueError(f"GroupDRO({name}={given}) but the HeldOutSplit has {found}: drop the argument.")

    # ------------------------------------------------------------------ logging
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Log ``q`` per DRO group and the worst group loss of the batch (identical on every rank)."""
        if self.loss is None or int(self.loss.num_updates) == 0:
            return
        names, values = self.loss.group_names(), self.loss.q.tolist()
        metrics = {f"group_dro/q/{name}": float(v) for name, v in zip(names, values, strict=True)}
        metrics["group_dro/worst_group_loss"] = self.loss.worst_group_loss()
        pl_module.log_dict(metrics, on_step=True, on_epoch=False)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """``q``, the last group losses and the update count (saved in Lightning checkpoints)."""
        if self.loss is None:
            return self._pending_state or {}
        buffers = self.loss.state_dict()
        return {
            "version": STATE_VERSION,
            "over": self.loss.over,
            "groups": self.loss.group_names(),
            **{name: buffers[name].detach().cpu().clone() for name in _STATE},
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved (applied at ``setup`` if the loss does not exist yet)."""
        if not state_dict:
            return
        _check_state_version(state_dict)
        if self.loss is None:
            self._pending_state = state_dict
        else:
            self._apply_state(state_dict)

    def _apply_state(self, state: dict[str, Any]) -> None:
        assert self.loss is not None
        if state["groups"] != self.loss.group_names():
            raise ValueError(
                f"The checkpoint's Group DRO groups {state['groups']} differ from this run's "
                f"{self.loss.group_names()}: resume with the same data, number of classes and groups, and `over`."
            )
        for name in _STATE:
            getattr(self.loss, name).copy_(state[name])


def _is_plain(loss: nn.Module) -> bool:
    return isinstance(loss, PlainCrossEntropy) or (
        isinstance(loss, ParametricCrossEntropy) and loss.is_plain_cross_entropy
    )
