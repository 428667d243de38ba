"""Accuracy benchmark: AutoBalance against every hand-tuned loss on long-tailed data (issue 9).

One command regenerates the table, the plot and the raw JSON in ``benchmarks/results/``::

    PYTHONPATH=. python benchmarks/accuracy.py                      # MNIST-1D-LT, exponential + step, ρ = 100, 3 seeds
    PYTHONPATH=. python benchmarks/accuracy.py --resume             # continue an interrupted run
    PYTHONPATH=. python benchmarks/accuracy.py --cifar-root ~/data  # + CIFAR10-LT / CIFAR100-LT with ResNet-32

Every job is one run of the command-line app (``python -m lightning_autobalance`` with Hydra overrides, ``threads=1``)
in a child process, up to ``--jobs`` (2) processes at a time; the jobs of one (profile, seed) that differ only in the
loss (or only in AutoBalance's initialisation) share one process as a Hydra multirun, which pays the start-up
(~10 CPU-seconds of imports) once:

* the hand-tuned losses of the ``loss`` config group — CE, weighted CE, class-balanced, LA, CDT, VS, LDAM-DRW, focal,
  balanced softmax — with ``phases=[baseline]`` (trained on all training data);
* AutoBalance (learning Δ and ι) with ``phases=[search,retrain]``, once from CE (``autobalance.preset=ce``) and once
  from LA (``autobalance.preset=la``); the AutoBalance configuration is the CLI's default (``conf/autobalance``), and
  the one each job used is recorded in the outputs.

"AutoBalance (best init by held-out)" takes, for each seed, the initialisation whose *search model* has the lower
balanced error on the held-out 20% split (the number the CLI returns) and reports that initialisation's retrained
test errors; the test set never enters the choice. Table cells are mean ± sample standard deviation over seeds of the
balanced and worst-class test error (%).

Each job's outputs (Hydra run dir, log, ``job.json``) live under ``--work`` (default ``outputs/benchmarks/accuracy``,
git-ignored); ``--resume`` skips jobs whose ``job.json`` exists. Without CIFAR files the CIFAR part prints
"CIFAR not present, skipped".
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from statistics import mean, stdev
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # the package's atomic writer; jobs get the package through child_env()
    sys.path.insert(0, str(REPO))

from lightning_autobalance.learned_loss import write_text_atomic  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
WORK = REPO / "outputs" / "benchmarks" / "accuracy"

# conf/loss entry -> table label
BASELINES: dict[str, str] = {
    "ce": "CE",
    "weighted": "weighted CE",
    "class_balanced": "class-balanced",
    "la": "LA",
    "cdt": "CDT",
    "vs": "VS",
    "ldam_drw": "LDAM-DRW",
    "focal": "focal",
    "balanced_softmax": "balanced softmax",
}
# method -> (autobalance.preset, table label)
AUTOBALANCE: dict[str, tuple[str, str]] = {
    "autobalance_ce": ("ce", "AutoBalance (CE init)"),
    "autobalance_la": ("la", "AutoBalance (LA init)"),
}
BEST = "autobalance_best"
LABELS: dict[str, str] = {
    **BASELINES,
    **{k: label for k, (_, label) in AUTOBALANCE.items()},
    BEST: "AutoBalance (best init by held-out)",
}
METHODS: tuple[str, ...] = (*BASELINES, *AUTOBALANCE)
PROFILES: tuple[str, ...] = ("exponential", "step")
METRICS: dict[str, str] = {"balanced_error": "balanced", "worst_class_error": "worst-class"}
DATASETS: dict[str, str] = {"mnist1d_lt": "MNIST-1D-LT", "cifar10_lt": "CIFAR10-LT", "cifar100_lt": "CIFAR100-LT"}
CIFAR_FOLDERS: dict[str, str] = {"cifar10_lt": "cifar-10-batches-py", "cifar100_lt": "cifar-100-python"}


# ---------------------------------------------------------------------------------------------------------- jobs


@dataclass(frozen=True)
class Job:
    """One run of the command-line app: a method on one data set, profile and seed."""

    dataset: str
    profile: str
    seed: int
    method: str
    overrides: tuple[str, ...]  # everything but the method's own choice
    choice: tuple[str, str]  # (config key, value) that selects the method, e.g. ("loss", "vs")

    @property
    def name(self) -> str:
        return f"{self.dataset}/{self.profile}/{self.method}/seed{self.seed}"

    @property
    def is_autobalance(self) -> bool:
        return self.method in AUTOBALANCE


def epoch_overrides(method: str, epochs: int | None) -> list[str]:
    """Overrides that set every phase to ``epochs`` and keep the schedules proportional (``None``: CLI defaults).

    The CLI's defaults (30 epochs) switch LDAM-DRW at epoch 24 (80%) and freeze α for 10 epochs (1/3): the same
    fractions are kept.
    """
    if epochs is None:
        return []
    out = [f"train.max_epochs={epochs}"]
    if method in AUTOBALANCE:
        warmup = min(max(1, round(epochs / 3)), epochs - 1)  # a third, but at least one epoch of hyper-steps
        out += [f"search.max_epochs={epochs}", f"autobalance.warmup_epochs={warmup}"]
    if method == "ldam_drw":
        out.append(f"loss.drw_epoch={max(1, round(0.8 * epochs))}")
    return out


def method_overrides(method: str) -> tuple[list[str], tuple[str, str]]:
    """(the phases override, the (key, value) choosing the method) of a method."""
    if method in BASELINES:
        return ["phases=[baseline]"], ("loss", method)
    if method in AUTOBALANCE:
        return ["phases=[search,retrain]"], ("autobalance.preset", AUTOBALANCE[method][0])
    raise ValueError(f"Unknown method {method!r}: choose from {', '.join(METHODS)}.")


# Hydra sweep subfolder of each job, so every job runs in work/<dataset>/<profile>/<method>/seed<k>.
SUBDIRS = {"loss": "${hydra:runtime.choices.loss}", "autobalance.preset": "autobalance_${autobalance.preset}"}


def make_jobs(
    datasets: Mapping[str, Sequence[str]],
    profiles: Sequence[str],
    seeds: Sequence[int],
    methods: Sequence[str],
    epochs: Mapping[str, int | None],
    threads: int = 1,
    extra: Sequence[str] = (),
) -> list[Job]:
    """Every (data set, profile, seed, method) job, AutoBalance first (the longest jobs start first).

    Args:
        datasets: data set name -> its base overrides (e.g. ``data=cifar10_lt data.root=...``).
        profiles: long-tail profiles (``data.profile``).
        seeds: training seeds (``seed``; the data set itself is fixed).
        methods: names from :data:`METHODS`.
        epochs: data set name -> epochs of every phase (``None``: the CLI's defaults).
        threads: ``threads`` of every job.
        extra: overrides appended to every job.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"Unknown methods {unknown}: choose from {', '.join(METHODS)}.")
    jobs = []
    for dataset, base in datasets.items():
        for method in sorted(methods, key=lambda m: m not in AUTOBALANCE):
            for profile in profiles:
                for seed in seeds:
                    phases, choice = method_overrides(method)
                    overrides = (
                        *base,
                        f"data.profile={profile}",
                        "data.imbalance_ratio=100",
                        f"seed={seed}",
                        f"threads={threads}",
                        "trainer.enable_progress_bar=false",
                        *phases,
                        *epoch_overrides(method, epochs.get(dataset)),
                        *extra,
                    )
                    jobs.append(Job(dataset, profile, seed, method, overrides, choice))
    return jobs


def group_jobs(jobs: Sequence[Job]) -> list[list[Job]]:
    """Jobs that differ only in the value of their method choice, in one group (one process, a Hydra multirun).

    One process per group pays the start-up (imports of torch, Lightning, Hydra: about 10 CPU-seconds) once instead
    of once per job. Groups keep the order of ``jobs``.
    """
    groups: dict[tuple[Any, ...], list[Job]] = {}
    for job in jobs:
        groups.setdefault((job.dataset, job.profile, job.seed, job.choice[0], job.overrides), []).append(job)
    return list(groups.values())


def group_command(group: Sequence[Job], work: Path, python: str = sys.executable) -> list[str]:
    """``python -m lightning_autobalance --multirun ... key=v1,v2,...`` with each job in its own folder."""
    first = group[0]
    key = first.choice[0]
    values = ",".join(job.choice[1] for job in group)
    return [
        python,
        "-m",
        "lightning_autobalance",
        "--multirun",
        *first.overrides,
        f"{key}={values}",
        f"hydra.sweep.dir={work / first.dataset / first.profile}",
        f"hydra.sweep.subdir={SUBDIRS[key]}/seed{first.seed}",
    ]


def job_dir(work: Path, job: Job) -> Path:
    return work / job.name


def job_result_path(work: Path, job: Job) -> Path:
    return job_dir(work, job) / "job.json"


def pending_jobs(jobs: Iterable[Job], work: Path, resume: bool) -> tuple[list[Job], list[Job]]:
    """(jobs to run, jobs skipped): with ``resume``, a job whose ``job.json`` exists is skipped."""
    run, skipped = [], []
    for job in jobs:
        (skipped if resume and job_result_path(work, job).is_file() else run).append(job)
    return run, skipped


def child_env() -> dict[str, str]:
    """Environment of a job: the package importable from the repository, one OpenMP thread."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


class JobFailedError(RuntimeError):
    """A job exited with an error."""


def run_command(cmd: Sequence[str], log: Path, cwd: Path = REPO) -> tuple[int, float, float]:
    """Run ``cmd`` with output to ``log``; returns (exit code, wall seconds, CPU seconds of the child and its children).

    The CPU time is the child's own rusage (``os.wait4``), so parallel jobs do not mix their accounts.
    """
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as handle:
        proc = subprocess.Popen(list(cmd), cwd=cwd, env=child_env(), stdout=handle, stderr=subprocess.STDOUT)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, time.perf_counter() - start, usage.ru_utime + usage.ru_stime


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def read_job_outputs(run_dir: Path, autobalance: bool) -> dict[str, Any]:
    """Test (and held-out) numbers of a finished CLI run and the configuration it used."""
    with open(run_dir / "results.json", encoding="utf-8") as handle:
        cli = json.load(handle)
    with open(run_dir / ".hydra" / "config.yaml", encoding="utf-8") as handle:
        cfg = yaml.safe_load(handle)
    results = cli["results"]
    keep = ("balanced_error", "worst_class_error", "error", "class_errors")
    record: dict[str, Any] = {"class_counts": cli.get("class_counts")}
    config: dict[str, Any] = {
        "train_epochs": cfg["train"]["max_epochs"],
        "data": {k: cfg["data"].get(k) for k in ("_target_", "profile", "imbalance_ratio", "n_max", "seed")},
        "model": cfg.get("model"),
        "optimizer": cfg.get("optimizer"),
    }
    if autobalance:
        search, final = results["AutoBalance (search model)"], results["AutoBalance"]
        record["test"] = {k: final[k] for k in keep}
        record["heldout_balanced_error"] = search["heldout_balanced_error"]
        record["search_model_test"] = {k: search[k] for k in keep}
        config["search_epochs"] = cfg["search"]["max_epochs"]
        config["heldout_fraction"] = cfg["search"]["heldout_fraction"]
        config["autobalance"] = cfg["autobalance"]
        config["objective"] = cfg.get("objective")
    else:
        (final,) = results.values()
        record["test"] = {k: final[k] for k in keep}
        config["loss"] = cfg["loss"]
    record["config"] = config
    return record


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds so far of a running process and its reaped children (Linux ``/proc``), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return sum(int(v) for v in fields[11:15]) / ticks  # utime, stime, cutime, cstime


def job_record(job: Job, work: Path, command: str, wall: float, cpu: float | None) -> dict[str, Any]:
    """The record of a finished job (written to its ``job.json``)."""
    record = {
        "job": {"dataset": job.dataset, "profile": job.profile, "seed": job.seed, "method": job.method},
        "command": command,
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        **read_job_outputs(job_dir(work, job), job.is_autobalance),
    }
    write_text_atomic(job_result_path(work, job), json.dumps(record, indent=2) + "\n")
    return record


def run_group(
    group: Sequence[Job],
    work: Path,
    on_done: Callable[[Job, dict[str, Any]], None],
    python: str = sys.executable,
    poll: float = 2.0,
) -> None:
    """Run a group of jobs in one CLI process (Hydra multirun); ``on_done(job, record)`` as each job finishes.

    A job is finished when the CLI has written its ``results.json``. Its wall time runs from the previous job's end
    (or the process start); its CPU time is the process's CPU time over the same span, read from ``/proc`` (so the
    first job of a group carries the process start-up), or the exact ``os.wait4`` total for a group of one.

    Raises:
        JobFailedError: the process failed; jobs that finished before were reported.
    """
    for job in group:
        if job_dir(work, job).exists():
            shutil.rmtree(job_dir(work, job))
    cmd = group_command(group, work, python)
    logs = work / group[0].dataset / group[0].profile / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{group[0].choice[0]}-seed{group[0].seed}-{'-'.join(j.method for j in group)}.log"
    command = " ".join(cmd[1:])
    pending = list(group)
    start = last = time.perf_counter()
    cpu_last = 0.0
    status, usage = None, None
    with open(log, "w", encoding="utf-8") as handle:
        proc = subprocess.Popen(cmd, cwd=REPO, env=child_env(), stdout=handle, stderr=subprocess.STDOUT)
        try:
            while pending:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                running = pid == 0
                for job in list(pending):
                    if not (job_dir(work, job) / "results.json").is_file():
                        continue
                    now = time.perf_counter()
                    cpu_now = process_cpu_seconds(proc.pid) if running else usage.ru_utime + usage.ru_stime
                    cpu = None if cpu_now is None else cpu_now - cpu_last
                    on_done(job, job_record(job, work, command, now - last, cpu))
                    last, cpu_last = now, cpu_now if cpu_now is not None else cpu_last
                    pending.remove(job)
                if not running:
                    break
                time.sleep(poll)
            else:
                _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    proc.returncode = os.waitstatus_to_exitcode(status)
    if pending or proc.returncode != 0:
        raise JobFailedError(
            f"{', '.join(j.name for j in pending) or 'the process'} failed (exit {proc.returncode}, "
            f"{time.perf_counter() - start:.0f} s); last lines of {log}:\n{_tail(log)}"
        )


def load_record(work: Path, job: Job) -> dict[str, Any]:
    with open(job_result_path(work, job), encoding="utf-8") as handle:
        return json.load(handle)


def run_all(
    jobs: Sequence[Job],
    work: Path,
    parallel: int,
    resume: bool,
    runner: Callable[[Sequence[Job], Path, Callable[[Job, dict[str, Any]], None]], None] = run_group,
    log: Callable[[str], None] = print,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Run the jobs (``parallel`` processes at a time, each a group of jobs), one progress line per finished job.

    Returns (records of every job, including resumed ones; failure messages).
    """
    todo, skipped = pending_jobs(jobs, work, resume)
    records = [load_record(work, job) for job in skipped]
    if skipped:
        log(f"--resume: {len(skipped)} of {len(jobs)} jobs already have a result, skipped")
    failures: list[str] = []
    start, done, lock = time.perf_counter(), [0], threading.Lock()
    reported: set[Job] = set()

    def line(job: Job, text: str) -> str:
        done[0] += 1
        elapsed = time.perf_counter() - start
        eta = elapsed / done[0] * (len(todo) - done[0])
        return f"[{done[0]:3d}/{len(todo)}] {job.name:<48} {text}  ({_clock(elapsed)} elapsed, ~{_clock(eta)} left)"

    def on_done(job: Job, record: dict[str, Any]) -> None:
        with lock:
            reported.add(job)
            records.append(record)
            cpu = record["cpu_seconds"]
            text = (
                f"{record['wall_seconds']:6.1f} s wall {'?' if cpu is None else f'{cpu:6.1f}'} s CPU  "
                f"balanced test {100 * record['test']['balanced_error']:5.2f}%"
            )
            if "heldout_balanced_error" in record:
                text += f"  held-out {100 * record['heldout_balanced_error']:5.2f}%"
            log(line(job, text))

    groups = group_jobs(todo)
    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        futures = {pool.submit(runner, group, work, on_done): group for group in groups}
        for future in as_completed(futures):
            try:
                future.result()
            except Exception as err:  # one failed process must not lose the others
                with lock:
                    failures.append(str(err))
                    for job in futures[future]:
                        if job not in reported:
                            log(line(job, "FAILED") + f"\n{err}")
    return records, failures


class LoadSampler:
    """Samples the 1-minute load average every ``every`` seconds in a daemon thread (how shared the machine was)."""

    def __init__(self, every: float = 30.0) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True)

    def _run(self, every: float) -> None:
        while not self._stop.wait(every):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()

    def describe(self, cores: int | None = os.cpu_count()) -> str:
        if not self.samples:
            return "load average not sampled"
        return (
            f"1-min load average during the run: mean {mean(self.samples):.1f}, max {max(self.samples):.1f} "
            f"on {cores} cores (above {cores}: other work was sharing the CPUs)"
        )


def _clock(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s"


# ---------------------------------------------------------------------------------------------------------- aggregation


def select_by_heldout(candidates: Mapping[str, Mapping[str, Any]]) -> str:
    """The key of the candidate with the lowest held-out balanced error (ties: the first in order).

    Reads only ``heldout_balanced_error``: the choice cannot depend on the test set.
    """
    if not candidates:
        raise ValueError("No candidates to select from.")
    order = list(candidates)
    return min(order, key=lambda k: (float(candidates[k]["heldout_balanced_error"]), order.index(k)))


def add_best_of_inits(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Records of "AutoBalance (best init by held-out)": per (data set, profile, seed), the initialisation whose
    search model has the lower held-out balanced error, with that initialisation's retrained test numbers.

    Seeds where some initialisation is missing get no record (so the best-of row never uses fewer candidates).
    """
    by_run: dict[tuple[str, str, int], dict[str, Mapping[str, Any]]] = {}
    for r in records:
        job = r["job"]
        if job["method"] in AUTOBALANCE:
            by_run.setdefault((job["dataset"], job["profile"], job["seed"]), {})[job["method"]] = r
    best = []
    for (dataset, profile, seed), candidates in sorted(by_run.items()):
        if set(candidates) != set(AUTOBALANCE):
            continue
        ordered = {m: candidates[m] for m in AUTOBALANCE}
        chosen = select_by_heldout(ordered)
        best.append(
            {
                "job": {"dataset": dataset, "profile": profile, "seed": seed, "method": BEST},
                "selected_init": chosen,
                "heldout_balanced_error": {m: c["heldout_balanced_error"] for m, c in ordered.items()},
                "test": ordered[chosen]["test"],
            }
        )
    return best


def _stats(values: Sequence[float]) -> dict[str, Any]:
    return {
        "mean": mean(values),
        "std": stdev(values) if len(values) > 1 else float("nan"),
        "n": len(values),
        "values": list(values),
    }


def summarize(records: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """``summary[dataset][profile][method][metric]`` = mean, std (sample, over seeds), n and the per-seed values."""
    grouped: dict[tuple[str, str, str], list[Mapping[str, Any]]] = {}
    for r in records:
        job = r["job"]
        grouped.setdefault((job["dataset"], job["profile"], job["method"]), []).append(r)
    summary: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
    for (dataset, profile, method), rs in grouped.items():
        rs = sorted(rs, key=lambda r: r["job"]["seed"])
        cell = {metric: _stats([r["test"][metric] for r in rs]) for metric in METRICS}
        cell["seeds"] = [r["job"]["seed"] for r in rs]  # type: ignore[assignment]
        summary.setdefault(dataset, {}).setdefault(profile, {})[method] = cell
    return summary


def _cell(stats: Mapping[str, Any] | None, bold: bool = False) -> str:
    if stats is None:
        return "—"
    text = f"{100 * stats['mean']:.2f}"
    if stats["n"] > 1:
        text += f" ± {100 * stats['std']:.2f}"
    return f"**{text}**" if bold else text


def format_table(summary: Mapping[str, Any], dataset: str, methods: Sequence[str] | None = None) -> str:
    """Markdown table of one data set: a row per method, balanced and worst-class test error (%) per profile.

    The lowest mean balanced error of each profile is in bold.
    """
    profiles = [p for p in PROFILES if p in summary.get(dataset, {})] + [
        p for p in summary.get(dataset, {}) if p not in PROFILES
    ]
    methods = list(methods) if methods is not None else [*METHODS, BEST]
    methods = [m for m in methods if any(m in summary[dataset][p] for p in profiles)]
    header = "| method | " + " | ".join(f"{p}: {METRICS[k]} %" for p in profiles for k in METRICS) + " |"
    lines = [header, "|---|" + "---:|" * (len(profiles) * len(METRICS))]
    best = {
        p: min(summary[dataset][p][m]["balanced_error"]["mean"] for m in methods if m in summary[dataset][p])
        for p in profiles
    }
    for m in methods:
        cells = []
        for p in profiles:
            stats = summary[dataset][p].get(m)
            for k in METRICS:
                s = None if stats is None else stats[k]
                cells.append(_cell(s, bold=k == "balanced_error" and s is not None and s["mean"] == best[p]))
        lines.append(f"| {LABELS.get(m, m)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_selection(best_records: Sequence[Mapping[str, Any]], dataset: str) -> str:
    """One line per profile: which initialisation was chosen on each seed, with the held-out errors."""
    lines = []
    for profile in PROFILES:
        rs = [r for r in best_records if r["job"]["dataset"] == dataset and r["job"]["profile"] == profile]
        if not rs:
            continue
        parts = []
        for r in sorted(rs, key=lambda r: r["job"]["seed"]):
            held = ", ".join(
                f"{AUTOBALANCE[m][0].upper()} {100 * v:.2f}%" for m, v in r["heldout_balanced_error"].items()
            )
            parts.append(f"seed {r['job']['seed']}: {AUTOBALANCE[r['selected_init']][0].upper()} init ({held})")
        lines.append(f"- {profile}: " + "; ".join(parts))
    return "\n".join(lines)


def compare_to_baselines(summary: Mapping[str, Any], dataset: str, profile: str) -> list[str]:
    """Plain sentences: the best-of-inits AutoBalance against CE, LA, CDT and the best hand-tuned loss."""
    cells = summary.get(dataset, {}).get(profile, {})
    if BEST not in cells:
        return []
    ours = cells[BEST]["balanced_error"]["mean"]
    out = []
    for m in ("ce", "la", "cdt"):
        if m in cells:
            theirs = cells[m]["balanced_error"]["mean"]
            verdict = "lower" if ours < theirs else "NOT lower"
            out.append(f"{verdict} than {LABELS[m]} ({100 * ours:.2f} vs {100 * theirs:.2f})")
    baselines = {m: cells[m]["balanced_error"]["mean"] for m in BASELINES if m in cells}
    if baselines:
        top = min(baselines, key=baselines.get)  # type: ignore[arg-type]
        gap = 100 * (ours - baselines[top])
        rel = "better than" if gap < 0 else "behind"
        out.append(
            f"{rel} the best hand-tuned loss, {LABELS[top]} ({100 * baselines[top]:.2f}), by {abs(gap):.2f} points"
        )
    return out


def chance_level_notes(summary: Mapping[str, Any], records: Sequence[Mapping[str, Any]]) -> list[str]:
    """A warning for each method whose every seed is at chance level (balanced error 1 − 1/K): it did not train."""
    notes = []
    classes = {r["job"]["dataset"]: len(r.get("class_counts") or []) for r in records}
    for dataset, profiles in summary.items():
        k = classes.get(dataset, 0)
        for profile, methods in profiles.items():
            for method, cell in methods.items():
                values = cell["balanced_error"]["values"]
                if k > 1 and all(v >= 1 - 1 / k - 1e-4 for v in values):
                    notes.append(
                        f"Note: {LABELS.get(method, method)} on {DATASETS.get(dataset, dataset)} {profile} is at "
                        f"chance level (balanced error {100 * (1 - 1 / k):.0f}% = 1 − 1/K on every seed): its training "
                        "diverged or collapsed to one class; see the job logs."
                    )
    return notes


def autobalance_configs(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The distinct AutoBalance configurations the jobs used (one when the run was consistent)."""
    seen: list[dict[str, Any]] = []
    for r in records:
        cfg = r.get("config", {}).get("autobalance")
        if cfg is None:
            continue
        cfg = {k: v for k, v in cfg.items() if k != "preset"}
        if cfg not in seen:
            seen.append(cfg)
    return seen


def describe_autobalance(cfg: Mapping[str, Any]) -> str:
    """One line: engine, solver, schedule, hyper-optimizer of an AutoBalance config."""
    solver = dict(cfg.get("solver") or {})
    solver_name = str(solver.pop("_target_", "?")).rsplit(".", 1)[-1]
    opt = dict(cfg.get("hyper_optimizer") or {})
    opt_name = str(opt.pop("_target_", "?")).rsplit(".", 1)[-1]
    return (
        f"engine `{cfg.get('engine')}`, solver {solver_name}"
        f"({', '.join(f'{k}={v}' for k, v in solver.items())}), learn {cfg.get('learn')}, "
        f"warm-up {cfg.get('warmup_epochs')} epochs, a hyper-step every {cfg.get('every_n_steps')} steps on "
        f"{cfg.get('train_batches')} train + {cfg.get('heldout_batches')} held-out batches of {cfg.get('batch_size')}, "
        f"hyper-optimizer {opt_name}(lr={opt.get('lr')})"
    )


# ---------------------------------------------------------------------------------------------------------- outputs


def plot(summary: Mapping[str, Any], dataset: str, path: Path) -> None:
    """Mean ± std of the balanced (top) and worst-class (bottom) test error per method, one column per profile."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    profiles = [p for p in PROFILES if p in summary[dataset]]
    methods = [m for m in (*METHODS, BEST) if any(m in summary[dataset][p] for p in profiles)]
    fig, axes = plt.subplots(
        len(METRICS),
        len(profiles),
        figsize=(5.5 * len(profiles), 0.42 * len(methods) * len(METRICS) + 1.5),
        squeeze=False,
    )
    colours = ["tab:red" if m == BEST else "tab:orange" if m in AUTOBALANCE else "tab:blue" for m in methods]
    for j, profile in enumerate(profiles):
        for i, metric in enumerate(METRICS):
            ax = axes[i, j]
            cells = [summary[dataset][profile].get(m) for m in methods]
            means = [100 * c[metric]["mean"] if c else math.nan for c in cells]
            stds = [100 * c[metric]["std"] if c and c[metric]["n"] > 1 else 0.0 for c in cells]
            ax.barh(range(len(methods)), means, xerr=stds, color=colours, capsize=3)
            ax.set_yticks(range(len(methods)), [LABELS[m] for m in methods] if j == 0 else [""] * len(methods))
            ax.invert_yaxis()
            finite = [m for m in means if not math.isnan(m)]
            if finite:
                ax.set_xlim(max(0.0, min(finite) - 8), max(finite) + 5)
            ax.set(
                xlabel=f"{METRICS[metric]} test error % (mean ± std over seeds)",
                title=f"{DATASETS.get(dataset, dataset)}, {profile} ρ=100",
            )
            ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def build_report(
    records: Sequence[Mapping[str, Any]], meta: Mapping[str, Any], skipped_notes: Sequence[str]
) -> tuple[str, dict[str, Any]]:
    """(markdown, JSON document) of the whole benchmark."""
    best = add_best_of_inits(records)
    summary = summarize([*records, *best])
    parts = [
        "# Accuracy benchmark (generated by benchmarks/accuracy.py)",
        "",
        "Regenerate: `PYTHONPATH=. python benchmarks/accuracy.py` (add `--resume` to continue an interrupted run).  ",
        f"Wall time: {meta['total_wall_minutes']:.1f} min in {len(meta['invocations'])} invocation(s), "
        f"{meta['parallel']} child processes at a time with threads=1; CPU time of all {meta['jobs_total']} jobs "
        f"{meta['cpu_hours']:.2f} h ({3600 * meta['cpu_hours']:.0f} CPU-seconds).  ",
        f"Machine: {meta['machine']}",
        "",
        *[
            f"- {i['started']}: `{i['command']}`: {i['jobs_run']} job(s), {i['wall_seconds'] / 60:.1f} min; {i['load']}"
            for i in meta["invocations"]
        ],
        "",
        "Balanced and worst-class **test** error (%), mean ± sample std over seeds "
        f"{', '.join(map(str, meta['seeds']))}, imbalance ratio ρ = 100. Baselines train on all training data; "
        "AutoBalance searches Δ and ι on an 80/20 train/held-out split and retrains on all data with the learned "
        "loss frozen. The best-of-inits row picks, per seed, the initialisation whose search model has the lower "
        "held-out balanced error (never a test number). Lowest mean balanced error per profile in bold.",
    ]
    configs = autobalance_configs(records)
    if configs:
        parts += ["", "AutoBalance configuration (the CLI default, `conf/autobalance/default.yaml`):"]
        parts += [f"- {describe_autobalance(c)}" for c in configs]
        if len(configs) > 1:
            parts.append("- WARNING: the jobs did not all use the same AutoBalance configuration (see accuracy.json).")
    for dataset in summary:
        epochs = sorted({r["config"]["train_epochs"] for r in records if r["job"]["dataset"] == dataset})
        parts += ["", f"## {DATASETS.get(dataset, dataset)} (epochs per phase: {', '.join(map(str, epochs))})", ""]
        parts.append(format_table(summary, dataset))
        selection = format_selection(best, dataset)
        if selection:
            parts += [
                "",
                "Initialisation chosen on held-out data (held-out balanced error of each search model):",
                selection,
            ]
        for profile in PROFILES:
            sentences = compare_to_baselines(summary, dataset, profile)
            if sentences:
                parts.append(f"- {profile}: AutoBalance (best init by held-out) is " + "; ".join(sentences) + ".")
    for note in chance_level_notes(summary, records):
        parts += ["", note]
    for note in skipped_notes:
        parts += ["", note]
    document = {
        "meta": dict(meta),
        "autobalance_configs": configs,
        "summary": summary,
        "best_of_inits": best,
        "jobs": sorted(records, key=lambda r: tuple(str(v) for v in r["job"].values())),
    }
    return "\n".join(parts) + "\n", document


# ---------------------------------------------------------------------------------------------------------- main


def cifar_datasets(root: str | None) -> tuple[dict[str, list[str]], list[str]]:
    """(data sets to run, notes): the CIFAR-LT data sets whose torchvision folder exists under ``root``."""
    found: dict[str, list[str]] = {}
    notes: list[str] = []
    if root is None:
        return found, ["CIFAR not present, skipped (no --cifar-root given)."]
    base = Path(root).expanduser()
    for dataset, folder in CIFAR_FOLDERS.items():
        if (base / folder).is_dir():
            found[dataset] = [
                f"data={dataset}",
                f"data.root={base}",
                "model._target_=lightning_autobalance.models.resnet32",
                "~model.channels",
            ]
            if dataset == "cifar100_lt":
                found[dataset].append("autobalance.block_size=10")  # the paper shares one parameter per 10 classes
        else:
            notes.append(f"{DATASETS[dataset]}: CIFAR not present, skipped (no {base / folder}).")
    return found, notes


HISTORY = "invocations.json"


def update_history(work: Path, resume: bool, invocation: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The invocations that produced the current results: this one, after the earlier ones when resuming.

    An invocation that ran no job (a ``--resume`` that only regenerates the outputs) is not recorded.
    """
    path = work / HISTORY
    history: list[dict[str, Any]] = []
    if resume and path.is_file():
        with open(path, encoding="utf-8") as handle:
            history = json.load(handle)
    if invocation["jobs_run"] or not history:
        history.append(dict(invocation))
    write_text_atomic(path, json.dumps(history, indent=2) + "\n")
    return history


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profiles", nargs="+", default=list(PROFILES), choices=PROFILES)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--jobs", type=int, default=2, help="jobs in parallel (each with threads=1)")
    parser.add_argument(
        "--epochs", type=int, default=None, help="epochs of every MNIST-1D phase (default: the CLI's 30)"
    )
    parser.add_argument("--resume", action="store_true", help="skip jobs whose job.json exists in --work")
    parser.add_argument("--work", type=Path, default=WORK, help="folder of the per-job runs")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of the table, plot and JSON")
    parser.add_argument(
        "--cifar-root", default=None, help="folder holding cifar-10-batches-py/ and/or cifar-100-python/"
    )
    parser.add_argument("--cifar-epochs", type=int, default=200, help="epochs of every CIFAR phase (paper: 200)")
    parser.add_argument("--no-mnist", action="store_true", help="only the CIFAR part")
    parser.add_argument("--override", nargs="*", default=[], help="extra Hydra overrides for every job")
    parser.add_argument("--machine", default=f"{os.cpu_count()} cores", help="free text recorded with the timing")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    datasets: dict[str, list[str]] = {} if args.no_mnist else {"mnist1d_lt": []}
    epochs: dict[str, int | None] = {"mnist1d_lt": args.epochs}
    cifar, notes = cifar_datasets(args.cifar_root)
    for note in notes:
        print(note)
    datasets.update(cifar)
    epochs.update({d: args.cifar_epochs for d in cifar})
    jobs = make_jobs(datasets, args.profiles, args.seeds, args.methods, epochs, threads=1, extra=args.override)
    print(f"{len(jobs)} jobs ({', '.join(datasets) or 'none'}), {args.jobs} in parallel, runs in {args.work}")
    resumed = len(pending_jobs(jobs, args.work, args.resume)[1])
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    with LoadSampler() as load:
        records, failures = run_all(jobs, args.work, args.jobs, args.resume)
    wall = time.perf_counter() - start
    command = "PYTHONPATH=. python benchmarks/accuracy.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    invocation = {
        "started": started,
        "command": command.strip(),
        "wall_seconds": wall,
        "jobs_run": len(jobs) - resumed,
        "load": load.describe(),
    }
    invocations = update_history(args.work, args.resume, invocation)
    meta = {
        "command": command.strip(),
        "wall_seconds": wall,
        "wall_minutes": wall / 60,
        "invocations": invocations,
        "total_wall_minutes": sum(i["wall_seconds"] for i in invocations) / 60,
        "jobs_total": len(jobs),
        "jobs_run": len(jobs) - resumed,
        "jobs_resumed": resumed,
        "jobs_failed": len(failures),
        "failures": failures,
        "parallel": args.jobs,
        "cpu_hours": sum(r["cpu_seconds"] for r in records) / 3600,
        "seeds": args.seeds,
        "profiles": args.profiles,
        "machine": args.machine,
        "load_samples": load.samples,
    }
    if records:
        markdown, document = build_report(records, meta, notes)
        args.out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(args.out / "accuracy.md", markdown)
        write_text_atomic(args.out / "accuracy.json", json.dumps(document, indent=2) + "\n")
        for dataset in {r["job"]["dataset"] for r in records}:
            plot(document["summary"], dataset, args.out / f"accuracy_{dataset}.png")
        print("\n" + markdown)
        print(f"Written to {args.out}")
    for failure in failures:
        print(f"FAILED: {failure.splitlines()[0]}")
    total = meta["total_wall_minutes"]
    print(
        f"Total wall time: {_clock(wall)} ({wall / 60:.1f} min); {total:.1f} min over {len(invocations)} invocation(s)"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
