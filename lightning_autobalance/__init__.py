"""lightning-autobalance: design the training loss for imbalanced and group-sensitive classification.

The public API: :class:`AutoBalanceMixin` and :class:`AutoBalance` (the Lightning side), :class:`HeldOutSplit`,
:class:`ParametricCrossEntropy` and its presets, :func:`hypergradient` with its solvers, and the learned-loss file
(:func:`save_loss`, :func:`load_loss`).
"""

from lightning_autobalance.callback import AutoBalance
from lightning_autobalance.data import HeldOutSplit, MNIST1DLongTail, long_tail_counts
from lightning_autobalance.hypergrad import ConjugateGradient, Neumann, hypergradient
from lightning_autobalance.learned_loss import LearnedLossError, load_loss, save_loss
from lightning_autobalance.losses import PRESETS, ParametricCrossEntropy, preset_values
from lightning_autobalance.mixin import AutoBalanceMixin

__all__ = [
    "PRESETS",
    "AutoBalance",
    "AutoBalanceMixin",
    "ConjugateGradient",
    "HeldOutSplit",
    "LearnedLossError",
    "MNIST1DLongTail",
    "Neumann",
    "ParametricCrossEntropy",
    "hypergradient",
    "load_loss",
    "long_tail_counts",
    "preset_values",
    "save_loss",
]

__version__ = "0.1.0"
