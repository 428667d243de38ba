"""The AutoBalance loss family: cross-entropy with per-class (or per class × group) logit scales, shifts and weights.

For a sample ``(x, y, g)`` with logits ``f(x)`` the loss is (docs/references.md §1)::

    ℓ(x, y, g) = − ω[g, y] · log softmax_y( Δ[g, :] ⊙ f(x) + ι[g, :] )

* ``Δ`` (delta) — multiplicative logit scale, kept positive;
* ``ι`` (iota) — additive logit shift;
* ``ω`` (omega) — loss weight, kept positive.

**Personalized augmentation** (docs/references.md §1, the paper's class-personalized augmentation). Two more per (group,
class) hyperparameters act on the logits of *training* samples before Δ and ι (only while the loss is in training
mode; they are 0, i.e. off, unless set or learned)::

    f̃_i = (1 − m[g_i, y_i]) · f(x_i) + m[g_i, y_i] · f(x_π(i)) + σ[g_i, y_i] · ε_i,   ε_i ~ N(0, I_K)

* ``σ`` (noise) — scale of additive Gaussian noise on the logits, the output features of the network;
* ``m`` (mix) — mixing strength in [0, ½): each sample's logits are mixed with those of a random partner π(i) of
  the batch, keeping the sample's own label (for a linear head this is mixup of the penultimate features).

Both are augmentations of the sample's neighbourhood whose size depends on its class: training to classify every
point within a class-dependent radius of x correctly is what a class-dependent margin asks for, so a larger σ or m for
a class acts like a larger margin for it (the paper's equivalence between personalized augmentation radius and
per-class margin). They are differentiable in σ and m, so the same hypergradient tunes them
(``learnable=["noise", "mix"]``).

Hand-tuned losses of the literature are members of the family and are available as presets
(:meth:`ParametricCrossEntropy.from_preset`, :func:`make_loss` for Hydra); AutoBalance starts from one of them and
tunes the learnable parameters by hypergradient descent. Common baselines *outside* the family (LDAM, focal loss) are
in :mod:`lightning_autobalance.baselines`.

The package is pure PyTorch (no Lightning), one concept per module: :mod:`.inputs` (validated counts and calls,
shared by every loss), :mod:`.parameterization` (raw ↔ value maps, bounds), :mod:`.presets`, :mod:`.augmentation`,
:mod:`.blocks` (frequency blocks and their expansion) and :mod:`.parametric` (the loss and :func:`make_loss`).

Example:
    >>> loss_fn = ParametricCrossEntropy.from_preset("la", [90, 10])
    >>> [round(x, 4) for x in loss_fn.iota()[0].tolist()]
    [-0.1054, -2.3026]
"""

from lightning_autobalance.losses.blocks import ExpansionMode, frequency_blocks
from lightning_autobalance.losses.inputs import (
    as_counts,
    as_group_counts,
    check_inputs,
    check_logits,
    plain_data,
    reduce_loss,
)
from lightning_autobalance.losses.parameterization import (
    AUGMENTATION_KINDS,
    HPARAM_KINDS,
    LEARNABLE_AUGMENTATION_INIT,
    MIX_MAX,
    DeltaParameterization,
    Parameterization,
)
from lightning_autobalance.losses.parametric import ParametricCrossEntropy, make_loss
from lightning_autobalance.losses.presets import PRESETS, effective_number_weights, preset_values

__all__ = [
    "AUGMENTATION_KINDS",
    "HPARAM_KINDS",
    "LEARNABLE_AUGMENTATION_INIT",
    "MIX_MAX",
    "PRESETS",
    "DeltaParameterization",
    "ExpansionMode",
    "Parameterization",
    "ParametricCrossEntropy",
    "as_counts",
    "as_group_counts",
    "check_inputs",
    "check_logits",
    "effective_number_weights",
    "frequency_blocks",
    "make_loss",
    "plain_data",
    "preset_values",
    "reduce_loss",
]
