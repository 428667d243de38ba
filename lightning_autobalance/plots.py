"""Plots of the command-line app: per-class test errors with the learned loss, and the α trajectory of a search.

:func:`plot_results` draws ``per_class.png`` (each model's per-class test error and the learned Δ, ι per class);
:func:`plot_alpha_trajectory` draws ``alpha_trajectory.png`` (every learned loss parameter per class against the
hyper-step) from the ``autobalance/<kind>/c<k>`` columns the :class:`~lightning_autobalance.AutoBalance` callback
logs after every hyper-step (``autobalance/<kind>/g<g>_c<k>`` with groups), e.g. the search phase's CSV log
``logs/search/version_0/metrics.csv``. Both write the PNG atomically; :func:`plot_alpha_trajectory` returns its
:class:`~matplotlib.figure.Figure` for inspection.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from lightning_autobalance.losses import ParametricCrossEntropy

from lightning_autobalance.files import write_atomic

__all__ = ["KIND_LABELS", "alpha_trajectories", "plot_alpha_trajectory", "plot_results"]

# y-axis label of each learnable kind of ParametricCrossEntropy
KIND_LABELS = {
    "delta": "Δ (logit scale)",
    "iota": "ι (logit shift)",
    "omega": "ω (class weight)",
    "noise": "σ (noise)",
    "mix": "m (mix)",
}
_COLUMN = re.compile(r"^autobalance/(?P<kind>[a-z_]+)/(?:g(?P<group>\d+)_)?c(?P<cls>\d+)$")
_STEP_COLUMNS = ("autobalance/hyper_steps", "step")


def _save_atomically(fig: Any, path: Path) -> None:
    write_atomic(path, lambda handle: fig.savefig(handle, format="png", dpi=120))


def _number(value: Any) -> float | None:
    """``value`` as a finite float, or ``None`` for an empty CSV cell (a row that did not log this column)."""
    if value is None or value == "":
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def alpha_trajectories(
    history: str | Path | Iterable[Mapping[str, Any]],
) -> tuple[str, dict[str, dict[tuple[int, int], tuple[list[float], list[float]]]]]:
    """Per kind and (group, class) cell, the logged values of α against the step, from a metrics CSV or rows.

    Args:
        history: path of a CSV written by Lightning's ``CSVLogger`` (``metrics.csv``), or rows (mappings from
            column to value; an empty string or ``None`` means not logged in that row).

    Returns:
        The x-axis name (``hyper-step`` when the rows hold ``autobalance/hyper_steps``, else ``step``, else
        ``row``) and ``{kind: {(group, class): (steps, values)}}`` for every ``autobalance/<kind>/...`` column.

    Example:
        >>> rows = [{"autobalance/hyper_steps": 1, "autobalance/iota/c0": 0.1, "autobalance/iota/c1": -0.1},
        ...         {"autobalance/hyper_steps": 2, "autobalance/iota/c0": 0.2, "autobalance/iota/c1": -0.2}]
        >>> axis, table = alpha_trajectories(rows)
        >>> axis, table["iota"][(0, 1)]
        ('hyper-step', ([1.0, 2.0], [-0.1, -0.2]))
    """
    if isinstance(history, (str, Path)):
        with open(history, newline="") as handle:
            rows: list[Mapping[str, Any]] = list(csv.DictReader(handle))
    else:
        rows = list(history)
    columns = {name for row in rows for name in row}
    step_column = next((c for c in _STEP_COLUMNS if c in columns), None)
    axis = {"autobalance/hyper_steps": "hyper-step", "step": "step", None: "row"}[step_column]
    cells = {name: _COLUMN.match(name) for name in columns}
    table: dict[str, dict[tuple[int, int], tuple[list[float], list[float]]]] = {}
    for index, row in enumerate(rows):
        x = _number(row.get(step_column)) if step_column else float(index)
        for name, match in cells.items():
            value = _number(row.get(name)) if match else None
            if match is None or value is None or x is None:
                continue
            cell = (int(match["group"] or 0), int(match["cls"]))
            steps, values = table.setdefault(match["kind"], {}).setdefault(cell, ([], []))
            steps.append(x)
            values.append(value)
    order = {kind: i for i, kind in enumerate(KIND_LABELS)}
    return axis, {kind: dict(sorted(table[kind].items())) for kind in sorted(table, key=lambda k: order.get(k, 99))}


def plot_alpha_trajectory(history: str | Path | Iterable[Mapping[str, Any]], path: str | Path | None = None) -> Figure:
    """Every learned loss parameter per class against the hyper-step: one panel per kind, one line per class.

    Lines are coloured by class index (a legend up to 10 classes, a colour bar beyond); with groups, each group has
    its own line style. Nothing else is drawn: the x-axis is the logged hyper-step count (or Lightning's step).

    Args:
        history: the search phase's ``metrics.csv`` or rows, as for :func:`alpha_trajectories`.
        path: where to write the PNG (atomically); ``None`` writes nothing.

    Returns:
        The figure, one axes per learned kind (Δ, ι, then ω, σ, m when logged) plus a colour bar beyond 10 classes.

    Raises:
        ValueError: when ``history`` holds no ``autobalance/<kind>/c<k>`` value (no hyper-step was logged).

    Example:
        >>> rows = [{"autobalance/hyper_steps": s, "autobalance/delta/c0": 1 + s / 10, "autobalance/delta/c1": 1.0,
        ...          "autobalance/iota/c0": s / 10, "autobalance/iota/c1": -s / 10} for s in (1, 2, 3)]
        >>> fig = plot_alpha_trajectory(rows)
        >>> [(ax.get_ylabel(), len(ax.lines)) for ax in fig.axes]
        [('Δ (logit scale)', 2), ('ι (logit shift)', 2)]
        >>> fig.axes[1].get_xlabel()
        'hyper-step'
    """
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import BoundaryNorm
    from matplotlib.figure import Figure

    axis, table = alpha_trajectories(history)
    if not table:
        raise ValueError(
            "No autobalance/<kind>/c<k> value in the history: the search logged no hyper-step (or a logger other "
            "than the CSV one wrote it), so there is no α trajectory to plot."
        )
    cells = {cell for kind in table.values() for cell in kind}
    num_classes = 1 + max(c for _, c in cells)
    num_groups = 1 + max(g for g, _ in cells)
    many = num_classes > 10
    cmap = colormaps["viridis" if many else "tab10"]
    norm = BoundaryNorm([c - 0.5 for c in range(num_classes + 1)], cmap.N) if many else None

    def colour(cls: int) -> Any:
        return cmap(norm(cls)) if norm is not None else cmap(cls)

    styles = ["-", "--", ":", "-."]
    fig = Figure(figsize=(5.5 * len(table) + (1.2 if not many else 0.8), 4), layout="constrained")
    axes = fig.subplots(1, len(table), squeeze=False)[0]
    for ax, (kind, lines) in zip(axes, table.items(), strict=True):
        for (group, cls), (steps, values) in lines.items():
            label = f"class {cls}" + (f", group {group}" if num_groups > 1 else "")
            ax.plot(steps, values, styles[group % len(styles)], color=colour(cls), lw=1.2, label=label)
        ax.set(xlabel=axis, ylabel=KIND_LABELS.get(kind, kind), title=f"{KIND_LABELS.get(kind, kind)} per class")
        ax.grid(alpha=0.3)
    if many:
        bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=list(axes), label="class")
        bar.set_ticks(range(0, num_classes, max(1, num_classes // 10)))
    else:
        axes[-1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize="small", title="class")
    fig.suptitle("AutoBalance search: learned loss parameters per class")
    if path is not None:
        _save_atomically(fig, Path(path))
    return fig


def plot_results(
    results: dict[str, dict[str, Any]], loss: ParametricCrossEntropy | None, counts: list[int], path: Path
) -> None:
    """Per-class test error of each model and the learned Δ, ι per class (and group) as one PNG, written atomically.

    Every class has a tick on both panels (with its training count on the left one).
    """
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
        ax.set(xlabel="class", ylabel="learned value (Δ: scale, ι: shift)", title="Learned loss parameters")
        ax.set_xticks(classes)
        ax.legend()
    fig.tight_layout()
    _save_atomically(fig, path)
    plt.close(fig)
