"""The runnable examples in the docstrings stay true."""

import doctest
import importlib

import pytest

MODULES = [
    "lightning_autobalance.losses",
    "lightning_autobalance.baselines",
    "lightning_autobalance.group_dro",
    "lightning_autobalance.jtt",
    "lightning_autobalance.group_last_layer",
    "lightning_autobalance.last_layer",
    "lightning_autobalance.hypergrad",
    "lightning_autobalance.learned_loss",
    "lightning_autobalance.objectives",
    "lightning_autobalance.posthoc",
    "lightning_autobalance.mixin",
    "lightning_autobalance.models",
    "lightning_autobalance.classifier",
    "lightning_autobalance.callback",
    "lightning_autobalance.launch",
    "lightning_autobalance.cli_checks",
    "lightning_autobalance.plots",
    "lightning_autobalance.data.profiles",
    "lightning_autobalance.data.labels",
    "lightning_autobalance.data.split",
    "lightning_autobalance.data.resample",
    "lightning_autobalance.data.spurious",
    "lightning_autobalance.data.spurious_digits",
    "lightning_autobalance.data.waterbirds",
    "lightning_autobalance.data.celeba",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
    assert result.attempted > 0 or name.endswith("split")
