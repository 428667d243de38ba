"""The AutoBalance loss family: cross-entropy with per-class (or per class × group) logit scales, shifts and weights.

For a sample ``(x, y, g)`` with logits ``f(x)`` the loss is (PAPERS.md §1)::

    ℓ(x, y, g) = − ω[g, y] · log softmax_y( Δ[g, :] ⊙ f(x) + ι[g, :] )

* ``Δ`` (delta) — multiplicative logit scale, kept positive;
* ``ι`` (iota) — additive logit shift;
* ``ω`` (omega) — loss weight, kept positive.

Hand-tuned losses of the literature are members of the family and are available as presets
(:meth:`ParametricCrossEntropy.from_preset`); AutoBalance starts from one of them and tunes the learnable parameters
by hypergradient descent.

This module is pure PyTorch (no Lightning).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "HPARAM_KINDS",
    "PRESETS",
    "ParametricCrossEntropy",
    "frequency_blocks",
    "preset_values",
]

HPARAM_KINDS: tuple[str, ...] = ("delta", "iota", "omega")
PRESETS: tuple[str, ...] = ("ce", "weighted", "la", "cdt", "vs")
DeltaParameterization = Literal["sigmoid", "exp"]


def _as_counts(class_counts: Sequence[float] | Tensor, num_classes: int | None = None) -> Tensor:
    counts = torch.as_tensor(class_counts, dtype=torch.float64)
    if counts.dim() != 1:
        raise ValueError(
            f"class_counts must be a 1-D sequence of per-class sample counts, got shape {tuple(counts.shape)}."
        )
    if num_classes is not None and counts.numel() != num_classes:
        raise ValueError(
            f"class_counts has {counts.numel()} entries but num_classes={num_classes}: pass one count per class."
        )
    if not torch.isfinite(counts).all() or (counts < 0).any():
        raise ValueError(f"class_counts must be finite and non-negative, got {counts.tolist()}.")
    return counts


def preset_values(
    preset: str,
    class_counts: Sequence[float] | Tensor,
    *,
    tau: float = 1.0,
    gamma: float = 0.3,
) -> dict[str, Tensor]:
    """Per-class (Δ, ι, ω) of a named member of the loss family.

    With ``n_y`` the training count of class ``y``, ``π_y = n_y / n`` and ``n_max = max_y n_y``:

    * ``ce`` — cross-entropy: Δ = 1, ι = 0, ω = 1.
    * ``weighted`` — weighted cross-entropy with the ratio of priors: ω_y ∝ 1/π_y, normalised so that
      Σ_y π_y ω_y = 1 (the expected weight of a training sample is 1, so the effective learning rate is unchanged).
    * ``la`` — logit adjustment (Menon et al. 2021): ι_y = τ · log π_y.
    * ``cdt`` — class-dependent temperatures (Ye et al. 2020): Δ_y = (n_y / n_max)^γ.
    * ``vs`` — vector-scaling loss (Kini et al. 2021): Δ_y = (n_y / n_max)^γ and ι_y = τ · log π_y.

    Args:
        preset: one of :data:`PRESETS`.
        class_counts: training samples per class, shape (K,).
        tau: logit-adjustment strength τ (``la``, ``vs``).
        gamma: temperature exponent γ (``cdt``, ``vs``).

    Returns:
        ``{"delta": (K,), "iota": (K,), "omega": (K,)}`` float64 tensors.

    Raises:
        ValueError: unknown preset, or a zero count for a preset that divides by it or takes its logarithm.

    Example:
        >>> v = preset_values("la", [90, 10], tau=1.0)
        >>> [round(x, 4) for x in v["iota"].tolist()]
        [-0.1054, -2.3026]
    """
    if preset not in PRESETS:
        raise ValueError(f"Unknown loss preset {preset!r}: choose one of {', '.join(PRESETS)}.")
    counts = _as_counts(class_counts)
    num_classes = counts.numel()
    if preset != "ce" and (counts <= 0).any():
        empty = [i for i, c in enumerate(counts.tolist()) if c <= 0]
        raise ValueError(
            f"Preset {preset!r} needs every class to have training samples, but classes {empty} have none: "
            "drop those classes, use preset='ce', or pass counts measured on the data you train on."
        )
    prior = counts / counts.sum()
    ones = torch.ones(num_classes, dtype=torch.float64)
    delta, iota, omega = ones.clone(), torch.zeros(num_classes, dtype=torch.float64), ones.clone()
    if preset == "weighted":
        omega = 1.0 / prior
        omega = omega / (prior * omega).sum()
    if preset in ("la", "vs"):
        iota = tau * torch.log(prior)
    if preset in ("cdt", "vs"):
        delta = (counts / counts.max()) ** gamma
    return {"delta": delta, "iota": iota, "omega": omega}


def frequency_blocks(class_counts: Sequence[float] | Tensor, block_size: int) -> Tensor:
    """Map each class to a block of ``block_size`` classes of similar frequency.

    Classes are sorted by decreasing training count (ties by class index) and cut into consecutive blocks, so the
    ``block_size`` most frequent classes share block 0 (PAPERS.md §1: one parameter per block keeps the number of
    hyperparameters small against the held-out set).

    Args:
        class_counts: training samples per class, shape (K,).
        block_size: number of classes per block (C ≥ 1).

    Returns:
        Long tensor (K,) with the block index of each class.

    Example:
        >>> frequency_blocks([5, 50, 20, 1], block_size=2).tolist()
        [1, 0, 0, 1]
    """
    if block_size < 1:
        raise ValueError(f"block_size must be a positive number of classes, got {block_size}.")
    counts = _as_counts(class_counts)
    order = sorted(range(counts.numel()), key=lambda k: (-float(counts[k]), k))
    blocks = torch.empty(counts.numel(), dtype=torch.long)
    for rank, k in enumerate(order):
        blocks[k] = rank // block_size
    return blocks


class ParametricCrossEntropy(nn.Module):
    """Cross-entropy with per-class (or per (group, class)) logit scale Δ, logit shift ι and weight ω.

    ``loss = mean_i( −ω[g_i, y_i] · log softmax(Δ[g_i] ⊙ logits_i + ι[g_i])[y_i] )``

    Parameters are stored *raw*, one value per (group, block) with ``blocks`` of classes that share a value
    (by default each class is its own block):

    * Δ = ``delta_max · sigmoid(raw)`` (``delta_parameterization="sigmoid"``, bounded in (0, delta_max), the
      reference implementation's choice) or ``exp(raw)`` (``"exp"``, unbounded positive);
    * ι = raw;
    * ω = ``exp(raw)``.

    The kinds named in ``learnable`` are :class:`~torch.nn.Parameter` s (the hyperparameters α that AutoBalance
    tunes); the others are buffers. Both are in :meth:`state_dict`, so the loss saves and restores exactly.

    Args:
        num_classes: number of classes K (the width of the logits).
        num_groups: number of sensitive groups G; parameters have shape (G, blocks).
        delta: initial Δ per class, shape (K,) or (G, K); default 1.
        iota: initial ι per class, shape (K,) or (G, K); default 0.
        omega: initial ω per class, shape (K,) or (G, K); default 1.
        learnable: which of ``"delta"``, ``"iota"``, ``"omega"`` are hyperparameters.
        blocks: block index of each class, shape (K,) (see :func:`frequency_blocks`); initial values of classes
            sharing a block are averaged.
        delta_parameterization: ``"sigmoid"`` (bounded) or ``"exp"`` (unbounded positive).
        delta_max: upper bound of Δ for the sigmoid parameterisation. The default 2 puts Δ = 1 at raw = 0, so every
            preset is represented exactly; the reference code uses 1 (Δ = sigmoid(raw), starting at sigmoid(1)).

    Example:
        >>> loss_fn = ParametricCrossEntropy(3)
        >>> logits, y = torch.randn(4, 3), torch.tensor([0, 1, 2, 1])
        >>> torch.allclose(loss_fn(logits, y), F.cross_entropy(logits, y))
        True
    """

    def __init__(
        self,
        num_classes: int,
        num_groups: int = 1,
        *,
        delta: Sequence[float] | Tensor | None = None,
        iota: Sequence[float] | Tensor | None = None,
        omega: Sequence[float] | Tensor | None = None,
        learnable: Iterable[str] = (),
        blocks: Sequence[int] | Tensor | None = None,
        delta_parameterization: DeltaParameterization = "sigmoid",
        delta_max: float = 2.0,
    ) -> None:
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer ≥ 2, got {num_classes!r}.")
        if not isinstance(num_groups, int) or num_groups < 1:
            raise ValueError(f"num_groups must be an integer ≥ 1, got {num_groups!r}.")
        if delta_parameterization not in ("sigmoid", "exp"):
            raise ValueError(f"delta_parameterization must be 'sigmoid' or 'exp', got {delta_parameterization!r}.")
        if not delta_max > 0:
            raise ValueError(f"delta_max must be positive, got {delta_max}.")
        learnable = tuple(learnable)
        unknown = sorted(set(learnable) - set(HPARAM_KINDS))
        if unknown:
            raise ValueError(f"Unknown learnable kinds {unknown}: choose from {', '.join(HPARAM_KINDS)}.")
        self.num_classes = num_classes
        self.num_groups = num_groups
        self.delta_parameterization: DeltaParameterization = delta_parameterization
        self.delta_max = float(delta_max)
        self.learnable = tuple(k for k in HPARAM_KINDS if k in learnable)

        block_index = torch.arange(num_classes) if blocks is None else torch.as_tensor(blocks, dtype=torch.long)
        if block_index.shape != (num_classes,):
            raise ValueError(f"blocks must give one block index per class, shape ({num_classes},).")
        if block_index.min() < 0:
            raise ValueError("blocks must be non-negative block indices.")
        num_blocks = int(block_index.max()) + 1
        if torch.bincount(block_index, minlength=num_blocks).min() == 0:
            raise ValueError(f"blocks must use every index 0..{num_blocks - 1} at least once.")
        self.register_buffer("block_index", block_index, persistent=True)
        self.num_blocks = num_blocks

        initial = {"delta": delta, "iota": iota, "omega": omega}
        defaults = {"delta": 1.0, "iota": 0.0, "omega": 1.0}
        for kind in HPARAM_KINDS:
            values = self._per_group_class(kind, initial[kind], defaults[kind])
            raw = self._to_raw(kind, self._average_blocks(values))
            if kind in self.learnable:
                self.register_parameter(f"raw_{kind}", nn.Parameter(raw))
            else:
                self.register_buffer(f"raw_{kind}", raw)

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def from_preset(
        cls,
        preset: str,
        class_counts: Sequence[float] | Tensor,
        *,
        tau: float = 1.0,
        gamma: float = 0.3,
        num_groups: int = 1,
        learnable: Iterable[str] = (),
        block_size: int = 1,
        delta_parameterization: DeltaParameterization = "sigmoid",
        delta_max: float = 2.0,
    ) -> ParametricCrossEntropy:
        """Build the loss initialised at a named preset (see :func:`preset_values`).

        Args:
            preset: ``ce``, ``weighted``, ``la``, ``cdt`` or ``vs``.
            class_counts: training samples per class, shape (K,).
            tau: logit-adjustment strength τ.
            gamma: CDT / VS exponent γ.
            num_groups: number of groups G (the preset values are repeated for every group).
            learnable: which kinds AutoBalance tunes.
            block_size: classes per frequency block sharing one parameter (1 = per class).
            delta_parameterization: ``"sigmoid"`` or ``"exp"``.
            delta_max: bound of Δ with the sigmoid parameterisation.

        Returns:
            The initialised loss.

        Example:
            >>> loss_fn = ParametricCrossEntropy.from_preset("vs", [100, 10], learnable=["delta", "iota"])
            >>> [round(x, 3) for x in loss_fn.delta()[0].tolist()]
            [1.0, 0.501]
        """
        counts = _as_counts(class_counts)
        values = preset_values(preset, counts, tau=tau, gamma=gamma)
        blocks = frequency_blocks(counts, block_size) if block_size > 1 else None
        if delta_parameterization == "sigmoid" and bool((values["delta"] >= delta_max).any()):
            raise ValueError(
                f"Preset {preset!r} needs Δ up to {float(values['delta'].max()):.3g} but delta_max={delta_max}: "
                "raise delta_max or use delta_parameterization='exp'."
            )
        return cls(
            counts.numel(),
            num_groups,
            learnable=learnable,
            blocks=blocks,
            delta_parameterization=delta_parameterization,
            delta_max=delta_max,
            **values,
        )

    def _per_group_class(self, kind: str, values: Sequence[float] | Tensor | None, default: float) -> Tensor:
        shape = (self.num_groups, self.num_classes)
        if values is None:
            return torch.full(shape, default, dtype=torch.float64)
        tensor = torch.as_tensor(values, dtype=torch.float64)
        if tensor.shape == (self.num_classes,):
            tensor = tensor.expand(shape)
        if tensor.shape != shape:
            raise ValueError(f"Initial {kind} has shape {tuple(tensor.shape)}: pass ({self.num_classes},) or {shape}.")
        if not torch.isfinite(tensor).all():
            raise ValueError(f"Initial {kind} must be finite, got {tensor.tolist()}.")
        if kind in ("delta", "omega") and (tensor <= 0).any():
            raise ValueError(f"Initial {kind} must be positive, got {tensor.tolist()}.")
        if kind == "delta" and self.delta_parameterization == "sigmoid" and (tensor >= self.delta_max).any():
            raise ValueError(
                f"Initial delta reaches {float(tensor.max()):.4g} ≥ delta_max={self.delta_max}: raise delta_max "
                "or use delta_parameterization='exp'."
            )
        return tensor

    def _average_blocks(self, values: Tensor) -> Tensor:
        sums = torch.zeros(self.num_groups, self.num_blocks, dtype=values.dtype)
        sums.index_add_(1, self.block_index, values)
        return sums / torch.bincount(self.block_index, minlength=self.num_blocks).to(values.dtype)

    def _to_raw(self, kind: str, values: Tensor) -> Tensor:
        if kind == "iota":
            raw = values
        elif kind == "omega" or self.delta_parameterization == "exp":
            raw = torch.log(values)
        else:
            raw = torch.logit(values / self.delta_max)
        return raw.to(torch.get_default_dtype()).contiguous()

    # ------------------------------------------------------------------ values
    def hparams(self) -> dict[str, nn.Parameter]:
        """The learnable raw parameters by name (``raw_delta``, ``raw_iota``, ``raw_omega``), i.e. α."""
        return {f"raw_{kind}": getattr(self, f"raw_{kind}") for kind in self.learnable}

    def delta(self) -> Tensor:
        """Per (group, class) logit scale Δ, shape (G, K)."""
        raw = self.raw_delta[:, self.block_index]
        if self.delta_parameterization == "exp":
            return torch.exp(raw)
        return self.delta_max * torch.sigmoid(raw)

    def iota(self) -> Tensor:
        """Per (group, class) logit shift ι, shape (G, K)."""
        return self.raw_iota[:, self.block_index]

    def omega(self) -> Tensor:
        """Per (group, class) loss weight ω, shape (G, K)."""
        return torch.exp(self.raw_omega[:, self.block_index])

    def adjusted_logits(self, logits: Tensor, groups: Tensor | None = None) -> Tensor:
        """Return ``Δ[g] ⊙ logits + ι[g]`` for each row (the logits the softmax of the loss sees)."""
        delta, iota = self.delta(), self.iota()
        if groups is None:
            return logits * delta[0] + iota[0]
        return logits * delta[groups] + iota[groups]

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        logits: Tensor,
        targets: Tensor,
        groups: Tensor | None = None,
        reduction: Literal["mean", "sum", "none"] = "mean",
    ) -> Tensor:
        """Compute the loss.

        Args:
            logits: model outputs, shape (N, K).
            targets: class labels in [0, K), shape (N,).
            groups: group labels in [0, G), shape (N,); required when ``num_groups > 1``.
            reduction: ``"mean"`` (Σ_i ℓ_i / N), ``"sum"`` or ``"none"``.

        Returns:
            The reduced loss, or per-sample losses of shape (N,) for ``reduction="none"``.
        """
        self._check_inputs(logits, targets, groups)
        adjusted = self.adjusted_logits(logits, groups)
        per_sample = F.cross_entropy(adjusted, targets, reduction="none")
        weights = self.omega()[0 if groups is None else groups, targets]
        per_sample = weights * per_sample
        if reduction == "none":
            return per_sample
        if reduction == "sum":
            return per_sample.sum()
        if reduction == "mean":
            return per_sample.mean()
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}.")

    def _check_inputs(self, logits: Tensor, targets: Tensor, groups: Tensor | None) -> None:
        if logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(
                f"The loss was built for num_classes={self.num_classes} but the logits have shape "
                f"{tuple(logits.shape)}: make the model output (batch, {self.num_classes}) logits or build the "
                f"loss with num_classes={logits.shape[-1] if logits.dim() else '?'}."
            )
        if targets.shape != (logits.shape[0],) or targets.is_floating_point():
            raise ValueError(
                f"targets must be integer class labels of shape ({logits.shape[0]},), got dtype {targets.dtype} "
                f"and shape {tuple(targets.shape)}."
            )
        if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= self.num_classes):
            raise ValueError(
                f"Labels must lie in [0, {self.num_classes}), got values in [{int(targets.min())}, "
                f"{int(targets.max())}]: remap the labels or set num_classes to the number of classes."
            )
        if groups is None:
            if self.num_groups > 1:
                raise ValueError(
                    f"This loss has num_groups={self.num_groups} but no groups were passed: return (x, y, g) "
                    "batches or build the loss with num_groups=1."
                )
            return
        if groups.shape != targets.shape or groups.is_floating_point():
            raise ValueError(
                f"groups must be integer labels with the shape of targets {tuple(targets.shape)}, got dtype "
                f"{groups.dtype} and shape {tuple(groups.shape)}."
            )
        if groups.numel() and (int(groups.min()) < 0 or int(groups.max()) >= self.num_groups):
            raise ValueError(
                f"Group labels must lie in [0, {self.num_groups}), got values in [{int(groups.min())}, "
                f"{int(groups.max())}]: build the loss with num_groups={int(groups.max()) + 1}."
            )

    def extra_repr(self) -> str:
        """Summary shown by ``print(module)``."""
        return (
            f"num_classes={self.num_classes}, num_groups={self.num_groups}, blocks={self.num_blocks}, "
            f"learnable={list(self.learnable)}, delta={self.delta_parameterization}"
        )

    # ------------------------------------------------------------------ freezing
    def frozen(self) -> ParametricCrossEntropy:
        """Return a copy with the same values and nothing learnable (for the retrain phase)."""
        copy = ParametricCrossEntropy(
            self.num_classes,
            self.num_groups,
            learnable=(),
            blocks=self.block_index.cpu(),
            delta_parameterization=self.delta_parameterization,
            delta_max=self.delta_max,
        )
        with torch.no_grad():
            for kind in HPARAM_KINDS:
                getattr(copy, f"raw_{kind}").copy_(getattr(self, f"raw_{kind}").detach().cpu())
        return copy.to(self.raw_iota.device)
