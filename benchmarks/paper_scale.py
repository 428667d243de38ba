"""Paper-scale benchmark (issue 16): AutoBalance against every fixed recipe, with paired differences and a noise floor.

One command regenerates ``benchmarks/results/paper_scale.{md,json,png}``::

    PYTHONPATH=. python benchmarks/paper_scale.py            # resumable: re-run the same command after a stop
    PYTHONPATH=. python benchmarks/paper_scale.py --regime few   # n_max = 1000 (few samples per rare class)

Setting: MNIST-1D-LT, ρ = 100, exponential and step profiles, ``n_max = 5000`` (the CIFAR10-LT class counts
5000 … 50) or 1000 (``--regime few``), a balanced test set of 2000 sequences per class (the standard error of a
balanced error of 4% is then about 0.14 points), benchmark data seed 0 (development work uses data seeds ≥ 1), training
seeds 0–4, every method on the same seeds, every phase 30 epochs (the command-line app's defaults). Every job is a run
of the command-line app in-process (:mod:`benchmarks.lab`), two at a time with one thread each.

Rows:

* fixed recipes of the ``loss`` group, trained on all training data: CE, LA, CDT, VS, LDAM-DRW, balanced softmax;
* post-hoc logit adjustment of a CE model: a CE model trained on the 80% train split gives held-out logits, τ minimises
  their balanced cross-entropy (:func:`lightning_autobalance.posthoc.fit_logit_adjustment`), and the CE model trained
  on all data predicts with ``logits − τ·log π`` (the search → retrain path of the app with the CE loss frozen);
* the control "LA frozen through search → retrain" (hyper-optimizer lr 0): the same seed as the LA row and a loss
  that differs only by ι computed from the train split's counts (≤ 0.006); training amplifies that into another
  model, so its paired difference to LA is the run-to-run noise of one configuration, the floor of every comparison;
* AutoBalance variants: the app's default (from CE), from LA, and the default with the post-hoc logit adjustment
  fitted on the held-out split at the end of the search (``autobalance.posthoc=true``).

For each AutoBalance variant the report gives the paired difference to every other row over the seeds (mean and 95%
t-interval). Nothing is selected on the test set.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.lab import Job, job_outputs, paper_scale_overrides, run_jobs  # noqa: E402
from lightning_autobalance.learned_loss import write_text_atomic  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
WORK = REPO / "outputs" / "benchmarks" / "paper_scale"
PROFILES = ("exponential", "step")
REGIMES = {"paper": {"n_max": 5000, "test_per_class": 2000}, "few": {"n_max": 1000, "test_per_class": 2000}}
BENCHMARK_DATA_SEED = 0

FROZEN = ("phases=[search,retrain]", "autobalance.hyper_optimizer.lr=0")
# method -> (table label, overrides of the app, result key in results.json)
METHODS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "ce": ("CE", ("phases=[baseline]", "loss=ce"), "CE"),
    "la": ("LA", ("phases=[baseline]", "loss=la"), "LA"),
    "cdt": ("CDT", ("phases=[baseline]", "loss=cdt"), "CDT"),
    "vs": ("VS", ("phases=[baseline]", "loss=vs"), "VS"),
    "ldam_drw": ("LDAM-DRW", ("phases=[baseline]", "loss=ldam_drw"), "LDAM-DRW"),
    "balanced_softmax": ("balanced softmax", ("phases=[baseline]", "loss=balanced_softmax"), "BALANCED-SOFTMAX"),
    "frozen_ce": ("CE, search → retrain path (α frozen)", (*FROZEN, "autobalance.preset=ce"), "AutoBalance"),
    "frozen_la": ("control: LA frozen through search → retrain", (*FROZEN, "autobalance.preset=la"), "AutoBalance"),
    "autobalance": ("AutoBalance (default)", ("phases=[search,retrain]",), "AutoBalance"),
    "autobalance_la": ("AutoBalance from LA", ("phases=[search,retrain]", "autobalance.preset=la"), "AutoBalance"),
    "autobalance_posthoc": (
        "AutoBalance + post-hoc τ",
        ("phases=[search,retrain]", "autobalance.posthoc=true"),
        "AutoBalance",
    ),
}
POSTHOC_CE = "posthoc_ce"
LABELS = {**{m: label for m, (label, _, _) in METHODS.items()}, POSTHOC_CE: "post-hoc LA of CE (τ on held-out)"}
FIXED = ("ce", "la", "cdt", "vs", "ldam_drw", "balanced_softmax", POSTHOC_CE)
CONTROL = "frozen_la"
AUTOBALANCE = ("autobalance", "autobalance_la", "autobalance_posthoc")
ROWS = (*FIXED, CONTROL, *AUTOBALANCE)


def make_jobs(regime: str, profiles: Sequence[str], seeds: Sequence[int], methods: Sequence[str]) -> list[Job]:
    """Every (profile, seed, method) job of the benchmark."""
    sizes = REGIMES[regime]
    return [
        Job(
            f"{regime}/{profile}/{method}/seed{seed}",
            (*paper_scale_overrides(profile, BENCHMARK_DATA_SEED, seed, **sizes), *METHODS[method][1]),
        )
        for profile in profiles
        for seed in seeds
        for method in methods
    ]


def class_errors(logits: Any, targets: Any) -> list[float]:
    """Per-class error of the arg-max predictions (numpy arrays), for the classes present."""
    import numpy as np

    predictions = logits.argmax(1)
    return [float(np.mean(predictions[targets == k] != k)) for k in np.unique(targets)]


def posthoc_record(run_dir: Path) -> dict[str, float]:
    """Post-hoc LA of the frozen-CE run: τ fitted on the search model's held-out logits, used by the retrained one."""
    import numpy as np
    import torch

    from lightning_autobalance.posthoc import adjust_logits, fit_logit_adjustment

    counts = json.loads((run_dir / "results.json").read_text())["class_counts"]
    search, retrain = np.load(run_dir / "logits_search.npz"), np.load(run_dir / "logits_retrain.npz")
    heldout = torch.from_numpy(search["heldout_logits"]), torch.from_numpy(search["heldout_targets"])
    split_counts = [n - max(1, round(0.2 * n)) for n in counts]  # the search model's training counts
    tau = fit_logit_adjustment(*heldout, split_counts)
    adjusted = adjust_logits(torch.from_numpy(retrain["test_logits"]), counts, tau).numpy()
    errors = class_errors(adjusted, retrain["test_targets"])
    return {"balanced_error": sum(errors) / len(errors), "worst_class_error": max(errors), "tau": tau}


def collect(work: Path, jobs: Sequence[Job]) -> dict[str, dict[str, dict[int, dict[str, float]]]]:
    """``table[profile][method][seed]`` = test balanced and worst-class error (and τ of the post-hoc row)."""
    table: dict[str, dict[str, dict[int, dict[str, float]]]] = {}
    for job in jobs:
        record = job_outputs(work, job)
        if record is None:
            continue
        _, profile, method, seed_name = job.name.split("/")
        seed = int(seed_name.removeprefix("seed"))
        result = record["results"][METHODS[method][2]]
        cell = {"balanced_error": result["balanced_error"], "worst_class_error": result["worst_class_error"]}
        table.setdefault(profile, {}).setdefault(method, {})[seed] = cell
        if method == "frozen_ce":
            table[profile].setdefault(POSTHOC_CE, {})[seed] = posthoc_record(work / job.name)
    return table


def paired_difference(
    a: Mapping[int, Mapping[str, float]], b: Mapping[int, Mapping[str, float]], metric: str = "balanced_error"
) -> dict[str, Any]:
    """Mean of a − b (``metric``, points) over the common seeds, with its 95% t-interval."""
    from scipy import stats

    seeds = sorted(set(a) & set(b))
    diffs = [100 * (a[s][metric] - b[s][metric]) for s in seeds]
    n = len(diffs)
    mean = sum(diffs) / n if n else math.nan
    if n < 2:
        return {"mean": mean, "low": math.nan, "high": math.nan, "n": n}
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": n}


def mean_std(cells: Mapping[int, Mapping[str, float]], metric: str) -> tuple[float, float]:
    values = [100 * c[metric] for c in cells.values()]
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else math.nan
    return mean, sd


def format_report(table: Mapping[str, Any], regime: str, seeds: Sequence[int]) -> str:
    """Markdown: the mean ± std table per profile, then the paired differences of each AutoBalance variant."""
    lines = []
    profiles = [p for p in PROFILES if p in table]
    header = "| method | " + " | ".join(f"{p}: balanced % | {p}: worst-class %" for p in profiles) + " |"
    lines += [header, "|---|" + "---:|" * (2 * len(profiles))]
    for method in ROWS:
        if not any(method in table[p] for p in profiles):
            continue
        cells = []
        for p in profiles:
            for metric in ("balanced_error", "worst_class_error"):
                if method not in table[p]:
                    cells.append("—")
                    continue
                m, s = mean_std(table[p][method], metric)
                cells.append(f"{m:.2f} ± {s:.2f}" if not math.isnan(s) else f"{m:.2f}")
        lines.append(f"| {LABELS[method]} | " + " | ".join(cells) + " |")
    for p in profiles:
        taus = [c["tau"] for c in table[p].get(POSTHOC_CE, {}).values()]
        if taus:
            lines.append(f"\nPost-hoc τ ({p}, per seed): " + ", ".join(f"{t:.2f}" for t in taus))
    for variant in AUTOBALANCE:
        for p in profiles:
            if variant not in table[p]:
                continue
            lines += [
                "",
                f"Paired difference of {LABELS[variant]} minus each row, {p} profile (balanced test error, points; "
                "negative = AutoBalance better; mean [95% t-interval] over seeds):",
                "",
                "| row | difference | 95% interval | seeds |",
                "|---|---:|---:|---:|",
            ]
            for other in ROWS:
                if other == variant or other not in table[p]:
                    continue
                d = paired_difference(table[p][variant], table[p][other])
                lines.append(f"| {LABELS[other]} | {d['mean']:+.2f} | [{d['low']:+.2f}, {d['high']:+.2f}] | {d['n']} |")
    sizes = REGIMES[regime]
    intro = (
        f"MNIST-1D-LT, ρ = 100, n_max = {sizes['n_max']}, {sizes['test_per_class']} test sequences per class, "
        f"data seed {BENCHMARK_DATA_SEED}, training seeds {', '.join(map(str, seeds))}; balanced and worst-class test "
        "error %, mean ± std over seeds."
    )
    control = [
        paired_difference(table[p][CONTROL], table[p]["la"])
        for p in profiles
        if CONTROL in table[p] and "la" in table[p]
    ]
    if control:
        intro += " Noise floor (control minus LA, the same loss up to ι from the split's counts): " + "; ".join(
            f"{p} {d['mean']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]" for p, d in zip(profiles, control, strict=False)
        )
        intro += "."
    return intro + "\n\n" + "\n".join(lines) + "\n"


def plot(table: Mapping[str, Any], path: Path) -> None:
    """Balanced test error per seed (dots) and mean (bar) of every row, one panel per profile."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    profiles = [p for p in PROFILES if p in table]
    rows = [m for m in ROWS if any(m in table[p] for p in profiles)]
    fig, axes = plt.subplots(1, len(profiles), figsize=(6 * len(profiles), 0.45 * len(rows) + 1.5), squeeze=False)
    for ax, p in zip(axes[0], profiles, strict=True):
        for i, m in enumerate(rows):
            cells = table[p].get(m, {})
            values = [100 * c["balanced_error"] for c in cells.values()]
            if not values:
                continue
            colour = "tab:orange" if m in AUTOBALANCE else "tab:grey" if m == CONTROL else "tab:blue"
            ax.barh(i, sum(values) / len(values), color=colour, alpha=0.5)
            ax.plot(values, [i] * len(values), "k.", ms=4)
        ax.set_yticks(range(len(rows)), [LABELS[m] for m in rows] if p == profiles[0] else [""] * len(rows))
        ax.invert_yaxis()
        ax.set(xlabel="balanced test error % (bar: mean, dots: seeds)", title=f"MNIST-1D-LT, {p}, ρ = 100")
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--regime", choices=tuple(REGIMES), default="paper")
    parser.add_argument("--profiles", default=",".join(PROFILES))
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--methods", default=",".join(m for m in METHODS if m != "frozen_ce") + ",frozen_ce")
    parser.add_argument("--work", type=Path, default=WORK)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--report-only", action="store_true", help="write the report from the jobs done so far")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    profiles = [p for p in args.profiles.split(",") if p]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"Unknown methods {unknown}: choose from {', '.join(METHODS)}.")
    jobs = make_jobs(args.regime, profiles, seeds, methods)
    start = time.perf_counter()
    failed = [] if args.report_only else run_jobs(jobs, args.work, processes=args.processes)
    minutes = (time.perf_counter() - start) / 60
    stem = f"paper_scale_{args.regime}"
    previous = args.results / f"{stem}.json"
    if args.report_only and previous.exists():  # keep the time of the invocation that ran the jobs
        minutes = json.loads(previous.read_text()).get("minutes", minutes)
    table = collect(args.work, jobs)
    shown = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--report-only"]
    command = shlex.join(["python", "benchmarks/paper_scale.py", *shown])
    report = (
        f"# Paper-scale benchmark ({args.regime})\n\n`PYTHONPATH=. {command}` — this invocation: {minutes:.1f} min.\n\n"
    )
    report += format_report(table, args.regime, seeds)
    args.results.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.results / f"{stem}.md", report)
    write_text_atomic(args.results / f"{stem}.json", json.dumps({"table": table, "minutes": minutes}, indent=1) + "\n")
    plot(table, args.results / f"{stem}.png")
    print(report)
    if failed:
        print(f"{len(failed)} jobs failed: {', '.join(failed)} (logs in {args.work})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
