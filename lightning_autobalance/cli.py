"""Command-line app (Hydra): search → retrain → test, with a report table and plots.

``python -m lightning_autobalance`` (or the ``lightning-autobalance`` console script) runs on the offline
long-tailed MNIST-1D by default:

1. ``baseline`` — a hand-tuned loss from the ``loss`` config group (plain cross-entropy by default) trained on all
   training data;
2. ``search`` — the AutoBalance search phase on a stratified 80/20 train/held-out split; the learned loss is written
   to ``autobalance_loss.yaml``;
3. ``retrain`` — a fresh model trained on all training data with the learned loss frozen;

and, when ``phases`` lists them, the group-robustness baselines:

4. ``jtt`` — "Just Train Twice" (:func:`~lightning_autobalance.jtt.jtt`): an ERM model for ``jtt.stage1_epochs``,
   then a fresh model with its misclassified training samples up-sampled ``jtt.upweight`` times;
5. ``llr`` — a model with the ``loss`` group's loss on the train part of the held-out split, its last layer refit on
   the held-out part by the ``llr`` group (:class:`~lightning_autobalance.last_layer.LastLayerRetraining`: Thumb
   weights by default, ``llr=dfr`` or ``llr=afr``);

(``resample=group_subsample`` trains the baseline phase on a group-balanced subsample, ``loss=group_weighted`` and
``loss=group_dro`` choose the re-weighting and Group DRO baselines), then reports one table (balanced, worst-class and
overall test error of every trained model; with groups also worst-group error) and the learned per-class
Δ and ι, and writes ``results.md``, ``results.json``, ``per_class.png`` and ``alpha_trajectory.png`` (α per class
against the hyper-step, drawn from the search phase's CSV log) into the Hydra run directory. ``main`` returns the
search model's balanced error on the held-out split, the value Hydra sweepers minimise.

Output: progress and the report go through :mod:`logging` (logger ``lightning_autobalance.cli``), so Hydra's job log
``<run dir>/cli.log`` holds them and the console shows them; Lightning's informational lines (accelerator, seed and
tips) are lowered to warnings-only while the app runs; the progress bar is on only when the console is a terminal
(``trainer.enable_progress_bar: null``, see :func:`progress_bar_enabled`). Every phase logs its metrics with the
``logger`` config group (``logger=csv``, the default: ``<run dir>/logs/<phase>/version_0/metrics.csv``;
``logger=tensorboard``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import hydra
import lightning.pytorch as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from lightning_autobalance.callback import AutoBalance
from lightning_autobalance.classifier import ImbalancedClassifier
from lightning_autobalance.cli_checks import check_config, check_datamodule, check_plugins
from lightning_autobalance.data.split import HeldOutSplit
from lightning_autobalance.jtt import jtt
from lightning_autobalance.last_layer import LastLayerRetraining
from lightning_autobalance.launch import HydraJobDDPStrategy, finish_ddp_job
from lightning_autobalance.learned_loss import load_loss, write_text_atomic
from lightning_autobalance.losses import ParametricCrossEntropy
from lightning_autobalance.plots import plot_alpha_trajectory, plot_results
from lightning_autobalance.report import (  # noqa: F401 (re-exported: older scripts import them from the app)
    format_loss,
    format_table,
    format_timings,
    predict_labels,
    predict_logits,
    save_logits,
    test_report,
)

__all__ = ["hydra_main", "main", "progress_bar_enabled", "run"]

log = logging.getLogger(__name__)

# Lightning's loggers of informational lines (accelerator, seed, tips, "`Trainer.fit` stopped", distributed set-up),
# set to WARNING while the app runs: its warnings still show.
QUIET_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
    "lightning.fabric.utilities.seed",
    "lightning.fabric.utilities.distributed",
    "lightning.pytorch.accelerators.cuda",
)

# Logger classes (`logger._target_`) that need a package Lightning imports lazily: any one of the packages will do.
LOGGER_PACKAGES = {
    "lightning.pytorch.loggers.TensorBoardLogger": ("tensorboard", "tensorboardX"),
    "lightning.pytorch.loggers.tensorboard.TensorBoardLogger": ("tensorboard", "tensorboardX"),
}


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


def _installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def check_logger(cfg: DictConfig) -> None:
    """Fail before training when the ``logger`` group needs a package that is not installed, naming it."""
    node = cfg.get("logger")
    packages = LOGGER_PACKAGES.get(str(node.get("_target_"))) if node is not None else None
    if packages and not any(_installed(p) for p in packages):
        raise ModuleNotFoundError(
            f"logger={node._target_.rsplit('.', 1)[-1]} needs the `{packages[0]}` package, which is not installed: "
            f"pip install {packages[0]} (or {' / '.join(packages[1:])}), or use the default logger=csv."
        )


def _logger(cfg: DictConfig, out: Path, phase: str) -> Logger | bool:
    """The ``logger`` group's logger for ``phase``: ``<out>/logs/<phase>/version_0/``; ``False`` without a group."""
    if cfg.get("logger") is None:
        return False
    return instantiate(cfg.logger, save_dir=str(out / "logs"), name=phase)


def _trainer(cfg: DictConfig, out: Path, phase: str, max_epochs: int, callbacks: list[Any] | None = None) -> pl.Trainer:
    options: dict[str, Any] = OmegaConf.to_container(cfg.trainer, resolve=True)  # type: ignore[assignment]
    if options.get("strategy") == "ddp" and HydraConfig.initialized():
        options["strategy"] = HydraJobDDPStrategy()  # workers re-run this job, not the whole sweep
    options["enable_progress_bar"] = progress_bar_enabled(options.get("enable_progress_bar"))
    return pl.Trainer(
        **options,
        max_epochs=max_epochs,
        callbacks=callbacks or [],
        logger=_logger(cfg, out, phase),
        default_root_dir=out,
    )


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Lightning's informational loggers (:data:`QUIET_LOGGERS`) at ``WARNING`` inside the block, restored after."""
    loggers = [logging.getLogger(name) for name in QUIET_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(max(logging.WARNING, logger.level))
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


@rank_zero_only
def _say(message: str, *args: Any) -> None:
    """``log.info`` on the process of rank zero only (DDP workers stay quiet)."""
    log.info(message, *args)


def _model(cfg: DictConfig, num_classes: int, num_groups: int) -> ImbalancedClassifier:
    net = instantiate(cfg.model, num_classes=num_classes)
    return ImbalancedClassifier(net, num_classes=num_classes, num_groups=num_groups, **cfg.optimizer)


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


def _start_clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _stop_clock(start: tuple[float, float]) -> dict[str, float]:
    """Wall and CPU seconds (all threads of this process) since ``start``, rounded to 0.1 s."""
    return {"wall": round(time.perf_counter() - start[0], 1), "cpu": round(time.process_time() - start[1], 1)}


def _done(phase: str, clock: dict[str, float], result: dict[str, Any], extra: str = "") -> None:
    _say(
        "phase %s: done in %.1f s wall (%.1f s CPU)%s; test balanced error %.2f %%, worst-class %.2f %%",
        phase, clock["wall"], clock["cpu"], extra, 100 * result["balanced_error"], 100 * result["worst_class_error"],
    )  # fmt: skip


def run(cfg: DictConfig, out: Path) -> dict[str, Any]:
    """Run the phases of ``cfg`` with outputs in ``out``; returns the results (also written to ``out``).

    Progress and the report are logged (``lightning_autobalance.cli``, INFO) and Lightning's informational lines
    silenced meanwhile (:func:`quiet_lightning`).
    """
    with quiet_lightning():
        return _run(cfg, out)


def _run(cfg: DictConfig, out: Path) -> dict[str, Any]:
    check_config(cfg)  # phases, keys and values: fails naming the key before anything is generated or trained
    check_logger(cfg)
    phases = list(cfg.phases)
    retrain_from = cfg.get("learned_loss")
    torch.set_num_threads(int(cfg.threads))
    out.mkdir(parents=True, exist_ok=True)
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    check_datamodule(cfg, datamodule)  # empty data, float labels, groups: before any phase trains
    num_classes = int(datamodule.num_classes)
    num_groups = int(getattr(datamodule, "num_groups", 1))
    counts = datamodule.class_counts.tolist()
    _say("data: %s, %d classes, %d training samples (class counts %s)", cfg.data._target_.rsplit(".", 1)[-1],
         num_classes, sum(counts), counts)  # fmt: skip
    results: dict[str, dict[str, Any]] = {}
    learned: ParametricCrossEntropy | None = load_loss(retrain_from) if retrain_from else None
    trainer: pl.Trainer | None = None

    timings: dict[str, dict[str, float]] = {}
    keep_logits = bool(cfg.get("save_logits", False))
    search_metrics: Path | None = None  # the search phase's CSV log, for the α trajectory plot

    if "baseline" in phases:
        data, loss_counts, group_counts = datamodule, counts, getattr(datamodule, "group_class_counts", None)
        subsample = ""
        if cfg.get("resample") is not None:  # the loss sees the counts of the subsample it trains on
            data = instantiate(cfg.resample)(datamodule, seed=cfg.seed)
            data.setup("fit")
            loss_counts = data.class_counts.tolist()
            group_counts = data.group_class_counts if num_groups > 1 else None
            subsample = (
                f" on a subsample of {sum(loss_counts)} training samples (cells {data.group_class_counts.tolist()})"
            )
        _say(
            "phase baseline: training with the %s loss for %d epochs%s",
            loss_label(cfg),
            cfg.train.max_epochs,
            subsample,
        )
        clock = _start_clock()
        pl.seed_everything(cfg.seed, workers=True)
        model = _model(cfg, num_classes, num_groups)
        model.autobalance_loss = instantiate(cfg.loss)(class_counts=loss_counts, group_counts=group_counts)
        trainer = _trainer(cfg, out, "baseline", cfg.train.max_epochs)
        trainer.fit(model, datamodule=data)
        timings["baseline"] = _stop_clock(clock)
        results[baseline_label(cfg)] = test_report(model, datamodule.test_dataloader(), num_classes, num_groups)
        _done("baseline", timings["baseline"], results[baseline_label(cfg)])
        if keep_logits:
            save_logits(model, {"test": datamodule.test_dataloader()}, out / "logits_baseline.npz")

    if "search" in phases:
        _say(
            "phase search: AutoBalance for %d epochs (warm-up: %s epochs; a hyper-step every %s steps) on a %.0f %% "
            "held-out split", cfg.search.max_epochs, cfg.autobalance.get("warmup_epochs", "default"),
            cfg.autobalance.get("every_n_steps", "default"), 100 * cfg.search.heldout_fraction,
        )  # fmt: skip
        clock = _start_clock()
        pl.seed_everything(cfg.seed, workers=True)
        export = out / "autobalance_loss.yaml"
        callback: AutoBalance = instantiate(
            cfg.autobalance, export_path=str(export), objective=instantiate(cfg.objective)
        )
        model = _model(cfg, num_classes, num_groups)
        split = HeldOutSplit(datamodule, fraction=cfg.search.heldout_fraction, seed=cfg.seed, num_classes=num_classes)
        trainer = _trainer(cfg, out, "search", cfg.search.max_epochs, [callback])
        trainer.fit(model, datamodule=split)
        timings["search"] = _stop_clock(clock)
        # α is identical on every process; rank zero also wrote it to `export`. With ddp_spawn the search ran in
        # child processes, so this process only has the exported file.
        learned = callback.loss.frozen() if callback.loss is not None else load_loss(export)
        results["AutoBalance (search model)"] = test_report(
            model, datamodule.test_dataloader(), num_classes, num_groups
        )
        heldout = test_report(model, split.heldout_dataloader(), num_classes, num_groups)
        results["AutoBalance (search model)"]["heldout_balanced_error"] = heldout["balanced_error"]
        # (with ddp_spawn the search ran in child processes: this process's callback has no count)
        steps = (
            f", {callback.hyper_steps} hyper-steps ({callback.skipped_steps} skipped)"
            if callback.loss is not None
            else ""
        )
        if getattr(callback, "posthoc_tau", None) is not None:
            steps += f", post-hoc τ = {callback.posthoc_tau:.3f}"
        _done("search", timings["search"], results["AutoBalance (search model)"], steps)
        _say("phase search: learned loss written to %s", export)
        if isinstance(trainer.logger, CSVLogger):
            search_metrics = Path(trainer.logger.log_dir) / "metrics.csv"
        if keep_logits:
            loaders = {"test": datamodule.test_dataloader(), "heldout": split.heldout_dataloader()}
            save_logits(model, loaders, out / "logits_search.npz")

    if "retrain" in phases and learned is not None:
        source = f"from {retrain_from}" if "search" not in phases and retrain_from else "learned by the search"
        _say("phase retrain: a fresh model with the loss %s, frozen, for %d epochs", source, cfg.train.max_epochs)
        clock = _start_clock()
        pl.seed_everything(cfg.seed, workers=True)
        model = _model(cfg, num_classes, num_groups)
        model.autobalance_loss = learned
        trainer = _trainer(cfg, out, "retrain", cfg.train.max_epochs)
        trainer.fit(model, datamodule=datamodule)
        timings["retrain"] = _stop_clock(clock)
        results["AutoBalance"] = test_report(model, datamodule.test_dataloader(), num_classes, num_groups)
        _done("retrain", timings["retrain"], results["AutoBalance"])
        if keep_logits:
            save_logits(model, {"test": datamodule.test_dataloader()}, out / "logits_retrain.npz")

    if "jtt" in phases:
        trainer = _jtt_phase(cfg, out, datamodule, results, timings, keep_logits)
    if "llr" in phases:
        trainer = _llr_phase(cfg, out, datamodule, results, timings, keep_logits)

    if trainer is not None and not trainer.is_global_zero:
        return results  # a DDP worker: rank zero reports
    report = "## Test errors\n\n" + format_table(results)
    if learned is not None:
        report += "\n\n## Learned loss (per class)\n\n" + format_loss(learned)
    report += "\n\n## Training time (this process)\n\n" + format_timings(timings)
    write_text_atomic(out / "results.md", report + "\n")
    summary = {"class_counts": counts, "results": results, "seconds": timings}
    write_text_atomic(out / "results.json", json.dumps(summary, indent=2) + "\n")
    plot_results(results, learned, counts, out / "per_class.png")
    if search_metrics is not None:
        try:
            plot_alpha_trajectory(search_metrics, out / "alpha_trajectory.png")
        except (OSError, ValueError) as exc:  # no log file, or no hyper-step logged: the report says the rest
            log.warning("No alpha_trajectory.png: %s", exc)
    log.info("\n%s\n\nWritten to %s\n", report, out)
    return results


def _jtt_phase(
    cfg: DictConfig,
    out: Path,
    datamodule: pl.LightningDataModule,
    results: dict[str, dict[str, Any]],
    timings: dict[str, dict[str, float]],
    keep_logits: bool,
) -> pl.Trainer:
    """JTT on all training data: stage 1 (``jtt.stage1_epochs``, log ``jtt_stage1``), stage 2 (``train.max_epochs``)."""
    stage1_epochs, upweight = int(cfg.jtt.stage1_epochs), int(cfg.jtt.upweight)
    _say(
        "phase jtt: ERM for %d epochs, then a fresh model for %d epochs with its training errors up-sampled %d×",
        stage1_epochs, cfg.train.max_epochs, upweight,
    )  # fmt: skip
    num_classes, num_groups = int(datamodule.num_classes), int(getattr(datamodule, "num_groups", 1))
    clock = _start_clock()
    pl.seed_everything(cfg.seed, workers=True)
    trainers: list[pl.Trainer] = []

    def trainer_factory(max_epochs: int) -> pl.Trainer:
        trainers.append(_trainer(cfg, out, "jtt_stage1" if not trainers else "jtt", max_epochs))
        return trainers[-1]

    model, report = jtt(
        lambda: _model(cfg, num_classes, num_groups),
        datamodule,
        stage1_epochs=stage1_epochs,
        upweight=upweight,
        trainer_factory=trainer_factory,
        epochs=int(cfg.train.max_epochs),
        seed=int(cfg.seed),
    )
    timings["jtt"] = _stop_clock(clock)
    results["JTT"] = test_report(model, datamodule.test_dataloader(), num_classes, num_groups)
    results["JTT"]["error_set_size"] = int(report.error_set.numel())
    _done("jtt", timings["jtt"], results["JTT"], f", error set {report.error_set.numel()} of {report.num_train}")
    if keep_logits:
        save_logits(model, {"test": datamodule.test_dataloader()}, out / "logits_jtt.npz")
    return trainers[-1]


def _llr_phase(
    cfg: DictConfig,
    out: Path,
    datamodule: pl.LightningDataModule,
    results: dict[str, dict[str, Any]],
    timings: dict[str, dict[str, float]],
    keep_logits: bool,
) -> pl.Trainer:
    """A model with the ``loss`` group's loss on the split's train part, its last layer refit by the ``llr`` group."""
    callback: LastLayerRetraining = instantiate(cfg.llr)
    _say(
        "phase llr: training with the %s loss for %d epochs on the train part of a %.0f %% held-out split, then the "
        "last layer refit (mode %s) on the %s data", loss_label(cfg), cfg.train.max_epochs,
        100 * cfg.search.heldout_fraction, callback.mode, callback.dataloader,
    )  # fmt: skip
    num_classes, num_groups = int(datamodule.num_classes), int(getattr(datamodule, "num_groups", 1))
    clock = _start_clock()
    pl.seed_everything(cfg.seed, workers=True)
    split = HeldOutSplit(datamodule, fraction=cfg.search.heldout_fraction, seed=cfg.seed, num_classes=num_classes)
    split.setup("fit")
    model = _model(cfg, num_classes, num_groups)
    group_counts = split.group_class_counts if num_groups > 1 else None
    model.autobalance_loss = instantiate(cfg.loss)(class_counts=split.class_counts.tolist(), group_counts=group_counts)
    trainer = _trainer(cfg, out, "llr", cfg.train.max_epochs, [callback])
    trainer.fit(model, datamodule=split)
    timings["llr"] = _stop_clock(clock)
    label = f"{loss_label(cfg)} + last layer ({callback.mode})"
    results[label] = test_report(model, datamodule.test_dataloader(), num_classes, num_groups)
    assert callback.report is not None  # set by on_train_end on every rank
    metrics = callback.report.metrics
    chosen = {
        k.rsplit("/", 1)[-1]: v for k, v in metrics.items() if k.startswith(f"{callback.prefix}/{callback.mode}/")
    }
    results[label]["llr"] = {
        "retraining_set": callback.dataloader,
        "retraining_samples": int(metrics[f"{callback.prefix}/num_samples"]),
        **chosen,
    }
    extra = f", refit on {results[label]['llr']['retraining_samples']} {callback.dataloader} samples"
    extra += "".join(f", {name} {value:g}" for name, value in chosen.items() if name != "selection_score")
    _done("llr", timings["llr"], results[label], extra)
    if keep_logits:
        save_logits(model, {"test": datamodule.test_dataloader()}, out / "logits_llr.npz")
    return trainer


@hydra.main(version_base="1.3", config_path=str(Path(__file__).resolve().parent / "conf"), config_name="config")
def hydra_main(cfg: DictConfig) -> float:
    """Hydra task; returns the value sweepers minimise: the search model's balanced error on the held-out split.

    Never a test-set number (so a sweep cannot select on the test set); ``nan`` when the search phase did not run.
    """
    out = Path(HydraConfig.get().runtime.output_dir)
    try:
        results = run(cfg, out)
    finally:
        finish_ddp_job()
    search = results.get("AutoBalance (search model)")
    return float(search["heldout_balanced_error"]) if search else float("nan")


def main(cfg: DictConfig | None = None) -> float | None:
    """Console entry point: checks that the Hydra plugins the command line asks for are installed, then runs Hydra.

    Given a ``cfg`` (Hydra's pass-through), runs the task on it directly and returns its value.
    """
    if cfg is not None:
        return hydra_main(cfg)
    check_plugins(sys.argv[1:])  # before Hydra parses: name the missing package instead of 'Could not find ...'
    return hydra_main()
