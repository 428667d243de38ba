"""What a trained model is reported with: its predictions on a loader, the test errors, and the report's tables.

Used by the command-line app (:mod:`lightning_autobalance.cli`) and by the benchmark scripts: :func:`predict_logits`
/ :func:`predict_labels` (a model's outputs on every batch of a loader, with the loss's post-hoc prediction shift),
:func:`save_logits` (``.npz``), :func:`test_report` (balanced, worst-class, overall error, per-class errors; with
groups the worst-group error and the equal-opportunity gap), and the Markdown tables :func:`format_table` (test errors
of several models), :func:`format_loss` (a learned Δ, ι, …) and :func:`format_timings` (phase times).

Example:
    >>> print(format_table({"CE": {"balanced_error": 0.25, "worst_class_error": 0.5, "error": 0.2}}))
    | loss | balanced error % | worst-class error % | error % |
    |---|---:|---:|---:|
    | CE | 25.00 | 50.00 | 20.00 |
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from lightning_autobalance.files import write_atomic
from lightning_autobalance.losses import ParametricCrossEntropy
from lightning_autobalance.metrics import (
    balanced_error,
    class_errors,
    equal_opportunity_gap,
    error,
    worst_class_error,
    worst_group_error,
)

__all__ = [
    "COLUMNS",
    "KIND_SYMBOLS",
    "format_loss",
    "format_table",
    "format_timings",
    "predict_labels",
    "predict_logits",
    "save_logits",
    "shows",
    "test_report",
]

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
    write_atomic(path, lambda handle: np.savez(handle, **arrays))


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


COLUMNS = {
    "balanced_error": "balanced error %",
    "worst_class_error": "worst-class error %",
    "error": "error %",
    "worst_group_error": "worst-group error %",
    "equal_opportunity_gap": "equal-opportunity gap %",
}


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
