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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig

from lightning_autobalance.cli_checks import check_config, check_datamodule, check_plugins
from lightning_autobalance.cli_phases import (
    SEARCH_LABEL,
    PhaseContext,
    baseline_label,
    baseline_phase,
    jtt_phase,
    llr_phase,
    loss_label,
    progress_bar_enabled,
    retrain_phase,
    say,
    search_phase,
)
from lightning_autobalance.cli_phases import make_logger as _logger  # noqa: F401 (older callers use cli._logger)
from lightning_autobalance.cli_phases import make_trainer as _trainer  # noqa: F401 (older callers use cli._trainer)
from lightning_autobalance.launch import finish_ddp_job
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

__all__ = [
    "baseline_label",
    "check_logger",
    "hydra_main",
    "loss_label",
    "main",
    "progress_bar_enabled",
    "quiet_lightning",
    "run",
]

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


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Lightning's informational loggers (:data:`QUIET_LOGGERS`) at ``WARNING`` inside the block, restored after.

    Example:
        >>> seed_log = logging.getLogger("lightning.fabric.utilities.seed")
        >>> with quiet_lightning():
        ...     logging.getLevelName(seed_log.level)
        'WARNING'
    """
    loggers = [logging.getLogger(name) for name in QUIET_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(max(logging.WARNING, logger.level))
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


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
    torch.set_num_threads(int(cfg.threads))
    out.mkdir(parents=True, exist_ok=True)
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    check_datamodule(cfg, datamodule)  # empty data, float labels, groups: before any phase trains
    counts = datamodule.class_counts.tolist()
    say("data: %s, %d classes, %d training samples (class counts %s)", cfg.data._target_.rsplit(".", 1)[-1],
        int(datamodule.num_classes), sum(counts), counts)  # fmt: skip
    ctx = PhaseContext(cfg, out, datamodule)
    trainer, learned, search_metrics = _run_phases(ctx)
    if trainer is not None and not trainer.is_global_zero:
        return ctx.results  # a DDP worker: rank zero reports
    _write_report(ctx, counts, learned, search_metrics)
    return ctx.results


def _run_phases(ctx: PhaseContext) -> tuple[pl.Trainer | None, ParametricCrossEntropy | None, Path | None]:
    """The phases ``cfg.phases`` lists, in the app's order: the last Trainer, the learned loss, the search's log."""
    phases, retrain_from = list(ctx.cfg.phases), ctx.cfg.get("learned_loss")
    learned: ParametricCrossEntropy | None = load_loss(retrain_from) if retrain_from else None
    trainer: pl.Trainer | None = None
    search_metrics: Path | None = None  # the search phase's CSV log, for the α trajectory plot
    if "baseline" in phases:
        trainer = baseline_phase(ctx)
    if "search" in phases:
        search = search_phase(ctx)
        trainer, learned, search_metrics = search.trainer, search.learned, search.metrics
    if "retrain" in phases and learned is not None:
        source = f"from {retrain_from}" if "search" not in phases and retrain_from else "learned by the search"
        trainer = retrain_phase(ctx, learned, source)
    if "jtt" in phases:
        trainer = jtt_phase(ctx)
    if "llr" in phases:
        trainer = llr_phase(ctx)
    return trainer, learned, search_metrics


def _write_report(
    ctx: PhaseContext, counts: list[int], learned: ParametricCrossEntropy | None, search_metrics: Path | None
) -> None:
    """``results.md``, ``results.json``, ``per_class.png`` and ``alpha_trajectory.png`` in the run directory."""
    out, results = ctx.out, ctx.results
    report = "## Test errors\n\n" + format_table(results)
    if learned is not None:
        report += "\n\n## Learned loss (per class)\n\n" + format_loss(learned)
    report += "\n\n## Training time (this process)\n\n" + format_timings(ctx.timings)
    write_text_atomic(out / "results.md", report + "\n")
    summary = {"class_counts": counts, "results": results, "seconds": ctx.timings}
    write_text_atomic(out / "results.json", json.dumps(summary, indent=2) + "\n")
    plot_results(results, learned, counts, out / "per_class.png")
    if search_metrics is not None:
        try:
            plot_alpha_trajectory(search_metrics, out / "alpha_trajectory.png")
        except (OSError, ValueError) as exc:  # no log file, or no hyper-step logged: the report says the rest
            log.warning("No alpha_trajectory.png: %s", exc)
    log.info("\n%s\n\nWritten to %s\n", report, out)


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
    search = results.get(SEARCH_LABEL)
    return float(search["heldout_balanced_error"]) if search else float("nan")


def main(cfg: DictConfig | None = None) -> float | None:
    """Console entry point: checks that the Hydra plugins the command line asks for are installed, then runs Hydra.

    Given a ``cfg`` (Hydra's pass-through), runs the task on it directly and returns its value.
    """
    if cfg is not None:
        return hydra_main(cfg)
    check_plugins(sys.argv[1:])  # before Hydra parses: name the missing package instead of 'Could not find ...'
    return hydra_main()
