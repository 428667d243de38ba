"""The loss class of the family, :class:`ParametricCrossEntropy`, and its Hydra factory :func:`make_loss`.

The parameterisation, presets, augmentation and block expansion it uses are in the sibling modules
(:mod:`~lightning_autobalance.losses.parameterization`, :mod:`~lightning_autobalance.losses.presets`,
:mod:`~lightning_autobalance.losses.augmentation`, :mod:`~lightning_autobalance.losses.blocks`).

Example:
    >>> loss_fn = make_loss("ce", class_counts=[50, 50])
    >>> loss_fn.num_classes, loss_fn.is_plain_cross_entropy
    (2, True)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_autobalance._checks import check_integer
from lightning_autobalance.losses.augmentation import augment_logits, batch_seed, seeded_generator, step_seed
from lightning_autobalance.losses.blocks import ExpansionMode, block_layout, frequency_ranks, linear_expansion
from lightning_autobalance.losses.inputs import check_inputs, check_logits, plain_data, reduce_loss
from lightning_autobalance.losses.parameterization import (
    AUGMENTATION_KINDS,
    HPARAM_KINDS,
    LEARNABLE_AUGMENTATION_INIT,
    DeltaParameterization,
    Parameterization,
    as_learnable,
    average_blocks,
    initial_values,
)
from lightning_autobalance.losses.presets import PresetOptions, preset_arguments
from lightning_autobalance.options import options_from, options_signature

__all__ = ["ParametricCrossEntropy", "make_loss"]


class ParametricCrossEntropy(nn.Module):
    """Cross-entropy with per-class (or per (group, class)) logit scale Δ, logit shift ι and weight ω.

    ``loss = mean_i( −ω[g_i, y_i] · log softmax(Δ[g_i] ⊙ logits_i + ι[g_i])[y_i] )``

    Parameters are stored *raw*, one value per (group, block) with ``blocks`` of classes that share a value
    (by default each class is its own block):

    * Δ = ``delta_max · sigmoid(raw)`` (``delta_parameterization="sigmoid"``, bounded in (0, delta_max), the
      reference implementation's choice) or ``exp(raw)`` (``"exp"``, unbounded positive);
    * ι = raw;
    * ω = ``exp(raw)``;
    * σ (noise) = ``exp(raw)`` and m (mix) = ``MIX_MAX · sigmoid(raw)``, with raw = −∞ for 0 (augmentation off).

    The kinds named in ``learnable`` (any subset of Δ, ι, ω, σ, m) are :class:`~torch.nn.Parameter` s (the
    hyperparameters α that AutoBalance tunes); the others are buffers. Both are in :meth:`state_dict`, so the loss
    saves and restores exactly.

    Args:
        num_classes: number of classes K (the width of the logits).
        num_groups: number of sensitive groups G; parameters have shape (G, blocks).
        delta: initial Δ per class, shape (K,) or (G, K); default 1.
        iota: initial ι per class, shape (K,) or (G, K); default 0.
        omega: initial ω per class, shape (K,) or (G, K); default 1.
        noise: initial logit-noise scale σ ≥ 0 per class, shape (K,) or (G, K); default 0 (off), or 0.5 when
            learnable.
        mix: initial mixing strength m in [0, ½) per class, shape (K,) or (G, K); default 0 (off), or 0.1 when
            learnable.
        learnable: which of ``"delta"``, ``"iota"``, ``"omega"``, ``"noise"``, ``"mix"`` are hyperparameters (a
            single name is accepted).
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
        noise: Sequence[float] | Tensor | None = None,
        mix: Sequence[float] | Tensor | None = None,
        learnable: Iterable[str] | str = (),
        blocks: Sequence[int] | Tensor | None = None,
        delta_parameterization: DeltaParameterization = "sigmoid",
        delta_max: float = 2.0,
    ) -> None:
        super().__init__()
        check_integer("num_classes", num_classes, 2)
        check_integer("num_groups", num_groups, 1)
        Parameterization(delta_parameterization, delta_max)  # raises unless both are valid
        self.num_classes = num_classes
        self.num_groups = num_groups
        self.delta_parameterization: DeltaParameterization = delta_parameterization
        self.delta_max = float(delta_max)
        self.learnable = as_learnable(learnable)

        block_index, num_blocks = block_layout(blocks, num_classes)
        self.register_buffer("block_index", block_index, persistent=True)
        self.num_blocks = num_blocks

        initial = {"delta": delta, "iota": iota, "omega": omega, "noise": noise, "mix": mix}
        defaults = {"delta": 1.0, "iota": 0.0, "omega": 1.0, "noise": 0.0, "mix": 0.0}
        for kind in AUGMENTATION_KINDS:
            if kind in self.learnable:
                defaults[kind] = LEARNABLE_AUGMENTATION_INIT[kind]
        # training-mode augmentation draws: seeded by (augmentation_seed, call counter, rank), so a resumed run
        # (the counter is in the state dict) draws the same noise; hyper-steps use fixed_augmentation(seed)
        self.augmentation_seed = 0
        self._fixed_seed: int | None = None
        self.register_buffer("augment_calls", torch.zeros((), dtype=torch.long), persistent=True)
        # added to the logits at prediction time only (see shift_predictions); not part of the training loss, so
        # not in the state dict: the learned-loss file carries it
        self.register_buffer("prediction_shift", torch.zeros(num_groups, num_classes), persistent=False)
        for kind in HPARAM_KINDS:
            values = self._per_group_class(kind, initial[kind], defaults[kind])
            raw = self.to_raw(kind, average_blocks(values, self.block_index, self.num_blocks))
            if kind in self.learnable:
                self.register_parameter(f"raw_{kind}", nn.Parameter(raw))
            else:
                self.register_buffer(f"raw_{kind}", raw)

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def from_preset(
        cls,
        preset: str,
        class_counts: Sequence[float] | Tensor | None = None,
        *,
        group_counts: Sequence[Sequence[float]] | Tensor | None = None,
        learnable: Iterable[str] | str = (),
        **options: Any,
    ) -> ParametricCrossEntropy:
        """Build the loss initialised at a named preset (see :func:`preset_values` for every formula).

        Without ``group_counts`` the class preset is repeated for each of the ``num_groups`` groups. With
        ``group_counts`` (a (G, K) table) each group's row is the preset computed on the (group, class) cells with
        the joint prior π_{g,y} = n_{g,y} / n (see :func:`preset_values`); with G = 1 this is the class preset.

        Args:
            preset: one of :data:`PRESETS` (``ce``, ``weighted``, ``class_balanced``, ``la``, ``cdt``, ``vs``,
                ``balanced_softmax``).
            class_counts: training samples per class, shape (K,); may be omitted when ``group_counts`` is given
                (it is then ``group_counts.sum(0)``), and must equal that sum when both are given.
            group_counts: training samples per (group, class), shape (G, K), for group-sensitive initialisation.
            tau: logit-adjustment strength τ ≥ 0.
            gamma: CDT / VS exponent γ (negative: Δ of rare classes above 1).
            beta: class-balanced β in [0, 1).
            num_groups: number of groups G; default 1, or G of ``group_counts`` (which it must then equal).
            learnable: which kinds AutoBalance tunes.
            block_size: classes per frequency block sharing one parameter (1 = per class); blocks follow the class
                counts (summed over groups).
            delta_parameterization: ``"sigmoid"`` or ``"exp"``.
            delta_max: bound of Δ with the sigmoid parameterisation.
            noise: initial personalized-augmentation noise σ (a number for every class, or per class / cell);
                default 0, or 0.5 when learnable.
            mix: initial personalized mixing strength m in [0, ½); default 0, or 0.1 when learnable.
            **options: the keywords ``tau`` to ``mix`` above (the fields of :class:`PresetOptions`).

        Returns:
            The initialised loss.

        Example:
            >>> loss_fn = ParametricCrossEntropy.from_preset("vs", [100, 10], learnable=["delta", "iota"])
            >>> [round(x, 3) for x in loss_fn.delta()[0].tolist()]
            [1.0, 0.501]
            >>> loss_fn = ParametricCrossEntropy.from_preset("la", group_counts=[[80, 5], [10, 5]])
            >>> [[round(x, 3) for x in row] for row in loss_fn.iota().tolist()]
            [[-0.223, -2.996], [-2.303, -2.996]]
        """
        options_from(PresetOptions, "from_preset", options)  # names the unknown keyword as from_preset's
        arguments = preset_arguments(preset, class_counts, group_counts, **options)
        return cls(**arguments, learnable=learnable)  # type: ignore[arg-type]

    from_preset.__func__.__signature__ = options_signature(from_preset.__func__, PresetOptions)  # type: ignore[attr-defined]

    def _per_group_class(self, kind: str, values: Sequence[float] | Tensor | None, default: float) -> Tensor:
        shape = (self.num_groups, self.num_classes)
        return initial_values(
            kind, values, default, shape=shape, learnable=self.learnable, parameterization=self.parameterization
        )

    # ------------------------------------------------------------------ parameterisation
    @property
    def parameterization(self) -> Parameterization:
        """The raw ↔ value maps of this loss (its ``delta_parameterization`` and ``delta_max``)."""
        return Parameterization(self.delta_parameterization, self.delta_max)

    def to_raw(self, kind: str, values: Tensor) -> Tensor:
        """Raw parameters of the values of a kind (``"delta"``, ..., ``"mix"``), in the default dtype.

        Example:
            >>> ParametricCrossEntropy(2).to_raw("omega", torch.tensor([1.0])).tolist()
            [0.0]
        """
        return self.parameterization.to_raw(kind, values)

    def from_raw(self, kind: str, raw: Tensor) -> Tensor:
        """Values of a kind from its raw parameters (the inverse of :meth:`to_raw`)."""
        return self.parameterization.from_raw(kind, raw)

    def project_(self, bounds: Mapping[str, tuple[float, float]]) -> None:
        """Clamp the raw parameters in place so each bounded kind's values lie in ``bounds[kind] = (low, high)``.

        The bounds are in the units of Δ, ι, ω, σ, m; ends beyond the range of the parameterisation are clipped to
        it (see :meth:`Parameterization.raw_interval`). AutoBalance projects α this way after each hyper-step.

        Example:
            >>> loss_fn = ParametricCrossEntropy(2, iota=[-9.0, 3.0], learnable=["iota"])
            >>> loss_fn.project_({"iota": (-5.0, 5.0)})
            >>> loss_fn.iota()[0].tolist()
            [-5.0, 3.0]
        """
        unknown = sorted(set(bounds) - set(HPARAM_KINDS))
        if unknown:
            raise ValueError(f"bounds name unknown kinds {unknown}: use any of {', '.join(HPARAM_KINDS)}.")
        with torch.no_grad():
            for kind, (low, high) in bounds.items():
                lower, upper = self.parameterization.raw_interval(kind, low, high)
                getattr(self, f"raw_{kind}").clamp_(min=lower, max=upper)

    # ------------------------------------------------------------------ values
    def hparams(self) -> dict[str, nn.Parameter]:
        """The learnable raw parameters by name (``raw_delta``, ``raw_iota``, ..., ``raw_mix``), i.e. α."""
        return {f"raw_{kind}": getattr(self, f"raw_{kind}") for kind in self.learnable}

    def delta(self) -> Tensor:
        """Per (group, class) logit scale Δ, shape (G, K)."""
        return self.from_raw("delta", self.raw_delta[:, self.block_index])

    def iota(self) -> Tensor:
        """Per (group, class) logit shift ι, shape (G, K)."""
        return self.from_raw("iota", self.raw_iota[:, self.block_index])

    def omega(self) -> Tensor:
        """Per (group, class) loss weight ω, shape (G, K)."""
        return self.from_raw("omega", self.raw_omega[:, self.block_index])

    def noise(self) -> Tensor:
        """Per (group, class) logit-noise scale σ of the personalized augmentation, shape (G, K)."""
        return self.from_raw("noise", self.raw_noise[:, self.block_index])

    def mix(self) -> Tensor:
        """Per (group, class) mixing strength m of the personalized augmentation, shape (G, K)."""
        return self.from_raw("mix", self.raw_mix[:, self.block_index])

    @property
    def is_plain_cross_entropy(self) -> bool:
        """Whether the loss equals plain cross-entropy: Δ = 1, ι = 0, ω = 1, no augmentation, no prediction shift.

        Example:
            >>> ParametricCrossEntropy(3).is_plain_cross_entropy
            True
            >>> ParametricCrossEntropy(3, iota=[0.0, 0.0, 1.0]).is_plain_cross_entropy
            False
        """
        with torch.no_grad():
            return bool(
                torch.allclose(self.delta(), torch.ones_like(self.delta()))
                and not self.iota().any()
                and torch.allclose(self.omega(), torch.ones_like(self.omega()))
                and not self.augments
                and not self.prediction_shift.any()
            )

    @property
    def augments(self) -> bool:
        """Whether the personalized augmentation is on (some σ or m above 0)."""
        return bool((self.raw_noise > -math.inf).any() or (self.raw_mix > -math.inf).any())

    @property
    def couples_samples(self) -> bool:
        """Whether a sample's loss depends on other samples' logits (mixing on): its logit Hessian is not per sample."""
        return bool((self.raw_mix > -math.inf).any())

    @contextmanager
    def fixed_augmentation(self, seed: int) -> Iterator[None]:
        """Draw the augmentation from ``seed`` and the batch's labels, so repeated calls on a batch agree.

        A hyper-step evaluates the training loss of the same batches many times (gradient, Hessian-vector products,
        a re-solve for finite differences); inside this context each evaluation of a batch sees the same noise and
        the same mixing partners, so the inner loss is one smooth function of (θ, α). Under DDP a global batch gets
        the same draws on whichever process holds it.

        Example:
            >>> loss_fn = ParametricCrossEntropy(3, learnable=["noise"])
            >>> logits, y = torch.randn(4, 3), torch.tensor([0, 1, 2, 1])
            >>> with loss_fn.fixed_augmentation(seed=7):
            ...     torch.equal(loss_fn(logits, y), loss_fn(logits, y))
            True
        """
        previous, self._fixed_seed = self._fixed_seed, int(seed)
        try:
            yield
        finally:
            self._fixed_seed = previous

    def _augmentation_generator(self, targets: Tensor, groups: Tensor | None) -> torch.Generator:
        if self._fixed_seed is not None:
            return seeded_generator(batch_seed(self._fixed_seed, targets, groups), targets.device)
        seed = step_seed(self.augmentation_seed, int(self.augment_calls))
        self.augment_calls += 1
        return seeded_generator(seed, targets.device)

    def augment(self, logits: Tensor, targets: Tensor, groups: Tensor | None = None) -> Tensor:
        """Apply the personalized augmentation to a batch of training logits (see the module docstring).

        Args:
            logits: (N, K) logits of a training batch.
            targets: (N,) labels; they select each sample's σ and m (and stay the sample's labels).
            groups: (N,) group labels, or None.

        Returns:
            ``(1 − m) ⊙ logits + m ⊙ logits[π] + σ ⊙ ε`` row by row (the logits themselves when both are 0).
        """
        if not self.augments or logits.shape[0] == 0:
            return logits
        generator = self._augmentation_generator(targets, groups)
        mix = self.mix() if self.couples_samples else None
        return augment_logits(logits, targets, groups, noise=self.noise(), mix=mix, generator=generator)

    def adjusted_logits(self, logits: Tensor, groups: Tensor | None = None) -> Tensor:
        """Return ``Δ[g] ⊙ logits + ι[g]`` for each row (the logits the softmax of the loss sees)."""
        delta, iota = self.delta(), self.iota()
        if groups is None:
            return logits * delta[0] + iota[0]
        return logits * delta[groups] + iota[groups]

    def shift_predictions(self, logits: Tensor, groups: Tensor | None = None) -> Tensor:
        """Return ``logits + prediction_shift[g]``: the logits to predict with (arg-max, metrics).

        The shift is a post-hoc logit adjustment (``−τ·log π``, see :mod:`lightning_autobalance.posthoc`) that the
        AutoBalance callback fits on the held-out split at the end of a search (``posthoc=True``) and the learned-loss
        file carries to the retrained model; it is zero otherwise, so the logits pass unchanged. It never enters the
        training loss.

        Example:
            >>> loss_fn = ParametricCrossEntropy(2)
            >>> loss_fn.set_prediction_shift(torch.tensor([0.0, 1.0]))
            >>> loss_fn.shift_predictions(torch.tensor([[0.5, 0.0]])).tolist()
            [[0.5, 1.0]]
        """
        if not bool(self.prediction_shift.any()):
            return logits  # no post-hoc adjustment: the logits as they are
        check_logits(logits, self.num_classes)
        shift = self.prediction_shift.to(logits.dtype)
        return logits + (shift[0] if groups is None else shift[groups])

    def set_prediction_shift(self, shift: Sequence[float] | Tensor) -> None:
        """Set the post-hoc shift added to the logits at prediction time: shape (K,) (every group) or (G, K)."""
        self.prediction_shift.copy_(self._per_group_class("prediction_shift", shift, 0.0))

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
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}.")
        if self.training:
            logits = self.augment(logits, targets, groups)
        adjusted = self.adjusted_logits(logits, groups)
        per_sample = F.cross_entropy(adjusted, targets, reduction="none")
        weights = self.omega()[0 if groups is None else groups, targets]
        return reduce_loss(weights * per_sample, reduction)

    def _check_inputs(self, logits: Tensor, targets: Tensor, groups: Tensor | None) -> None:
        check_inputs(logits, targets, groups, self.num_classes, self.num_groups)

    def extra_repr(self) -> str:
        """Summary shown by ``print(module)``."""
        return (
            f"num_classes={self.num_classes}, num_groups={self.num_groups}, blocks={self.num_blocks}, "
            f"learnable={list(self.learnable)}, delta={self.delta_parameterization}, augments={self.augments}"
        )

    # ------------------------------------------------------------------ copies
    def _empty_copy(self, learnable: Iterable[str] | str, blocks: Tensor | None) -> ParametricCrossEntropy:
        return ParametricCrossEntropy(
            self.num_classes,
            self.num_groups,
            learnable=learnable,
            blocks=blocks,
            delta_parameterization=self.delta_parameterization,
            delta_max=self.delta_max,
        )

    def frozen(self) -> ParametricCrossEntropy:
        """Return a copy with the same values and nothing learnable (for the retrain phase)."""
        copy = self._empty_copy((), self.block_index.cpu())
        with torch.no_grad():
            for kind in HPARAM_KINDS:
                getattr(copy, f"raw_{kind}").copy_(getattr(self, f"raw_{kind}").detach().cpu())
            copy.prediction_shift.copy_(self.prediction_shift.cpu())
        return copy.to(self.raw_iota.device)

    def expanded(
        self,
        mode: ExpansionMode = "constant",
        class_counts: Sequence[float] | Tensor | None = None,
        *,
        learnable: Iterable[str] | str | None = None,
    ) -> ParametricCrossEntropy:
        """Return a copy with one parameter per class (no shared blocks), e.g. to retrain or fine-tune per class.

        * ``mode="constant"`` — piecewise constant: every class takes its block's raw value, so the forward pass is
          bit for bit the same as this loss's.
        * ``mode="linear"`` — linear interpolation across the classes sorted by decreasing frequency: each block's
          value (Δ, ι, ω themselves, not their raw parameters) is placed at the mean frequency rank of its classes,
          classes in between are linearly interpolated (``np.interp``) and classes beyond the first / last block's
          anchor keep that block's value. Every group row is interpolated separately. Interpolated Δ and ω stay
          positive and below ``delta_max`` (convex combinations); the values are exact at anchors up to rounding.

        The frequency order is that of ``class_counts`` (decreasing count, ties by class index, as in
        :func:`frequency_blocks`); without counts it is the block order (block index, then class index). Linear
        mode needs every block to be a run of consecutive classes in that order — true for blocks made by
        :func:`frequency_blocks` from the same counts.

        Args:
            mode: ``"constant"`` or ``"linear"``.
            class_counts: training samples per class, shape (K,), to sort classes by frequency (linear mode).
            learnable: kinds learnable in the copy; default: the same as this loss.

        Returns:
            A new :class:`ParametricCrossEntropy` with ``blocks = arange(K)``, on this loss's device.

        Example:
            >>> coarse = ParametricCrossEntropy(4, iota=[0.0, 0.0, 4.0, 4.0], blocks=[0, 0, 1, 1])
            >>> coarse.expanded("linear").iota()[0].tolist()
            [0.0, 1.0, 3.0, 4.0]
        """
        if mode not in ("constant", "linear"):
            raise ValueError(
                f"Unknown expansion mode {mode!r}: use 'constant' (each class takes its block's value, same loss) "
                "or 'linear' (interpolated across classes sorted by frequency)."
            )
        copy = self._empty_copy(self.learnable if learnable is None else learnable, None)
        block_index = self.block_index.cpu()
        with torch.no_grad():
            copy.prediction_shift.copy_(self.prediction_shift.cpu())
            if mode == "constant":
                for kind in HPARAM_KINDS:
                    raw = getattr(self, f"raw_{kind}").detach().cpu()
                    getattr(copy, f"raw_{kind}").copy_(raw[:, block_index])
                return copy.to(self.raw_iota.device)
            rank = frequency_ranks(block_index, class_counts)
            block_values = {
                kind: self.from_raw(kind, getattr(self, f"raw_{kind}").detach().cpu().double()) for kind in HPARAM_KINDS
            }
            for kind, values in linear_expansion(block_values, block_index, rank, self.num_blocks).items():
                if kind == "delta" and self.delta_parameterization == "sigmoid":
                    values = values.clamp(max=self.delta_max * (1 - 1e-7))  # keep logit finite after rounding
                getattr(copy, f"raw_{kind}").copy_(copy.to_raw(kind, values))
        return copy.to(self.raw_iota.device)


def make_loss(
    preset: str = "ce",
    class_counts: Sequence[float] | Tensor | None = None,
    group_counts: Sequence[Sequence[float]] | Tensor | None = None,
    **options: object,
) -> ParametricCrossEntropy:
    """Factory of preset losses for Hydra configs (``conf/loss/<preset>.yaml``).

    The configs set ``_partial_: true`` and the preset options; the training counts are only known after the data
    is set up, so the caller completes the partial with them::

        loss = hydra.utils.instantiate(cfg.loss)(class_counts=dm.class_counts, group_counts=None)

    Args:
        preset: one of :data:`PRESETS`.
        class_counts: training samples per class, shape (K,).
        group_counts: training samples per (group, class), shape (G, K), or ``None``.
        **options: keyword arguments of :meth:`ParametricCrossEntropy.from_preset` (``tau``, ``gamma``, ``beta``,
            ``learnable``, ``block_size``, ``delta_parameterization``, ``delta_max``, ``num_groups``).

    Returns:
        The preset loss.

    Example:
        >>> loss_fn = make_loss("balanced_softmax", class_counts=[90, 10])
        >>> [round(x, 4) for x in loss_fn.iota()[0].tolist()]
        [-0.1054, -2.3026]
    """
    options = {key: plain_data(value) for key, value in options.items()}
    return ParametricCrossEntropy.from_preset(
        preset,
        plain_data(class_counts),  # type: ignore[arg-type]
        group_counts=plain_data(group_counts),  # type: ignore[arg-type]
        **options,  # type: ignore[arg-type]
    )
