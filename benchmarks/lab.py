"""Run many command-line-app jobs in-process, two at a time, resumable: the engine of the paper-scale benchmarks.

A job is a name and a list of Hydra overrides of the command-line app (``python -m lightning_autobalance``). Jobs
run in a pool of worker processes (``spawn``; each imports torch and Lightning once and runs many jobs), each job
with ``threads=1``, its own output folder ``<work>/<name>/`` and its log in ``<work>/<name>/job.log``. A job whose
``job.json`` exists is not run again, so an interrupted command continues where it stopped.

Example (a tiny job; the benchmarks build their job lists with :func:`paper_scale_overrides`):

    >>> from benchmarks.lab import Job
    >>> Job("la/seed0", ("phases=[baseline]", "loss=la")).name
    'la/seed0'
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

__all__ = ["Job", "job_outputs", "paper_scale_overrides", "run_jobs"]


@dataclass(frozen=True)
class Job:
    """One run of the command-line app: a unique ``name`` (a relative folder) and its Hydra overrides."""

    name: str
    overrides: tuple[str, ...]


def paper_scale_overrides(
    profile: str, data_seed: int, seed: int, n_max: int = 5000, test_per_class: int = 2000
) -> list[str]:
    """Overrides of the paper-scale MNIST-1D-LT setting (ρ = 100), one thread, no progress bar, logits kept."""
    return [
        f"data.profile={profile}",
        f"data.n_max={n_max}",
        f"data.test_per_class={test_per_class}",
        f"data.seed={data_seed}",
        f"seed={seed}",
        "threads=1",
        "trainer.enable_progress_bar=false",
        "save_logits=true",
    ]


def job_outputs(work: Path, job: Job) -> dict[str, Any] | None:
    """The recorded result of ``job`` (``None`` if it has not run)."""
    path = work / job.name / "job.json"
    return json.loads(path.read_text()) if path.exists() else None


def run_logged(out: Path, body: Callable[[], None]) -> tuple[float, str | None]:
    """Call ``body()`` with this process's stdout / stderr in ``out/job.log``; returns (seconds, error or None).

    An exception is logged with its traceback and returned as a one-line error, so a failed job never stops the others.
    """
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    log = open(out / "job.log", "w")  # noqa: SIM115 (held across the dup2)
    saved = os.dup(1), os.dup(2)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    error = None
    try:
        body()
    except Exception as exc:
        import traceback

        traceback.print_exc()
        error = f"{type(exc).__name__}: {exc}"
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        log.close()
    return time.perf_counter() - start, error


def _run_one(job: Job, work: str) -> tuple[str, float, str | None]:
    """Worker: run one job with stdout/stderr in its log; returns (name, seconds, error or None)."""
    import torch  # noqa: F401  (imported once per worker)
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from lightning_autobalance.cli import run
    from lightning_autobalance.learned_loss import write_text_atomic

    out = Path(work) / job.name
    start = time.perf_counter()

    def body() -> None:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            cfg = compose("config", overrides=list(job.overrides))
        results = run(cfg, out)
        record = {"name": job.name, "overrides": list(job.overrides), "results": results}
        record["seconds"] = round(time.perf_counter() - start, 1)
        write_text_atomic(out / "job.json", json.dumps(record, indent=1) + "\n")

    seconds, error = run_logged(out, body)
    return job.name, seconds, error


def run_jobs(jobs: Sequence[Job], work: Path, processes: int = 2, progress: Callable[[str], None] = print) -> list[str]:
    """Run the jobs that have no ``job.json`` yet in ``processes`` workers; returns the names of failed jobs."""
    todo = [job for job in jobs if job_outputs(work, job) is None]
    names = [job.name for job in jobs]
    if len(set(names)) != len(names):
        raise ValueError("Job names must be unique.")
    progress(f"{len(jobs) - len(todo)} of {len(jobs)} jobs already done; running {len(todo)} in {processes} processes")
    failed: list[str] = []
    if not todo:
        return failed
    context = multiprocessing.get_context("spawn")
    start = time.perf_counter()
    with context.Pool(processes) as pool:
        pending = [pool.apply_async(_run_one, (job, str(work))) for job in todo]
        for done, result in enumerate(pending, 1):
            name, seconds, error = result.get()
            status = "FAILED " + error if error else "ok"
            elapsed = time.perf_counter() - start
            progress(f"[{done}/{len(todo)} {elapsed / 60:.1f} min] {name}: {status} ({seconds:.0f} s)")
            if error:
                failed.append(name)
    return failed
