"""AutoBalance against black-box tuning: Hydra's Optuna sweeper (TPE) tuning the VS loss's (γ, τ) (issue 9).

    PYTHONPATH=. python benchmarks/blackbox_tuning.py            # N = 16 trials, seeds 0 1 2, MNIST-1D-LT exp ρ = 100

For each seed, three things run as child processes with ``threads=1`` (two at a time):

1. **the sweep**: ``hydra-optuna-sweeper`` (TPE sampler seeded with the seed, ``n_jobs=1``) over
   ``loss.gamma ∈ [0, 1]`` and ``loss.tau ∈ [0, 2]`` of ``conf/loss/vs.yaml``, ``--trials`` full trainings. Each trial
   is this file's Hydra task (``trial`` mode, on the package's ``conf/``): it trains the VS loss on the 80% train
   part of the same stratified split AutoBalance's search uses (``HeldOutSplit``, ``search.heldout_fraction``, seeded
   with ``seed``) and returns the balanced error on the held-out 20% — the value Optuna minimises. The CLI's
   ``phases=[baseline]`` trains on all data and has no held-out number, so the trial uses the package's Python API
   (``ImbalancedClassifier``, ``HeldOutSplit``, the ``loss`` config) instead of the CLI;
2. **the retrain**: the trial with the lowest held-out balanced error (never a test number) is retrained on all
   training data by the CLI (``phases=[baseline] loss=vs loss.gamma=… loss.tau=…``), as AutoBalance retrains;
3. **AutoBalance**: one CLI run ``phases=[search,retrain]`` with the default ``conf/autobalance`` (CE initialisation).

Reported: balanced and worst-class test error of both, the sweep's best trial (its 80%-data model too), and the total
compute in CPU-seconds (user + system time of each child process and its children, ``os.wait4``) and their ratio.
Outputs: ``benchmarks/results/blackbox_tuning.md`` and ``.json``; runs under ``--work``
(default ``outputs/benchmarks/blackbox``, git-ignored); ``--resume`` keeps finished parts.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from statistics import mean, stdev
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # the trial mode imports the package
    sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from accuracy import (  # noqa: E402  (this folder is not a package)
    LoadSampler,
    _clock,
    _tail,
    describe_autobalance,
    read_job_outputs,
    run_command,
    select_by_heldout,
    write_text_atomic,
)

RESULTS = REPO / "benchmarks" / "results"
WORK = REPO / "outputs" / "benchmarks" / "blackbox"
SEARCH_SPACE = {"loss.gamma": "interval(0.0, 1.0)", "loss.tau": "interval(0.0, 2.0)"}
TRIAL_FILE = "trial.json"


# ---------------------------------------------------------------------------------------------------------- a trial


def trial_task(cfg: Any) -> float:
    """One Optuna trial: train ``cfg.loss`` on the train part of the held-out split; return the held-out balanced error.

    Also writes ``trial.json`` (the loss parameters, held-out and test numbers of this 80%-data model, CPU seconds)
    into the Hydra job's output folder.
    """
    import lightning.pytorch as pl
    import torch
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate
    from lightning.pytorch.loggers import CSVLogger
    from omegaconf import OmegaConf

    from lightning_autobalance.classifier import ImbalancedClassifier
    from lightning_autobalance.data.split import HeldOutSplit
    from lightning_autobalance.report import test_report

    start = time.process_time()
    out = Path(HydraConfig.get().runtime.output_dir)
    torch.set_num_threads(int(cfg.threads))
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    num_classes = int(datamodule.num_classes)
    split = HeldOutSplit(datamodule, fraction=cfg.search.heldout_fraction, seed=cfg.seed, num_classes=num_classes)
    split.setup("fit")
    pl.seed_everything(cfg.seed, workers=True)
    net = instantiate(cfg.model, num_classes=num_classes)
    model = ImbalancedClassifier(net, num_classes=num_classes, **cfg.optimizer)
    model.autobalance_loss = instantiate(cfg.loss)(class_counts=split.class_counts.tolist(), group_counts=None)
    options: dict[str, Any] = OmegaConf.to_container(cfg.trainer, resolve=True)  # type: ignore[assignment]
    trainer = pl.Trainer(
        **options,
        max_epochs=cfg.train.max_epochs,
        logger=CSVLogger(out / "logs", name="trial"),
        default_root_dir=out,
        enable_checkpointing=False,
    )
    trainer.fit(model, datamodule=split)
    heldout = test_report(model, split.heldout_dataloader(), num_classes)
    test = test_report(model, datamodule.test_dataloader(), num_classes)
    record = {
        "gamma": float(cfg.loss.gamma),
        "tau": float(cfg.loss.tau),
        "heldout_balanced_error": heldout["balanced_error"],
        "test_80": {k: test[k] for k in ("balanced_error", "worst_class_error", "error")},
        "cpu_seconds": time.process_time() - start,
    }
    write_text_atomic(out / TRIAL_FILE, json.dumps(record, indent=2) + "\n")
    return float(heldout["balanced_error"])


def trial_main(overrides: Sequence[str]) -> None:
    """Run the Hydra app of :func:`trial_task` on the package's ``conf/`` with ``overrides`` (e.g. ``--multirun``)."""
    import hydra

    app = hydra.main(version_base="1.3", config_path=str(REPO / "conf"), config_name="config")(trial_task)
    sys.argv = [sys.argv[0], *overrides]
    app()


# ---------------------------------------------------------------------------------------------------------- driver


def common_overrides(seed: int, epochs: int | None, extra: Sequence[str]) -> list[str]:
    out = [
        "data.profile=exponential",
        "data.imbalance_ratio=100",
        f"seed={seed}",
        "threads=1",
        "trainer.enable_progress_bar=false",
    ]
    if epochs is not None:
        out.append(f"train.max_epochs={epochs}")
    return [*out, *extra]


def sweep_command(seed: int, trials: int, epochs: int | None, extra: Sequence[str], sweep_dir: Path) -> list[str]:
    """The Optuna sweep of one seed as a command line."""
    return [
        sys.executable,
        str(Path(__file__).resolve()),
        "trial",
        "--multirun",
        "hydra/sweeper=optuna",
        "hydra.sweeper.direction=minimize",
        f"hydra.sweeper.study_name=vs_seed{seed}",
        f"hydra.sweeper.n_trials={trials}",
        "hydra.sweeper.n_jobs=1",
        f"hydra.sweeper.sampler.seed={seed}",
        "loss=vs",
        *[f"{k}={v}" for k, v in SEARCH_SPACE.items()],
        *common_overrides(seed, epochs, extra),
        f"hydra.sweep.dir={sweep_dir}",
    ]


def read_trials(sweep_dir: Path) -> dict[str, dict[str, Any]]:
    """``trial.json`` of every finished trial of a sweep, keyed by trial number (in order)."""
    trials = {}
    for path in sorted(sweep_dir.glob(f"*/{TRIAL_FILE}"), key=lambda p: int(p.parent.name)):
        with open(path, encoding="utf-8") as handle:
            trials[path.parent.name] = json.load(handle)
    return trials


def select_trial(trials: Mapping[str, Mapping[str, Any]]) -> str:
    """The trial with the lowest held-out balanced error (first on ties); never reads a test number."""
    return select_by_heldout(trials)


def run_logged(name: str, cmd: list[str], folder: Path, resume: bool) -> dict[str, float]:
    """Run ``cmd`` with its log and timing in ``folder`` (``timing.json``); with ``resume`` reuse a finished run."""
    timing = folder / "timing.json"
    if resume and timing.is_file():
        with open(timing, encoding="utf-8") as handle:
            return json.load(handle)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    code, wall, cpu = run_command(cmd, folder / "log.txt")
    if code != 0:
        raise RuntimeError(
            f"{name} failed (exit {code}); last lines of {folder / 'log.txt'}:\n{_tail(folder / 'log.txt')}"
        )
    result = {"wall_seconds": wall, "cpu_seconds": cpu, "command": shlex.join(cmd[1:])}
    write_text_atomic(timing, json.dumps(result, indent=2) + "\n")
    print(f"  {name}: {wall:.0f} s wall, {cpu:.0f} s CPU", flush=True)
    return result


def cli_command(overrides: Sequence[str], run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "lightning_autobalance", *overrides, f"hydra.run.dir={run_dir}"]


def sweep_and_retrain(seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """The Optuna sweep of one seed, then the retrain of its best trial on all data."""
    folder = args.work / f"seed{seed}"
    sweep = run_logged(
        f"seed {seed} sweep ({args.trials} trials)",
        sweep_command(seed, args.trials, args.epochs, args.override, folder / "sweep" / "runs"),
        folder / "sweep",
        args.resume,
    )
    trials = read_trials(folder / "sweep" / "runs")
    if len(trials) != args.trials:
        raise RuntimeError(f"seed {seed}: {len(trials)} of {args.trials} trials finished, see {folder / 'sweep'}")
    best = select_trial(trials)
    gamma, tau = trials[best]["gamma"], trials[best]["tau"]
    overrides = [
        "phases=[baseline]",
        "loss=vs",
        f"loss.gamma={gamma!r}",
        f"loss.tau={tau!r}",
        *common_overrides(seed, args.epochs, args.override),
    ]
    run_dir = folder / "retrain"
    retrain = run_logged(
        f"seed {seed} retrain of the best trial", cli_command(overrides, run_dir / "run"), run_dir, args.resume
    )
    outputs = read_job_outputs(run_dir / "run", autobalance=False)
    return {"sweep": sweep, "trials": trials, "best_trial": best, "retrain": retrain, "retrain_outputs": outputs}


def autobalance_run(seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """One AutoBalance search + retrain (CLI defaults) of one seed."""
    run_dir = args.work / f"seed{seed}" / "autobalance"
    overrides = ["phases=[search,retrain]", *common_overrides(seed, args.epochs, args.override)]
    if args.epochs is not None:
        overrides += [f"search.max_epochs={args.epochs}", f"autobalance.warmup_epochs={max(1, round(args.epochs / 3))}"]
    timing = run_logged(
        f"seed {seed} AutoBalance search + retrain", cli_command(overrides, run_dir / "run"), run_dir, args.resume
    )
    return {"timing": timing, "outputs": read_job_outputs(run_dir / "run", autobalance=True)}


def seed_summary(seed: int, sweep: Mapping[str, Any], auto: Mapping[str, Any]) -> dict[str, Any]:
    """The numbers of one seed: test errors, held-out selection and CPU seconds of both approaches."""
    best = sweep["trials"][sweep["best_trial"]]
    sweep_cpu = sweep["sweep"]["cpu_seconds"] + sweep["retrain"]["cpu_seconds"]
    auto_cpu = auto["timing"]["cpu_seconds"]
    return {
        "seed": seed,
        "optuna": {
            "best_trial": sweep["best_trial"],
            "gamma": best["gamma"],
            "tau": best["tau"],
            "heldout_balanced_error": best["heldout_balanced_error"],
            "test_80": best["test_80"],
            "test": {k: sweep["retrain_outputs"]["test"][k] for k in ("balanced_error", "worst_class_error", "error")},
            "cpu_seconds": sweep_cpu,
            "cpu_seconds_sweep": sweep["sweep"]["cpu_seconds"],
            "cpu_seconds_retrain": sweep["retrain"]["cpu_seconds"],
            "wall_seconds": sweep["sweep"]["wall_seconds"] + sweep["retrain"]["wall_seconds"],
            "trials": len(sweep["trials"]),
        },
        "autobalance": {
            "heldout_balanced_error": auto["outputs"]["heldout_balanced_error"],
            "test": {k: auto["outputs"]["test"][k] for k in ("balanced_error", "worst_class_error", "error")},
            "cpu_seconds": auto_cpu,
            "wall_seconds": auto["timing"]["wall_seconds"],
            "config": auto["outputs"]["config"]["autobalance"],
        },
        "cpu_ratio": auto_cpu / sweep_cpu,
        "gap_points": 100
        * (auto["outputs"]["test"]["balanced_error"] - sweep["retrain_outputs"]["test"]["balanced_error"]),
    }


def _ms(values: Sequence[float], scale: float = 100.0, digits: int = 2) -> str:
    text = f"{scale * mean(values):.{digits}f}"
    return text + (f" ± {scale * stdev(values):.{digits}f}" if len(values) > 1 else "")


def format_report(seeds: Sequence[Mapping[str, Any]], meta: Mapping[str, Any]) -> str:
    """Markdown: per-seed table and means of test error and CPU-seconds, and the verdict against issue 9's bar."""
    trials = seeds[0]["optuna"]["trials"]
    lines = [
        "# AutoBalance vs black-box tuning (generated by benchmarks/blackbox_tuning.py)",
        "",
        f"Command: `{meta['command']}`  ",
        f"Wall time: {meta['wall_minutes']:.1f} min ({meta['parallel']} child processes at a time, threads=1 each).  ",
        f"Machine: {meta['machine']}",
        "",
        f"MNIST-1D-LT, exponential profile, ρ = 100, {meta['epochs']} epochs per training. Optuna: "
        f"hydra-optuna-sweeper TPE (seeded with the seed), {trials} trials over VS's γ ∈ [0, 1], τ ∈ [0, 2], "
        "each a full training on the 80% train split scored by the balanced error on the held-out 20%; the best "
        "trial by held-out error is retrained on all data (its test error is the sweep's result). AutoBalance: "
        "one search (80/20 split) + retrain with the CLI defaults (CE initialisation). CPU-seconds = user + system "
        "time of the child processes (the sweep's include its retrain).",
        "",
        "| seed | Optuna best (γ, τ) | Optuna held-out bal. % | Optuna test bal. % (retrained) | Optuna test bal. % "
        "(80% model) | Optuna CPU-s | AutoBalance held-out bal. % | AutoBalance test bal. % | AutoBalance CPU-s | "
        "CPU ratio AB / Optuna | AB − Optuna (points) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in seeds:
        o, a = s["optuna"], s["autobalance"]
        lines.append(
            f"| {s['seed']} | ({o['gamma']:.3f}, {o['tau']:.3f}) | {100 * o['heldout_balanced_error']:.2f} | "
            f"{100 * o['test']['balanced_error']:.2f} | {100 * o['test_80']['balanced_error']:.2f} | "
            f"{o['cpu_seconds']:.0f} | {100 * a['heldout_balanced_error']:.2f} | "
            f"{100 * a['test']['balanced_error']:.2f} | "
            f"{a['cpu_seconds']:.0f} | {s['cpu_ratio']:.3f} | {s['gap_points']:+.2f} |"
        )
    o_test = [s["optuna"]["test"]["balanced_error"] for s in seeds]
    a_test = [s["autobalance"]["test"]["balanced_error"] for s in seeds]
    o_worst = [s["optuna"]["test"]["worst_class_error"] for s in seeds]
    a_worst = [s["autobalance"]["test"]["worst_class_error"] for s in seeds]
    o_cpu = sum(s["optuna"]["cpu_seconds"] for s in seeds)
    a_cpu = sum(s["autobalance"]["cpu_seconds"] for s in seeds)
    ratio = a_cpu / o_cpu
    gap = 100 * (mean(a_test) - mean(o_test))
    lines += [
        "",
        "| approach | trainings per seed | balanced test error % | worst-class test error % "
        "| CPU-seconds (all seeds) |",
        "|---|---:|---:|---:|---:|",
        f"| VS tuned by Optuna TPE, best by held-out, retrained | {trials} + 1 | {_ms(o_test)} | {_ms(o_worst)} | "
        f"{o_cpu:.0f} |",
        f"| AutoBalance search + retrain | 2 | {_ms(a_test)} | {_ms(a_worst)} | {a_cpu:.0f} |",
        "",
        f"Compute ratio AutoBalance / Optuna: **{ratio:.3f}** (1/{1 / ratio:.1f}); mean balanced test error "
        f"AutoBalance − Optuna: **{gap:+.2f} points**.",
    ]
    within, cheap = gap <= 1.0, ratio <= 0.25
    verdict = "meets" if within and cheap else "does NOT meet"
    lines.append(
        f"Issue 9's bar (within 1 point of the sweep's best at ≤ 1/4 of its compute): AutoBalance {verdict} it "
        f"({'within' if within else 'not within'} 1 point, {'≤' if cheap else '>'} 1/4 of the compute)."
    )
    configs = {json.dumps(s["autobalance"]["config"], sort_keys=True) for s in seeds}
    lines += ["", "AutoBalance configuration (CLI default):"]
    lines += [f"- {describe_autobalance(json.loads(c))}" for c in sorted(configs)]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=16, help="Optuna trials (full trainings) per seed")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2, help="child processes at a time (threads=1 each)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs of every training (default: the CLI's 30)")
    parser.add_argument("--resume", action="store_true", help="reuse finished sweeps / retrains / AutoBalance runs")
    parser.add_argument("--work", type=Path, default=WORK)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--override", nargs="*", default=[], help="extra Hydra overrides for every run")
    parser.add_argument("--machine", default=f"{os.cpu_count()} cores", help="free text recorded with the timing")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["trial"]:
        trial_main(argv[1:])
        return 0
    args = parse_args(argv)
    start = time.perf_counter()
    print(
        f"{len(args.seeds)} seed(s): {args.trials}-trial Optuna sweep + retrain, and AutoBalance; runs in {args.work}"
    )
    with LoadSampler() as load, ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        sweeps = {s: pool.submit(sweep_and_retrain, s, args) for s in args.seeds}
        autos = {s: pool.submit(autobalance_run, s, args) for s in args.seeds}
        seeds = [seed_summary(s, sweeps[s].result(), autos[s].result()) for s in args.seeds]
    wall = time.perf_counter() - start
    meta = {
        "command": "PYTHONPATH=. python benchmarks/blackbox_tuning.py " + shlex.join(argv),
        "wall_seconds": wall,
        "wall_minutes": wall / 60,
        "parallel": args.jobs,
        "epochs": args.epochs if args.epochs is not None else _epochs(args),
        "search_space": SEARCH_SPACE,
        "machine": f"{args.machine}; {load.describe()}",
    }
    report = format_report(seeds, meta)
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out / "blackbox_tuning.md", report)
    write_text_atomic(args.out / "blackbox_tuning.json", json.dumps({"meta": meta, "seeds": seeds}, indent=2) + "\n")
    print("\n" + report)
    print(f"Written to {args.out}\nTotal wall time: {_clock(wall)} ({wall / 60:.1f} min)")
    return 0


def _epochs(args: argparse.Namespace) -> int:
    """Epochs the runs used (read back from the AutoBalance run's config)."""
    import yaml

    path = args.work / f"seed{args.seeds[0]}" / "autobalance" / "run" / ".hydra" / "config.yaml"
    with open(path, encoding="utf-8") as handle:
        return int(yaml.safe_load(handle)["train"]["max_epochs"])


if __name__ == "__main__":
    sys.exit(main())
