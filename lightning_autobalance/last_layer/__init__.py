"""Last-layer retraining (LLR) of a trained model: the Lightning side of :mod:`lightning_autobalance.llr`.

A trained network is split into a frozen *feature extractor* and its last linear layer, the *head*. The head is
refit on a small held-out *retraining set* with class weights from "Thumb on the Scale" (docs/references.md §2) or
one of the other modes of :func:`~lightning_autobalance.llr.class_weights_for_mode`, and written back into the
module, so ``module(x)`` uses it from then on.

Two entry points share one implementation:

* :func:`retrain_last_layer` ``(module, data, mode=...)`` — the primitive: any :class:`torch.nn.Module` (a
  LightningModule or not), any iterable of batches, callable at any time (e.g. on a model loaded from a checkpoint);
  returns a :class:`LastLayerReport`.
* :class:`LastLayerRetraining` — a :class:`~lightning.pytorch.callbacks.Callback` that calls it at the end of
  ``trainer.fit`` (``on_train_end``) on the held-out split of a :class:`~lightning_autobalance.data.HeldOutSplit`
  (or any loader), logs the report to the trainer's loggers and keeps every DDP rank identical; also callable on
  demand with :meth:`LastLayerRetraining.retrain`.

**Feature hook.** How the features and the head are found, in this order:

1. ``feature_fn=`` (a callable ``x -> (B, d)``), else ``module.autobalance_features(x)`` if the module defines it;
2. ``head=`` (an :class:`torch.nn.Linear` that is a submodule of ``module``, or a dotted path such as ``"net.head"``),
   else ``module.autobalance_head()`` if the module defines it;
3. with a head but no feature function, a forward pre-hook on the head records its input during ``module(x)``.

A module that implements :class:`LastLayerModule` (the two ``autobalance_*`` methods) needs no arguments. The contract
is ``module(x) == head(features(x))`` in eval mode; it is checked on the first batch (a warning if it does not hold,
since the reported errors are those of ``head(features)``).

**Batches** are ``(x, y)`` or ``(x, y, g)`` tuples with integer class labels ``y`` and optional group labels ``g``;
``x`` is moved to the module's device. Features are extracted in eval mode under :func:`torch.no_grad` (the
training flag of every submodule is restored afterwards), and kept in float32 on the CPU. Extract them once with
:func:`extract_features` and pass the :class:`RetrainingFeatures` instead of a loader to try several modes cheaply.

The package holds one concept per module, and re-exports every name here:

* :mod:`~lightning_autobalance.last_layer.head`: finding the head in the module, reading it and writing it back;
* :mod:`~lightning_autobalance.last_layer.features`: :func:`extract_features`, :class:`RetrainingFeatures` and the
  :class:`LastLayerModule` protocol;
* :mod:`~lightning_autobalance.last_layer.options`: the settings both entry points share (``RefitOptions``);
* :mod:`~lightning_autobalance.last_layer.retrain`: :func:`retrain_last_layer` and its :class:`LastLayerReport`;
* :mod:`~lightning_autobalance.last_layer.callback`: the :class:`LastLayerRetraining` callback.

Example:
    >>> import torch
    >>> from torch import nn
    >>> _ = torch.manual_seed(0)
    >>> net = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 2))
    >>> x = torch.randn(200, 2)
    >>> features = extract_features(net, [(x, (x[:, 0] > 1.0).long())], head="2")  # once, for several modes
    >>> modes = ("none", "thumb")
    >>> reports = {mode: retrain_last_layer(net, features, mode, head="2", write_back=False) for mode in modes}
    >>> sorted(reports), reports["thumb"].written_back, len(features)
    (['none', 'thumb'], False, 200)
"""

from lightning_autobalance.last_layer.callback import LastLayerRetraining
from lightning_autobalance.last_layer.features import LastLayerModule, RetrainingFeatures, extract_features
from lightning_autobalance.last_layer.head import write_head
from lightning_autobalance.last_layer.retrain import LastLayerReport, retrain_last_layer

__all__ = [
    "LastLayerModule",
    "LastLayerReport",
    "LastLayerRetraining",
    "RetrainingFeatures",
    "extract_features",
    "retrain_last_layer",
    "write_head",
]
