"""The α update of a hyper-step (:func:`lightning_autobalance.update.apply_hypergradient`) on small cases."""

import copy
import math

import pytest
import torch

from lightning_autobalance import ParametricCrossEntropy
from lightning_autobalance.update import apply_hypergradient


def make(lr=0.1, momentum=0.9, learnable=("delta", "iota")):
    loss = ParametricCrossEntropy(3, learnable=list(learnable))
    optimizer = torch.optim.SGD(list(loss.hparams().values()), lr=lr, momentum=momentum)
    return loss, optimizer


def snapshot(loss, optimizer):
    return {k: v.detach().clone() for k, v in loss.hparams().items()}, copy.deepcopy(optimizer.state_dict())


def same_state(a, b):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same_state(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return a == b


def grads_like(loss, value):
    return {name: torch.full_like(param, value) for name, param in loss.hparams().items()}


def take_one_step(loss, optimizer):
    """A first finite step, so the optimizer has momentum buffers to restore."""
    assert apply_hypergradient(loss, optimizer, grads_like(loss, 0.5)).applied


@pytest.mark.parametrize(("bad", "outer", "cause"), [
    (math.nan, 1.0, "lower the hyper-learning rate"),
    (math.inf, 1.0, "lower the hyper-learning rate"),
    (math.nan, math.nan, "the held-out objective itself is not finite"),
])  # fmt: skip
def test_a_non_finite_hypergradient_is_skipped_and_nothing_changes(bad, outer, cause):
    loss, optimizer = make()
    take_one_step(loss, optimizer)
    alpha, state = snapshot(loss, optimizer)
    grads = grads_like(loss, 0.1)
    grads["raw_iota"][0, 1] = bad
    result = apply_hypergradient(loss, optimizer, grads, outer=torch.tensor(outer), max_norm=1.0)
    assert not result.applied and result.cause.startswith(cause) and result.broken == () and not result.clipped
    after, state_after = snapshot(loss, optimizer)
    assert all(torch.equal(alpha[k], after[k]) for k in alpha) and same_state(state, state_after)
    assert all(p.grad is None for p in loss.hparams().values())


def test_clipping_scales_the_hypergradient_to_the_norm_and_reports_the_norm_before():
    loss, optimizer = make(lr=1.0, momentum=0.0, learnable=("iota",))
    before = loss.raw_iota.detach().clone()
    grad = torch.zeros_like(loss.raw_iota)
    grad.view(-1)[:2] = torch.tensor([3.0, 4.0])
    result = apply_hypergradient(loss, optimizer, {"raw_iota": grad}, max_norm=0.5)
    assert result.applied and result.clipped and result.grad_norm == pytest.approx(5.0)
    step = before - loss.raw_iota.detach()  # SGD with lr 1: the step is the applied gradient
    assert float(step.norm()) == pytest.approx(0.5) and torch.allclose(step, grad * 0.1)
    # below the norm nothing is scaled
    result = apply_hypergradient(loss, optimizer, {"raw_iota": grad * 0.01}, max_norm=0.5)
    assert result.applied and not result.clipped and result.grad_norm == pytest.approx(0.05)


def test_a_step_that_makes_alpha_infinite_is_rolled_back_exactly_with_the_optimizer_state():
    loss, optimizer = make(lr=1e10)
    take_one_step(loss, optimizer)
    alpha, state = snapshot(loss, optimizer)
    grads = grads_like(loss, 1e38) | {"raw_delta": torch.zeros_like(loss.raw_delta)}  # lr · 1e38 overflows float32
    result = apply_hypergradient(loss, optimizer, grads)
    assert not result.applied and result.broken == ("raw_iota",) and result.cause == ""
    assert math.isinf(result.grad_norm) or result.grad_norm > 1e38
    after, state_after = snapshot(loss, optimizer)
    assert all(torch.equal(alpha[k], after[k]) for k in alpha)
    assert same_state(state, state_after)  # the momentum buffers are those before the step
    # the restored optimizer keeps working
    assert apply_hypergradient(loss, optimizer, grads_like(loss, 0.1)).applied


def test_alpha_is_projected_into_the_bounds_after_the_step():
    loss, optimizer = make(lr=100.0, momentum=0.0, learnable=("iota",))
    result = apply_hypergradient(
        loss, optimizer, {"raw_iota": torch.tensor([[1.0, -1.0, 0.0]])}, bounds={"iota": (-2.0, 2.0)}
    )
    assert result.applied
    assert loss.iota().detach().tolist() == [[-2.0, 2.0, 0.0]]
    unbounded, optimizer = make(lr=100.0, momentum=0.0, learnable=("iota",))
    apply_hypergradient(unbounded, optimizer, {"raw_iota": torch.tensor([[1.0, -1.0, 0.0]])})
    assert unbounded.iota().detach().tolist() == [[-100.0, 100.0, 0.0]]
