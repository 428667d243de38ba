"""Command-line app (Hydra): search → retrain → test, with a report table and plots.

``python -m lightning_autobalance`` (or the ``lightning-autobalance`` console script) runs on the offline
long-tailed MNIST-1D by default:

1. ``baseline`` — a hand-tuned loss from the ``loss`` config group (plain cross-entropy by default) trained on all
   training data;
2. ``search`` — the AutoBalance search phase on a stratified 80/20 train/held-out split; the learned loss is written
   to ``autobalance_loss.yaml``;
3. ``retrain`` — a fresh model trained on all training data with the learned loss frozen;

then prints one table (balanced, worst-class and overall test error of CE and AutoBalance) and the learned per-class
Δ and ι, and writes ``results.md``, ``results.json`` and ``per_class.png`` into the Hydra run directory. ``main``
returns the search model's balanced error on the held-out split, the value Hydra sweepers minimise.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig, OmegaConf

from lightning_autobalance.callback import AutoBalance
from lightning_autobalance.classifier import ImbalancedClassifier
from lightning_autobalance.cli_checks import check_config, check_datamodule, check_plugins
from lightning_autobalance.data.split import HeldOutSplit
from lightning_autobalance.launch import HydraJobDDPStrategy, finish_ddp_job
from lightning_autobalance.learned_loss import load_loss, write_text_atomic
from lightning_autobalance.losses import ParametricCrossEntropy
from lightning_autobalance.metrics import (
    balanced_error,
    class_errors,
    equal_opportunity_gap,
    error,
    worst_class_error,
    worst_group_error,
)

__all__ = ["hydra_main", "main", "run"]

KIND_SYMBOLS = {"delta": "Δ", "iota": "ι", "omega": "ω", "noise": "σ (noise)", "mix": "m (mix)"}


@torch.no_grad()
def predict_logits(
    model: pl.LightningModule, loader: Any, shifted: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Logits, true labels and groups (or ``None``) of every batch of ``loader`` (model in eval mode).

    With ``shifted`` the logits include the loss's post-hoc prediction shift (what the model predicts with).
    """
    model.eval()
    loss = model.autobalance_loss
    shift = shifted and isinstance(loss, ParametricCrossEntropy)
    logits, targets, groups = [], [], []
    for batch in loader:
        out, y, g = model.autobalance_forward(batch)
        logits.append(loss.shift_predictions(out, g) if shift else out)
        targets.append(y)
        if g is not None:
            groups.append(g)
    return torch.cat(logits), torch.cat(targets), torch.cat(groups) if groups else None


def predict_labels(model: pl.LightningModule, loader: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Predicted labels, true labels and groups (or ``None``) of every batch of ``loader`` (model in eval mode)."""
    logits, targets, groups = predict_logits(model, loader)
    return logits.argmax(1), targets, groups


def save_logits(model: pl.LightningModule, loaders: dict[str, Any], path: Path) -> None:
    """Write the model's logits and labels on each of ``loaders`` to ``path`` (``.npz``, written atomically).

    Keys are ``<name>_logits`` (raw, without the post-hoc prediction shift), ``<name>_targets`` (and
    ``<name>_groups`` with groups) for every ``name`` of ``loaders``, e.g. ``test`` and ``heldout``, and
    ``prediction_shift`` when the model's loss has one: what a post-hoc adjustment or a later analysis needs.
    """
    import numpy as np

    arrays: dict[str, Any] = {}
    if isinstance(model.autobalance_loss, ParametricCrossEntropy):
        arrays["prediction_shift"] = model.autobalance_loss.prediction_shift.cpu().numpy()
    for name, loader in loaders.items():
        logits, targets, groups = predict_logits(model, loader, shifted=False)
        arrays[f"{name}_logits"], arrays[f"{name}_targets"] = logits.float().cpu().numpy(), targets.cpu().numpy()
        if groups is not None:
            arrays[f"{name}_groups"] = groups.cpu().numpy()
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def test_report(model: pl.LightningModule, loader: Any, num_classes: int, num_groups: int = 1) -> dict[str, Any]:
    """Balanced, worst-class and overall error and the per-class errors on ``loader``.

    With groups also the worst-(class, group) error and the equal-opportunity gap.
    """
    preds, targets, groups = predict_labels(model, loader)
    sizes = {"num_classes": num_classes, "num_groups": num_groups if groups is not None else 1}
    report: dict[str, Any] = {
        "balanced_error": float(balanced_error(preds, targets, groups, **sizes)),
        "worst_class_error": float(worst_class_error(preds, targets, groups, **sizes)),
        "error": float(error(preds, targets, groups, **sizes)),
        "class_errors": class_errors(preds, targets, groups, **sizes).tolist(),
    }
    if groups is not None and num_groups > 1:
        report["worst_group_error"] = float(worst_group_error(preds, targets, groups, **sizes))
        report["equal_opportunity_gap"] = float(equal_opportunity_gap(preds, targets, groups, **sizes))
    return report


def _trainer(cfg: DictConfig, out: Path, phase: str, max_epochs: int, callbacks: list[Any] | None = None) -> pl.Trainer:
    options: dict[str, Any] = OmegaConf.to_container(cfg.trainer, resolve=True)  # type: ignore[assignment]
    if options.get("strategy") == "ddp" and HydraConfig.initialized():
        options["strategy"] = HydraJobDDPStrategy()  # workers re-run this job, not the whole sweep
    return pl.Trainer(
        **options,
        max_epochs=max_epochs,
        callbacks=callbacks or [],
        logger=CSVLogger(out / "logs", name=phase),
        default_root_dir=out,
    )


def _model(cfg: DictConfig, num_classes: int, num_groups: int) -> ImbalancedClassifier:
    net = instantiate(cfg.model, num_classes=num_classes)
    return ImbalancedClassifier(net, num_classes=num_classes, num_groups=num_groups, **cfg.optimizer)


COLUMNS = {
    "balanced_error": "balanced error %",
    "worst_class_error": "worst-class error %",
    "error": "error %",
    "worst_group_error": "worst-group error %",
    "equal_opportunity_gap": "equal-opportunity gap %",
}


def baseline_label(cfg: DictConfig) -> str:
    """Table label of the baseline loss, e.g. ``CE``, ``LA``, ``LDAM``."""
    name = cfg.loss.get("preset") or cfg.loss.get("name") or "baseline"
    label = str(name).upper().replace("_", "-")
    return f"{label}-DRW" if cfg.loss.get("drw_epoch") is not None else label


def format_table(results: dict[str, dict[str, Any]]) -> str:
    """Markdown table of the test errors (in %) of each trained model."""
    keys = [k for k in COLUMNS if all(k in r for r in results.values())]
    lines = ["| loss | " + " | ".join(COLUMNS[k] for k in keys) + " |", "|---|" + "---:|" * len(keys)]
    for name, r in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{100 * r[k]:.2f}" for k in keys) + " |")
    return "\n".join(lines)


def shows(loss: ParametricCrossEntropy, kind: str) -> bool:
    """Whether the report lists ``kind``: Δ and ι always; ω when not all 1; σ and m when the augmentation is on."""
    values = getattr(loss, kind)().detach()
    return bool((values != (1.0 if kind == "omega" else 0.0)).any())


def format_loss(loss: ParametricCrossEntropy) -> str:
    """Markdown table of the learned Δ, ι (and ω, augmentation σ and m when learned), a row per (group, class) cell."""
    kinds = ["delta", "iota"] + [k for k in ("omega", "noise", "mix") if shows(loss, k)]
    grouped = loss.num_groups > 1
    key = "| group | class | " if grouped else "| class | "
    lines = [key + " | ".join(KIND_SYMBOLS[k] for k in kinds) + " |", "|---:|" * (1 + grouped) + "---:|" * len(kinds)]
    tables = {k: getattr(loss, k)().detach().cpu().tolist() for k in kinds}
    for g in range(loss.num_groups):
        for c in range(loss.num_classes):
            cell = f"| {g} | {c} | " if grouped else f"| {c} | "
            lines.append(cell + " | ".join(f"{tables[k][g][c]:.3f}" for k in kinds) + " |")
    return "\n".join(lines)


def plot_results(
    results: dict[str, dict[str, Any]], loss: ParametricCrossEntropy | None, counts: list[int], path: Path
) -> None:
    """Per-class test error of each model and the learned Δ, ι per class (and group) as one PNG, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if loss is not None else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4), squeeze=False)
    classes = list(range(len(counts)))
    width = 0.8 / max(1, len(results))
    for i, (name, r) in enumerate(results.items()):
        axes[0, 0].bar([c + i * width for c in classes], [100 * e for e in r["class_errors"]], width, label=name)
    axes[0, 0].set(xlabel="class (training count below)", ylabel="test error %", title="Per-class test error")
    axes[0, 0].set_xticks(
        [c + 0.4 - width / 2 for c in classes], [f"{c}\n{n}" for c, n in zip(classes, counts, strict=True)]
    )
    axes[0, 0].legend()
    if loss is not None:
        ax = axes[0, 1]
        delta, iota = loss.delta().detach().cpu(), loss.iota().detach().cpu()
        for g in range(loss.num_groups):  # one line per group when the loss is per (group, class)
            suffix = f", group {g}" if loss.num_groups > 1 else ""
            ax.plot(classes, delta[g].tolist(), "o-", label=f"Δ (logit scale){suffix}")
            ax.plot(classes, iota[g].tolist(), "s--", label=f"ι (logit shift){suffix}")
        ax.axhline(0, color="grey", lw=0.5)
        ax.set(xlabel="class", title="Learned loss parameters")
        ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def _start_clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _stop_clock(start: tuple[float, float]) -> dict[str, float]:
    """Wall and CPU seconds (all threads of this process) since ``start``, rounded to 0.1 s."""
    return {"wall": round(time.perf_counter() - start[0], 1), "cpu": round(time.process_time() - start[1], 1)}


def format_timings(timings: dict[str, dict[str, float]]) -> str:
    """Markdown table of each phase's fit time: wall seconds and CPU seconds of this process (under DDP, rank 0's).

    Example:
        >>> print(format_timings({"search": {"wall": 61.0, "cpu": 118.5}}))
        | phase | wall s | CPU s |
        |---|---:|---:|
        | search | 61.0 | 118.5 |
    """
    lines = ["| phase | wall s | CPU s |", "|---|---:|---:|"]
    lines += [f"| {phase} | {t['wall']:.1f} | {t['cpu']:.1f} |" for phase, t in timings.items()]
    return "\n".join(lines)


def run(cfg: DictConfig, out: Path) -> dict[str, Any]:
    """Run the phases of ``cfg`` with outputs in ``out``; returns the results (also written to ``out``)."""
    check_config(cfg)  # phases, keys and values: fails naming the key before anything is generated or trained
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
    results: dict[str, dict[str, Any]] = {}
    learned: ParametricCrossEntropy | None = load_loss(retrain_from) if retrain_from else None
    trainer: pl.Trainer | None = None

    timings: dict[str, dict[str, float]] = {}
    keep_logits = bool(cfg.get("save_logits", False))

    if "baseline" in phases:
        clock = _start_clock()
        pl.seed_everything(cfg.seed, workers=True)
        model = _model(cfg, num_classes, num_groups)
        group_counts = getattr(datamodule, "group_class_counts", None)
        model.autobalance_loss = instantiate(cfg.loss)(class_counts=counts, group_counts=group_counts)
        trainer = _trainer(cfg, out, "baseline", cfg.train.max_epochs)
        trainer.fit(model, datamodule=datamodule)
        timings["baseline"] = _stop_clock(clock)
        results[baseline_label(cfg)] = test_report(model, datamodule.test_dataloader(), num_classes, num_groups)
        if keep_logits:
            save_logits(model, {"test": datamodule.test_dataloader()}, out / "logits_baseline.npz")

    if "search" in phases:
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
        if keep_logits:
            loaders = {"test": datamodule.test_dataloader(), "heldout": split.heldout_dataloader()}
            save_logits(model, loaders, out / "logits_search.npz")

    if "retrain" in phases and learned is not None:
        clock = _start_clock()
        pl.seed_everything(cfg.seed, workers=True)
        model = _model(cfg, num_classes, num_groups)
        model.autobalance_loss = learned
        trainer = _trainer(cfg, out, "retrain", cfg.train.max_epochs)
        trainer.fit(model, datamodule=datamodule)
        timings["retrain"] = _stop_clock(clock)
        results["AutoBalance"] = test_report(model, datamodule.test_dataloader(), num_classes, num_groups)
        if keep_logits:
            save_logits(model, {"test": datamodule.test_dataloader()}, out / "logits_retrain.npz")

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
    print("\n" + report + f"\n\nWritten to {out}\n")
    return results


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
