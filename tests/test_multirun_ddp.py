"""Hydra multirun × DDP: each job runs once, with its own 2 DDP processes bound to its config and directory."""

import subprocess
import sys

import pytest

from lightning_autobalance import load_loss
from tests.conftest import SMALL_RUN, subprocess_env

SMALL = SMALL_RUN


@pytest.mark.ddp
@pytest.mark.slow
def test_two_job_multirun_with_two_process_ddp_each(tmp_path):
    env = subprocess_env()
    command = [
        sys.executable, "-m", "lightning_autobalance", "-m", "seed=0,1", "trainer=ddp", *SMALL,
        f"data.root={tmp_path / 'data'}", f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    # nothing but the sweep (and the data cache) was created: no worker started a sweep of its own
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "sweep"]
    jobs = sorted(p for p in (tmp_path / "sweep").iterdir() if p.is_dir())
    assert [p.name for p in jobs] == ["0", "1"]
    alphas = []
    for job in jobs:
        assert (job / "results.json").exists() and (job / "per_class.png").exists()
        assert (job / "cli_rank1.log").exists()  # this job's own second process ran in this directory
        overrides = (job / ".hydra" / "overrides.yaml").read_text()
        assert f"seed={job.name}" in overrides and "trainer=ddp" in overrides
        loss = load_loss(job / "autobalance_loss.yaml")
        alphas.append(loss.iota())
    assert done.stdout.count("| CE |") == 2  # one table per job, printed by rank zero only
    assert not bool((alphas[0] == alphas[1]).all())  # different seeds, different learned losses
