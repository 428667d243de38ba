"""The declared contracts of issue 19: solvers' core ``solve(matvec, b)``, the dense operator Exact reads, the
engines' train-batch policy, and the last-layer engine's own feature cache."""

import pytest
import torch
from torch import nn
from torch.func import functional_call

from lightning_autobalance.hypergrad import ConjugateGradient, Exact, Neumann, OneStep
from lightning_autobalance.hypergrad.head import CoupledHeadOperator, HeadOperator
from lightning_autobalance.hyperstep import FeatureCache, FullNetwork, LastLayer, Reference, make_engine
from lightning_autobalance.losses import ParametricCrossEntropy
from lightning_autobalance.models import MNIST1DConvNet
from lightning_autobalance.protocols import DenseOperator, LinearSolver, SampleCoupling, TrainBatchPolicy, TunableLoss

H = torch.tensor([[3.0, 1.0, 0.0], [1.0, 2.0, 0.5], [0.0, 0.5, 1.5]])


def matvec(vectors):
    (v,) = vectors
    return (H @ v,)


@pytest.mark.parametrize(
    "solver", [Neumann(terms=20, alpha=0.2), ConjugateGradient(iters=3), OneStep(lr=0.3), Exact(damping=0.1)]
)
def test_calling_a_solver_is_its_solve(solver):
    assert isinstance(solver, LinearSolver)
    rhs = (torch.tensor([1.0, -2.0, 0.5]),)
    torch.testing.assert_close(solver(matvec, rhs), solver.solve(matvec, rhs), rtol=0, atol=0)


class CountingDense:
    def __init__(self, matrix):
        self.dense, self.calls = matrix, 0

    def __call__(self, vectors):
        self.calls += 1
        return matvec(vectors)


def test_exact_reads_a_dense_operator_instead_of_forming_the_matrix():
    operator = CountingDense(H)
    assert isinstance(operator, DenseOperator) and not isinstance(matvec, DenseOperator)
    rhs = (torch.tensor([1.0, 0.0, 2.0]),)
    (from_matrix,) = Exact().solve(operator, rhs)
    (from_products,) = Exact().solve(matvec, rhs)
    assert operator.calls == 0
    torch.testing.assert_close(from_matrix, from_products)
    torch.testing.assert_close(from_matrix, torch.linalg.solve(H, rhs[0]))
    # the former dense form, solve(matrix, flat rhs), still works
    torch.testing.assert_close(Exact().solve(H, rhs[0]), from_matrix)


def test_head_operators_are_dense_operators_whose_matrix_matches_their_products():
    gen = torch.Generator().manual_seed(0)
    phi = torch.randn(5, 3, generator=gen)
    blocks = torch.randn(5, 2, 2, generator=gen)
    blocks = blocks @ blocks.transpose(1, 2)
    head = HeadOperator([(phi, blocks)], 0.5, lambda v: v)
    coupled = CoupledHeadOperator(head.dense, lambda v: v)
    direction = torch.randn(2, 3, generator=gen)
    for operator in (head, coupled):
        assert isinstance(operator, DenseOperator)
        (product,) = operator((direction,))
        torch.testing.assert_close(product.reshape(-1), operator.dense @ direction.reshape(-1))


def test_every_built_in_engine_declares_its_train_batch_policy():
    module, loss = nn.Linear(2, 2), ParametricCrossEntropy.from_preset("la", [3, 1], learnable=("iota",))
    assert isinstance(loss, TunableLoss) and isinstance(loss, SampleCoupling)
    for engine in (Reference(), FullNetwork(), make_engine(), LastLayer(train_features="cached")):
        assert isinstance(engine, TrainBatchPolicy)
        assert engine.needs_train_batches(module, loss)  # without the feature hook, LastLayer draws batches too


def test_feature_cache_records_weight_steps_only():
    torch.manual_seed(0)
    net, loss = MNIST1DConvNet(num_classes=3, channels=4).train(), nn.CrossEntropyLoss()
    cache = FeatureCache(size=3)
    cache.attach(net, loss)

    def step(batch_size):
        value = loss(net(torch.randn(batch_size, 1, 40)), torch.randint(0, 3, (batch_size,)))
        if value.requires_grad:
            value.backward()

    step(4)
    with cache.paused():  # the owner's computation
        step(5)
    with torch.no_grad():  # evaluation
        step(6)
    params = {name: p.detach().clone().requires_grad_(True) for name, p in net.named_parameters()}
    logits = functional_call(net, params, (torch.randn(7, 1, 40),))  # another engine's pass: substituted weights
    loss(logits, torch.randint(0, 3, (7,))).backward()
    assert [entry[0].shape[0] for entry in cache] == [4] and not cache.full
    step(8)
    step(9)
    assert [entry[1].shape[0] for entry in cache] == [4, 8, 9] and cache.full
    cache.detach()
    step(10)
    assert len(cache) == 0 and not net.autobalance_head()._forward_pre_hooks and not loss._forward_pre_hooks
