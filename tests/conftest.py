"""Shared test helpers."""

import doctest
import importlib
import os
import pkgutil
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_doctests(module: ModuleType, optionflags: int = doctest.ELLIPSIS) -> doctest.TestResults:
    """The docstring examples of ``module`` and, for a package, of every module in it (summed)."""
    names = [module.__name__]
    if hasattr(module, "__path__"):
        names += [info.name for info in pkgutil.walk_packages(module.__path__, f"{module.__name__}.")]
    failed = attempted = 0
    for name in names:
        result = doctest.testmod(importlib.import_module(name), optionflags=optionflags)
        failed, attempted = failed + result.failed, attempted + result.attempted
    return doctest.TestResults(failed, attempted)


def package_sources(module: ModuleType) -> list[str]:
    """The source files of ``module`` and, for a package, of every module in it."""
    if not hasattr(module, "__path__"):
        return [Path(module.__file__).read_text()]
    return [path.read_text() for path in sorted(Path(module.__path__[0]).rglob("*.py"))]


@pytest.fixture
def single_thread():
    """One torch thread for the test (tiny problems: OpenMP overhead dominates on a busy 2-core machine)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def no_global_seed(monkeypatch):
    """Every test starts without a seed_everything seed (AutoBalance / HeldOutSplit seeds follow it when unset)."""
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)


# Command-line overrides that make the app's default job tiny (seconds instead of minutes).
SMALL_RUN = [
    "data.n_max=120",
    "data.test_per_class=20",
    "data.imbalance_ratio=10",
    "train.max_epochs=2",
    "search.max_epochs=2",
    "autobalance.warmup_epochs=1",
    "autobalance.every_n_steps=2",
    "trainer.enable_progress_bar=false",
    "threads=1",
]


def subprocess_env() -> dict[str, str]:
    """Environment for child processes: the package importable, loopback-only DDP, no inherited rank variables."""
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    for key in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "RANK", "MASTER_PORT", "GROUP_RANK"):
        env.pop(key, None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def central_differences(value, hparams, name, eps=1e-5):
    """d value(hparams) / d hparams[name] by central differences, flattened; ``value`` maps hparams to a number."""
    import torch

    grad = torch.zeros(hparams[name].numel(), dtype=hparams[name].dtype)
    for i in range(grad.numel()):
        values = []
        for sign in (1, -1):
            shifted = {k: v.clone() for k, v in hparams.items()}
            shifted[name].view(-1)[i] += sign * eps
            values.append(float(value(shifted)))
        grad[i] = (values[0] - values[1]) / (2 * eps)
    return grad
