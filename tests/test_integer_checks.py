"""Every integer setting of the solvers, the last-layer engine, the image data modules and the last-layer fits is
refused with the package's one wording (``_checks.check_integer``) before anything is computed or read from disk."""

import re

import pytest
import torch

from lightning_autobalance.data.celeba import CelebA
from lightning_autobalance.data.cifar_lt import CIFAR10LongTail
from lightning_autobalance.data.waterbirds import Waterbirds
from lightning_autobalance.hyperstep import LastLayer
from lightning_autobalance.llr import bilevel_weights, fit_last_layer
from lightning_autobalance.solvers import ConjugateGradient, Exact, Neumann

FEATURES, TARGETS = torch.randn(12, 3), torch.tensor([0, 1] * 6)

CASES = [
    ("Neumann terms", 0, lambda v: Neumann(terms=v), [-1, 2.5, True]),
    ("Exact max_dense", 1, lambda v: Exact(max_dense=v), [0, 8.0]),
    ("ConjugateGradient iters", 1, lambda v: ConjugateGradient(iters=v), [0, 3.5]),
    ("cache_size", 1, lambda v: LastLayer(cache_size=v), [0, 1.5]),
    ("batch_size", 1, lambda v: Waterbirds(root="nowhere", batch_size=v), [0, 2.0]),
    ("image_size", 1, lambda v: Waterbirds(root="nowhere", image_size=v), [0]),
    ("num_workers", 0, lambda v: Waterbirds(root="nowhere", num_workers=v), [-1]),
    ("crop_size", 1, lambda v: CelebA(root="nowhere", crop_size=v), [0]),
    ("num_workers", 0, lambda v: CelebA(root="nowhere", num_workers=v), [-1, 0.5]),
    ("batch_size", 1, lambda v: CIFAR10LongTail(root="nowhere", batch_size=v), [0, True]),
    ("num_workers", 0, lambda v: CIFAR10LongTail(root="nowhere", num_workers=v), [-2]),
    ("steps", 0, lambda v: bilevel_weights(FEATURES, TARGETS, steps=v), [-1, 2.5]),
    ("max_iter", 1, lambda v: fit_last_layer(FEATURES, TARGETS, loss="ce", max_iter=v), [0, 10.5]),
]


@pytest.mark.parametrize(
    ("name", "minimum", "build", "value"),
    [(name, minimum, build, value) for name, minimum, build, values in CASES for value in values],
    ids=lambda p: p if isinstance(p, str) else None,
)
def test_bad_integer_is_refused_with_the_one_wording(name, minimum, build, value):
    with pytest.raises(
        ValueError, match=re.escape(f"{name} must be an integer ≥ {minimum}") + r".*" + re.escape(f"got {value!r}")
    ):
        build(value)


def test_good_integers_are_accepted():
    assert Neumann(terms=0).terms == 0 and ConjugateGradient(iters=1).iters == 1 and Exact(max_dense=1).max_dense == 1
    assert LastLayer(cache_size=1).cache_size == 1
    assert Waterbirds(root="nowhere", batch_size=1, num_workers=0).batch_size == 1
