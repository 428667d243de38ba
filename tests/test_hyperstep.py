"""Hyper-step engines: the last-layer default, its fallback, its cache, and agreement with the full-network engine."""

import warnings

import pytest
import torch
from torch import nn

from lightning_autobalance.hypergrad import ConjugateGradient, Exact, Neumann
from lightning_autobalance.hyperstep import (
    FullNetwork,
    HyperStepContext,
    LastLayer,
    Reference,
    has_feature_hook,
    make_engine,
)
from lightning_autobalance.losses import ParametricCrossEntropy
from lightning_autobalance.models import MNIST1DConvNet, resnet32
from lightning_autobalance.objectives import balanced_cross_entropy
from tests.test_callback import K, Probe, TinyModel, fit, make_callback


class NoHookModel(TinyModel):
    """TinyModel without the feature hook."""

    autobalance_features = None
    autobalance_head = None


def fit_without_fallback(tmp_path, callback, **kwargs):
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*no feature hook.*")
        return fit(tmp_path, callback, **kwargs)


def assert_batchnorm_untouched(store):
    assert len(store["before"]) == len(store["after"]) > 0
    for (step, mean_b, var_b, n_b), (_, mean_a, var_a, n_a) in zip(store["before"], store["after"], strict=True):
        assert torch.equal(mean_b, mean_a) and torch.equal(var_b, var_a) and n_b == n_a, step


def test_default_engine_is_stateless_and_leaves_batchnorm_alone(tmp_path):
    store = {}
    callback = make_callback(tmp_path)
    assert isinstance(callback.engine, LastLayer) and callback.engine.train_features == "fresh"
    model, _ = fit_without_fallback(
        tmp_path, callback, callbacks=[Probe(store, "before"), callback, Probe(store, "after")], max_epochs=3
    )
    assert callback.hyper_steps > 3 and callback.skipped_steps == 0
    assert not torch.allclose(callback.loss.iota(), torch.zeros(1, K))
    assert_batchnorm_untouched(store)
    # nothing outside the checkpoint: no cache, no hooks on the head or the loss (hence resume-exact, DDP-exact)
    assert callback.engine._state == {}
    assert not model.autobalance_head()._forward_pre_hooks and not callback.loss._forward_pre_hooks
    assert callback.engine.needs_train_batches(model, callback.loss)


def test_cached_last_layer_engine_uses_its_cache_and_leaves_batchnorm_alone(tmp_path):
    store = {}
    engine = LastLayer(train_features="cached", cache_size=2)
    callback = make_callback(tmp_path, engine=engine)
    assert callback.engine is engine
    model, _ = fit_without_fallback(
        tmp_path, callback, callbacks=[Probe(store, "before"), callback, Probe(store, "after")], max_epochs=3
    )
    assert callback.hyper_steps > 3 and callback.skipped_steps == 0
    assert not torch.allclose(callback.loss.iota(), torch.zeros(1, K))
    assert_batchnorm_untouched(store)
    cache = engine._state["cache"]
    assert len(cache) == engine.cache_size
    features, targets, groups = cache[-1]
    assert features.shape == (16, 16) and targets.shape == (16,) and groups is None
    assert not engine.needs_train_batches(model, callback.loss)


def test_module_without_feature_hook_falls_back_with_one_warning(tmp_path):
    callback = make_callback(tmp_path)
    assert not has_feature_hook(NoHookModel())
    with pytest.warns(UserWarning, match="no feature hook") as record:
        fit(tmp_path, callback, max_epochs=3, model_class=NoHookModel)
    assert sum("no feature hook" in str(w.message) for w in record) == 1
    assert callback.hyper_steps > 3 and callback.skipped_steps == 0


def make_context(module, batches, heldout):
    loss = ParametricCrossEntropy.from_preset("la", [40, 20, 8], learnable=("delta", "iota"))
    return HyperStepContext(
        module=module,
        loss=loss,
        objective=balanced_cross_entropy,
        train=batches,
        heldout=heldout,
        train_weight=1 / len(batches),
    )


class Wrapped(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def autobalance_forward(self, batch):
        return self.net(batch[0]), batch[1], None

    def autobalance_features(self, x):
        return self.net.autobalance_features(x)

    def autobalance_head(self):
        return self.net.autobalance_head()


@pytest.mark.parametrize("damping", [0.0, 0.1])
def test_last_layer_engine_equals_full_network_engine_with_a_frozen_body(damping):
    torch.manual_seed(0)
    net = MNIST1DConvNet(num_classes=3, channels=4)
    module = Wrapped(net).train()
    for p in net.body.parameters():
        p.requires_grad_(False)  # θ = the head only: both engines solve the same system
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randn(24, 1, 40, generator=gen), torch.randint(0, 3, (24,), generator=gen)) for _ in range(3)]
    heldout = [(torch.randn(18, 1, 40, generator=gen), torch.arange(3).repeat(6)) for _ in range(2)]
    before = {k: v.clone() for k, v in net.state_dict().items()}
    solver = Exact(damping=damping, rcond=1e-5)  # float32 Hessians: drop the (numerically) null directions
    last = LastLayer(solver=solver, train_features="fresh")(make_context(module, batches, heldout))
    full = FullNetwork(solver=solver)(make_context(module, batches, heldout))
    gauss_newton = FullNetwork(solver=solver, curvature="gauss_newton")(make_context(module, batches, heldout))
    for name in last.grads:
        torch.testing.assert_close(last.grads[name], full.grads[name], rtol=1e-3, atol=1e-5)  # float32
        torch.testing.assert_close(gauss_newton.grads[name], full.grads[name], rtol=1e-3, atol=1e-5)
    torch.testing.assert_close(last.outer, full.outer)
    torch.testing.assert_close(last.inner, full.inner)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())


def test_reference_engine_is_the_generic_hypergradient_and_full_network_streams_the_same_result():
    torch.manual_seed(0)
    module = Wrapped(MNIST1DConvNet(num_classes=3, channels=4)).train()
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randn(16, 1, 40, generator=gen), torch.randint(0, 3, (16,), generator=gen)) for _ in range(2)]
    heldout = [(torch.randn(12, 1, 40, generator=gen), torch.arange(3).repeat(4))]
    solver = ConjugateGradient(iters=4, damping=1.0)
    reference = Reference(solver=solver)(make_context(module, batches, heldout))
    streamed = FullNetwork(solver=solver)(make_context(module, batches, heldout))
    for name in reference.grads:
        torch.testing.assert_close(streamed.grads[name], reference.grads[name], rtol=1e-4, atol=1e-6)


def test_make_engine_names_and_errors():
    assert make_engine("reference") == Reference(solver=Neumann(terms=5, alpha=1.0))
    assert isinstance(make_engine(), LastLayer) and isinstance(make_engine("last_layer"), LastLayer)
    assert make_engine().train_features == "fresh"
    assert make_engine("gauss_newton").curvature == "gauss_newton"
    assert make_engine("full", ConjugateGradient(iters=3)).solver == ConjugateGradient(iters=3)
    engine = FullNetwork()
    assert make_engine(engine) is engine
    with pytest.raises(ValueError, match="Unknown hyper-step engine 'fast'"):
        make_engine("fast")
    with pytest.raises(ValueError, match="train_features"):
        LastLayer(train_features="stale")


def test_models_expose_the_feature_hook():
    for net, shape in ((MNIST1DConvNet(), (2, 1, 40)), (resnet32(10), (2, 3, 32, 32))):
        assert has_feature_hook(net)
        x = torch.randn(shape)
        net.eval()
        torch.testing.assert_close(net.autobalance_head()(net.autobalance_features(x)), net(x))


def test_callback_default_engine_is_the_last_layer_with_fresh_features():
    from lightning_autobalance import AutoBalance

    engine = AutoBalance().engine
    assert isinstance(engine, LastLayer) and engine.train_features == "fresh"
    assert engine == make_engine(cache_size=2) == make_engine("last_layer", cache_size=2)  # 2 train batches
    assert isinstance(engine.solver, Exact) and isinstance(engine.fallback, FullNetwork)
    assert isinstance(AutoBalance(engine="full").engine, FullNetwork)
