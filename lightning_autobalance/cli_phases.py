"""The phases of the command-line app (:mod:`lightning_autobalance.cli`) and the context they share.

Every phase trains one model the same way: it logs what it does, starts a clock and seeds everything
(:meth:`PhaseContext.start`), builds a model (:meth:`PhaseContext.model`) and a Trainer (:meth:`PhaseContext.trainer`,
with the ``logger`` group's log ``<run dir>/logs/<phase>/``), trains, and ends with :meth:`PhaseContext.finish`:
the time taken, the test report recorded under the phase's table label, the ``phase <name>: done in`` log line and,
with ``save_logits=true``, ``logits_<phase>.npz``. The phases are :func:`baseline_phase`, :func:`search_phase`,
:func:`retrain_phase`, :func:`jtt_phase` and :func:`llr_phase`; progress goes to the app's logger
(``lightning_autobalance.cli``) on the process of rank zero.

Example:
    >>> from omegaconf import OmegaConf
    >>> loss_label(OmegaConf.create({"loss": {"preset": "ldam", "drw_epoch": 20}}))
    'LDAM-DRW'
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import lightning.pytorch as pl
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from lightning_autobalance.callback import AutoBalance
from lightning_autobalance.classifier import ImbalancedClassifier
from lightning_autobalance.data.split import HeldOutSplit
from lightning_autobalance.jtt import jtt
from lightning_autobalance.last_layer import LastLayerRetraining
from lightning_autobalance.launch import HydraJobDDPStrategy
from lightning_autobalance.learned_loss import load_loss
from lightning_autobalance.losses import ParametricCrossEntropy
from lightning_autobalance.report import save_logits, test_report

__all__ = [
    "SEARCH_LABEL",
    "PhaseContext",
    "SearchOutcome",
    "baseline_label",
    "baseline_phase",
    "jtt_phase",
    "llr_phase",
    "loss_label",
    "make_logger",
    "make_trainer",
    "progress_bar_enabled",
    "retrain_phase",
    "say",
    "search_phase",
]

log = logging.getLogger("lightning_autobalance.cli")  # the app's logger: Hydra's job log holds its lines

SEARCH_LABEL = "AutoBalance (search model)"  # table label of the search phase; main() returns its held-out error


def progress_bar_enabled(setting: bool | None, stream: TextIO | None = None) -> bool:
    """Whether the Trainer shows a progress bar: ``setting`` when given, else only when ``stream`` is a terminal.

    Lightning's progress bars (Rich and tqdm) draw on standard output, so ``stream`` defaults to ``sys.stdout``: a job
    redirected to a file (``> log.txt``) gets no bar refreshes, a terminal gets the bar.

    Args:
        setting: ``trainer.enable_progress_bar``: ``True`` / ``False`` force it; ``None`` decides from ``stream``.
        stream: the stream the bar would draw on; ``None`` for ``sys.stdout``.

    Example:
        >>> import io
        >>> progress_bar_enabled(None, io.StringIO()), progress_bar_enabled(True, io.StringIO())
        (False, True)
    """
    if setting is not None:
        return bool(setting)
    stream = sys.stdout if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return bool(isatty is not None and isatty())


def make_logger(cfg: DictConfig, out: Path, phase: str) -> Logger | bool:
    """The ``logger`` group's logger for ``phase``: ``<out>/logs/<phase>/version_0/``; ``False`` without a group."""
    if cfg.get("logger") is None:
        return False
    return instantiate(cfg.logger, save_dir=str(out / "logs"), name=phase)


def make_trainer(
    cfg: DictConfig, out: Path, phase: str, max_epochs: int, callbacks: list[Any] | None = None
) -> pl.Trainer:
    """The Trainer of ``phase``: the ``trainer`` group's options, ``max_epochs``, ``callbacks`` and the phase's log."""
    options: dict[str, Any] = OmegaConf.to_container(cfg.trainer, resolve=True)  # type: ignore[assignment]
    if options.get("strategy") == "ddp" and HydraConfig.initialized():
        options["strategy"] = HydraJobDDPStrategy()  # workers re-run this job, not the whole sweep
    options["enable_progress_bar"] = progress_bar_enabled(options.get("enable_progress_bar"))
    return pl.Trainer(
        **options,
        max_epochs=max_epochs,
        callbacks=callbacks or [],
        logger=make_logger(cfg, out, phase),
        default_root_dir=out,
    )


@rank_zero_only
def say(message: str, *args: Any) -> None:
    """``log.info`` on the process of rank zero only (DDP workers stay quiet)."""
    log.info(message, *args)


def loss_label(cfg: DictConfig) -> str:
    """Table label of the ``loss`` group's loss, e.g. ``CE``, ``LA``, ``LDAM-DRW``, ``GROUP-DRO``."""
    name = cfg.loss.get("preset") or cfg.loss.get("name") or "baseline"
    label = str(name).upper().replace("_", "-")
    return f"{label}-DRW" if cfg.loss.get("drw_epoch") is not None else label


def baseline_label(cfg: DictConfig) -> str:
    """Table label of the baseline phase, e.g. ``CE``, ``LA``, ``CE + group-balanced subsample``."""
    resample = cfg.get("resample")
    if resample is None:
        return loss_label(cfg)
    return f"{loss_label(cfg)} + {'group' if resample.get('over') == 'group' else 'group-balanced'} subsample"


@dataclass
class PhaseContext:
    """What every phase of a run shares: the config, the run directory, the data, and the results gathered so far.

    Attributes:
        cfg: the composed config.
        out: the run directory (logs, logits, the report).
        datamodule: the set-up datamodule every phase trains and tests on.
        results: table label → test report of every finished phase.
        timings: phase → wall and CPU seconds.
    """

    cfg: DictConfig
    out: Path
    datamodule: Any
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    timings: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        """The datamodule's number of classes."""
        return int(self.datamodule.num_classes)

    @property
    def num_groups(self) -> int:
        """The datamodule's number of groups (1 without groups)."""
        return int(getattr(self.datamodule, "num_groups", 1))

    @property
    def keep_logits(self) -> bool:
        """Whether the phases write their logits (``save_logits=true``)."""
        return bool(self.cfg.get("save_logits", False))

    def start(self) -> tuple[float, float]:
        """Start a phase's clock (wall, CPU) and seed everything with ``cfg.seed``."""
        clock = time.perf_counter(), time.process_time()
        pl.seed_everything(self.cfg.seed, workers=True)
        return clock

    def model(self) -> ImbalancedClassifier:
        """A fresh model: the ``model`` group's network in an :class:`ImbalancedClassifier` with the ``optimizer``."""
        net = instantiate(self.cfg.model, num_classes=self.num_classes)
        return ImbalancedClassifier(net, num_classes=self.num_classes, num_groups=self.num_groups, **self.cfg.optimizer)

    def trainer(self, phase: str, max_epochs: int, callbacks: list[Any] | None = None) -> pl.Trainer:
        """The Trainer of ``phase`` (see :func:`make_trainer`)."""
        return make_trainer(self.cfg, self.out, phase, max_epochs, callbacks)

    def test_report(self, model: pl.LightningModule, loader: Any) -> dict[str, Any]:
        """:func:`~lightning_autobalance.report.test_report` of ``model`` on ``loader``."""
        return test_report(model, loader, self.num_classes, self.num_groups)

    def finish(
        self,
        phase: str,
        label: str,
        model: pl.LightningModule,
        clock: tuple[float, float],
        extra: str = "",
        loaders: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """End ``phase``: its time, ``model``'s test report under ``label``, the log line and the logits.

        Args:
            phase: the phase's name (``timings`` key, ``logits_<phase>.npz``).
            label: the phase's row in the results table.
            model: the trained model.
            clock: what :meth:`start` returned.
            extra: appended to the ``done in`` log line (e.g. the hyper-step count).
            loaders: the loaders whose logits ``save_logits=true`` keeps; by default the test loader.

        Returns:
            The test report, recorded in ``results[label]``.
        """
        seconds = {"wall": round(time.perf_counter() - clock[0], 1), "cpu": round(time.process_time() - clock[1], 1)}
        self.timings[phase] = seconds
        test_loader = self.datamodule.test_dataloader()
        result = self.results[label] = self.test_report(model, test_loader)
        say(
            "phase %s: done in %.1f s wall (%.1f s CPU)%s; test balanced error %.2f %%, worst-class %.2f %%",
            phase, seconds["wall"], seconds["cpu"], extra, 100 * result["balanced_error"],
            100 * result["worst_class_error"],
        )  # fmt: skip
        if self.keep_logits:
            save_logits(model, loaders or {"test": test_loader}, self.out / f"logits_{phase}.npz")
        return result


@dataclass
class SearchOutcome:
    """What the search phase hands to the rest of the run.

    Attributes:
        trainer: the search's Trainer.
        learned: the learned loss, frozen.
        metrics: the search's CSV log (for the α trajectory plot); ``None`` with another logger.
    """

    trainer: pl.Trainer
    learned: ParametricCrossEntropy
    metrics: Path | None


def baseline_phase(ctx: PhaseContext) -> pl.Trainer:
    """The ``loss`` group's loss on all training data (or on the ``resample`` group's subsample of it)."""
    cfg, datamodule = ctx.cfg, ctx.datamodule
    data, loss_counts = datamodule, datamodule.class_counts.tolist()
    group_counts = getattr(datamodule, "group_class_counts", None)
    subsample = ""
    if cfg.get("resample") is not None:  # the loss sees the counts of the subsample it trains on
        data = instantiate(cfg.resample)(datamodule, seed=cfg.seed)
        data.setup("fit")
        loss_counts = data.class_counts.tolist()
        group_counts = data.group_class_counts if ctx.num_groups > 1 else None
        subsample = f" on a subsample of {sum(loss_counts)} training samples (cells {data.group_class_counts.tolist()})"
    say("phase baseline: training with the %s loss for %d epochs%s", loss_label(cfg), cfg.train.max_epochs, subsample)
    clock = ctx.start()
    model = ctx.model()
    model.autobalance_loss = instantiate(cfg.loss)(class_counts=loss_counts, group_counts=group_counts)
    trainer = ctx.trainer("baseline", cfg.train.max_epochs)
    trainer.fit(model, datamodule=data)
    ctx.finish("baseline", baseline_label(cfg), model, clock)
    return trainer


def search_phase(ctx: PhaseContext) -> SearchOutcome:
    """AutoBalance on a held-out split; the learned loss is written to ``<out>/autobalance_loss.yaml``."""
    cfg, datamodule = ctx.cfg, ctx.datamodule
    say(
        "phase search: AutoBalance for %d epochs (warm-up: %s epochs; a hyper-step every %s steps) on a %.0f %% "
        "held-out split", cfg.search.max_epochs, cfg.autobalance.get("warmup_epochs", "default"),
        cfg.autobalance.get("every_n_steps", "default"), 100 * cfg.search.heldout_fraction,
    )  # fmt: skip
    clock = ctx.start()
    export = ctx.out / "autobalance_loss.yaml"
    callback: AutoBalance = instantiate(cfg.autobalance, export_path=str(export), objective=instantiate(cfg.objective))
    model = ctx.model()
    split = HeldOutSplit(datamodule, fraction=cfg.search.heldout_fraction, seed=cfg.seed, num_classes=ctx.num_classes)
    trainer = ctx.trainer("search", cfg.search.max_epochs, [callback])
    trainer.fit(model, datamodule=split)
    # (with ddp_spawn the search ran in child processes: this process's callback has no count)
    steps = (
        f", {callback.hyper_steps} hyper-steps ({callback.skipped_steps} skipped)" if callback.loss is not None else ""
    )
    if callback.posthoc_tau is not None:
        steps += f", post-hoc τ = {callback.posthoc_tau:.3f}"
    loaders = {"test": datamodule.test_dataloader(), "heldout": split.heldout_dataloader()} if ctx.keep_logits else None
    result = ctx.finish("search", SEARCH_LABEL, model, clock, steps, loaders)
    result["heldout_balanced_error"] = ctx.test_report(model, split.heldout_dataloader())["balanced_error"]
    say("phase search: learned loss written to %s", export)
    # α is identical on every process; rank zero also wrote it to `export`. With ddp_spawn the search ran in child
    # processes, so this process only has the exported file.
    learned = callback.loss.frozen() if callback.loss is not None else load_loss(export)
    metrics = Path(trainer.logger.log_dir) / "metrics.csv" if isinstance(trainer.logger, CSVLogger) else None
    return SearchOutcome(trainer, learned, metrics)


def retrain_phase(ctx: PhaseContext, learned: ParametricCrossEntropy, source: str) -> pl.Trainer:
    """A fresh model on all training data with the ``learned`` loss, frozen (``source`` says where it comes from)."""
    cfg = ctx.cfg
    say("phase retrain: a fresh model with the loss %s, frozen, for %d epochs", source, cfg.train.max_epochs)
    clock = ctx.start()
    model = ctx.model()
    model.autobalance_loss = learned
    trainer = ctx.trainer("retrain", cfg.train.max_epochs)
    trainer.fit(model, datamodule=ctx.datamodule)
    ctx.finish("retrain", "AutoBalance", model, clock)
    return trainer


def jtt_phase(ctx: PhaseContext) -> pl.Trainer:
    """JTT on all training data: stage 1 (``jtt.stage1_epochs``, log ``jtt_stage1``), stage 2 (``train.max_epochs``)."""
    cfg = ctx.cfg
    stage1_epochs, upweight = int(cfg.jtt.stage1_epochs), int(cfg.jtt.upweight)
    say(
        "phase jtt: ERM for %d epochs, then a fresh model for %d epochs with its training errors up-sampled %d×",
        stage1_epochs, cfg.train.max_epochs, upweight,
    )  # fmt: skip
    clock = ctx.start()
    trainers: list[pl.Trainer] = []

    def trainer_factory(max_epochs: int) -> pl.Trainer:
        trainers.append(ctx.trainer("jtt_stage1" if not trainers else "jtt", max_epochs))
        return trainers[-1]

    model, report = jtt(
        ctx.model,
        ctx.datamodule,
        stage1_epochs=stage1_epochs,
        upweight=upweight,
        trainer_factory=trainer_factory,
        epochs=int(cfg.train.max_epochs),
        seed=int(cfg.seed),
    )
    extra = f", error set {report.error_set.numel()} of {report.num_train}"
    ctx.finish("jtt", "JTT", model, clock, extra)["error_set_size"] = int(report.error_set.numel())
    return trainers[-1]


def llr_phase(ctx: PhaseContext) -> pl.Trainer:
    """A model with the ``loss`` group's loss on the split's train part, its last layer refit by the ``llr`` group."""
    cfg = ctx.cfg
    callback: LastLayerRetraining = instantiate(cfg.llr)
    say(
        "phase llr: training with the %s loss for %d epochs on the train part of a %.0f %% held-out split, then the "
        "last layer refit (mode %s) on the %s data", loss_label(cfg), cfg.train.max_epochs,
        100 * cfg.search.heldout_fraction, callback.mode, callback.dataloader,
    )  # fmt: skip
    clock = ctx.start()
    split = HeldOutSplit(
        ctx.datamodule, fraction=cfg.search.heldout_fraction, seed=cfg.seed, num_classes=ctx.num_classes
    )
    split.setup("fit")
    model = ctx.model()
    group_counts = split.group_class_counts if ctx.num_groups > 1 else None
    model.autobalance_loss = instantiate(cfg.loss)(class_counts=split.class_counts.tolist(), group_counts=group_counts)
    trainer = ctx.trainer("llr", cfg.train.max_epochs, [callback])
    trainer.fit(model, datamodule=split)
    assert callback.report is not None  # set by on_train_end on every rank
    metrics = callback.report.metrics
    chosen = {
        k.rsplit("/", 1)[-1]: v for k, v in metrics.items() if k.startswith(f"{callback.prefix}/{callback.mode}/")
    }
    llr = {
        "retraining_set": callback.dataloader,
        "retraining_samples": int(metrics[f"{callback.prefix}/num_samples"]),
        **chosen,
    }
    extra = f", refit on {llr['retraining_samples']} {callback.dataloader} samples"
    extra += "".join(f", {name} {value:g}" for name, value in chosen.items() if name != "selection_score")
    ctx.finish("llr", f"{loss_label(cfg)} + last layer ({callback.mode})", model, clock, extra)["llr"] = llr
    return trainer
