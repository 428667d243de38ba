"""Choose AutoBalance's CLI defaults on *development* data: MNIST-1D-LT generated with other data seeds.

    PYTHONPATH=. python benchmarks/dev_sweep.py                      # the sweep that set the default hyper-lr
    PYTHONPATH=. python benchmarks/dev_sweep.py --data-seeds 1 2 3 --work outputs/benchmarks/dev_sweep

The benchmark data set (``benchmarks/accuracy.py``) is MNIST-1D-LT with ``data.seed=0``; its test set must not choose
settings. This script runs the CLI (``threads=1``, two processes at a time) on data sets generated with other seeds
(``data.seed`` 1, 2, 3: other training *and* test sequences), for the hand-tuned baselines CE, LA, CDT and for each
AutoBalance variant from CE and from LA, and prints the mean balanced test error of the retrained model per variant
over the development data sets (and the held-out numbers of the search). Each run is skipped when its
``results.json`` exists, so an interrupted sweep continues. Variants are lists of Hydra overrides; add your own with
``--variants file.json`` (``{"name": ["override", ...]}``; each runs from CE and from LA).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from statistics import mean

REPO = Path(__file__).resolve().parents[1]
BASELINES = {name: ["phases=[baseline]", f"loss={name.lower()}"] for name in ("CE", "LA", "CDT")}
NEUMANN = ["~autobalance.solver", "+autobalance.solver={_target_:lightning_autobalance.Neumann,terms:5,alpha:0.05}"]
VARIANTS: dict[str, list[str]] = {
    "Adam lr 0.005": ["autobalance.hyper_optimizer.lr=0.005"],
    "Adam lr 0.01": ["autobalance.hyper_optimizer.lr=0.01"],
    "Adam lr 0.02": ["autobalance.hyper_optimizer.lr=0.02"],
    "Adam lr 0.05": ["autobalance.hyper_optimizer.lr=0.05"],
    "Adam lr 0.1": ["autobalance.hyper_optimizer.lr=0.1"],
    "lr 0.05, Neumann(5, 0.05)": ["autobalance.hyper_optimizer.lr=0.05", *NEUMANN],
    "lr 0.05, engine full, Neumann(5, 0.05)": [
        "autobalance.hyper_optimizer.lr=0.05",
        "autobalance.engine=full",
        *NEUMANN,
    ],
    "lr 0.05, block_size 2": ["autobalance.hyper_optimizer.lr=0.05", "autobalance.block_size=2"],
    "lr 0.02, held-out fraction 0.4": ["autobalance.hyper_optimizer.lr=0.02", "search.heldout_fraction=0.4"],
    "lr 0.01, warm-up 5 epochs": ["autobalance.hyper_optimizer.lr=0.01", "autobalance.warmup_epochs=5"],
    "lr 0.02, learn ι only": ["autobalance.hyper_optimizer.lr=0.02", "autobalance.learn=[iota]"],
    "lr 0.01, learn ι only": ["autobalance.hyper_optimizer.lr=0.01", "autobalance.learn=[iota]"],
    "SGD lr 1, momentum 0.9": [
        "autobalance.hyper_optimizer._target_=torch.optim.SGD",
        "autobalance.hyper_optimizer.lr=1.0",
        "+autobalance.hyper_optimizer.momentum=0.9",
    ],
}


def runs(variants: dict[str, list[str]]) -> dict[str, list[str]]:
    """Every run's name -> overrides: the baselines, and each variant from CE and from LA."""
    out = dict(BASELINES)
    for name, overrides in variants.items():
        for init in ("ce", "la"):
            out[f"{name} [{init.upper()} init]"] = ["phases=[search,retrain]", f"autobalance.preset={init}", *overrides]
    return out


def folder(work: Path, name: str, data_seed: int) -> Path:
    safe = "".join(c if c.isalnum() else "_" for c in name)
    return work / f"{safe}_d{data_seed}"


def run_one(work: Path, name: str, overrides: list[str], data_seed: int) -> None:
    out = folder(work, name, data_seed)
    if (out / "results.json").is_file():
        return
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    command = [sys.executable, "-m", "lightning_autobalance", f"data.seed={data_seed}", "seed=0", "threads=1"]
    command += ["trainer.enable_progress_bar=false", f"hydra.run.dir={out}", *overrides]
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f"{out.name}.log", "w") as log:
        subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO, check=False)


def summary_line(work: Path, name: str, data_seeds: list[int]) -> str:
    tests, heldouts = [], []
    for seed in data_seeds:
        path = folder(work, name, seed) / "results.json"
        if not path.is_file():
            return f"| {name} | (missing: see {path.parent}.log) | | |"
        results = json.loads(path.read_text())["results"]
        key = "AutoBalance" if "AutoBalance" in results else next(iter(results))
        tests.append(100 * results[key]["balanced_error"])
        search = results.get("AutoBalance (search model)")
        if search:
            heldouts.append(100 * search["heldout_balanced_error"])
    per_seed = " / ".join(f"{t:.1f}" for t in tests)
    held = " / ".join(f"{h:.1f}" for h in heldouts) or "–"
    return f"| {name} | {per_seed} | **{mean(tests):.2f}** | {held} |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--variants", type=Path, default=None, help="JSON {name: [overrides]} instead of the built-in")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--work", type=Path, default=REPO / "outputs" / "benchmarks" / "dev_sweep")
    args = parser.parse_args(argv)
    if 0 in args.data_seeds:
        parser.error("data seed 0 is the benchmark's data set: choose settings on other seeds.")
    variants = json.loads(args.variants.read_text()) if args.variants else VARIANTS
    todo = runs(variants)
    jobs = list(itertools.product(todo.items(), args.data_seeds))
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(lambda j: run_one(args.work, j[0][0], j[0][1], j[1]), jobs))
    seeds = "/".join(str(s) for s in args.data_seeds)
    print(f"| run (data seeds {seeds}) | balanced test error % per data seed | mean | held-out balanced error % |")
    print("|---|---|---:|---|")
    for name in todo:
        print(summary_line(args.work, name, args.data_seeds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
