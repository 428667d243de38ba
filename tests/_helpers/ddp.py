"""Launching a test script in child processes (one process, DDP over gloo on 127.0.0.1) and reading its records."""

import json
import socket
import subprocess
import sys
from pathlib import Path

from tests.conftest import subprocess_env


def free_port():
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ddp_environment():
    """:func:`tests.conftest.subprocess_env` with a free ``MASTER_PORT``."""
    env = subprocess_env()
    env["MASTER_PORT"] = str(free_port())
    return env


def run_script(script, out, *args, env=None, timeout=300, **kwargs):
    """Run ``python script --out out *args`` to its end, output captured (``env``: :func:`ddp_environment`)."""
    command = [sys.executable, str(script), "--out", str(out), *map(str, args)]
    return subprocess.run(
        command, env=env or ddp_environment(), capture_output=True, text=True, timeout=timeout, **kwargs
    )


def rank_records(out, world):
    """The ``rank{r}.json`` records of ranks ``0 .. world - 1`` in ``out``."""
    return [json.loads((Path(out) / f"rank{r}.json").read_text()) for r in range(world)]


def assert_close(a, b, tol=1e-6):
    """Two lists of floats have the same length and differ by at most ``tol`` everywhere."""
    assert len(a) == len(b)
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) <= tol, (a, b)
