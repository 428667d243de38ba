r"""Class- and group-sensitive classification metrics computed from one count tensor.

Every metric in this package is derived from a single state: the tensor of counts

.. math::
    n[g, y, \hat y] = \#\{i : \text{group}_i = g,\ \text{target}_i = y,\ \text{pred}_i = \hat y\}

of shape ``(num_groups, num_classes, num_classes)`` (a per-group confusion matrix, rows = true class,
columns = predicted class). It is a ``long`` tensor declared with ``dist_reduce_fx="sum"``, so under DDP
the synchronised result is exactly the single-process result on the union of all shards.

Each metric is a :class:`torchmetrics.Metric` (all subclasses of :class:`GroupConfusionMetric`, which owns
the state and ``update``) with a functional twin that shares the counting and the reductions:

* :class:`BalancedError` / :func:`balanced_error`: mean per-class error = 1 − balanced accuracy;
* :class:`ClassErrors` / :func:`class_errors`: per-class error, shape ``(K,)``;
* :class:`WorstClassError` / :func:`worst_class_error`: max per-class error;
* :class:`GroupErrors` / :func:`group_errors`: per-group error ``(G,)``, or per (group, class) ``(G, K)``;
* :class:`WorstGroupError` / :func:`worst_group_error`: worst (class, group) cell (default) or worst group;
* :class:`WorstGroupAccuracy` / :func:`worst_group_accuracy`: 1 − worst-group error (Waterbirds convention);
* :class:`WeightedAverageAccuracy` / :func:`weighted_average_accuracy`: per-cell accuracy weighted by the
  *training* cell proportions (the DFR / JTT "average accuracy");
* :class:`MeanGroupAccuracy` / :func:`mean_group_accuracy`: unweighted mean of the per-cell accuracies;
* :class:`DemographicParityGap` / :func:`demographic_parity_gap`: max − min selection rate over groups;
* :class:`EqualOpportunityGapMetric` / :func:`equal_opportunity_gap`: max − min true-positive rate over groups
  (also exported under its former name ``EqualOpportunityGap``, an alias; the package root's
  ``EqualOpportunityGap`` is the training objective :class:`lightning_autobalance.objectives.EqualOpportunityGap`);
* :class:`EqualizedOddsGapMetric` / :func:`equalized_odds_gap`: larger of the TPR gap and the FPR gap (also
  exported as ``EqualizedOddsGap``, an alias; the package root's ``EqualizedOddsGap`` is the training objective).

Inputs (``update(preds, target, groups=None)`` and the functions): ``preds`` are either logits or
probabilities (float tensor of shape ``(N, K)``, reduced with ``argmax``) or predicted labels (integer
tensor of shape ``(N,)``); ``target`` are integer labels ``(N,)``; ``groups`` are integer sensitive-group
indices ``(N,)`` in ``[0, num_groups)``, and ``groups=None`` puts every sample in group 0.

Conventions (the same for the classes and the functions):

* **Absent classes.** A class with no sample in ``target`` has an undefined error. As in scikit-learn's
  ``balanced_accuracy_score``, it is dropped from the mean / max (its entry of :func:`class_errors` is
  ``nan``) and a :class:`UserWarning` is emitted.
* **Empty groups.** A group without samples has an undefined error (``nan`` in :func:`group_errors`) and
  is ignored by every max / min over groups, as fairlearn's ``MetricFrame`` only sees the groups present.
* **Cells with training weight but no test sample** (:class:`WeightedAverageAccuracy`) are handled like
  absent classes: left out with a :class:`UserWarning`, the other training weights renormalised.
* **Zero denominators in the fairness rates.** If a rate is undefined in a group for a class (no sample of
  the class in the group for the TPR, no sample of another class in the group for the FPR), that group is
  excluded from the max − min for that class; a class for which no group has a defined rate is excluded
  from the reduction over classes. (fairlearn instead counts such a rate as 0, through
  ``confusion_matrix(normalize="true")``, which inflates the gap; both agree whenever every present group
  has a defined rate.)
* **Binary tasks** (``num_classes=2``): the fairness gaps use class 1 as the positive class, as fairlearn
  does. With ``num_classes > 2`` each class in turn is the positive class (one-vs-rest) and the per-class
  gaps are reduced by ``reduction="max"`` (default) or ``"mean"``. (One-vs-rest over both classes of a
  binary task would turn the TPR gap of class 0 into the FPR gap of class 1, hence the special case.)
* **Nothing seen.** When no sample was counted (empty input, or ``compute()`` before ``update()``) the
  result is ``nan`` (of the usual shape) and a :class:`UserWarning` is emitted; no exception is raised,
  so a rank or an epoch without data does not crash training.
* Errors are returned as tensors of the default float dtype on the device of the counts. Note that
  torchmetrics squeezes single-element results, so ``GroupErrors(num_groups=1).compute()`` is 0-d while
  :func:`group_errors` returns shape ``(1,)``.

The package holds one concept per module, and re-exports every name here:

* :mod:`~lightning_autobalance.metrics.counts`: the count state, :class:`GroupConfusionMetric`, and the counting;
* :mod:`~lightning_autobalance.metrics.classwise`: overall, per-class, balanced and worst-class error;
* :mod:`~lightning_autobalance.metrics.groups`: group errors and the worst / mean group-robustness accuracies;
* :mod:`~lightning_autobalance.metrics.weighted`: the training-weighted average accuracy (DFR / JTT);
* :mod:`~lightning_autobalance.metrics.fairness`: the demographic-parity, equal-opportunity and equalized-odds gaps;
* :mod:`~lightning_autobalance.metrics.functional`: the functional twins, one ``from_counts`` of their class each.

Example:
    >>> import torch
    >>> preds, target = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 1, 1])
    >>> round(float(balanced_error(preds, target, num_classes=2)), 4)  # class errors 0 and 1/3
    0.1667
"""

from lightning_autobalance.metrics import functional
from lightning_autobalance.metrics.classwise import BalancedError, ClassErrors, Error, WorstClassError
from lightning_autobalance.metrics.counts import GroupConfusionMetric, confusion_counts
from lightning_autobalance.metrics.counts import TensorLike as TensorLike
from lightning_autobalance.metrics.fairness import (
    DemographicParityGap,
    EqualizedOddsGap,
    EqualizedOddsGapMetric,
    EqualOpportunityGap,
    EqualOpportunityGapMetric,
)
from lightning_autobalance.metrics.fairness import Reduction as Reduction
from lightning_autobalance.metrics.functional import (
    balanced_error,
    class_errors,
    demographic_parity_gap,
    equal_opportunity_gap,
    equalized_odds_gap,
    error,
    group_errors,
    mean_group_accuracy,
    weighted_average_accuracy,
    worst_class_error,
    worst_group_accuracy,
    worst_group_error,
)
from lightning_autobalance.metrics.groups import (
    GroupErrors,
    MeanGroupAccuracy,
    WorstGroupAccuracy,
    WorstGroupError,
)
from lightning_autobalance.metrics.groups import Over as Over
from lightning_autobalance.metrics.weighted import WeightedAverageAccuracy, train_cell_weights

__all__ = [
    "BalancedError",
    "ClassErrors",
    "DemographicParityGap",
    "EqualOpportunityGap",
    "EqualOpportunityGapMetric",
    "EqualizedOddsGap",
    "EqualizedOddsGapMetric",
    "Error",
    "GroupConfusionMetric",
    "GroupErrors",
    "MeanGroupAccuracy",
    "WeightedAverageAccuracy",
    "WorstClassError",
    "WorstGroupAccuracy",
    "WorstGroupError",
    "balanced_error",
    "class_errors",
    "confusion_counts",
    "demographic_parity_gap",
    "equal_opportunity_gap",
    "equalized_odds_gap",
    "error",
    "functional",
    "group_errors",
    "mean_group_accuracy",
    "train_cell_weights",
    "weighted_average_accuracy",
    "worst_class_error",
    "worst_group_accuracy",
    "worst_group_error",
]
