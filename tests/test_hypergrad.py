"""hypergradient against the dense implicit-function-theorem formula on multinomial logistic regression."""

import itertools

import pytest
import torch
from torch.func import functional_call

from lightning_autobalance.hypergrad import ConjugateGradient, Neumann, hypergradient
from lightning_autobalance.losses import ParametricCrossEntropy
from lightning_autobalance.objectives import balanced_cross_entropy

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
    eps = 1e-5
    name = "raw_iota"
    fd = torch.zeros_like(hparams[name]).reshape(-1)
    for i in range(fd.numel()):
        values = []
        for sign in (1, -1):
            shifted = {k: v.clone() for k, v in hparams.items()}
            shifted[name].view(-1)[i] += sign * eps
            values.append(float(outer(solve_inner(inner, shifted), shifted)))
        fd[i] = (values[0] - values[1]) / (2 * eps)
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
