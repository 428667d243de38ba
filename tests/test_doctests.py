"""The runnable examples in the docstrings stay true: every module of the package, found by walking it (a module
added or split off is tested without being listed here)."""

import doctest
import importlib
import pkgutil

import pytest

import lightning_autobalance

MODULES = sorted(
    info.name
    for info in pkgutil.walk_packages(lightning_autobalance.__path__, "lightning_autobalance.")
    if not info.name.endswith("__main__")
)
# Modules without a docstring example: package re-exports and thin data-set plumbing.
WITHOUT_EXAMPLES = {
    "lightning_autobalance.data",
    "lightning_autobalance.data.image_splits",
    "lightning_autobalance.data.mnist1d_lt",
}


def test_the_walk_finds_the_package_modules():
    assert {"lightning_autobalance.losses", "lightning_autobalance.data.split"} <= set(MODULES)
    assert set(MODULES) >= WITHOUT_EXAMPLES


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
    assert result.attempted > 0 or name in WITHOUT_EXAMPLES, f"{name} has no runnable docstring example"
