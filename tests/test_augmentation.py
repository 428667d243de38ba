"""Personalized augmentation (per-class logit noise σ and mixing strength m): formula, draws, hypergradients, files."""

import math

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from lightning_autobalance.hypergrad import Exact, hypergradient, last_layer_hypergradient
from lightning_autobalance.learned_loss import LearnedLossError, load_loss, save_loss
from lightning_autobalance.losses import HPARAM_KINDS, ParametricCrossEntropy
from lightning_autobalance.objectives import balanced_cross_entropy
from tests.conftest import central_differences

D, K, RIDGE = 5, 3, 0.1
COUNTS = [60, 25, 8]


@pytest.fixture(autouse=True)
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def augmented_loss(seed=0, groups=1):
    gen = torch.Generator().manual_seed(seed)
    loss_fn = ParametricCrossEntropy.from_preset(
        "vs", COUNTS, learnable=HPARAM_KINDS, num_groups=groups, noise=0.4, mix=0.15
    ).double()
    with torch.no_grad():  # away from the preset, so every class has its own value of every kind
        for p in loss_fn.hparams().values():
            p.add_(0.3 * torch.randn(p.shape, generator=gen))
    return loss_fn


# ---------------------------------------------------------------------------------------------- formula and draws


def test_off_by_default_and_in_eval_mode():
    logits, y = torch.randn(8, K), torch.randint(0, K, (8,))
    plain = ParametricCrossEntropy(K)
    assert not plain.augments and not plain.couples_samples
    assert torch.equal(plain.augment(logits, y), logits)
    assert torch.allclose(plain(logits, y), F.cross_entropy(logits, y))
    loss_fn = augmented_loss()
    assert loss_fn.augments and loss_fn.couples_samples
    loss_fn.eval()  # validation / prediction: never augmented
    adjusted = logits * loss_fn.delta()[0] + loss_fn.iota()[0]
    reference = -(loss_fn.omega()[0, y] * F.log_softmax(adjusted, 1)[range(8), y])
    torch.testing.assert_close(loss_fn(logits, y), reference.mean())


def test_mixing_and_noise_follow_the_formula():
    # logits with distinct rows let us read the mixing partner back: f̃_i = (1 − m_i) f_i + m_i f_π(i) (+ σ_i ε_i)
    n = 12
    logits = torch.arange(n, dtype=torch.float64)[:, None].repeat(1, K) * torch.tensor([1.0, 10.0, 100.0])
    y = torch.arange(n) % K
    loss_fn = augmented_loss()
    m, sigma = loss_fn.mix()[0, y].detach(), loss_fn.noise()[0, y].detach()
    with loss_fn.fixed_augmentation(seed=5):
        mixed_and_noisy = loss_fn.augment(logits, y)
        with torch.no_grad():
            loss_fn.raw_noise.fill_(-math.inf)  # σ = 0: the same draws without the noise
        mixed = loss_fn.augment(logits, y)
    partner = (mixed[:, 0] - (1 - m) * logits[:, 0]) / m
    assert sorted(partner.round().long().tolist()) == list(range(n))  # a permutation of the batch
    torch.testing.assert_close(mixed, (1 - m[:, None]) * logits + m[:, None] * logits[partner.round().long()])
    noise = (mixed_and_noisy - mixed) / sigma[:, None]  # ε: the same standard normal draws scaled per class
    assert noise.std() > 0.3 and noise.abs().max() < 6


def test_forward_is_the_family_formula_on_augmented_logits():
    logits, y = torch.randn(10, K), torch.randint(0, K, (10,))
    g = torch.randint(0, 2, (10,))
    loss_fn = augmented_loss(groups=2)
    with loss_fn.fixed_augmentation(seed=3):
        augmented = loss_fn.augment(logits, y, g)
        value = loss_fn(logits, y, g)
    adjusted = augmented * loss_fn.delta()[g] + loss_fn.iota()[g]
    reference = -(loss_fn.omega()[g, y] * F.log_softmax(adjusted, 1)[range(10), y]).mean()
    torch.testing.assert_close(value, reference)


def test_noise_statistics_scale_with_sigma_per_class():
    n = 20_000
    logits, y = torch.zeros(n, K), torch.arange(n) % K
    loss_fn = ParametricCrossEntropy(K, noise=[0.1, 1.0, 3.0])
    noise = loss_fn.augment(logits, y)
    for k, sigma in enumerate([0.1, 1.0, 3.0]):
        rows = noise[y == k]
        assert float(rows.mean()) == pytest.approx(0.0, abs=0.05 * sigma)
        assert float(rows.std()) == pytest.approx(sigma, rel=0.03)


def test_fixed_draws_repeat_training_draws_advance_and_resume():
    logits, y = torch.randn(16, K), torch.randint(0, K, (16,))
    loss_fn = augmented_loss()
    with loss_fn.fixed_augmentation(seed=11):
        assert torch.equal(loss_fn.augment(logits, y), loss_fn.augment(logits, y))
        other_batch = loss_fn.augment(logits, (y + 1) % K)
    assert not torch.equal(other_batch, loss_fn.augment(logits, y))
    state = {k: v.clone() for k, v in loss_fn.state_dict().items()}
    first, second = loss_fn.augment(logits, y), loss_fn.augment(logits, y)
    assert not torch.equal(first, second)  # training: fresh draws at every call
    resumed = augmented_loss()
    resumed.load_state_dict(state)  # the call counter is in the state: a resumed run draws the same
    assert torch.equal(resumed.augment(logits, y), first)


def test_gradients_reach_noise_and_mix():
    logits, y = torch.randn(16, K), torch.randint(0, K, (16,))
    loss_fn = augmented_loss()
    loss_fn(logits, y).backward()
    for kind in HPARAM_KINDS:
        grad = getattr(loss_fn, f"raw_{kind}").grad
        assert grad is not None and grad.abs().sum() > 0, kind


# ---------------------------------------------------------------------------------------------- hypergradients


def make_problem(seed=0):
    gen = torch.Generator().manual_seed(seed)
    y = torch.cat([torch.full((n,), k) for k, n in enumerate(COUNTS)])
    x = torch.randn(len(y), D, generator=gen) + F.one_hot(y, D).double() * 1.5
    yv = torch.arange(K).repeat(10)
    xv = torch.randn(len(yv), D, generator=gen) + F.one_hot(yv, D).double() * 1.5
    return x, y, xv, yv


def objectives(x, y, xv, yv, loss_fn, seed=7):
    def inner(p, h):
        logits = x @ p["w"] + p["b"]
        reg = 0.5 * RIDGE * ((p["w"] ** 2).sum() + (p["b"] ** 2).sum())
        with loss_fn.fixed_augmentation(seed):  # one smooth function of (θ, α): the same draws every time
            return functional_call(loss_fn, h, (logits, y)) + reg

    def outer(p, h):
        return balanced_cross_entropy(xv @ p["w"] + p["b"], yv)

    return inner, outer


def solve_inner(inner, hparams):
    theta = torch.zeros(D * K + K)

    def value(t):
        return inner({"w": t[: D * K].view(D, K), "b": t[D * K :]}, hparams)

    for _ in range(30):  # Newton on a strongly convex problem (ridge), from zero
        grad = torch.autograd.functional.jacobian(value, theta)
        if float(grad.abs().max()) < 1e-13:
            break
        theta = theta - torch.linalg.solve(torch.autograd.functional.hessian(value, theta), grad)
    assert float(torch.autograd.functional.jacobian(value, theta).abs().max()) < 1e-11
    return {"w": theta[: D * K].view(D, K), "b": theta[D * K :]}


@pytest.fixture(scope="module")
def problem():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    x, y, xv, yv = make_problem()
    loss_fn = augmented_loss()
    inner, outer = objectives(x, y, xv, yv, loss_fn)
    hparams = {k: v.detach().clone() for k, v in loss_fn.hparams().items()}
    params = solve_inner(inner, hparams)
    result = hypergradient(inner, outer, params, hparams, Exact(rcond=0.0))
    torch.set_default_dtype(previous)
    return x, y, xv, yv, loss_fn, inner, outer, params, hparams, result


@pytest.mark.parametrize("kind", HPARAM_KINDS)
def test_hypergradient_matches_finite_differences_of_the_resolved_inner_problem(problem, kind):
    # every learnable kind, the augmentation strengths included: d outer(θ*(α)) / dα by central differences
    *_, inner, outer, _params, hparams, result = problem
    name = f"raw_{kind}"
    fd = central_differences(lambda h: outer(solve_inner(inner, h), h), hparams, name, eps=1e-5)
    assert fd.abs().max() > 1e-4  # the kind really moves the held-out objective: the test can fail
    torch.testing.assert_close(result.grads[name].reshape(-1), fd, rtol=1e-4, atol=1e-8)


def test_last_layer_engine_handles_coupled_samples(problem):
    # mixing couples samples: the head Hessian from batched logit-Hessian products equals the dense reference,
    # while the per-sample block Hessian (valid without mixing) would not
    x, y, xv, yv, loss_fn, *_, params, hparams, exact = problem
    expected = torch.cat([g.reshape(-1) for g in exact.grads.values()])

    def loss(z, t, g, h):
        with loss_fn.fixed_augmentation(7):
            return functional_call(loss_fn, h, (z, t, g))

    def last_layer(coupled):
        result = last_layer_hypergradient(
            loss, balanced_cross_entropy_of, [(x, y, None)], (xv, yv, None), params["w"].T, params["b"], hparams,
            Exact(damping=RIDGE, rcond=0.0), train_weight=1, coupled=coupled,
        )  # fmt: skip
        return torch.cat([g.reshape(-1) for g in result.grads.values()])

    def balanced_cross_entropy_of(z, t, g, h):
        return balanced_cross_entropy(z, t)

    torch.testing.assert_close(last_layer(True), expected, rtol=1e-8, atol=1e-10)
    assert float((last_layer(False) - expected).norm() / expected.norm()) > 1e-3


# ---------------------------------------------------------------------------------------------- learned-loss file


def test_round_trip_records_augmentation_with_the_format_version(tmp_path):
    loss_fn = augmented_loss(groups=2).float()
    path = tmp_path / "aug.yaml"
    save_loss(loss_fn, path)
    text = path.read_text()
    assert "version: 3\n" in text and "  noise:\n" in text and "  mix:\n" in text
    loaded = load_loss(path, num_classes=K, num_groups=2, learnable=HPARAM_KINDS).float()
    for kind in HPARAM_KINDS:
        assert torch.equal(getattr(loaded, f"raw_{kind}").detach(), getattr(loss_fn, f"raw_{kind}").detach()), kind
    logits, y, g = torch.randn(9, K), torch.randint(0, K, (9,)), torch.randint(0, 2, (9,))
    with loaded.fixed_augmentation(1), loss_fn.fixed_augmentation(1):
        assert torch.equal(loaded(logits, y, g), loss_fn(logits, y, g))
    frozen = load_loss(path).float()
    assert frozen.learnable == () and torch.equal(frozen.mix(), loss_fn.mix().detach())


def test_invalid_augmentation_values_fail_early(tmp_path):
    with pytest.raises(ValueError, match=r"Initial mix must lie in \[0, 0.5\)"):
        ParametricCrossEntropy(K, mix=[0.1, 0.6, 0.0])
    with pytest.raises(ValueError, match=r"Initial noise must lie in \[0, inf\)"):
        ParametricCrossEntropy(K, noise=[-1.0, 0.0, 0.0])
    with pytest.raises(ValueError, match=r"learnable noise must start above 0 .* pass a small positive initial noise"):
        ParametricCrossEntropy(K, noise=[0.0, 0.1, 0.1], learnable=["noise"])
    path = tmp_path / "off.yaml"
    save_loss(ParametricCrossEntropy(K), path)
    with pytest.raises(LearnedLossError, match=r"mix is off .* cannot be made learnable: drop 'mix'"):
        load_loss(path, learnable=("mix",))
    path.write_text(path.read_text().replace("-.inf", ".nan", 1))
    with pytest.raises(LearnedLossError, match="raw noise contains non-finite values"):
        load_loss(path)


# ---------------------------------------------------------------------------------------------- engines


def engine_results(freeze_body, engines):
    from lightning_autobalance.hyperstep import HyperStepContext
    from lightning_autobalance.models import MNIST1DConvNet
    from tests.test_hyperstep import Wrapped

    torch.set_default_dtype(torch.float32)
    torch.manual_seed(0)
    net = MNIST1DConvNet(num_classes=K, channels=4)
    for p in net.body.parameters():
        p.requires_grad_(not freeze_body)
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randn(24, 1, 40, generator=gen), torch.randint(0, K, (24,), generator=gen)) for _ in range(2)]
    heldout = [(torch.randn(18, 1, 40, generator=gen), torch.arange(K).repeat(6))]
    loss_fn = augmented_loss().float()
    results = []
    for engine in engines:
        context = HyperStepContext(
            module=Wrapped(net).train(), loss=loss_fn, objective=balanced_cross_entropy, train=batches,
            heldout=heldout, train_weight=1 / len(batches),
        )  # fmt: skip
        with loss_fn.fixed_augmentation(seed=2):
            results.append(engine(context))
    return results


def test_every_engine_computes_the_augmentation_hypergradient():
    from lightning_autobalance.hypergrad import ConjugateGradient
    from lightning_autobalance.hyperstep import FullNetwork, LastLayer, Reference

    # θ = the head: the last-layer engine (coupled Hessian, mixing on) equals the full-network engine
    solver = Exact(damping=0.1, rcond=1e-5)
    last, full = engine_results(True, [LastLayer(solver=solver, train_features="fresh"), FullNetwork(solver=solver)])
    # all weights: the streamed JVP engine equals the double-backward reference
    cg = ConjugateGradient(iters=4, damping=1.0)
    reference, streamed = engine_results(False, [Reference(solver=cg), FullNetwork(solver=cg)])
    for name in ("raw_noise", "raw_mix", "raw_iota"):
        assert last.grads[name].abs().max() > 0, name
        torch.testing.assert_close(last.grads[name], full.grads[name], rtol=1e-3, atol=1e-5)
        torch.testing.assert_close(streamed.grads[name], reference.grads[name], rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------------- inside Trainer.fit


def _fit_learning_augmentation(tmp_path, max_epochs, **kwargs):
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lightning_autobalance import ConjugateGradient, HeldOutSplit
    from tests.test_callback import TinyData, TinyModel, make_callback, make_trainer

    torch.set_default_dtype(torch.float32)
    callback = make_callback(
        tmp_path, learn=("noise", "mix"), engine="full", solver=ConjugateGradient(iters=3, damping=1.0)
    )
    pl.seed_everything(0, verbose=False)
    model = TinyModel()
    callbacks = [callback]
    if kwargs.pop("checkpoint", False):
        callbacks.append(ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0))
        kwargs["enable_checkpointing"] = True
    ckpt_path = kwargs.pop("ckpt_path", None)
    trainer = make_trainer(tmp_path, callbacks, max_epochs=max_epochs, limit_val_batches=2, **kwargs)
    trainer.fit(model, datamodule=HeldOutSplit(TinyData(), fraction=0.25), ckpt_path=ckpt_path)
    return callback, model


@pytest.mark.slow
def test_callback_learns_augmentation_strengths_and_resumes_exactly(tmp_path):
    full, _ = _fit_learning_augmentation(tmp_path / "a", 4)
    assert full.hyper_steps > 4 and full.skipped_steps == 0
    assert not torch.allclose(full.loss.noise(), torch.full((1, K), 0.5))  # the hypergradient reached σ and m
    assert not torch.allclose(full.loss.mix(), torch.full((1, K), 0.1))
    assert int(full.loss.augment_calls) > 0  # validation ran, yet training steps were augmented
    saved = load_loss(tmp_path / "a" / "loss.yaml")
    assert torch.equal(saved.noise(), full.loss.noise().detach())

    first, _ = _fit_learning_augmentation(tmp_path / "b", 2, checkpoint=True)
    assert 0 < first.hyper_steps < full.hyper_steps
    resumed, _ = _fit_learning_augmentation(tmp_path / "c", 4, ckpt_path=tmp_path / "b" / "ckpt" / "last.ckpt")
    for name in ("raw_noise", "raw_mix", "augment_calls"):
        assert torch.equal(getattr(resumed.loss, name), getattr(full.loss, name)), name
