"""hypergradient against the dense implicit-function-theorem formula on multinomial logistic regression."""

import itertools

import pytest
import torch
from torch.func import functional_call

from lightning_autobalance.hypergrad import (
    ConjugateGradient,
    Exact,
    Neumann,
    OneStep,
    hypergradient,
    last_layer_hypergradient,
    logit_hypergradient,
)
from lightning_autobalance.losses import ParametricCrossEntropy
from lightning_autobalance.objectives import balanced_cross_entropy
from tests.conftest import central_differences

D, K, RIDGE = 5, 3, 0.1


@pytest.fixture(autouse=True, scope="module")
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def make_problem(seed=0):
    gen = torch.Generator().manual_seed(seed)
    counts = [60, 25, 8]
    y = torch.cat([torch.full((n,), k) for k, n in enumerate(counts)])
    x = torch.randn(len(y), D, generator=gen) + torch.nn.functional.one_hot(y, D)[:, :D].double() * 1.5
    yv = torch.arange(K).repeat(10)
    xv = torch.randn(len(yv), D, generator=gen) + torch.nn.functional.one_hot(yv, D)[:, :D].double() * 1.5
    loss_fn = ParametricCrossEntropy.from_preset("vs", counts, learnable=["delta", "iota", "omega"]).double()
    with torch.no_grad():  # move away from the preset so every kind matters
        for p in loss_fn.hparams().values():
            p.add_(0.2 * torch.randn(p.shape, generator=gen))
    return x, y, xv, yv, loss_fn


def objectives(x, y, xv, yv, loss_fn):
    def inner(p, h):
        logits = x @ p["w"] + p["b"]
        reg = 0.5 * RIDGE * ((p["w"] ** 2).sum() + (p["b"] ** 2).sum())  # b too: softmax is shift-invariant
        return functional_call(loss_fn, h, (logits, y)) + reg

    def outer(p, h):
        return balanced_cross_entropy(xv @ p["w"] + p["b"], yv)

    return inner, outer


def solve_inner(inner, hparams):
    p = {"w": torch.zeros(D, K, requires_grad=True), "b": torch.zeros(K, requires_grad=True)}
    opt = torch.optim.LBFGS(
        list(p.values()),
        lr=1,
        max_iter=500,
        tolerance_grad=1e-13,
        tolerance_change=1e-15,
        line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad()
        value = inner(p, hparams)
        value.backward()
        return value

    opt.step(closure)
    # polish with Newton steps on the dense Hessian (the problem is strongly convex)
    theta = torch.cat([p["w"].detach().reshape(-1), p["b"].detach()])

    def value(t):
        return inner({"w": t[: D * K].view(D, K), "b": t[D * K :]}, hparams)

    for _ in range(3):
        grad = torch.autograd.functional.jacobian(value, theta)
        theta = theta - torch.linalg.solve(torch.autograd.functional.hessian(value, theta), grad)
    assert float(torch.autograd.functional.jacobian(value, theta).abs().max()) < 1e-12
    return {"w": theta[: D * K].view(D, K), "b": theta[D * K :]}


def dense_ift(inner, outer, params, hparams):
    """d outer/dα = ∂_α outer − ∂²_{αθ} inner · H⁻¹ ∇_θ outer with H built densely."""
    names, shapes = list(params), [params[k].shape for k in params]
    sizes = [params[k].numel() for k in params]
    hnames = list(hparams)
    hsizes = [hparams[k].numel() for k in hnames]

    def unflat(vec):
        return {n: t.view(s) for n, t, s in zip(names, vec.split(sizes), shapes, strict=False)}

    def unflat_h(vec):
        return {n: t.view(hparams[n].shape) for n, t in zip(hnames, vec.split(hsizes), strict=False)}

    theta = torch.cat([params[k].reshape(-1) for k in names])
    alpha = torch.cat([hparams[k].reshape(-1) for k in hnames])
    hess = torch.autograd.functional.hessian(lambda t: inner(unflat(t), unflat_h(alpha)), theta)
    mixed = torch.autograd.functional.jacobian(
        lambda a: torch.autograd.functional.jacobian(lambda t: inner(unflat(t), unflat_h(a)), theta, create_graph=True),
        alpha,
    )  # (P, A)
    v = torch.autograd.functional.jacobian(lambda t: outer(unflat(t), unflat_h(alpha)), theta)
    total = -mixed.T @ torch.linalg.solve(hess, v)
    return total, hess


@pytest.fixture(scope="module")
def problem():
    x, y, xv, yv, loss_fn = make_problem()
    inner, outer = objectives(x, y, xv, yv, loss_fn)
    hparams = {k: v.detach() for k, v in loss_fn.hparams().items()}
    params = solve_inner(inner, hparams)
    exact, hess = dense_ift(inner, outer, params, hparams)
    return inner, outer, params, hparams, exact, hess


def flat(grads):
    return torch.cat([g.reshape(-1) for g in grads.values()])


def test_neumann_matches_dense_ift_and_error_shrinks(problem):
    inner, outer, params, hparams, exact, hess = problem
    alpha = 1.0 / float(torch.linalg.eigvalsh(hess).max())
    errors = []
    for terms in (2, 10, 40, 400):
        result = hypergradient(inner, outer, params, hparams, Neumann(terms=terms, alpha=alpha))
        errors.append(float((flat(result.grads) - exact).norm() / exact.norm()))
    assert errors[-1] <= 1e-3, errors
    assert all(b < a for a, b in itertools.pairwise(errors)), errors
    assert errors[0] > 1e-2  # few terms really are inaccurate here: the test can fail


def test_conjugate_gradient_matches_dense_ift(problem):
    inner, outer, params, hparams, exact, _ = problem
    errors = [
        float(
            (flat(hypergradient(inner, outer, params, hparams, ConjugateGradient(iters=i)).grads) - exact).norm()
            / exact.norm()
        )
        for i in (2, 8, 40)
    ]
    assert errors[-1] < 1e-6
    assert errors[0] > errors[-1]


def test_hypergradient_matches_finite_differences_of_resolved_inner(problem):
    inner, outer, params, hparams, _exact, _ = problem
    name = "raw_iota"
    fd = central_differences(lambda h: outer(solve_inner(inner, h), h), hparams, name, eps=1e-5)
    result = hypergradient(inner, outer, params, hparams, ConjugateGradient(iters=60))
    torch.testing.assert_close(result.grads[name].reshape(-1), fd, rtol=1e-4, atol=1e-7)


def test_direct_term_and_errors():
    # outer depends on α directly: d/da [ (θ*(a))² + a² ] with θ* = a  ⇒ 4a
    result = hypergradient(
        lambda p, h: ((p["t"] - h["a"]) ** 2).sum(),
        lambda p, h: (p["t"] ** 2).sum() + (h["a"] ** 2).sum(),
        {"t": torch.tensor([2.0])},
        {"a": torch.tensor([2.0])},
        ConjugateGradient(iters=2),
    )
    assert float(result.grads["a"]) == pytest.approx(8.0)
    with pytest.raises(ValueError, match="make something learnable"):
        hypergradient(lambda p, h: p["t"].sum(), lambda p, h: p["t"].sum(), {"t": torch.ones(1)}, {})
    with pytest.raises(ValueError, match="Neumann alpha"):
        Neumann(terms=3, alpha=0)


def test_exact_matches_dense_ift(problem):
    inner, outer, params, hparams, exact, _ = problem
    result = hypergradient(inner, outer, params, hparams, Exact(rcond=0.0))
    torch.testing.assert_close(flat(result.grads), exact, rtol=1e-8, atol=1e-10)


def test_one_step_is_exact_when_the_hessian_is_a_multiple_of_identity():
    # inner: ‖θ − Aα‖² (H = 2I), outer: ‖θ − c‖²  ⇒  θ* = Aα and d outer/dα = 2Aᵀ(Aα − c)
    gen = torch.Generator().manual_seed(0)
    a, c, al = torch.randn(4, 2, generator=gen), torch.randn(4, generator=gen), torch.randn(2, generator=gen)
    args = (
        lambda p, h: ((p["t"] - a @ h["a"]) ** 2).sum(),
        lambda p, h: ((p["t"] - c) ** 2).sum(),
        {"t": a @ al},
        {"a": al},
    )
    torch.testing.assert_close(hypergradient(*args, OneStep(lr=0.5)).grads["a"], 2 * a.T @ (a @ al - c))
    assert not torch.allclose(hypergradient(*args, OneStep(lr=0.1)).grads["a"], 2 * a.T @ (a @ al - c))
    with pytest.raises(ValueError, match="OneStep lr"):
        OneStep(lr=0.0)


def test_conjugate_gradient_warm_start_goes_further_with_the_same_iterations(problem):
    inner, outer, params, hparams, exact, _ = problem
    cold = ConjugateGradient(iters=3)
    warm = ConjugateGradient(iters=3, warm_start=True)
    errors = {}
    for name, solver in (("cold", cold), ("warm", warm)):
        for _ in range(4):  # the same system four times: a warm start continues where it stopped
            result = hypergradient(inner, outer, params, hparams, solver)
        errors[name] = float((flat(result.grads) - exact).norm() / exact.norm())
    assert errors["warm"] < 1e-2 * errors["cold"], errors
    assert ConjugateGradient(iters=3, warm_start=True) == ConjugateGradient(iters=3, warm_start=True)


def logit_problem():
    """The fixture as (model, loss, objective) on logits; the ridge term becomes solver damping."""
    x, y, xv, yv, loss_fn = make_problem()
    batches = [(x[i::3], y[i::3]) for i in range(3)]  # three train batches, equal inner mean up to weights

    def model(p, batch):
        return batch[0] @ p["w"] + p["b"], batch[1], None

    def loss(z, t, g, h):
        return functional_call(loss_fn, h, (z, t))

    def objective(z, t, g, h):
        return balanced_cross_entropy(z, t)

    return model, loss, objective, batches, (xv, yv)


@pytest.mark.parametrize("curvature", ["hessian", "gauss_newton"])
@pytest.mark.parametrize("split", [1, 2])
def test_logit_hypergradient_matches_dense_ift_for_both_curvatures(problem, curvature, split):
    # the model is linear in θ, so the Gauss-Newton product equals the Hessian exactly
    _, _, params, hparams, exact, _ = problem
    model, loss, objective, batches, (xv, yv) = logit_problem()
    heldout = [(xv[i::split], yv[i::split]) for i in range(split)]

    def weighted_loss(z, t, g, h):  # per-batch weights make Σ_b the mean over all samples
        return loss(z, t, g, h) * (len(t) / sum(len(b[1]) for b in batches))

    solver = ConjugateGradient(iters=60, damping=RIDGE)
    result = logit_hypergradient(
        model, weighted_loss, objective, batches, heldout, params, hparams, solver, curvature=curvature, train_weight=1
    )
    assert float((flat(result.grads) - exact).norm() / exact.norm()) < 1e-8


def test_last_layer_hypergradient_matches_dense_ift(problem):
    _, _, params, hparams, exact, _ = problem
    _, loss, objective, batches, (xv, yv) = logit_problem()
    total = sum(len(b[1]) for b in batches)
    train = [(b[0], b[1], None) for b in batches]
    weight_of = {id(b[1]): len(b[1]) / total for b in batches}

    def weighted_loss(z, t, g, h):
        return loss(z, t, g, h) * weight_of[id(t)]

    solvers = (
        (Exact(damping=RIDGE, rcond=0.0), 1e-8),
        (Exact(damping=RIDGE, max_dense=4), 1e-5),  # too large to form H: matrix-free CG to tolerance
        (ConjugateGradient(iters=80, damping=RIDGE), 1e-8),
    )
    for solver, tol in solvers:
        result = last_layer_hypergradient(
            weighted_loss, objective, train, (xv, yv, None), params["w"].T, params["b"], hparams, solver, train_weight=1
        )
        assert float((flat(result.grads) - exact).norm() / exact.norm()) < tol


def test_logit_hypergradient_equals_generic_on_a_nonlinear_network_and_streams():
    # a small MLP with BatchNorm: the JVP mixed term and streamed Hessian products equal the double-backward reference
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.BatchNorm1d(8), torch.nn.Tanh(), torch.nn.Linear(8, K))
    x, y, xv, yv, loss_fn = make_problem()
    batches = [(x[i::2], y[i::2]) for i in range(2)]
    params = {k: v.detach() for k, v in net.named_parameters()}
    buffers = {k: v for k, v in net.named_buffers()}
    before = {k: v.clone() for k, v in buffers.items()}
    hparams = {k: v.detach() for k, v in loss_fn.hparams().items()}

    def model(p, batch):
        return functional_call(net, {**{k: b.clone() for k, b in buffers.items()}, **p}, (batch[0],)), batch[1], None

    def loss(z, t, g, h):
        return functional_call(loss_fn, h, (z, t))

    def objective(z, t, g, h):
        return balanced_cross_entropy(z, t)

    solver = ConjugateGradient(iters=5, damping=0.5)
    streamed = logit_hypergradient(model, loss, objective, batches, [(xv, yv)], params, hparams, solver)
    reference = hypergradient(
        lambda p, h: sum(loss(model(p, b)[0], b[1], None, h) for b in batches) / len(batches),
        lambda p, h: objective(model(p, (xv, yv))[0], yv, None, h),
        params,
        hparams,
        solver,
    )
    torch.testing.assert_close(flat(streamed.grads), flat(reference.grads), rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(streamed.inner, reference.inner)
    gauss_newton = logit_hypergradient(
        model, loss, objective, batches, [(xv, yv)], params, hparams, solver, curvature="gauss_newton"
    )
    cosine = torch.nn.functional.cosine_similarity(flat(gauss_newton.grads), flat(reference.grads), dim=0)
    assert 0.5 < float(cosine) < 1 - 1e-9  # close to, but not the same as, the Hessian on a nonlinear network
    for k, v in buffers.items():
        assert torch.equal(v, before[k])
    with pytest.raises(ValueError, match="curvature"):
        logit_hypergradient(model, loss, objective, batches, [(xv, yv)], params, hparams, curvature="fisher")
