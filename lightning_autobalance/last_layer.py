"""Last-layer retraining (LLR) of a trained model: the Lightning side of :mod:`lightning_autobalance.llr`.

A trained network is split into a frozen *feature extractor* and its last linear layer, the *head*. The head is
refit on a small held-out *retraining set* with class weights from "Thumb on the Scale" (PAPERS.md §2) or one of
the other modes of :func:`~lightning_autobalance.llr.class_weights_for_mode`, and written back into the module, so
``module(x)`` uses it from then on.

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
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import move_data_to_device, rank_zero_info
from torch import Tensor, nn
from torch.utils.data import Dataset, IterableDataset

from lightning_autobalance.group_last_layer import GROUP_MODES, afr_head, dfr_head
from lightning_autobalance.llr import (
    DEFAULT_MAX_WEIGHT,
    MODES,
    LinearHead,
    class_weights_for_mode,
    effective_dimension,
    fit_last_layer,
)
from lightning_autobalance.metrics import (
    balanced_error,
    class_errors,
    group_errors,
    worst_class_error,
    worst_group_error,
)

__all__ = [
    "LastLayerModule",
    "LastLayerReport",
    "LastLayerRetraining",
    "RetrainingFeatures",
    "extract_features",
    "retrain_last_layer",
    "write_head",
]

FeatureFn = Callable[[Tensor], Tensor]
LOADER_NAMES = ("heldout", "train", "val", "test")


@runtime_checkable
class LastLayerModule(Protocol):
    """Optional protocol of a module whose last layer can be retrained without arguments.

    ``autobalance_features(x)`` returns the ``(B, d)`` input of the last layer, ``autobalance_head()`` the last layer
    itself (an :class:`torch.nn.Linear` with ``d`` inputs and one output per class), so that
    ``module(x) == module.autobalance_head()(module.autobalance_features(x))`` in eval mode.

    Example:
        >>> class Net(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.body, self.head = nn.Sequential(nn.Linear(4, 8), nn.ReLU()), nn.Linear(8, 3)
        ...     def forward(self, x):
        ...         return self.head(self.body(x))
        ...     def autobalance_features(self, x):
        ...         return self.body(x)
        ...     def autobalance_head(self):
        ...         return self.head
        >>> isinstance(Net(), LastLayerModule)
        True
    """

    def autobalance_features(self, x: Tensor) -> Tensor:
        """Features ``(B, d)`` read by the last layer."""
        ...

    def autobalance_head(self) -> nn.Linear:
        """The last layer."""
        ...


@dataclass(frozen=True)
class RetrainingFeatures:
    """Features of a data set under a frozen backbone, with their labels.

    Attributes:
        features: ``(N, d)`` float32 CPU features.
        targets: ``(N,)`` int64 class labels.
        groups: ``(N,)`` int64 group labels, or ``None`` if the batches had none.
    """

    features: Tensor
    targets: Tensor
    groups: Tensor | None = None

    def __len__(self) -> int:
        return self.features.shape[0]


Data = Iterable[Any] | RetrainingFeatures
"""A retraining or evaluation set: an iterable of ``(x, y)`` / ``(x, y, g)`` batches, or extracted features."""


@dataclass(frozen=True, eq=False)
class LastLayerReport(Mapping[str, float]):
    """Outcome of a last-layer refit; a read-only mapping of the flat scalar metrics (what is logged).

    Metric names (``prefix`` is ``"llr"`` by default; ``split`` is ``retrain``, and ``eval`` when evaluation data is
    given; the ``{split}_before`` entries are the same errors of the head *before* the refit):

    * ``{prefix}/{split}/balanced_error``, ``worst_class_error``, ``error`` and ``class_error_{k}`` for every class;
    * with group labels: ``{prefix}/{split}/worst_group_error`` (worst (group, class) cell) and ``group_error_{g}``;
    * ``{prefix}/num_samples``, ``{prefix}/effective_dimension`` (``d_eff``, 99% of the variance by default) and
      ``{prefix}/delta`` (the ``δ = d_eff / n`` used by ``thumb``, or the one given).

    Attributes:
        metrics: the flat ``name -> float`` dictionary described above.
        mode: the weight mode.
        loss: ``"square"`` or ``"ce"``.
        head: the refit head (float32, CPU).
        previous_head: the head before the refit (float32, CPU copy).
        weights: the loss weights used: ``(K,)`` per class, ``(G, K)`` per (group, class), or ``(N,)`` per sample
            (``downsample``).
        head_name: dotted name of the head in the module (``""`` if it is the module itself).
        class_errors: per split, the ``(K,)`` per-class errors of the refit head.
        written_back: whether the module's head now holds :attr:`head`.
    """

    metrics: dict[str, float]
    mode: str
    loss: str
    head: LinearHead
    previous_head: LinearHead
    weights: Tensor
    head_name: str = ""
    class_errors: dict[str, Tensor] = field(default_factory=dict)
    written_back: bool = True

    def __getitem__(self, key: str) -> float:
        return self.metrics[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.metrics)

    def __len__(self) -> int:
        return len(self.metrics)

    def __repr__(self) -> str:
        return f"LastLayerReport(mode={self.mode!r}, loss={self.loss!r}, metrics={len(self.metrics)} entries)"


# ----------------------------------------------------------------------------------------------------------------
# Resolving the feature hook and the head
# ----------------------------------------------------------------------------------------------------------------
def _linear_names(module: nn.Module) -> list[str]:
    return [name or "<module itself>" for name, sub in module.named_modules() if isinstance(sub, nn.Linear)]


def _resolve_head(module: nn.Module, head: nn.Linear | str | None) -> tuple[nn.Linear, str]:
    """The head as a submodule of ``module`` and its dotted name."""
    if head is None:
        getter = getattr(module, "autobalance_head", None)
        if not callable(getter):
            raise ValueError(
                f"Cannot find the last layer of {type(module).__name__}: pass head= (an nn.Linear submodule or its "
                f"dotted path; Linear layers in this module: {_linear_names(module)}) and optionally feature_fn=, or "
                "define autobalance_features(x) and autobalance_head() on the module (see LastLayerModule)."
            )
        head = getter()
        source = f"{type(module).__name__}.autobalance_head()"
    elif isinstance(head, str):
        try:
            head = module.get_submodule(head)
        except AttributeError as err:
            raise ValueError(
                f"head={head!r} is not a submodule of {type(module).__name__} ({err}); Linear layers in this module: "
                f"{_linear_names(module)}."
            ) from None
        source = f"head={head!r}"
    else:
        source = "head"
    if not isinstance(head, nn.Linear):
        raise TypeError(
            f"{source} must be an nn.Linear (the last layer), got {type(head).__name__}; Linear layers in this "
            f"module: {_linear_names(module)}."
        )
    for name, sub in module.named_modules():
        if sub is head:
            return head, name
    raise ValueError(
        f"{source} is an nn.Linear that is not a submodule of {type(module).__name__}: writing a refit head into it "
        f"would not change module(x). Pass the module's own last layer (Linear layers in this module: "
        f"{_linear_names(module)})."
    )


def _resolve_feature_fn(module: nn.Module, feature_fn: FeatureFn | None) -> FeatureFn | None:
    if feature_fn is not None:
        if not callable(feature_fn):
            raise TypeError(f"feature_fn must be a callable x -> (B, d) features, got {type(feature_fn).__name__}.")
        return feature_fn
    method = getattr(module, "autobalance_features", None)
    return method if callable(method) else None


class _TrainingFlags:
    """Put a module (all submodules) in eval mode and restore every submodule's own flag afterwards."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __enter__(self) -> None:
        self.flags = [(m, m.training) for m in self.module.modules()]
        self.module.eval()

    def __exit__(self, *exc: object) -> None:
        for m, flag in self.flags:
            m.training = flag


def _module_device(module: nn.Module) -> torch.device:
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


def _unpack(batch: Any, index: int) -> tuple[Any, Tensor, Tensor | None]:
    if not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
        kind = type(batch).__name__ + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else "")
        raise ValueError(
            f"batch {index} is a {kind}; last-layer retraining expects (x, y) or (x, y, g) batches: map your "
            "batches to that form (e.g. a wrapping generator) before passing the loader."
        )
    x, y, *rest = batch
    return x, y, rest[0] if rest else None


def _labels(values: Any, n: int, name: str, index: int) -> Tensor:
    values = torch.as_tensor(values)
    if values.is_floating_point() or values.is_complex() or values.dtype == torch.bool:
        raise ValueError(f"batch {index}: {name} must hold integer labels, got dtype {values.dtype}.")
    values = values.reshape(-1) if values.ndim == 2 and values.shape[1] == 1 else values
    if values.ndim != 1 or values.shape[0] != n:
        raise ValueError(
            f"batch {index}: {name} has shape {tuple(values.shape)} but the features have {n} rows; pass one label "
            "per sample."
        )
    return values.detach().to("cpu", torch.long)


def _check_feature_block(block: Any, index: int, where: str) -> Tensor:
    if not isinstance(block, Tensor):
        raise TypeError(f"batch {index}: {where} returned a {type(block).__name__}, expected a (B, d) tensor.")
    if block.ndim != 2:
        raise ValueError(
            f"batch {index}: {where} returned features of shape {tuple(block.shape)}, expected (B, d); flatten them "
            "(e.g. feature_fn=lambda x: body(x).flatten(1)) or pass a head that reads 2-D features."
        )
    return block.detach().to("cpu", torch.float32)


def _consistent(outputs: Any, head: nn.Linear, block: Tensor) -> bool:
    if not isinstance(outputs, Tensor) or outputs.ndim != 2 or outputs.shape[0] != block.shape[0]:
        return True  # not comparable: nothing to check
    expected = head(block.to(head.weight.device, head.weight.dtype)).float().cpu()
    if outputs.shape != expected.shape:
        return False
    scale = float(expected.abs().max()) + 1e-6
    return bool((outputs.detach().float().cpu() - expected).abs().max() <= 1e-3 * scale)


def extract_features(
    module: nn.Module,
    loader: Iterable[Any],
    *,
    feature_fn: FeatureFn | None = None,
    head: nn.Linear | str | None = None,
    check_forward: bool = True,
) -> RetrainingFeatures:
    """Run the frozen backbone of ``module`` over ``loader`` and collect the last layer's input features.

    The module is put in eval mode and the features are computed under :func:`torch.no_grad`; the training flag of
    every submodule is restored afterwards. See the module docstring for how ``feature_fn`` and ``head`` are found.

    Args:
        module: the trained model.
        loader: an iterable of ``(x, y)`` or ``(x, y, g)`` batches (e.g. a :class:`~torch.utils.data.DataLoader`).
        feature_fn: ``x -> (B, d)`` features; default ``module.autobalance_features`` if defined, else the input of
            the head recorded by a forward pre-hook during ``module(x)``.
        head: the last layer (an :class:`torch.nn.Linear` submodule or its dotted path); default
            ``module.autobalance_head()``. Needed only when there is no feature function, and for the check.
        check_forward: on the first batch, warn if ``module(x)`` differs from ``head(features)``.

    Returns:
        The :class:`RetrainingFeatures` (float32 CPU features, int64 labels).

    Raises:
        ValueError: no feature function and no head, malformed batches, non-2-D features, features whose width is
            not the head's ``in_features``, an empty loader, or some batches with group labels and some without.
        TypeError: a map-style data set instead of a loader of batches.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
        >>> loader = [(torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1]))]
        >>> data = extract_features(net, loader, head="2")
        >>> data.features.shape, data.targets.tolist()
        (torch.Size([5, 6]), [0, 1, 2, 0, 1])
    """
    if isinstance(loader, Dataset) and not isinstance(loader, IterableDataset):
        raise TypeError(
            f"got a {type(loader).__name__} (a data set of single samples); pass batches, e.g. "
            "DataLoader(dataset, batch_size=256)."
        )
    fn = _resolve_feature_fn(module, feature_fn)
    layer: nn.Linear | None = None
    if fn is None or head is not None or callable(getattr(module, "autobalance_head", None)):
        layer, _ = _resolve_head(module, head)  # without a feature function the head is required: raises if absent

    captured: list[Tensor] = []

    def record(_: nn.Module, args: tuple[Any, ...]) -> None:
        captured.append(args[0])

    device = _module_device(module)
    features, targets, groups = [], [], []
    has_groups: bool | None = None
    handle = layer.register_forward_pre_hook(record) if fn is None and layer is not None else None
    try:
        with _TrainingFlags(module), torch.no_grad():
            for index, batch in enumerate(loader):
                x, y, g = _unpack(batch, index)
                x = move_data_to_device(x, device)
                if fn is None:
                    captured.clear()
                    outputs = module(x)
                    if len(captured) != 1:
                        raise ValueError(
                            f"batch {index}: the head was called {len(captured)} times during module(x); the forward "
                            "hook needs exactly one call per forward. Pass feature_fn= (x -> (B, d) features)."
                        )
                    block = _check_feature_block(captured[0], index, "the head's input")
                else:
                    block = _check_feature_block(fn(x), index, "the feature function")
                    outputs = None
                    if index == 0 and check_forward and layer is not None:
                        outputs = module(x)
                if layer is not None and block.shape[1] != layer.in_features:
                    raise ValueError(
                        f"batch {index}: the features have width {block.shape[1]} but the head has in_features="
                        f"{layer.in_features}; the feature function must return the head's input (pass the matching "
                        "feature_fn= / head=)."
                    )
                if index == 0 and check_forward and layer is not None and not _consistent(outputs, layer, block):
                    warnings.warn(
                        "module(x) differs from head(features) on the first batch: the module post-processes the "
                        "head's output, or the feature function / head are not the module's last layer and its "
                        "input. The refit head is still written back, but the reported errors are those of "
                        "head(features). Pass check_forward=False to silence this.",
                        UserWarning,
                        stacklevel=2,
                    )
                if has_groups is None:
                    has_groups = g is not None
                elif has_groups != (g is not None):
                    raise ValueError(
                        f"batch {index} {'has' if g is not None else 'lacks'} group labels unlike the first batch; "
                        "every batch must be (x, y) or every batch (x, y, g)."
                    )
                features.append(block)
                targets.append(_labels(y, block.shape[0], "y", index))
                if g is not None:
                    groups.append(_labels(g, block.shape[0], "g", index))
    finally:
        if handle is not None:
            handle.remove()
    if not features:
        raise ValueError("the loader yielded no batch; pass a non-empty retraining set.")
    return RetrainingFeatures(torch.cat(features), torch.cat(targets), torch.cat(groups) if groups else None)


# ----------------------------------------------------------------------------------------------------------------
# Retraining
# ----------------------------------------------------------------------------------------------------------------
def _check_options(mode: str, loss: str, ridge: float, variance: float, max_weight: float) -> None:
    if mode not in MODES + GROUP_MODES:
        raise ValueError(f"mode must be one of {MODES + GROUP_MODES}, got {mode!r}.")
    if loss not in ("square", "ce"):
        raise ValueError(f"loss must be 'square' (the paper's, closed form) or 'ce', got {loss!r}.")
    if not (math.isfinite(float(ridge)) and float(ridge) >= 0):
        raise ValueError(f"ridge must be a finite number >= 0, got {ridge}.")
    if not 0.0 < float(variance) <= 1.0:
        raise ValueError(f"variance must be in (0, 1], got {variance}.")
    if not (math.isfinite(float(max_weight)) and float(max_weight) >= 1):
        raise ValueError(f"max_weight must be a finite number >= 1, got {max_weight}.")


def _declared_classes(module: nn.Module, num_classes: int | None) -> tuple[int | None, str]:
    if num_classes is not None:
        return int(num_classes), "num_classes"
    hparams = getattr(module, "hparams", None)
    if isinstance(hparams, Mapping) and isinstance(hparams.get("num_classes"), int):
        return int(hparams["num_classes"]), f"{type(module).__name__}.hparams.num_classes"
    return None, ""


def _check_retraining_set(data: RetrainingFeatures, head: nn.Linear, k: int, name: str) -> None:
    if data.features.ndim != 2 or data.features.shape[0] != data.targets.shape[0]:
        raise ValueError(
            f"{name}: features of shape {tuple(data.features.shape)} do not match {data.targets.shape[0]} labels."
        )
    if data.features.shape[1] != head.in_features:
        raise ValueError(
            f"{name}: the features have width {data.features.shape[1]} but the head has in_features="
            f"{head.in_features}; the feature function must return the head's input (pass the matching "
            "feature_fn= / head=)."
        )
    lo, hi = int(data.targets.min()), int(data.targets.max())
    if lo < 0 or hi >= k:
        raise ValueError(
            f"{name}: labels span [{lo}, {hi}] but the head has out_features={k} (one output per class); remap the "
            "labels to 0..K-1 or pass the right head."
        )
    if data.groups is not None and int(data.groups.min()) < 0:
        raise ValueError(f"{name}: group labels must be >= 0.")


def _errors(
    head: LinearHead, data: RetrainingFeatures, k: int, num_groups: int, prefix: str
) -> tuple[dict[str, float], Tensor]:
    preds = head.predict(data.features)
    with warnings.catch_warnings():  # classes absent from an evaluation set: nan, as in the metrics module
        warnings.simplefilter("ignore", UserWarning)
        per_class = class_errors(preds, data.targets, num_classes=k)
        out = {
            f"{prefix}/balanced_error": float(balanced_error(preds, data.targets, num_classes=k)),
            f"{prefix}/worst_class_error": float(worst_class_error(preds, data.targets, num_classes=k)),
            f"{prefix}/error": float((preds != data.targets).double().mean()),
        }
        out.update({f"{prefix}/class_error_{c}": float(v) for c, v in enumerate(per_class.tolist())})
        if data.groups is not None:
            kwargs = {"num_classes": k, "num_groups": num_groups}
            out[f"{prefix}/worst_group_error"] = float(worst_group_error(preds, data.targets, data.groups, **kwargs))
            per_group = group_errors(preds, data.targets, data.groups, **kwargs)
            out.update({f"{prefix}/group_error_{g}": float(v) for g, v in enumerate(per_group.tolist())})
    return out, per_class


def _current_head(head: nn.Linear) -> LinearHead:
    weight = head.weight.detach().to("cpu", torch.float32).clone()
    bias = torch.zeros(head.out_features) if head.bias is None else head.bias.detach().to("cpu", torch.float32).clone()
    return LinearHead(weight, bias)


def write_head(layer: nn.Linear, head: LinearHead) -> None:
    """Copy a :class:`LinearHead` into ``layer`` in place (its device and dtype are kept).

    In-place copies keep every reference to the layer's parameters (optimizers, hooks, tied weights) valid.

    Args:
        layer: the module's last layer.
        head: the head to write, with the same shape.

    Raises:
        ValueError: if the shapes differ, or the head has a non-zero bias and the layer has none.
    """
    if tuple(head.weight.shape) != tuple(layer.weight.shape):
        raise ValueError(f"head weight {tuple(head.weight.shape)} does not fit layer {tuple(layer.weight.shape)}.")
    if layer.bias is None and bool(head.bias.abs().max() > 0):
        raise ValueError("the layer has no bias but the head has a non-zero one; refit with fit_intercept=False.")
    with torch.no_grad():
        layer.weight.copy_(head.weight)
        if layer.bias is not None:
            layer.bias.copy_(head.bias)


def retrain_last_layer(
    module: nn.Module,
    data: Data,
    mode: str = "thumb",
    *,
    loss: Literal["square", "ce"] = "square",
    ridge: float = 0.0,
    variance: float = 0.99,
    delta: float | None = None,
    max_weight: float = DEFAULT_MAX_WEIGHT,
    bilevel: Mapping[str, Any] | None = None,
    group_head: Mapping[str, Any] | None = None,
    seed: int = 0,
    feature_fn: FeatureFn | None = None,
    head: nn.Linear | str | None = None,
    num_classes: int | None = None,
    num_groups: int | None = None,
    use_groups: bool = True,
    eval_data: Data | None = None,
    write_back: bool = True,
    log: bool = True,
    prefix: str = "llr",
    max_iter: int = 1000,
    check_forward: bool = True,
) -> LastLayerReport:
    """Refit the last layer of a trained ``module`` on a retraining set with class weights, and write it back.

    Steps: extract the features of ``data`` (unless they are given as :class:`RetrainingFeatures`), compute the loss
    weights with :func:`~lightning_autobalance.llr.class_weights_for_mode`, fit the head with
    :func:`~lightning_autobalance.llr.fit_last_layer` (square loss in closed form by default, as in the paper), copy
    it into the module's head in place, and report the per-class (and per-group) errors before and after on the
    retraining set and on ``eval_data``.

    Modes: ``none`` (unweighted), ``priors`` (inverse class frequency), ``thumb`` ("Thumb on the Scale":
    finite-sample correction of the priors with ``δ = d_eff / n``), ``downsample`` (subsample every class, or every
    (group, class) cell, to the smallest), ``bilevel`` (weights tuned on a split of the retraining set with the exact
    hypergradient; options in ``bilevel``).

    Args:
        module: the trained model (its backbone is not modified).
        data: the retraining set: an iterable of ``(x, y)`` / ``(x, y, g)`` batches, or :class:`RetrainingFeatures`.
        mode: ``"none"``, ``"priors"``, ``"thumb"`` (default), ``"downsample"`` or ``"bilevel"``; or the group
            robustness baselines ``"dfr"`` / ``"afr"`` (:func:`~lightning_autobalance.group_last_layer.dfr_head` /
            :func:`~lightning_autobalance.group_last_layer.afr_head`, which fit the logistic head themselves: ``loss``
            and ``ridge`` do not apply; AFR starts from and is pulled towards the module's current head).
        loss: ``"square"`` (default) or ``"ce"``.
        ridge: L2 penalty of the head's weights (losses are sums over samples); needed when ``n ≤ d``, e.g. with
            ``downsample`` on a long-tailed set.
        variance: variance fraction defining ``d_eff`` (``thumb``).
        delta: explicit ``δ`` for ``thumb`` instead of ``d_eff / n``.
        max_weight: cap of the binary ``thumb`` weight ratio when ``δ ≥ 2π`` (with K ≥ 3 classes ``thumb`` caps each
            class's correction at :data:`~lightning_autobalance.llr.DEFAULT_MAX_CORRECTION` × its inverse-prior weight).
        bilevel: keyword arguments of :func:`~lightning_autobalance.llr.bilevel_weights` (``per``, ``objective``,
            ``val_loss``, ``val_fraction``, ``steps``, ``lr``, ``temperature``, ``init``); ``ridge`` and
            ``fit_intercept`` default to those of the final fit.
        group_head: keyword arguments of ``dfr_head`` / ``afr_head`` (e.g. ``C_grid``, ``num_subsamples``,
            ``gamma_grid``, ``l2``, ``selection_metric``); their metrics ``{prefix}/{mode}/<param>`` (the chosen
            hyperparameters) and ``{prefix}/{mode}/selection_score`` are added to the report.
        seed: seed of ``downsample``, of the ``bilevel`` split and of ``dfr`` / ``afr``.
        feature_fn: ``x -> (B, d)`` features (see the module docstring).
        head: the last layer, an :class:`torch.nn.Linear` submodule or its dotted path, e.g. ``"net.head"``.
        num_classes: expected number of classes (default ``module.hparams.num_classes`` if present); must equal the
            head's ``out_features``.
        num_groups: number of groups for the group metrics (default: largest group label + 1).
        use_groups: use the group labels of ``(x, y, g)`` batches for ``downsample`` / ``bilevel`` and the metrics.
        eval_data: optional evaluation set (loader or :class:`RetrainingFeatures`), e.g. a validation loader.
        write_back: copy the refit head into the module (else only return it).
        log: log the metrics to the module's loggers when it is attached to a trainer.
        prefix: prefix of the metric names.
        max_iter: L-BFGS iterations for ``loss="ce"``.
        check_forward: warn if ``module(x) != head(features)`` on the first batch.

    Returns:
        A :class:`LastLayerReport` (a mapping of the flat metrics, plus the head and the weights).

    Raises:
        ValueError: bad options; no head found; features whose width differs from the head's ``in_features``; a
            head whose ``out_features`` differs from the number of classes; a class with no sample in the
            retraining set (including a single class); the errors of :mod:`lightning_autobalance.llr`.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> net = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 2))
        >>> x = torch.randn(200, 2)
        >>> y = (x[:, 0] > 1.0).long()  # about 16% minority
        >>> report = retrain_last_layer(net, [(x, y)], "priors", head="2")
        >>> report.mode, report.weights.shape, report["llr/retrain/balanced_error"] < 0.2
        ('priors', torch.Size([2]), True)
        >>> bool(torch.allclose(net(x), report.head(net[:2](x)), atol=1e-5))  # module(x) uses the refit head
        True
    """
    _check_options(mode, loss, ridge, variance, max_weight)
    layer, head_name = _resolve_head(module, head)
    declared, source = _declared_classes(module, num_classes)
    k = layer.out_features
    if declared is not None and declared != k:
        raise ValueError(
            f"the head has out_features={k} but {source}={declared}: the head must have one output per class; "
            "pass the right head= or num_classes=."
        )
    if k < 2:
        raise ValueError(f"the head has out_features={k}; last-layer retraining needs one output per class (K >= 2).")

    def features_of(source_data: Data, name: str) -> RetrainingFeatures:
        if isinstance(source_data, RetrainingFeatures):
            out = source_data
        else:
            out = extract_features(module, source_data, feature_fn=feature_fn, head=layer, check_forward=check_forward)
        _check_retraining_set(out, layer, k, name)
        return out if use_groups else RetrainingFeatures(out.features, out.targets, None)

    train = features_of(data, "retraining set")
    counts = torch.bincount(train.targets, minlength=k)
    present = torch.nonzero(counts).flatten().tolist()
    if len(present) < 2:
        raise ValueError(
            f"only one class ({present}) in the retraining set of {len(train)} samples; it needs samples of every "
            "class (a stratified held-out split, e.g. HeldOutSplit or stratified_split, guarantees that)."
        )
    absent = torch.nonzero(counts == 0).flatten().tolist()
    if absent:
        raise ValueError(
            f"classes {absent} have no sample in the retraining set of {len(train)} samples; the refit head could "
            "never predict them. Use a stratified held-out split (HeldOutSplit, stratified_split) or a larger one."
        )
    evaluation = None if eval_data is None else features_of(eval_data, "eval_data")

    n = len(train)
    d_eff = effective_dimension(train.features, variance)
    used_delta = d_eff / n if delta is None else float(delta)
    fit_intercept = layer.bias is not None
    group_metrics: dict[str, float] = {}
    if mode in GROUP_MODES:
        new_head, weights, group_metrics = _fit_group_head(mode, train, layer, k, seed, group_head, prefix)
        loss = "ce"  # both baselines fit a logistic (cross-entropy) head
    else:
        bilevel_kwargs = dict(bilevel or {})
        bilevel_kwargs.setdefault("ridge", ridge)
        bilevel_kwargs.setdefault("fit_intercept", fit_intercept)
        weights = class_weights_for_mode(
            mode,  # type: ignore[arg-type]
            train.targets,
            train.features,
            train.groups,
            num_classes=k,
            variance=variance,
            delta=used_delta,
            max_weight=max_weight,
            seed=seed,
            bilevel_kwargs=bilevel_kwargs,
        )
        new_head = fit_last_layer(
            train.features,
            train.targets,
            train.groups,
            weights,
            loss=loss,
            ridge=ridge,
            num_classes=k,
            fit_intercept=fit_intercept,
            max_iter=max_iter,
        )
    old_head = _current_head(layer)

    groups_seen = [s.groups for s in (train, evaluation) if s is not None and s.groups is not None]
    g_count = num_groups if num_groups is not None else max((int(g.max()) + 1 for g in groups_seen), default=1)
    metrics: dict[str, float] = {
        f"{prefix}/num_samples": float(n),
        f"{prefix}/effective_dimension": float(d_eff),
        f"{prefix}/delta": float(used_delta),
        **group_metrics,
    }
    per_class: dict[str, Tensor] = {}
    for split, split_data in (("retrain", train), ("eval", evaluation)):
        if split_data is None:
            continue
        after, per_class[split] = _errors(new_head, split_data, k, g_count, f"{prefix}/{split}")
        before, _ = _errors(old_head, split_data, k, g_count, f"{prefix}/{split}_before")
        metrics.update(after)
        metrics.update(before)

    if write_back:
        write_head(layer, new_head)
    report = LastLayerReport(
        metrics=metrics,
        mode=mode,
        loss=loss,
        head=new_head,
        previous_head=old_head,
        weights=weights,
        head_name=head_name,
        class_errors=per_class,
        written_back=write_back,
    )
    if log:
        _log(module, report)
    return report


def _fit_group_head(
    mode: str,
    train: RetrainingFeatures,
    layer: nn.Linear,
    k: int,
    seed: int,
    options: Mapping[str, Any] | None,
    prefix: str,
) -> tuple[LinearHead, Tensor, dict[str, float]]:
    """The DFR / AFR head of the retraining set, its per-sample weights, and the chosen hyperparameters as metrics."""
    kwargs = dict(options or {})
    kwargs.setdefault("seed", seed)
    x = train.features.to(torch.float64)
    if mode == "dfr":
        if layer.bias is None:
            raise ValueError("mode='dfr' needs a head with a bias (it standardises the features); use mode='afr'.")
        weight, bias, report = dfr_head(x, train.targets, train.groups, num_classes=k, **kwargs)
    else:
        kwargs.setdefault("fit_intercept", layer.bias is not None)
        weight, bias, report = afr_head(
            x,
            train.targets,
            None,
            train.groups,
            init_weight=layer.weight.detach().to("cpu", torch.float64),
            init_bias=None if layer.bias is None else layer.bias.detach().to("cpu", torch.float64),
            **kwargs,
        )
    metrics = {f"{prefix}/{mode}/{name}": float(value) for name, value in report.params.items()}
    if report.scores:
        metrics[f"{prefix}/{mode}/selection_score"] = max(score for _, score in report.scores)
    assert report.sample_weights is not None
    return LinearHead(weight.float(), bias.float()), report.sample_weights, metrics


def _log(module: nn.Module, report: LastLayerReport) -> None:
    """Send the metrics to the module's loggers (Lightning loggers log on rank 0 only)."""
    if not isinstance(module, pl.LightningModule) or module._trainer is None:
        return
    step = module._trainer.global_step
    for logger in module.loggers:
        logger.log_metrics(dict(report.metrics), step=step)


# ----------------------------------------------------------------------------------------------------------------
# Callback
# ----------------------------------------------------------------------------------------------------------------
class LastLayerRetraining(Callback):
    """Retrain the last layer with class weights at the end of ``trainer.fit`` (or on demand with :meth:`retrain`).

    Runs :func:`retrain_last_layer` in ``on_train_end``: the last hook of the fit loop, where the module is still on
    its device and the loggers are open (by ``on_fit_end`` Lightning has torn down the strategy and moved the module
    to the CPU). The refit head is written into the module, so a following ``trainer.test(model)`` or checkpoint
    uses it. Every rank fits the same head from the same (unsharded) retraining loader; under DDP rank 0's head is
    then broadcast so the ranks stay bit-identical. The metrics go to the trainer's loggers (rank 0) and the last
    report is kept in :attr:`report`. No state is saved in checkpoints: the result lives in the module's weights.

    Args:
        dataloader: the retraining set: a loader of ``(x, y)`` / ``(x, y, g)`` batches, or the name of a datamodule
            loader: ``"heldout"`` (default; :meth:`HeldOutSplit.heldout_dataloader`), ``"val"``, ``"test"`` or
            ``"train"``. Retraining on the data the backbone was trained on defeats the purpose of LLR.
        eval_dataloader: optional evaluation loader or loader name, e.g. ``"val"``, for the report.
        mode: weight mode: ``"none"``, ``"priors"``, ``"thumb"`` (default), ``"downsample"``, ``"bilevel"``, or the
            baselines ``"dfr"`` / ``"afr"`` (see :func:`retrain_last_layer`).
        loss: ``"square"`` (default) or ``"ce"``.
        ridge: L2 penalty of the head.
        variance: variance fraction of ``d_eff`` (``thumb``).
        delta: explicit ``δ`` for ``thumb``.
        max_weight: cap of the binary ``thumb`` weight ratio (see :func:`retrain_last_layer`).
        bilevel: options of :func:`~lightning_autobalance.llr.bilevel_weights`.
        group_head: options of :func:`~lightning_autobalance.group_last_layer.dfr_head` /
            :func:`~lightning_autobalance.group_last_layer.afr_head` (modes ``dfr`` / ``afr``).
        seed: seed of ``downsample`` / ``bilevel``.
        feature_fn: ``x -> (B, d)`` features (default: the module's ``autobalance_features`` or a forward hook).
        head: the last layer or its dotted path (default: the module's ``autobalance_head()``).
        use_groups: use the group labels of ``(x, y, g)`` batches.
        run_on_train_end: retrain automatically at the end of ``trainer.fit``; ``False`` to call :meth:`retrain`
            yourself (e.g. after loading the best checkpoint).
        prefix: prefix of the logged metric names.

    Example:
        >>> callback = LastLayerRetraining(mode="thumb", head="net.head", ridge=1.0)
        >>> callback.mode, callback.dataloader
        ('thumb', 'heldout')
    """

    def __init__(
        self,
        dataloader: Iterable[Any] | str = "heldout",
        eval_dataloader: Iterable[Any] | str | None = None,
        *,
        mode: str = "thumb",
        loss: Literal["square", "ce"] = "square",
        ridge: float = 0.0,
        variance: float = 0.99,
        delta: float | None = None,
        max_weight: float = DEFAULT_MAX_WEIGHT,
        bilevel: Mapping[str, Any] | None = None,
        group_head: Mapping[str, Any] | None = None,
        seed: int = 0,
        feature_fn: FeatureFn | None = None,
        head: nn.Linear | str | None = None,
        use_groups: bool = True,
        run_on_train_end: bool = True,
        prefix: str = "llr",
    ) -> None:
        super().__init__()
        _check_options(mode, loss, ridge, variance, max_weight)
        for name, value in (("dataloader", dataloader), ("eval_dataloader", eval_dataloader)):
            if isinstance(value, str) and value not in LOADER_NAMES:
                raise ValueError(f"{name}={value!r} is not a loader name; use one of {LOADER_NAMES} or pass a loader.")
        if dataloader is None:
            raise ValueError(f"dataloader is required: a loader of the retraining set or a name in {LOADER_NAMES}.")
        self.dataloader, self.eval_dataloader = dataloader, eval_dataloader
        self.mode, self.loss, self.ridge, self.variance, self.delta = mode, loss, ridge, variance, delta
        self.max_weight, self.bilevel, self.seed = max_weight, dict(bilevel or {}), seed
        self.group_head = dict(group_head or {})
        self.feature_fn, self.head, self.use_groups = feature_fn, head, use_groups
        self.run_on_train_end, self.prefix = run_on_train_end, prefix
        self.report: LastLayerReport | None = None

    @staticmethod
    def _loader(trainer: pl.Trainer, spec: Iterable[Any] | str, what: str) -> Iterable[Any]:
        if not isinstance(spec, str):
            return spec
        datamodule = trainer.datamodule
        method = getattr(datamodule, f"{spec}_dataloader", None)
        if datamodule is None or not callable(method):
            hint = " (wrap the datamodule in HeldOutSplit)" if spec == "heldout" else ""
            raise ValueError(
                f"{what}={spec!r} needs a datamodule with a {spec}_dataloader() method{hint}, got "
                f"{type(datamodule).__name__}; or pass a loader."
            )
        loader = method()
        if isinstance(loader, Sequence) and loader and not isinstance(loader[0], Tensor):
            if len(loader) > 1:
                rank_zero_info(
                    f"LastLayerRetraining: {spec}_dataloader() returned {len(loader)} loaders; using the first."
                )
            loader = loader[0]
        return loader

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.run_on_train_end:
            self.retrain(trainer, pl_module)

    def retrain(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> LastLayerReport:
        """Refit the head of ``pl_module`` now, write it back, log and return the report.

        Must be called on every rank under DDP (it broadcasts the head from rank 0).
        """
        loader = self._loader(trainer, self.dataloader, "dataloader")
        eval_loader = None if self.eval_dataloader is None else self._loader(trainer, self.eval_dataloader, "eval")
        report = retrain_last_layer(
            pl_module,
            loader,
            self.mode,
            loss=self.loss,
            ridge=self.ridge,
            variance=self.variance,
            delta=self.delta,
            max_weight=self.max_weight,
            bilevel=self.bilevel,
            group_head=self.group_head,
            seed=self.seed,
            feature_fn=self.feature_fn,
            head=self.head,
            use_groups=self.use_groups,
            eval_data=eval_loader,
            write_back=True,
            log=False,
            prefix=self.prefix,
        )
        if trainer.world_size > 1:
            weight, bias = trainer.strategy.broadcast((report.head.weight, report.head.bias), src=0)
            layer, _ = _resolve_head(pl_module, self.head)
            write_head(layer, LinearHead(weight, bias))
        for logger in trainer.loggers:
            logger.log_metrics(dict(report.metrics), step=trainer.global_step)
        summary = ", ".join(
            f"{name.rsplit('/', 1)[-1]} {report.metrics[f'{self.prefix}/{split}_before/{name}']:.3f} -> "
            f"{report.metrics[f'{self.prefix}/{split}/{name}']:.3f}"
            for split in ("retrain", "eval")
            if f"{self.prefix}/{split}/balanced_error" in report.metrics
            for name in ("balanced_error", "worst_class_error")
        )
        rank_zero_info(f"LastLayerRetraining(mode={self.mode!r}, loss={self.loss!r}) on {report.head_name}: {summary}")
        self.report = report
        return report
