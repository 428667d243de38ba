"""Diagnosis with ground truth (issue 16): why the learned loss loses to logit adjustment, on development data.

The function the search should descend is the balanced test error of a model *retrained* with α. This script
measures it by actual retrains around LA and along the direction the search moved, on development data only
(MNIST-1D-LT, exponential profile, ρ = 100, n_max = 5000, data seeds 1–6 — the benchmark uses data seed 0 — each with
training seed = data seed, 2000 test sequences per class), and prints every row as a paired difference to LA with a
95% t-interval::

    PYTHONPATH=. python benchmarks/diagnosis.py            # about 35 min on 2 cores (3,800 CPU-s of jobs); resumable

Rows (each a run of the command-line app):

* fixed losses: LA with τ ∈ {0.75, 1, 1.25, 1.5}; VS (LA's ι with Δ = (n_y/n_max)^γ) with γ ∈ {−0.2, −0.1, −0.05,
  0.1, 0.2};
* the search → retrain path with α frozen (hyper-optimizer lr 0) from CE, LA, LA with τ ∈ {0.25, 0.5} and CDT with
  γ ∈ {−0.1, 0.1, 0.2}: the noise floor (frozen LA against LA) and, from the held-out logits of the search model, a
  post-hoc logit adjustment τ applied to the retrained model (chosen by the held-out balanced cross-entropy, by the
  held-out balanced error, and — for diagnosis only, never for a method — the test-optimal τ), and per-class shifts
  fitted exactly on the held-out balanced cross-entropy (``posthoc_per_class``);
* AutoBalance (the app's default search) from LA and from CE;
* retrains along the direction the search from LA moved: α(s) = α_LA + s·(α_learned − α_LA) for s = −1, 2, and the
  Δ and ι parts alone (s = 1 is the AutoBalance row).

Results: ``benchmarks/results/diagnosis.md`` (written by this script, with the reading in
``benchmarks/results/diagnosis_notes.md``).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.lab import Job, job_outputs, paper_scale_overrides, run_jobs  # noqa: E402
from benchmarks.paper_scale import class_errors, paired_difference  # noqa: E402
from lightning_autobalance.learned_loss import write_text_atomic  # noqa: E402

WORK = REPO / "outputs" / "benchmarks" / "diagnosis"
RESULTS = REPO / "benchmarks" / "results"
DEV_SEEDS = (1, 2, 3, 4, 5, 6)
BASELINE = ("phases=[baseline]",)
FROZEN = ("phases=[search,retrain]", "autobalance.hyper_optimizer.lr=0")
SEARCH = ("phases=[search,retrain]",)
VS_EXP = ("loss=vs", "loss.delta_parameterization=exp")
METHODS: dict[str, tuple[str, ...]] = {
    "la": (*BASELINE, "loss=la"),
    "la_t0.75": (*BASELINE, "loss=la", "loss.tau=0.75"),
    "la_t1.25": (*BASELINE, "loss=la", "loss.tau=1.25"),
    "la_t1.5": (*BASELINE, "loss=la", "loss.tau=1.5"),
    "vs_g0.1": (*BASELINE, "loss=vs", "loss.gamma=0.1"),
    "vs_g0.2": (*BASELINE, "loss=vs", "loss.gamma=0.2"),
    "vs_g-0.05": (*BASELINE, *VS_EXP, "loss.gamma=-0.05"),
    "vs_g-0.1": (*BASELINE, *VS_EXP, "loss.gamma=-0.1"),
    "vs_g-0.2": (*BASELINE, *VS_EXP, "loss.gamma=-0.2"),
    "frozen_la": (*FROZEN, "autobalance.preset=la"),
    "frozen_ce": (*FROZEN, "autobalance.preset=ce"),
    "frozen_cb": (*FROZEN, "autobalance.preset=la", "autobalance.tau=0.25"),
    "frozen_la_t0.5": (*FROZEN, "autobalance.preset=la", "autobalance.tau=0.5"),
    "frozen_cdt_g0.1": (*FROZEN, "autobalance.preset=cdt", "autobalance.gamma=0.1"),
    "frozen_cdt_g0.2": (*FROZEN, "autobalance.preset=cdt", "autobalance.gamma=0.2"),
    "frozen_cdt_g-0.1": (*FROZEN, "autobalance.preset=cdt", "autobalance.gamma=-0.1"),
    "ab_la": (*SEARCH, "autobalance.preset=la"),
    "ab_ce": (*SEARCH, "autobalance.preset=ce"),
    # the engine study: the same search from LA with the full-network engine, and the reference procedure next to the
    # default engine at the reference's schedule (ab_la_fast), so the two differ by the engine only
    "ab_la_full": (*SEARCH, "autobalance.preset=la", "autobalance.engine=full", "autobalance.solver=null"),
    "ab_la_fast": (*SEARCH, "autobalance=fast", "autobalance.preset=la"),
    "ab_la_reference": (*SEARCH, "autobalance=reference", "autobalance.preset=la"),
}
ENGINE_ROWS = ("ab_la", "ab_la_full", "ab_la_fast", "ab_la_reference")
# direction retrains: (name, s, kinds moved)
DIRECTIONS = (
    ("dir_s2.0_delta+iota", 2.0, ("delta", "iota")),
    ("dir_s-1.0_delta+iota", -1.0, ("delta", "iota")),
    ("dir_s1.0_delta", 1.0, ("delta",)),
    ("dir_s1.0_iota", 1.0, ("iota",)),
)


def job(method: str, seed: int, extra: Sequence[str] = ()) -> Job:
    overrides = (*paper_scale_overrides("exponential", seed, seed), *METHODS.get(method, ()), *extra)
    return Job(f"exp/{method}/d{seed}", overrides)


def search_move(work: Path, method: str, seed: int):
    """The move α_learned − α_LA of a search from LA (Δ and ι of group 0, concatenated), or None if not run yet."""
    import numpy as np
    import yaml

    run = work / f"exp/{method}/d{seed}"
    if not (run / "autobalance_loss.yaml").exists():
        return None
    counts = np.array(json.loads((run / "results.json").read_text())["class_counts"], float)
    train = counts - np.maximum(1, np.round(0.2 * counts))  # the search's train split (HeldOutSplit's rounding)
    values = yaml.safe_load((run / "autobalance_loss.yaml").read_text())["values"]
    delta, iota = np.array(values["delta"][0]), np.array(values["iota"][0])
    return np.concatenate([delta - 1.0, iota - np.log(train / train.sum())])


def engine_agreement(work: Path, seeds: Sequence[int]) -> str:
    """How far each engine's search moved from LA, and the cosine between the moves of two engines on the same seed."""
    import numpy as np

    moves = {m: {s: v for s in seeds if (v := search_move(work, m, s)) is not None} for m in ENGINE_ROWS}
    lines = ["| search from LA | seeds | ‖α − α_LA‖ (mean) |", "|---|---:|---:|"]
    lines += [
        f"| {m} | {len(v)} | {np.mean([np.linalg.norm(x) for x in v.values()]):.3f} |" for m, v in moves.items() if v
    ]
    pairs = (("ab_la", "ab_la_full"), ("ab_la", "ab_la_fast"), ("ab_la_fast", "ab_la_reference"))
    lines += ["", "| engines | seeds | cosine of the two moves (mean, min … max) |", "|---|---:|---:|"]
    for a, b in pairs:
        common = sorted(set(moves[a]) & set(moves[b]))
        if not common:
            continue
        cos = [
            float(moves[a][s] @ moves[b][s] / (np.linalg.norm(moves[a][s]) * np.linalg.norm(moves[b][s])))
            for s in common
        ]
        lines.append(f"| {a} vs {b} | {len(common)} | {np.mean(cos):+.2f} ({min(cos):+.2f} … {max(cos):+.2f}) |")
    return "\n".join(lines)


def direction_loss_file(work: Path, seed: int, s: float, kinds: Sequence[str]) -> Path:
    """A learned-loss file with α_LA + s·(α_learned − α_LA) in ``kinds`` (α_LA from the train split's counts)."""
    import numpy as np
    import torch
    import yaml

    from lightning_autobalance.learned_loss import save_loss
    from lightning_autobalance.losses import ParametricCrossEntropy

    run = work / f"exp/ab_la/d{seed}"
    counts = np.array(json.loads((run / "results.json").read_text())["class_counts"], float)
    train = counts - np.maximum(1, np.round(0.2 * counts))  # the search's train split (HeldOutSplit's rounding)
    iota0, delta0 = np.log(train / train.sum()), np.ones_like(counts)
    values = yaml.safe_load((run / "autobalance_loss.yaml").read_text())["values"]
    delta1, iota1 = np.array(values["delta"][0]), np.array(values["iota"][0])
    delta = delta0 + s * (delta1 - delta0) if "delta" in kinds else delta0
    iota = iota0 + s * (iota1 - iota0) if "iota" in kinds else iota0
    loss = ParametricCrossEntropy(
        len(counts), delta=torch.tensor(delta), iota=torch.tensor(iota), delta_parameterization="exp"
    )
    path = work / "directions" / f"d{seed}_s{s}_{'+'.join(kinds)}.yaml"
    save_loss(loss, path, {"s": s, "kinds": list(kinds)})
    return path


def per_class_shift(logits, targets):
    """Per-class shifts b (mean 0) minimising the balanced cross-entropy of ``logits + b`` (convex; L-BFGS)."""
    import torch

    from lightning_autobalance.objectives import balanced_cross_entropy

    z, y = logits.double(), targets.long()
    b = torch.zeros(z.shape[1], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([b], max_iter=500, tolerance_grad=1e-10, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        value = balanced_cross_entropy(z + (b - b.mean()), y)
        value.backward()
        return value

    optimizer.step(closure)
    return (b - b.mean()).detach()


def posthoc_rows(run: Path) -> dict[str, float]:
    """Post-hoc τ of a frozen / search run: by held-out balanced CE, by held-out balanced error, and test-optimal."""
    import numpy as np
    import torch

    from lightning_autobalance.posthoc import adjust_logits, fit_logit_adjustment

    counts = json.loads((run / "results.json").read_text())["class_counts"]
    search, retrain = np.load(run / "logits_search.npz"), np.load(run / "logits_retrain.npz")
    test = torch.from_numpy(retrain["test_logits"])

    def error(logits: torch.Tensor, targets: np.ndarray) -> float:
        errors = class_errors(logits.numpy(), targets)
        return sum(errors) / len(errors)

    tau_ce = fit_logit_adjustment(
        torch.from_numpy(search["heldout_logits"]), torch.from_numpy(search["heldout_targets"]), counts
    )
    grid = [round(-1 + 0.05 * i, 2) for i in range(61)]
    held = torch.from_numpy(search["heldout_logits"])
    tau_err = min(grid, key=lambda t: error(adjust_logits(held, counts, t), search["heldout_targets"]))
    tau_oracle = min(grid, key=lambda t: error(adjust_logits(test, counts, t), retrain["test_targets"]))
    shift = per_class_shift(held, torch.from_numpy(search["heldout_targets"]))
    return {
        "posthoc_per_class": error(test.double() + shift, retrain["test_targets"]),
        "posthoc": error(adjust_logits(test, counts, tau_ce), retrain["test_targets"]),
        "posthoc_by_error": error(adjust_logits(test, counts, tau_err), retrain["test_targets"]),
        "oracle": error(adjust_logits(test, counts, tau_oracle), retrain["test_targets"]),
        "tau": tau_ce,
        "tau_oracle": tau_oracle,
    }


def collect(work: Path, seeds: Sequence[int], rows: Sequence[str]) -> dict[str, dict[int, dict[str, float]]]:
    table: dict[str, dict[int, dict[str, float]]] = {}
    names = [*rows, *(name for name, _, _ in DIRECTIONS if len(rows) == len(METHODS))]
    for name in names:
        for seed in seeds:
            record = job_outputs(work, Job(f"exp/{name}/d{seed}", ()))
            if record is None:
                continue
            results = record["results"]
            final = results.get("AutoBalance") or next(iter(results.values()))
            table.setdefault(name, {})[seed] = {"balanced_error": final["balanced_error"]}
            if "AutoBalance (search model)" in results:
                search = results["AutoBalance (search model)"]
                table.setdefault(f"{name} [search model]", {})[seed] = {"balanced_error": search["balanced_error"]}
            if (work / f"exp/{name}/d{seed}/logits_search.npz").exists():
                rows = posthoc_rows(work / f"exp/{name}/d{seed}")
                for key in ("posthoc", "posthoc_per_class", "posthoc_by_error", "oracle"):
                    table.setdefault(f"{name} + {key}", {})[seed] = {"balanced_error": rows[key]}
                table.setdefault(f"{name} τ", {})[seed] = {"tau": rows["tau"], "tau_oracle": rows["tau_oracle"]}
    return table


def format_table(table: dict[str, dict[int, dict[str, float]]]) -> str:
    lines = [
        "| row | seeds | balanced test error % | paired difference to LA (points) | 95% interval |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, cells in table.items():
        if name.endswith(" τ"):
            continue
        values = [100 * c["balanced_error"] for c in cells.values()]
        mean = sum(values) / len(values)
        sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else math.nan
        d = paired_difference(cells, table["la"]) if name != "la" and "la" in table else None
        diff = f"{d['mean']:+.2f} | [{d['low']:+.2f}, {d['high']:+.2f}]" if d else "— | —"
        lines.append(f"| {name} | {len(values)} | {mean:.2f} ± {sd:.2f} | {diff} |")
    taus = [(name, cells) for name, cells in table.items() if name.endswith(" τ")]
    if taus:
        lines += [
            "",
            "| run | post-hoc τ by held-out balanced CE (mean ± sd) | test-optimal τ (diagnosis only) |",
            "|---|---:|---:|",
        ]
        for name, cells in taus:
            t = [c["tau"] for c in cells.values()]
            o = [c["tau_oracle"] for c in cells.values()]
            sd = math.sqrt(sum((x - sum(t) / len(t)) ** 2 for x in t) / max(1, len(t) - 1))
            lines.append(f"| {name[:-2]} | {sum(t) / len(t):.2f} ± {sd:.2f} | {sum(o) / len(o):.2f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default=",".join(map(str, DEV_SEEDS)))
    parser.add_argument("--work", type=Path, default=WORK)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--report-only", action="store_true", help="write the report from the jobs done so far")
    parser.add_argument("--rows", default=None, help="run and report only these rows (comma-separated)")
    parser.add_argument("--report", default="diagnosis.md", help="file name of the report in --results")
    args = parser.parse_args(argv)
    rows = list(METHODS) if args.rows is None else args.rows.split(",")
    unknown = sorted(set(rows) - set(METHODS))
    if unknown:
        raise SystemExit(f"--rows: unknown rows {unknown}; choose from {', '.join(METHODS)}.")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    if set(seeds) & {0}:
        raise SystemExit("Data seed 0 is the benchmark's: the diagnosis runs on development data seeds ≥ 1 only.")
    run = (lambda jobs: []) if args.report_only else (lambda jobs: run_jobs(jobs, args.work, processes=args.processes))
    failed = run([job(m, s) for s in seeds for m in rows])
    directions = [
        job(name, s, ("phases=[retrain]", f"learned_loss={direction_loss_file(args.work, s, step, kinds)}"))
        for s in seeds
        if args.rows is None and job_outputs(args.work, job("ab_la", s)) is not None and not args.report_only
        for name, step, kinds in DIRECTIONS
    ]
    failed += run(directions)
    shown = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--report-only"]
    command = shlex.join(["python", "benchmarks/diagnosis.py", *shown])
    report = (
        "# Diagnosis on development data (issue 16)\n\n"
        f"`PYTHONPATH=. {command}`. MNIST-1D-LT, exponential, ρ = 100, n_max = 5000, data seeds "
        f"{', '.join(map(str, seeds))} (training seed = data seed), 2000 test sequences per class; balanced test "
        "error of the final (retrained) model unless the row says otherwise; a row with fewer seeds is not complete "
        "yet (the same command runs the rest). Reading: `diagnosis_notes.md`.\n\n"
        + format_table(collect(args.work, seeds, rows))
        + "\n\n"
        + engine_agreement(args.work, seeds)
        + "\n"
    )
    write_text_atomic(args.results / args.report, report)
    print(report)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
