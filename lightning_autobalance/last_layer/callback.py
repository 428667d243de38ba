"""The :class:`LastLayerRetraining` callback: last-layer retraining at the end of ``trainer.fit``, or on demand.

It runs :func:`~lightning_autobalance.last_layer.retrain_last_layer` on the held-out split of the datamodule (or any
loader), logs the report and keeps the head identical on every DDP rank.

Example:
    >>> callback = LastLayerRetraining("val", mode="priors", run_on_train_end=False)
    >>> callback.dataloader, callback.report is None, LOADER_NAMES
    ('val', True, ('heldout', 'train', 'val', 'test'))
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from lightning_autobalance.last_layer.head import resolve_head, write_head
from lightning_autobalance.last_layer.options import RefitOptions
from lightning_autobalance.last_layer.retrain import LastLayerReport, retrain_last_layer
from lightning_autobalance.llr import LinearHead
from lightning_autobalance.options import options_from, options_signature

__all__ = ["LOADER_NAMES", "LastLayerRetraining"]

LOADER_NAMES = ("heldout", "train", "val", "test")
OPTION_NAMES = frozenset(field.name for field in dataclasses.fields(RefitOptions))


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
        run_on_train_end: bool = True,
        **options: Any,
    ) -> None:
        super().__init__()
        self.options: RefitOptions = options_from(RefitOptions, "LastLayerRetraining", options)
        for name, value in (("dataloader", dataloader), ("eval_dataloader", eval_dataloader)):
            if isinstance(value, str) and value not in LOADER_NAMES:
                raise ValueError(f"{name}={value!r} is not a loader name; use one of {LOADER_NAMES} or pass a loader.")
        if dataloader is None:
            raise ValueError(f"dataloader is required: a loader of the retraining set or a name in {LOADER_NAMES}.")
        self.dataloader, self.eval_dataloader = dataloader, eval_dataloader
        self.run_on_train_end = run_on_train_end
        self.report: LastLayerReport | None = None

    def __getattr__(self, name: str) -> Any:
        """The refit settings read as attributes: ``callback.mode``, ``callback.prefix``, ... (see :attr:`options`)."""
        options = self.__dict__.get("options")
        if options is not None and name in OPTION_NAMES:
            return getattr(options, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

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
            pl_module, loader, **self.options.as_kwargs(), eval_data=eval_loader, write_back=True, log=False
        )
        if trainer.world_size > 1:
            weight, bias = trainer.strategy.broadcast((report.head.weight, report.head.bias), src=0)
            layer, _ = resolve_head(pl_module, self.options.head)
            write_head(layer, LinearHead(weight, bias))
        for logger in trainer.loggers:
            logger.log_metrics(dict(report.metrics), step=trainer.global_step)
        prefix, options = self.options.prefix, self.options
        summary = ", ".join(
            f"{name.rsplit('/', 1)[-1]} {report.metrics[f'{prefix}/{split}_before/{name}']:.3f} -> "
            f"{report.metrics[f'{prefix}/{split}/{name}']:.3f}"
            for split in ("retrain", "eval")
            if f"{prefix}/{split}/balanced_error" in report.metrics
            for name in ("balanced_error", "worst_class_error")
        )
        rank_zero_info(
            f"LastLayerRetraining(mode={options.mode!r}, loss={options.loss!r}) on {report.head_name}: {summary}"
        )
        self.report = report
        return report


LastLayerRetraining.__init__.__signature__ = options_signature(  # type: ignore[attr-defined]
    LastLayerRetraining.__init__, RefitOptions
)
