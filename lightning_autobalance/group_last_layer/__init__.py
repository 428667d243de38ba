"""Last-layer baselines for group robustness: DFR and AFR (docs/references.md §3).

Both refit only the last linear layer of a trained model on a held-out set of frozen features, and choose their
one hyperparameter on held-out data:

* :func:`dfr_head` — **Deep Feature Reweighting** (Kirichenko, Izmailov, Wilson, ICLR 2023): ℓ1-regularised
  logistic regression (scikit-learn's :class:`~sklearn.linear_model.LogisticRegression`, ``l1_ratio=1``) on
  standardised features of a *group-balanced* subsample of the held-out set — every (group, class) cell subsampled
  to the smallest cell; the coefficients are averaged over several subsamples; ``C`` is chosen by the worst-group
  accuracy on a selection part.
* :func:`afr_head` — **Automatic Feature Reweighting** (Qiu, Potapczynski, Izmailov, Wilson, ICML 2023): weighted
  multinomial logistic regression with per-sample weights ``∝ β_y · exp(−γ · p_true(x))`` from the ERM model's
  predicted probability of the true class (:func:`afr_weights`) and an ℓ2 penalty pulling the head towards the ERM
  head; fitted in float64 with full-batch L-BFGS to convergence; ``γ`` (and the penalty) chosen by the worst-group
  (or worst-class) accuracy on a selection part. AFR needs no group labels to train.

Shared conventions:

* **Head layout.** Both return ``(weight (K, d), bias (K,), report)`` in the *original* feature space, ready to be
  copied into an :class:`torch.nn.Linear` with ``K`` outputs (also for ``K = 2``): prediction is the arg-max. A
  binary scikit-learn decision function ``z = w·x + b`` is written as the two rows ``(−z/2, +z/2)``, whose softmax
  is the logistic probability ``σ(z)``.
* **Selection without group labels.** ``selection_metric="worst_class"`` selects by the worst per-class accuracy on
  the selection part (the field's convention when no group labels are available); ``"worst_group"`` by the worst
  non-empty (group, class) cell, as :func:`~lightning_autobalance.metrics.worst_group_accuracy`. The default is
  ``"worst_group"`` when the selection part has group labels, else ``"worst_class"``.
* **Selection part.** Either given explicitly (``selection_features``, ``selection_targets``,
  ``selection_groups``), or split off the held-out set (``selection_fraction`` of every (group, class) cell, or
  class without groups; seeded). With a split and ``refit=True`` (default, as in the DFR reference code) the final
  head is refit with the chosen hyperparameters on the *whole* held-out set. A one-point grid needs no selection.
  Ties go to the first grid point.
* Bad input raises :class:`ValueError` naming the argument to change.

Pure PyTorch and scikit-learn (no Lightning). :func:`~lightning_autobalance.last_layer.retrain_last_layer` and
:class:`~lightning_autobalance.last_layer.LastLayerRetraining` run both as ``mode="dfr"`` / ``mode="afr"``.

The package holds one concept per module, and re-exports every name here:

* :mod:`~lightning_autobalance.group_last_layer.selection`: what both share: input checks, the selection split and
  score, :class:`GroupHeadReport` and :data:`GROUP_MODES`;
* :mod:`~lightning_autobalance.group_last_layer.dfr`: :func:`dfr_head` and :func:`group_balanced_indices`;
* :mod:`~lightning_autobalance.group_last_layer.afr`: :func:`afr_head` and :func:`afr_weights`.

Example:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> y = torch.arange(200) % 2
    >>> a = torch.where(torch.rand(200, generator=g) < 0.9, y, 1 - y)  # spurious attribute, 90% aligned with y
    >>> x = torch.stack([y + 0.5 * torch.randn(200, generator=g), 2.0 * a], dim=1).double()
    >>> _, _, dfr = dfr_head(x, y, a, C_grid=(1.0, 0.1), num_subsamples=3)
    >>> _, _, afr = afr_head(x, y, groups=a, init_weight=torch.zeros(2, 2), gamma_grid=(0.0, 2.0), l2=0.01)
    >>> (dfr.method, dfr.selection_metric, len(dfr.scores)), (afr.method, afr.selection_metric, len(afr.scores))
    (('dfr', 'worst_group', 2), ('afr', 'worst_group', 2))
"""

from lightning_autobalance.group_last_layer.afr import AFR_GAMMA_GRID, AFR_L2_GRID, afr_head, afr_weights
from lightning_autobalance.group_last_layer.dfr import DFR_C_GRID, dfr_head, group_balanced_indices
from lightning_autobalance.group_last_layer.selection import GROUP_MODES, GroupHeadReport

__all__ = [
    "AFR_GAMMA_GRID",
    "AFR_L2_GRID",
    "DFR_C_GRID",
    "GROUP_MODES",
    "GroupHeadReport",
    "afr_head",
    "afr_weights",
    "dfr_head",
    "group_balanced_indices",
]
