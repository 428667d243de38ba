"""Baseline losses for imbalanced classification that lie *outside* the AutoBalance family.

They have the call signature of :class:`~lightning_autobalance.losses.ParametricCrossEntropy`,
``loss(logits, targets, groups=None, reduction="mean") -> scalar``, so they drop into the same training code; both
ignore ``groups`` (they are class-level losses).

* :class:`LDAMLoss` — label-distribution-aware margin loss (Cao et al. 2019), optionally with deferred re-weighting
  (DRW);
* :class:`FocalLoss` — focal loss (Lin et al. 2017), optionally with per-class α weights.

:func:`make_baseline` builds them from a Hydra config (``conf/loss/ldam.yaml``, ``ldam_drw.yaml``, ``focal.yaml``).

This module is pure PyTorch (no Lightning).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_autobalance._checks import check_integer, is_integer
from lightning_autobalance.losses import as_counts, as_group_counts, check_inputs, plain_data, reduce_loss
from lightning_autobalance.losses import effective_number_weights as _effective_number_weights

__all__ = ["BASELINES", "ClassLevelLoss", "FocalLoss", "LDAMLoss", "make_baseline"]

BASELINES: tuple[str, ...] = ("ldam", "focal")
Reduction = Literal["mean", "sum", "none"]


def _check_reduction(reduction: str) -> None:
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}.")


class ClassLevelLoss(nn.Module, ABC):
    """Base of the baselines: the ``(logits, targets, groups=None, reduction="mean")`` call, checks and reduction.

    A subclass gives :meth:`loss_terms` (per-sample losses and optional per-sample weights) and ``num_classes``.

    Example:
        >>> class Plain(ClassLevelLoss):
        ...     num_classes = 2
        ...     def loss_terms(self, logits, targets):
        ...         return F.cross_entropy(logits, targets, reduction="none"), None
        >>> logits, y = torch.randn(4, 2), torch.tensor([0, 1, 1, 0])
        >>> torch.allclose(Plain()(logits, y), F.cross_entropy(logits, y))
        True
    """

    num_classes: int | None

    def expected_classes(self, logits: Tensor) -> int:
        """The width the logits must have."""
        assert self.num_classes is not None
        return self.num_classes

    @abstractmethod
    def loss_terms(self, logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor | None]:
        """Per-sample losses ``(N,)`` and per-sample weights ``(N,)`` (``None``: no weights)."""

    def forward(
        self, logits: Tensor, targets: Tensor, groups: Tensor | None = None, reduction: Reduction = "mean"
    ) -> Tensor:
        """Compute the loss; ``groups`` is accepted for a uniform call signature and ignored.

        Args:
            logits: model outputs, shape (N, K).
            targets: class labels in [0, K), shape (N,).
            groups: ignored.
            reduction: ``"mean"`` (``Σ_i ℓ_i / N``; with sample weights, e.g. LDAM under DRW, the weighted mean
                ``Σ_i w_i ℓ_i / Σ_i w_i`` as ``F.cross_entropy``), ``"sum"`` or ``"none"``.

        Returns:
            The reduced loss, or the per-sample (weighted) losses of shape (N,) for ``reduction="none"``.
        """
        check_inputs(logits, targets, None, self.expected_classes(logits), None)
        _check_reduction(reduction)
        per_sample, sample_weights = self.loss_terms(logits, targets)
        if sample_weights is None:
            return reduce_loss(per_sample, reduction)
        weighted = sample_weights * per_sample
        if reduction == "mean":
            return weighted.sum() / sample_weights.sum()
        return reduce_loss(weighted, reduction)


class LDAMLoss(ClassLevelLoss):
    r"""Label-distribution-aware margin loss (Cao et al. 2019), with optional deferred re-weighting (DRW).

    With ``n_y`` the training count of class ``y``, the margin of class ``y`` is ``m_y = C / n_y^{1/4}``, with ``C``
    chosen so that the largest margin (of the rarest class) is ``max_margin``. The margin is subtracted from the
    *true-class* logit only, the result is scaled by ``s`` and fed to cross-entropy::

        ℓ(x, y) = CE( s · (f(x) − m_y e_y), y ; weight )

    exactly as the authors' code (``kaidic/LDAM-DRW``: ``x_m = x − m[y]`` on the true class, ``output = s · x_m``,
    ``F.cross_entropy(output, target, weight)``). Note ``F.cross_entropy`` with class weights averages as
    ``Σ_i w_{y_i} ℓ_i / Σ_i w_{y_i}`` (a weighted mean), which this class reproduces for ``reduction="mean"``.

    **DRW.** With ``drw_epoch`` set, the loss is unweighted before epoch ``drw_epoch`` and then uses the
    class-balanced weights of Cui et al. 2019, ``w_y ∝ (1 − β) / (1 − β^{n_y})`` normalised to ``Σ_y w_y = K`` (the
    reference uses β = 0.9999 and switches at epoch 160 of 200). The loss does not see the trainer: the training
    loop must call :meth:`set_epoch` at the start of every epoch — on the Lightning side, in
    ``on_train_epoch_start`` (``self.loss.set_epoch(self.current_epoch)`` in the module, or
    ``loss.set_epoch(trainer.current_epoch)`` in a callback). The epoch is part of :meth:`state_dict`.

    Args:
        class_counts: training samples per class, shape (K,); every class needs at least one.
        max_margin: the largest margin, of the rarest class (default 0.5 as in the paper); 0 disables margins.
        scale: logit scale ``s`` (default 30, the reference for normalised features).
        drw_epoch: first epoch of deferred re-weighting, or ``None`` (never re-weight).
        beta: β of the DRW class-balanced weights, in [0, 1).

    Example:
        >>> loss_fn = LDAMLoss([100, 10], max_margin=0.5)
        >>> [round(m, 4) for m in loss_fn.margins.tolist()]
        [0.2812, 0.5]
        >>> loss_fn = LDAMLoss([100, 10], drw_epoch=2)
        >>> loss_fn.class_weights() is None
        True
        >>> loss_fn.set_epoch(2)
        >>> [round(w, 3) for w in loss_fn.class_weights().tolist()]
        [0.183, 1.817]
    """

    def __init__(
        self,
        class_counts: Sequence[float] | Tensor,
        *,
        max_margin: float = 0.5,
        scale: float = 30.0,
        drw_epoch: int | None = None,
        beta: float = 0.9999,
    ) -> None:
        super().__init__()
        counts = as_counts(class_counts)
        if counts.numel() < 2:
            raise ValueError(f"LDAMLoss needs at least 2 classes, got class_counts {counts.tolist()}.")
        if (counts <= 0).any():
            empty = [k for k, c in enumerate(counts.tolist()) if c <= 0]
            raise ValueError(
                f"LDAM margins m_y = C / n_y^(1/4) need every class to have training samples, but classes {empty} "
                "have none: drop those classes or pass counts measured on the data you train on."
            )
        if not (isinstance(max_margin, (int, float)) and math.isfinite(max_margin) and max_margin >= 0):
            raise ValueError(
                f"max_margin must be a finite number ≥ 0 (the margin of the rarest class; 0.5 in the paper, 0 turns "
                f"margins off), got {max_margin!r}."
            )
        if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a finite positive number (s = 30 in the paper), got {scale!r}.")
        if drw_epoch is not None and (not is_integer(drw_epoch) or drw_epoch < 0):
            raise ValueError(
                f"drw_epoch must be an epoch index ≥ 0 (when re-weighting starts) or None, got {drw_epoch!r}."
            )
        if not (isinstance(beta, (int, float)) and 0 <= beta < 1):
            raise ValueError(
                f"beta must lie in [0, 1) (class-balanced DRW weights; the reference uses 0.9999), got {beta!r}."
            )
        self.num_classes = counts.numel()
        self.max_margin = float(max_margin)
        self.scale = float(scale)
        self.drw_epoch = drw_epoch
        self.beta = float(beta)
        self.epoch = 0
        inverse_root = counts ** (-0.25)
        margins = inverse_root * (self.max_margin / inverse_root.max())
        weights = _effective_number_weights(counts, self.beta)
        weights = weights / weights.sum() * self.num_classes
        self.register_buffer("margins", margins.to(torch.get_default_dtype()))
        self.register_buffer("drw_weights", weights.to(torch.get_default_dtype()))

    def set_epoch(self, epoch: int) -> None:
        """Tell the loss the current training epoch (switches DRW on at ``drw_epoch``); call at every epoch start."""
        self.epoch = check_integer("epoch", epoch, 0)

    def class_weights(self) -> Tensor | None:
        """The per-class weights in use at the current epoch, or ``None`` before DRW starts (or without DRW)."""
        if self.drw_epoch is None or self.epoch < self.drw_epoch:
            return None
        return self.drw_weights

    def get_extra_state(self) -> dict[str, Any]:
        return {"epoch": self.epoch}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.set_epoch(int(state["epoch"]))

    def loss_terms(self, logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor | None]:
        """Per-sample LDAM losses and, under DRW, the class weights of the samples (a weighted mean)."""
        margins = self.margins.to(logits.dtype)[targets]
        shifted = logits - F.one_hot(targets, self.num_classes).to(logits.dtype) * margins[:, None]
        per_sample = F.cross_entropy(self.scale * shifted, targets, reduction="none")
        weights = self.class_weights()
        return per_sample, None if weights is None else weights.to(logits.dtype)[targets]

    def extra_repr(self) -> str:
        """Summary shown by ``print(module)``."""
        return (
            f"num_classes={self.num_classes}, max_margin={self.max_margin}, scale={self.scale}, "
            f"drw_epoch={self.drw_epoch}, beta={self.beta}"
        )


class FocalLoss(ClassLevelLoss):
    r"""Focal loss (Lin et al. 2017), multiclass softmax form, with optional per-class α weights.

    With ``p_y = softmax(f(x))_y`` the probability of the true class::

        ℓ(x, y) = − α_y · (1 − p_y)^γ · log p_y

    averaged over the batch (``reduction="mean"``). γ = 0 and no α give cross-entropy. ``log(1 − p_y)`` is computed
    as the log-sum-exp of the other classes' logits minus that of all logits, so the modulating factor stays accurate
    for confident predictions (where ``p_y`` rounds to 1) and the loss finite for extreme logits.

    Args:
        gamma: focusing parameter γ ≥ 0 (2 in the paper).
        alpha: optional positive per-class weights α_y, shape (K,); ``None`` means 1.
        num_classes: number of classes K, to validate the logits (taken from ``alpha`` when given).

    Example:
        >>> logits, y = torch.randn(5, 3), torch.tensor([0, 1, 2, 0, 1])
        >>> torch.allclose(FocalLoss(gamma=0.0)(logits, y), F.cross_entropy(logits, y))
        True
    """

    def __init__(
        self,
        gamma: float = 2.0,
        alpha: Sequence[float] | Tensor | None = None,
        *,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        if not (isinstance(gamma, (int, float)) and math.isfinite(gamma) and gamma >= 0):
            raise ValueError(
                f"gamma must be a finite number ≥ 0 (the focusing parameter; 2 in the paper, 0 gives cross-entropy), "
                f"got {gamma!r}."
            )
        if num_classes is not None:
            check_integer("num_classes", num_classes, 2, meaning=" or None")
        self.gamma = float(gamma)
        if alpha is not None:
            weights = torch.as_tensor(alpha, dtype=torch.float64)
            if weights.dim() != 1 or weights.numel() < 2:
                raise ValueError(f"alpha must be one weight per class, shape (K,), got shape {tuple(weights.shape)}.")
            if not torch.isfinite(weights).all() or (weights <= 0).any():
                raise ValueError(f"alpha must hold finite positive per-class weights, got {weights.tolist()}.")
            if num_classes is not None and weights.numel() != num_classes:
                raise ValueError(
                    f"alpha has {weights.numel()} weights but num_classes={num_classes}: pass one weight per class."
                )
            num_classes = weights.numel()
            self.register_buffer("alpha", weights.to(torch.get_default_dtype()))
        else:
            self.alpha: Tensor | None = None
        self.num_classes = num_classes

    def expected_classes(self, logits: Tensor) -> int:
        """``num_classes`` when known (from ``alpha`` or the constructor), else the width of the logits."""
        return self.num_classes if self.num_classes is not None else (logits.shape[-1] if logits.dim() else 0)

    def loss_terms(self, logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor | None]:
        """Per-sample focal losses (α-weighted; their mean is ``Σ_i ℓ_i / N``), no sample weights."""
        log_norm = torch.logsumexp(logits, dim=1)
        per_sample = log_norm - logits.gather(1, targets[:, None]).squeeze(1)  # −log p_y
        if self.gamma != 0:
            # log(1 − p_y) = logsumexp over the other classes − logsumexp over all: accurate even where p_y rounds
            # to 1, and exp(γ · log(1 − p_y)) has a finite gradient for every γ ≥ 0 (unlike (1 − p_y)^γ at p_y = 1)
            true_class = F.one_hot(targets, logits.shape[1]).bool()
            log_miss = torch.logsumexp(logits.masked_fill(true_class, -math.inf), dim=1) - log_norm
            per_sample = torch.exp(self.gamma * log_miss) * per_sample
        if self.alpha is not None:
            per_sample = self.alpha.to(logits.dtype)[targets] * per_sample
        return per_sample, None

    def extra_repr(self) -> str:
        """Summary shown by ``print(module)``."""
        return f"gamma={self.gamma}, alpha={None if self.alpha is None else self.alpha.tolist()}"


def make_baseline(
    name: str,
    class_counts: Sequence[float] | Tensor | None = None,
    group_counts: Sequence[Sequence[float]] | Tensor | None = None,
    **options: Any,
) -> LDAMLoss | FocalLoss:
    """Factory of the baselines for Hydra configs (``conf/loss/ldam.yaml``, ``ldam_drw.yaml``, ``focal.yaml``).

    Same calling convention as :func:`~lightning_autobalance.losses.make_loss`: the config is a ``_partial_``
    completed with the counts after data setup. The baselines are class-level: ``group_counts`` only supplies the
    class counts (its column sums) when ``class_counts`` is not given.

    Args:
        name: ``"ldam"`` or ``"focal"``.
        class_counts: training samples per class, shape (K,) (needed by LDAM; checks the width of focal's logits).
        group_counts: training samples per (group, class), shape (G, K), or ``None``.
        **options: keyword arguments of :class:`LDAMLoss` or :class:`FocalLoss`.

    Returns:
        The baseline loss module.

    Example:
        >>> make_baseline("focal", class_counts=[50, 5], gamma=1.0)
        FocalLoss(gamma=1.0, alpha=None)
    """
    if name not in BASELINES:
        raise ValueError(
            f"Unknown baseline loss {name!r}: choose one of {', '.join(BASELINES)} (the family presets are built by "
            "lightning_autobalance.losses.make_loss)."
        )
    options = {key: plain_data(value) for key, value in options.items()}
    counts = None if class_counts is None else as_counts(plain_data(class_counts))  # type: ignore[arg-type]
    if group_counts is not None:
        totals = as_group_counts(plain_data(group_counts)).sum(0)  # type: ignore[arg-type]
        if counts is not None and (counts.shape != totals.shape or not torch.allclose(counts, totals, rtol=1e-9)):
            raise ValueError(
                f"class_counts {counts.tolist()} differ from the class totals of group_counts {totals.tolist()}: "
                "pass counts of the same data, or only group_counts."
            )
        counts = totals
    if name == "ldam":
        if counts is None:
            raise ValueError("The LDAM margins come from the class counts: pass class_counts (K,) or group_counts.")
        return LDAMLoss(counts, **options)
    if counts is not None and "num_classes" not in options:
        options["num_classes"] = counts.numel()
    return FocalLoss(**options)
