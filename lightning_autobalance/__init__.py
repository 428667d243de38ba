"""lightning-autobalance: design the training loss for imbalanced and group-sensitive classification.

The public API: :class:`AutoBalanceMixin` and :class:`AutoBalance` (the Lightning side), :class:`HeldOutSplit`,
:class:`ParametricCrossEntropy` and its presets, :func:`hypergradient` with its solvers, and the learned-loss file
(:func:`save_loss`, :func:`load_loss`), and the post-hoc logit adjustment (:func:`fit_logit_adjustment`,
:func:`adjust_logits`).
"""

from lightning_autobalance.baselines import BASELINES, FocalLoss, LDAMLoss, make_baseline
from lightning_autobalance.callback import AutoBalance
from lightning_autobalance.data import GroupBalancedSubsample, HeldOutSplit, MNIST1DLongTail, Upsample, long_tail_counts
from lightning_autobalance.group_dro import GroupDRO, GroupDROLoss
from lightning_autobalance.group_last_layer import afr_head, dfr_head
from lightning_autobalance.hypergrad import ConjugateGradient, Neumann, hypergradient
from lightning_autobalance.jtt import JTTReport, error_set, jtt
from lightning_autobalance.last_layer import LastLayerRetraining, extract_features, retrain_last_layer
from lightning_autobalance.learned_loss import LearnedLossError, load_loss, save_loss
from lightning_autobalance.losses import PRESETS, ParametricCrossEntropy, make_loss, preset_values
from lightning_autobalance.metrics import (
    MeanGroupAccuracy,
    WeightedAverageAccuracy,
    WorstGroupAccuracy,
    mean_group_accuracy,
    weighted_average_accuracy,
    worst_group_accuracy,
)
from lightning_autobalance.mixin import AutoBalanceMixin
from lightning_autobalance.objectives import Blend, EqualizedOddsGap, EqualOpportunityGap, WorstGroup
from lightning_autobalance.posthoc import adjust_logits, fit_logit_adjustment

__all__ = [
    "BASELINES",
    "PRESETS",
    "AutoBalance",
    "AutoBalanceMixin",
    "Blend",
    "ConjugateGradient",
    "EqualOpportunityGap",
    "EqualizedOddsGap",
    "FocalLoss",
    "GroupBalancedSubsample",
    "GroupDRO",
    "GroupDROLoss",
    "HeldOutSplit",
    "JTTReport",
    "LDAMLoss",
    "LastLayerRetraining",
    "LearnedLossError",
    "MNIST1DLongTail",
    "MeanGroupAccuracy",
    "Neumann",
    "ParametricCrossEntropy",
    "Upsample",
    "WeightedAverageAccuracy",
    "WorstGroup",
    "WorstGroupAccuracy",
    "adjust_logits",
    "afr_head",
    "dfr_head",
    "error_set",
    "extract_features",
    "fit_logit_adjustment",
    "hypergradient",
    "jtt",
    "load_loss",
    "long_tail_counts",
    "make_baseline",
    "make_loss",
    "mean_group_accuracy",
    "preset_values",
    "retrain_last_layer",
    "save_loss",
    "weighted_average_accuracy",
    "worst_group_accuracy",
]

__version__ = "0.1.0"
