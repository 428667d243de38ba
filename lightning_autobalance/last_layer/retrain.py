"""The refit itself: :func:`retrain_last_layer` and its :class:`LastLayerReport`.

Features (extracted, or given as :class:`~lightning_autobalance.last_layer.RetrainingFeatures`), loss weights from
:func:`~lightning_autobalance.llr.class_weights_for_mode` (or the DFR / AFR baselines of
:mod:`lightning_autobalance.group_last_layer`), the fit, the write-back, and the errors before and after.

Example:
    >>> _ = torch.manual_seed(0)
    >>> net = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 2))
    >>> x = torch.randn(100, 2)
    >>> report = retrain_last_layer(net, [(x, (x[:, 0] > 0).long())], "none", head="2", write_back=False)
    >>> report.written_back, report.head_name, report["llr/num_samples"]
    (False, '2', 100.0)
    >>> check_options("thumb", "hinge", 0.0, 0.99, 10.0)
    Traceback (most recent call last):
        ...
    ValueError: loss must be 'square' (the paper's, closed form) or 'ce', got 'hinge'.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from lightning_autobalance.group_last_layer import GROUP_MODES, afr_head, dfr_head
from lightning_autobalance.last_layer.features import Data, RetrainingFeatures, extract_features
from lightning_autobalance.last_layer.head import current_head, resolve_head, write_head
from lightning_autobalance.last_layer.options import RefitOptions, check_options
from lightning_autobalance.llr import (
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
from lightning_autobalance.options import options_from, options_signature

__all__ = ["LastLayerReport", "check_options", "retrain_last_layer"]


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


def retrain_last_layer(
    module: nn.Module,
    data: Data,
    mode: str = "thumb",
    *,
    num_classes: int | None = None,
    num_groups: int | None = None,
    eval_data: Data | None = None,
    write_back: bool = True,
    log: bool = True,
    max_iter: int = 1000,
    check_forward: bool = True,
    **options: Any,
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
        **options: ``loss``, ``ridge``, ``variance``, ``delta``, ``max_weight``, ``bilevel``, ``group_head``, ``seed``,
            ``feature_fn``, ``head``, ``use_groups`` and ``prefix`` above (the fields of :class:`RefitOptions`).

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
    settings: RefitOptions = options_from(RefitOptions, "retrain_last_layer", {"mode": mode, **options})
    layer, head_name = resolve_head(module, settings.head)
    k = _number_of_classes(module, layer, num_classes)

    def features_of(source_data: Data, name: str) -> RetrainingFeatures:
        if isinstance(source_data, RetrainingFeatures):
            out = source_data
        else:
            fn = settings.feature_fn
            out = extract_features(module, source_data, feature_fn=fn, head=layer, check_forward=check_forward)
        _check_retraining_set(out, layer, k, name)
        return out if settings.use_groups else RetrainingFeatures(out.features, out.targets, None)

    train = features_of(data, "retraining set")
    _check_every_class_present(train, k)
    evaluation = None if eval_data is None else features_of(eval_data, "eval_data")

    d_eff = effective_dimension(train.features, settings.variance)
    used_delta = d_eff / len(train) if settings.delta is None else float(settings.delta)
    new_head, weights, fit_metrics, loss = _fit(settings, train, layer, k, used_delta, max_iter)
    old_head = current_head(layer)
    groups_seen = [s.groups for s in (train, evaluation) if s is not None and s.groups is not None]
    g_count = num_groups if num_groups is not None else max((int(g.max()) + 1 for g in groups_seen), default=1)
    prefix = settings.prefix
    metrics: dict[str, float] = {
        f"{prefix}/num_samples": float(len(train)),
        f"{prefix}/effective_dimension": float(d_eff),
        f"{prefix}/delta": float(used_delta),
        **fit_metrics,
    }
    per_class: dict[str, Tensor] = {}
    for split, split_data in (("retrain", train), ("eval", evaluation)):
        if split_data is not None:
            after, per_class[split] = _errors(new_head, split_data, k, g_count, f"{prefix}/{split}")
            metrics.update(after)
            metrics.update(_errors(old_head, split_data, k, g_count, f"{prefix}/{split}_before")[0])

    if write_back:
        write_head(layer, new_head)
    report = LastLayerReport(
        metrics, settings.mode, loss, new_head, old_head, weights, head_name, per_class, written_back=write_back
    )
    if log:
        _log(module, report)
    return report


retrain_last_layer.__signature__ = options_signature(retrain_last_layer, RefitOptions)  # type: ignore[attr-defined]


def _number_of_classes(module: nn.Module, layer: nn.Linear, num_classes: int | None) -> int:
    """The head's ``out_features``, checked against the declared number of classes (``K >= 2``)."""
    declared, source = _declared_classes(module, num_classes)
    k = layer.out_features
    if declared is not None and declared != k:
        raise ValueError(
            f"the head has out_features={k} but {source}={declared}: the head must have one output per class; "
            "pass the right head= or num_classes=."
        )
    if k < 2:
        raise ValueError(f"the head has out_features={k}; last-layer retraining needs one output per class (K >= 2).")
    return k


def _check_every_class_present(train: RetrainingFeatures, k: int) -> None:
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


def _fit(
    settings: RefitOptions, train: RetrainingFeatures, layer: nn.Linear, k: int, delta: float, max_iter: int
) -> tuple[LinearHead, Tensor, dict[str, float], str]:
    """The refit head, the loss weights, the metrics of the fit and the loss it minimised."""
    if settings.mode in GROUP_MODES:
        head, weights, metrics = _fit_group_head(
            settings.mode, train, layer, k, settings.seed, settings.group_head, settings.prefix
        )
        return head, weights, metrics, "ce"  # both baselines fit a logistic (cross-entropy) head
    fit_intercept = layer.bias is not None
    bilevel_kwargs = dict(settings.bilevel or {})
    bilevel_kwargs.setdefault("ridge", settings.ridge)
    bilevel_kwargs.setdefault("fit_intercept", fit_intercept)
    weights = class_weights_for_mode(
        settings.mode,  # type: ignore[arg-type]
        train.targets,
        train.features,
        train.groups,
        num_classes=k,
        variance=settings.variance,
        delta=delta,
        max_weight=settings.max_weight,
        seed=settings.seed,
        bilevel_kwargs=bilevel_kwargs,
    )
    head = fit_last_layer(
        train.features,
        train.targets,
        train.groups,
        weights,
        loss=settings.loss,
        ridge=settings.ridge,
        num_classes=k,
        fit_intercept=fit_intercept,
        max_iter=max_iter,
    )
    return head, weights, {}, settings.loss


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


def _attached_trainer(module: nn.Module) -> pl.Trainer | None:
    """The trainer ``module`` is attached to, or ``None`` (not a LightningModule, not attached, or under Fabric)."""
    if not isinstance(module, pl.LightningModule):
        return None
    try:
        trainer = module.trainer
    except RuntimeError:  # "... is not attached to a `Trainer`."
        return None
    return trainer if isinstance(trainer, pl.Trainer) else None


def _log(module: nn.Module, report: LastLayerReport) -> None:
    """Send the metrics to the module's loggers (Lightning loggers log on rank 0 only)."""
    trainer = _attached_trainer(module)
    if trainer is None:
        return
    for logger in module.loggers:
        logger.log_metrics(dict(report.metrics), step=trainer.global_step)
