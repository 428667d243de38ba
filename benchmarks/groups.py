"""Group-robustness benchmark (issue 18): every baseline, AutoBalance and our last-layer retraining on two data sets.

One command regenerates ``benchmarks/results/groups.{md,json,png}``::

    PYTHONPATH=. python benchmarks/groups.py               # resumable: re-run the same command after a stop
    PYTHONPATH=. python benchmarks/groups.py --report-only # the report from the jobs done so far
    PYTHONPATH=. python benchmarks/groups.py --smoke       # 2 epochs, 1 seed, small data, a temporary work dir

Data: ``spurious_mnist1d`` (:class:`~lightning_autobalance.data.spurious.SpuriousMNIST1D`, 4000 training sequences,
offset 0.5, 95% agreement, 250 test sequences per cell) and ``spurious_digits``
(:class:`~lightning_autobalance.data.spurious_digits.SpuriousDigits`, scikit-learn's 8×8 digits on a background that
agrees with the label for 95% of the training images, 100 test images per cell), data seed 0, training seeds 0–4.

Protocol: every method trains on the train part of a :class:`~lightning_autobalance.data.HeldOutSplit` (fraction
0.2, split seed = training seed); the held-out part is the only data used for model selection, and the last-layer
methods (DFR, AFR, Thumb, bilevel) refit the head of the ERM model of the same (data, seed) on it. Each job is one
(data, method, seed) and writes ``<work>/<data>/<method>/seed<k>/result.json``; an existing result is not recomputed.
The ERM jobs run first and save their weights (``erm.pt``), which the last-layer jobs load.

Hyperparameters (tiny grids, 2–3 values, every grid point is a full training run or head refit), chosen on the
held-out split two ways, each a row of the table:

* ``group``: by held-out worst-group accuracy (group labels used for selection);
* ``class``: by held-out worst-class accuracy (no group labels used for selection; methods whose *training* needs
  group labels — group weighting / subsampling, Group DRO, DFR — still use them to train).

Grids: Group DRO η ∈ {0.01, 0.1}; JTT λ_up ∈ {5, 20} (stage 1: a sixth of the epochs); DFR C ∈ {1, 0.1, 0.01}
(selected by ``dfr_head`` on half of the held-out split, refit on all of it); AFR γ ∈ {0, 2, 4} (as DFR);
``llr_bilevel`` per-(group, class) weights for the worst group, or per-class weights for the balanced loss without
group labels; Thumb and bilevel fit the square-loss head with a fixed ridge 1.0 (the smoke run's held-out split has
fewer samples than features); AutoBalance with the settings of ``conf/experiment/spurious_*.yaml`` (full engine,
Neumann(5, 0.05), worst group at temperature 1.0, Adam lr 0.05), objective worst (group, class) cell or, without
groups, worst class; the blend is worst group + equal-opportunity gap (λ = 0.5). ``autobalance_frozen`` is the
control of the worst-group run: the same search run with the hyper-optimizer's learning rate at 0 (α stays at its
initial value, plain cross-entropy; checked at the end of the run), one row under both selections; the report adds
the paired difference learned minus control. ERM, group weighting / subsampling
and Thumb have no hyperparameter: one row, the same under both selections.

Test metrics: worst-group accuracy (worst (group, class) cell), weighted average accuracy (test cell accuracies
weighted by the training cell proportions, the DFR / JTT convention), mean group accuracy and plain accuracy.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import multiprocessing
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.lab import run_logged  # noqa: E402
from benchmarks.paper_scale import mean_std, paired_difference  # noqa: E402
from lightning_autobalance.learned_loss import write_text_atomic  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
WORK = REPO / "outputs" / "benchmarks" / "groups"
DATASETS = ("spurious_mnist1d", "spurious_digits")
DATA_LABELS = {"spurious_mnist1d": "SpuriousMNIST1D", "spurious_digits": "spurious digits"}
METHODS = (
    "erm",
    "group_weighted",
    "group_subsample",
    "group_dro",
    "jtt",
    "dfr",
    "afr",
    "llr_thumb",
    "llr_bilevel",
    "autobalance_worst_group",
    "autobalance_blend",
    "autobalance_frozen",
)
LABELS = {
    "erm": "ERM",
    "group_weighted": "group re-weighting",
    "group_subsample": "group-balanced subsampling",
    "group_dro": "Group DRO",
    "jtt": "JTT",
    "dfr": "DFR",
    "afr": "AFR",
    "llr_thumb": "last layer, Thumb",
    "llr_bilevel": "last layer, bilevel",
    "autobalance_worst_group": "AutoBalance, worst group",
    "autobalance_blend": "AutoBalance, worst group + EO gap",
    "autobalance_frozen": "AutoBalance, α frozen (control)",
}
NO_SELECTION = ("erm", "group_weighted", "group_subsample", "llr_thumb", "autobalance_frozen")  # one row each
LAST_LAYER = ("dfr", "afr", "llr_thumb", "llr_bilevel")
SELECTIONS = ("group", "class")
METRICS = ("worst_group_accuracy", "weighted_average_accuracy", "mean_group_accuracy", "accuracy")
METRIC_LABELS = {
    "worst_group_accuracy": "worst-group %",
    "weighted_average_accuracy": "weighted avg %",
    "mean_group_accuracy": "mean group %",
    "accuracy": "accuracy %",
}
RIDGE = 1.0  # L2 penalty of the square-loss heads of llr_thumb / llr_bilevel (fixed; needed when n ≤ d)
GRIDS = {"group_dro": (0.01, 0.1), "jtt": (5, 20), "dfr": (1.0, 0.1, 0.01), "afr": (0.0, 2.0, 4.0)}
FULL = {
    "epochs": 30,
    "spurious_mnist1d": {"n_train": 4000, "strength": 0.5, "test_per_cell": 250},
    "spurious_digits": {"val_per_cell": 50, "test_per_cell": 100},
}
SMOKE = {
    "epochs": 2,
    "spurious_mnist1d": {"n_train": 400, "strength": 0.5, "test_per_cell": 20},
    "spurious_digits": {"val_per_cell": 50, "test_per_cell": 100},
}


# ---------------------------------------------------------------------------------------------------------- one job
def job_dir(work: Path, data: str, method: str, seed: int) -> Path:
    return work / data / method / f"seed{seed}"


def _datamodule(data: str, sizes: Mapping[str, Any]) -> Any:
    if data == "spurious_mnist1d":
        from lightning_autobalance.data.spurious import SpuriousMNIST1D

        return SpuriousMNIST1D(**sizes[data], seed=0)
    from lightning_autobalance.data.spurious_digits import SpuriousDigits

    return SpuriousDigits(**sizes[data], seed=0)


def _net(data: str) -> Any:
    from lightning_autobalance.models import DigitsConvNet, MNIST1DConvNet

    return MNIST1DConvNet(num_classes=2) if data == "spurious_mnist1d" else DigitsConvNet(num_classes=2)


class _Job:
    """The shared pieces of one (data, seed) job: the split, models, trainers and the metrics."""

    def __init__(self, data: str, seed: int, sizes: Mapping[str, Any], work: Path) -> None:
        from lightning_autobalance.data import HeldOutSplit

        self.data, self.seed, self.sizes, self.work = data, seed, sizes, work
        self.epochs = int(sizes["epochs"])
        self.dm = _datamodule(data, sizes)
        self.dm.prepare_data()
        self.dm.setup("fit")
        self.split = HeldOutSplit(self.dm, fraction=0.2, seed=seed, num_classes=2)
        self.split.setup("fit")
        self.num_groups = int(self.dm.num_groups)
        self.train_cells = self.split.group_class_counts

    def model(self) -> Any:
        import lightning.pytorch as pl

        from lightning_autobalance.classifier import ImbalancedClassifier

        pl.seed_everything(self.seed, workers=True, verbose=False)
        return ImbalancedClassifier(_net(self.data), num_classes=2, num_groups=self.num_groups)

    def trainer(self, epochs: int, callbacks: Sequence[Any] = ()) -> Any:
        import lightning.pytorch as pl

        return pl.Trainer(
            max_epochs=epochs,
            callbacks=list(callbacks),
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            accelerator="cpu",
            devices=1,
            default_root_dir=str(self.work),
        )

    def fit(self, model: Any, datamodule: Any = None, callbacks: Sequence[Any] = ()) -> Any:
        self.trainer(self.epochs, callbacks).fit(model, datamodule=datamodule or self.split)
        return model

    def metrics(self, model: Any, loader: Any) -> dict[str, float]:
        from lightning_autobalance.metrics import (
            mean_group_accuracy,
            weighted_average_accuracy,
            worst_group_accuracy,
        )
        from lightning_autobalance.report import predict_labels

        preds, targets, groups = predict_labels(model, loader)
        sizes = {"num_classes": 2, "num_groups": self.num_groups}
        worst_class = min(float((preds[targets == k] == k).float().mean()) for k in targets.unique().tolist())
        return {
            "worst_group_accuracy": float(worst_group_accuracy(preds, targets, groups, **sizes)),
            "weighted_average_accuracy": float(
                weighted_average_accuracy(preds, targets, groups, **sizes, train_cell_counts=self.train_cells)
            ),
            "mean_group_accuracy": float(mean_group_accuracy(preds, targets, groups, **sizes)),
            "accuracy": float((preds == targets).float().mean()),
            "worst_class_accuracy": worst_class,
        }

    def candidate(self, model: Any, **params: Any) -> dict[str, Any]:
        """Held-out and test metrics of one grid point."""
        return {
            "params": params,
            "heldout": self.metrics(model, self.split.heldout_dataloader()),
            "test": self.metrics(model, self.dm.test_dataloader()),
        }

    def erm_path(self) -> Path:
        return job_dir(self.work, self.data, "erm", self.seed) / "erm.pt"

    def erm_model(self) -> Any:
        import torch

        model = self.model()
        model.load_state_dict(torch.load(self.erm_path(), weights_only=True))
        model.eval()
        return model


def _select(candidates: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per selection rule, the test metrics of the candidate with the best held-out score (first on ties)."""
    out = {}
    for rule in SELECTIONS:
        key = "worst_group_accuracy" if rule == "group" else "worst_class_accuracy"
        best = max(range(len(candidates)), key=lambda i: (candidates[i]["heldout"][key], -i))
        out[rule] = {**candidates[best]["test"], "params": candidates[best]["params"]}
    return out


def _last_layer(job: _Job, mode: str, rule: str, **options: Any) -> dict[str, Any]:
    """Refit the ERM model's head on the held-out split; the test metrics and the chosen hyperparameters."""
    from lightning_autobalance.last_layer import retrain_last_layer

    model = job.erm_model()
    report = retrain_last_layer(
        model, job.split.heldout_dataloader(), mode=mode, seed=job.seed, log=False, num_classes=2, **options
    )
    chosen = {k.rsplit("/", 1)[-1]: v for k, v in report.metrics.items() if k.startswith(f"llr/{mode}/")}
    return {**job.metrics(model, job.dm.test_dataloader()), "params": chosen, "selection": rule}


def _autobalance_run(job: _Job, objective: Any, hyper_lr: float = 0.05, **options: Any) -> tuple[Any, Any]:
    """The AutoBalance search run (the model trained on the split's train part while α is tuned) and its callback.

    ``hyper_lr=0`` is the α-frozen control: the same run, hyper-steps and all, with Adam at learning rate 0, so α
    stays at its initial value (preset ``ce``: plain cross-entropy). ``options`` override the callback's settings
    (``benchmarks/groups_diagnosis.py``).
    """
    import torch

    from lightning_autobalance import AutoBalance, Neumann
    from lightning_autobalance.hyperstep import FullNetwork

    smoke = job.epochs < 10
    digits = job.data == "spurious_digits"
    settings: dict[str, Any] = {
        "preset": "ce",
        "learn": ("delta", "iota"),
        "objective": objective,
        "engine": FullNetwork(solver=Neumann(terms=5, alpha=0.05)),
        "warmup_epochs": 0 if smoke else 10,
        "every_n_steps": 10,
        "train_batches": 1 if digits else 2,
        "heldout_batches": 1 if digits else 4,
        "batch_size": 256,
        "hyper_optimizer": functools.partial(torch.optim.Adam, lr=hyper_lr),
    }
    callback = AutoBalance(**{**settings, **options})
    return job.fit(job.model(), callbacks=[callback]), callback


def _autobalance(job: _Job, objective: Any) -> Any:
    return _autobalance_run(job, objective)[0]


def _alpha(callback: Any) -> dict[str, Any]:
    """α at the end of the run and its largest absolute move from the initial value (preset ``ce``: Δ = 1, ι = 0)."""
    values = callback.current_values()
    initial = {"delta": 1.0, "iota": 0.0}
    moved = max(abs(v - initial[k.split("/")[1]]) for k, v in values.items())
    return {"hyper_steps": int(callback.hyper_steps), "alpha_max_move": moved, "alpha": values}


def run_method(job: _Job, method: str) -> dict[str, Any]:
    """``{"group": metrics, "class": metrics}``: the test metrics of the model chosen by each selection rule."""
    import torch

    from lightning_autobalance import GroupBalancedSubsample, GroupDRO, jtt
    from lightning_autobalance.losses import make_loss
    from lightning_autobalance.objectives import Blend, EqualOpportunityGap, WorstGroup

    if method == "erm":
        model = job.fit(job.model())
        torch.save(model.state_dict(), job.erm_path())
        return _select([job.candidate(model)])
    if method == "group_weighted":
        model = job.model()
        model.autobalance_loss = make_loss("weighted", group_counts=job.train_cells)
        return _select([job.candidate(job.fit(model))])
    if method == "group_subsample":
        data = GroupBalancedSubsample(job.split, seed=job.seed)
        return _select([job.candidate(job.fit(job.model(), datamodule=data))])
    if method == "group_dro":
        return _select(
            [
                job.candidate(job.fit(job.model(), callbacks=[GroupDRO(step_size=eta, adjustment=0.0)]), step_size=eta)
                for eta in GRIDS["group_dro"]
            ]
        )
    if method == "jtt":
        candidates = []
        for upweight in GRIDS["jtt"]:
            model, report = jtt(
                job.model,
                job.split,
                stage1_epochs=max(1, job.epochs // 6),
                upweight=upweight,
                trainer_factory=job.trainer,
                epochs=job.epochs,
                seed=job.seed,
            )
            candidates.append(job.candidate(model, upweight=upweight, error_set=int(report.error_set.numel())))
        return _select(candidates)
    if method == "dfr":
        return {
            rule: _last_layer(
                job, "dfr", rule, group_head={"C_grid": GRIDS["dfr"], "selection_metric": f"worst_{rule}"}
            )
            for rule in SELECTIONS
        }
    if method == "afr":
        return {
            rule: _last_layer(
                job, "afr", rule, group_head={"gamma_grid": GRIDS["afr"], "selection_metric": f"worst_{rule}"}
            )
            for rule in SELECTIONS
        }
    if method == "llr_thumb":
        result = _last_layer(job, "thumb", "none", ridge=RIDGE)
        return {"group": result, "class": result}
    if method == "llr_bilevel":
        return {
            "group": _last_layer(
                job, "bilevel", "group", ridge=RIDGE, bilevel={"per": "group_class", "objective": "worst_group"}
            ),
            "class": _last_layer(
                job,
                "bilevel",
                "class",
                ridge=RIDGE,
                use_groups=False,
                bilevel={"per": "class", "objective": "balanced"},
            ),
        }
    if method == "autobalance_worst_group":
        by_group, alpha_group = _autobalance_run(job, WorstGroup(temperature=1.0))
        by_class, alpha_class = _autobalance_run(job, WorstGroup(temperature=1.0, over="class"))
        return {
            "group": {**job.candidate(by_group)["test"], "params": _alpha(alpha_group)},
            "class": {**job.candidate(by_class)["test"], "params": _alpha(alpha_class)},
        }
    if method == "autobalance_blend":
        objective = Blend(WorstGroup(temperature=1.0), EqualOpportunityGap(), lam=0.5)
        return _select([job.candidate(_autobalance(job, objective))])
    if method == "autobalance_frozen":
        model, callback = _autobalance_run(job, WorstGroup(temperature=1.0), hyper_lr=0.0)
        alpha = _alpha(callback)
        if alpha["alpha_max_move"] != 0.0:
            raise RuntimeError(f"α moved in the α-frozen control: {alpha}")
        result = {**job.candidate(model)["test"], "params": alpha}
        return {"group": result, "class": result}
    raise ValueError(f"Unknown method {method!r}: choose from {', '.join(METHODS)}.")


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"


def run_job(spec: tuple[str, str, int, dict[str, Any], str]) -> tuple[str, float, str | None]:
    """Worker: one (data, method, seed) job with its output in ``job.log``; returns (name, seconds, error)."""
    data, method, seed, sizes, work = spec
    out = job_dir(Path(work), data, method, seed)
    start = time.perf_counter()

    def body() -> None:
        import warnings

        from lightning_autobalance.cli import quiet_lightning

        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        with quiet_lightning():
            job = _Job(data, seed, sizes, Path(work))
            result = run_method(job, method)
        record = {"data": data, "method": method, "seed": seed, "sizes": sizes, "result": result}
        record["seconds"] = round(time.perf_counter() - start, 1)
        write_text_atomic(out / "result.json", json.dumps(record, indent=1) + "\n")

    seconds, error = run_logged(out, body)
    return f"{data}/{method}/seed{seed}", seconds, error


def run_jobs(specs: Sequence[tuple[str, str, int, dict[str, Any], str]], processes: int) -> list[str]:
    """Run the jobs without a ``result.json``: the ERM jobs first (the last-layer jobs load their weights)."""
    todo = [s for s in specs if not (job_dir(Path(s[4]), s[0], s[1], s[2]) / "result.json").exists()]
    print(f"{len(specs) - len(todo)} of {len(specs)} jobs already done; running {len(todo)} in {processes} processes")
    failed: list[str] = []
    if not todo:
        return failed
    erm_failed: set[tuple[str, int]] = set()
    import importlib

    # the workers import this file as ``benchmarks.groups`` (importable from the repository root, which the spawned
    # processes have on their path), whatever name it was loaded under here (``__main__``, or ``groups`` in the tests)
    module = importlib.import_module("benchmarks.groups")
    context = multiprocessing.get_context("spawn")
    start = time.perf_counter()
    done = 0
    with context.Pool(processes, initializer=module._worker_init) as pool:
        for stage in ([s for s in todo if s[1] == "erm"], [s for s in todo if s[1] != "erm"]):
            pending = []
            for spec in stage:
                if spec[1] in LAST_LAYER and (spec[0], spec[2]) in erm_failed:
                    failed.append(f"{spec[0]}/{spec[1]}/seed{spec[2]}")
                    continue
                pending.append((spec, pool.apply_async(module.run_job, (spec,))))
            for spec, result in pending:
                name, seconds, error = result.get()
                done += 1
                status = "FAILED " + error if error else "ok"
                elapsed = (time.perf_counter() - start) / 60
                print(f"[{done}/{len(todo)} {elapsed:.1f} min] {name}: {status} ({seconds:.0f} s)")
                if error:
                    failed.append(name)
                    if spec[1] == "erm":
                        erm_failed.add((spec[0], spec[2]))
    return failed


# ---------------------------------------------------------------------------------------------------------- report
def collect(work: Path, datasets: Sequence[str], methods: Sequence[str], seeds: Sequence[int]) -> dict[str, Any]:
    """``table[data][method][selection][seed]`` = test metrics; ``seconds[data][method][seed]``."""
    table: dict[str, Any] = {}
    seconds: dict[str, Any] = {}
    for data in datasets:
        for method in methods:
            for seed in seeds:
                path = job_dir(work, data, method, seed) / "result.json"
                if not path.exists():
                    continue
                record = json.loads(path.read_text())
                for rule in SELECTIONS:
                    cell = {m: record["result"][rule][m] for m in METRICS}
                    table.setdefault(data, {}).setdefault(method, {}).setdefault(rule, {})[seed] = cell
                seconds.setdefault(data, {}).setdefault(method, {})[seed] = record["seconds"]
    return {"table": table, "seconds": seconds}


def _has_selection(table: Mapping[str, Any], method: str) -> bool:
    """Whether the two selection rules can differ (the method has hyperparameters chosen on held-out data)."""
    return method not in NO_SELECTION


def rows(table: Mapping[str, Any], data: str) -> list[tuple[str, str]]:
    """(method, selection) rows of a data set: one per method, two where the selection rules can differ."""
    out = []
    for method in METHODS:
        if method not in table.get(data, {}):
            continue
        rules = SELECTIONS if _has_selection(table, method) else ("group",)
        out += [(method, rule) for rule in rules if rule in table[data][method]]
    return out


def row_label(method: str, rule: str) -> str:
    if method in NO_SELECTION:
        return LABELS[method]
    return f"{LABELS[method]} (sel. worst {rule})"


def best_row(table: Mapping[str, Any], data: str) -> tuple[str, str]:
    """The row with the highest mean test worst-group accuracy."""
    return max(rows(table, data), key=lambda r: mean_std(table[data][r[0]][r[1]], "worst_group_accuracy")[0])


def format_report(table: Mapping[str, Any], seeds: Sequence[int], sizes: Mapping[str, Any]) -> str:
    """Markdown: per data set the mean ± std table (best worst-group row in bold), then paired differences."""
    lines = [
        f"Test metrics in %, mean ± std over training seeds {', '.join(map(str, seeds))} (data seed 0), "
        f'{sizes["epochs"]} epochs. Rows "sel. worst group" chose their hyperparameters on the held-out split\'s '
        'worst-group accuracy, "sel. worst class" on its worst-class accuracy (no group labels in selection). '
        "Worst-group: worst (group, class) cell; weighted avg: test cell accuracies weighted by the training cell "
        "proportions; mean group: unweighted mean over the cells."
    ]
    for data in DATASETS:
        if data not in table:
            continue
        best = best_row(table, data)
        lines += [
            "",
            f"## {DATA_LABELS[data]}",
            "",
            "| method | " + " | ".join(METRIC_LABELS[m] for m in METRICS) + " | seeds |",
            "|---|" + "---:|" * (len(METRICS) + 1),
        ]
        for method, rule in rows(table, data):
            cells = table[data][method][rule]
            values = []
            for metric in METRICS:
                m, s = mean_std(cells, metric)
                text = f"{m:.1f} ± {s:.1f}" if not math.isnan(s) else f"{m:.1f}"
                values.append(f"**{text}**" if (method, rule) == best and metric == METRICS[0] else text)
            label = row_label(method, rule)
            label = f"**{label}**" if (method, rule) == best else label
            lines.append(f"| {label} | " + " | ".join(values) + f" | {len(cells)} |")
        lines += [
            "",
            f"Paired difference of every row minus the best ({row_label(*best)}), test worst-group accuracy, points "
            "(mean [95% t-interval] over seeds; an interval containing 0: not distinguishable from the best):",
            "",
            "| row | difference | 95% interval | seeds |",
            "|---|---:|---:|---:|",
        ]
        for method, rule in rows(table, data):
            if (method, rule) == best:
                continue
            d = paired_difference(table[data][method][rule], table[data][best[0]][best[1]], "worst_group_accuracy")
            lines.append(
                f"| {row_label(method, rule)} | {d['mean']:+.1f} | [{d['low']:+.1f}, {d['high']:+.1f}] | {d['n']} |"
            )
        learned, control = table[data].get("autobalance_worst_group", {}), table[data].get("autobalance_frozen", {})
        if "group" in learned and "group" in control:
            d = paired_difference(learned["group"], control["group"], "worst_group_accuracy")
            lines += [
                "",
                f"Learned α minus the α-frozen control: {row_label('autobalance_worst_group', 'group')} minus "
                f"{LABELS['autobalance_frozen']}, test worst-group accuracy {d['mean']:+.1f} points "
                f"[{d['low']:+.1f}, {d['high']:+.1f}] over {d['n']} seeds (the same search run with the "
                "hyper-optimizer's learning rate at 0, so α stays at plain cross-entropy).",
            ]
    return "\n".join(lines) + "\n"


def plot(table: Mapping[str, Any], path: Path) -> None:
    """Test worst-group accuracy per seed (dots) and mean (bar) of every row, one panel per data set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = [d for d in DATASETS if d in table]
    if not datasets:
        return
    height = max(len(rows(table, d)) for d in datasets)
    fig, axes = plt.subplots(1, len(datasets), figsize=(6.5 * len(datasets), 0.4 * height + 1.5), squeeze=False)
    for ax, data in zip(axes[0], datasets, strict=True):
        data_rows = rows(table, data)
        best = best_row(table, data)
        for i, (method, rule) in enumerate(data_rows):
            values = [100 * c["worst_group_accuracy"] for c in table[data][method][rule].values()]
            colour = (
                "tab:orange"
                if method.startswith("autobalance")
                else "tab:green"
                if method in LAST_LAYER
                else "tab:blue"
            )
            ax.barh(i, sum(values) / len(values), color=colour, alpha=0.8 if (method, rule) == best else 0.45)
            ax.plot(values, [i] * len(values), "k.", ms=4)
        ax.set_yticks(range(len(data_rows)), [row_label(*r) for r in data_rows], fontsize=8)
        ax.invert_yaxis()
        ax.set(xlabel="test worst-group accuracy % (bar: mean, dots: seeds)", title=DATA_LABELS[data])
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------------- command
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--work", type=Path, default=None, help=f"job folder (default {WORK}; --smoke: a temp dir)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="2 epochs, seed 0, small data: a quick end-to-end check")
    parser.add_argument("--report-only", action="store_true", help="write the report from the jobs done so far")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    datasets = [d for d in args.datasets.split(",") if d]
    seeds = [0] if args.smoke else [int(s) for s in args.seeds.split(",") if s]
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS] + [d for d in datasets if d not in DATASETS]
    if unknown:
        raise SystemExit(f"Unknown methods or data sets {unknown}: choose from {', '.join(METHODS + DATASETS)}.")
    needs_erm = [m for m in methods if m in LAST_LAYER]
    if needs_erm and "erm" not in methods:
        methods = ["erm", *methods]
    sizes = SMOKE if args.smoke else FULL
    work = args.work or (Path(tempfile.mkdtemp(prefix="groups_smoke_")) if args.smoke else WORK)
    specs = [(d, m, s, sizes, str(work)) for d in datasets for s in seeds for m in methods]
    start = time.perf_counter()
    failed = [] if args.report_only else run_jobs(specs, args.processes)
    minutes = (time.perf_counter() - start) / 60
    stem = "groups_smoke" if args.smoke else "groups"
    previous = args.results / f"{stem}.json"
    if args.report_only and previous.exists():  # keep the time of the invocation that ran the jobs
        minutes = json.loads(previous.read_text()).get("minutes", minutes)
    collected = collect(work, datasets, methods, seeds)
    table = collected["table"]
    shown = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--report-only"]
    command = shlex.join(["python", "benchmarks/groups.py", *shown])
    job_minutes = sum(s for d in collected["seconds"].values() for m in d.values() for s in m.values()) / 60
    report = (
        f"# Group-robustness benchmark{' (smoke run)' if args.smoke else ''}\n\n`PYTHONPATH=. {command}` — this "
        f"invocation: {minutes:.1f} min ({job_minutes:.1f} min of job time in {args.processes} processes).\n\n"
    )
    report += format_report(table, seeds, sizes)
    args.results.mkdir(parents=True, exist_ok=True)
    summary = {**collected, "minutes": minutes, "sizes": sizes, "seeds": seeds, "command": command}
    write_text_atomic(args.results / f"{stem}.md", report)
    write_text_atomic(args.results / f"{stem}.json", json.dumps(summary, indent=1) + "\n")
    plot(table, args.results / f"{stem}.png")
    print(report)
    if failed:
        print(f"{len(failed)} jobs failed: {', '.join(failed)} (logs in {work})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
