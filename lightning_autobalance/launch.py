"""DDP inside Hydra jobs, multirun included: each job's worker processes run that job only.

Lightning's DDP launcher starts ranks > 0 by re-running the command line. Inside a Hydra multirun that command still
holds ``-m`` and the whole sweep, so every rank starts its own copy of the sweep. :class:`HydraJobDDPStrategy`
launches the workers with the *job's* overrides instead, pointed at the job's output directory, and
:func:`finish_ddp_job` waits for them and resets the process group so the next job of the sweep starts its own
workers.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence

import torch.distributed as dist

from lightning_autobalance._lightning_compat import JobCommandDDPStrategy

__all__ = ["HydraJobDDPStrategy", "finish_ddp_job", "hydra_job_command"]

_LAUNCH_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")
_workers: list[subprocess.Popen] = []
_saved_environment: dict[str, str | None] = {}


def hydra_job_command(local_rank: int) -> tuple[Sequence[str], str]:
    """Command and working directory that re-run the current Hydra *job* (not the sweep) for ``local_rank``."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import get_original_cwd, to_absolute_path

    import __main__

    config = HydraConfig.get()
    if __main__.__spec__ is None:
        command = [sys.executable, to_absolute_path(sys.argv[0])]
    else:
        command = [sys.executable, "-m", __main__.__spec__.name]
    command += list(config.overrides.task)
    command += [
        f"hydra.run.dir={config.runtime.output_dir}",
        f"hydra.job.name={config.job.name}_rank{local_rank}",
        "hydra.output_subdir=null",
    ]
    return command, get_original_cwd()


class HydraJobDDPStrategy(JobCommandDDPStrategy):
    """``DDPStrategy`` whose worker processes re-run the current Hydra job rather than the whole command line.

    Use it where you would pass ``strategy="ddp"`` in a Hydra app; call :func:`finish_ddp_job` at the end of the job.
    Outside Hydra it behaves exactly like ``DDPStrategy``.

    Example:
        >>> strategy = HydraJobDDPStrategy()
        >>> strategy.process_group_backend is None
        True
    """

    def worker_command(self, local_rank: int) -> tuple[Sequence[str], str]:
        return hydra_job_command(local_rank)

    def before_launch(self) -> None:
        for key in _LAUNCH_VARIABLES:  # the launch sets them in this process; finish_ddp_job restores them
            _saved_environment.setdefault(key, os.environ.get(key))

    def after_launch(self, workers: list[subprocess.Popen]) -> None:
        _workers.extend(workers)


def finish_ddp_job(timeout: float = 600.0) -> None:
    """Wait for the workers this process launched, then reset distributed state for the next job.

    Safe to call when nothing was launched (single-process jobs, or in a worker).
    """
    while _workers:
        worker = _workers.pop()
        worker.wait(timeout=timeout)
    if _saved_environment:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        for key, value in _saved_environment.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _saved_environment.clear()
