"""Tests of lightning_autobalance.llr against independent references (numpy lstsq, numpy SVD, sklearn, scipy)."""

import doctest
import math
import warnings

import numpy as np
import pytest
import torch
from scipy.stats import norm
from sklearn.linear_model import LogisticRegression

import lightning_autobalance.llr as llr
from lightning_autobalance.llr import (
    DEFAULT_MAX_CORRECTION,
    DEFAULT_MAX_WEIGHT,
    LinearHead,
    bilevel_objective,
    bilevel_weights,
    class_weights_for_mode,
    downsample_weights,
    effective_dimension,
    fit_last_layer,
    gaussian_mixture_class_errors,
    optimal_weight,
    prior_class_weights,
    thumb_class_weights,
)
from tests._helpers.sources import imported_modules
from tests.conftest import package_sources, run_doctests

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny problems


def _problem(n=120, d=6, k=3, g=2, seed=0, offset=3.0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    y[:k] = np.arange(k)  # every class present
    groups = rng.integers(0, g, n)
    means = rng.normal(size=(k, d))
    x = means[y] + rng.normal(size=(n, d)) + offset  # non-centered features exercise the intercept handling
    return torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(groups)


def _lstsq_reference(x, y, w, k, ridge, fit_intercept):
    """Weighted ridge least squares by numpy lstsq on √w-scaled rows, ridge as augmented rows."""
    x, y, w = x.numpy(), y.numpy(), w.numpy()
    n, d = x.shape
    design = np.hstack([x, np.ones((n, 1))]) if fit_intercept else x
    p = design.shape[1]
    targets = np.eye(k)[y]
    sw = np.sqrt(w)[:, None]
    a, b = design * sw, targets * sw
    if ridge > 0:
        pen = np.sqrt(ridge) * np.eye(p)
        if fit_intercept:
            pen = pen[:d]  # no row for the intercept: it is not penalised
        a = np.vstack([a, pen])
        b = np.vstack([b, np.zeros((pen.shape[0], k))])
    coef, *_ = np.linalg.lstsq(a, b, rcond=None)
    weight = coef[:d].T
    bias = coef[d] if fit_intercept else np.zeros(k)
    return weight, bias


# ------------------------------------------------------------------------------------------ closed-form square loss
@pytest.mark.parametrize("ridge", [0.0, 3.0])
@pytest.mark.parametrize("fit_intercept", [True, False])
@pytest.mark.parametrize("kind", ["none", "sample", "class", "group_class"])
def test_square_head_matches_numpy_lstsq(ridge, fit_intercept, kind):
    x, y, groups = _problem()
    n, k = x.shape[0], 3
    rng = np.random.default_rng(1)
    if kind == "none":
        weights, w = None, torch.ones(n, dtype=torch.float64)
    elif kind == "sample":
        weights = torch.from_numpy(rng.uniform(0.0, 3.0, n))
        weights[:5] = 0.0  # zero weights are allowed
        w = weights
    elif kind == "class":
        weights = torch.tensor([0.5, 2.0, 7.0], dtype=torch.float64)
        w = weights[y]
    else:
        weights = torch.from_numpy(rng.uniform(0.2, 4.0, (2, k)))
        w = weights[groups, y]
    head = fit_last_layer(x, y, groups=groups, weights=weights, ridge=ridge, fit_intercept=fit_intercept)
    ref_w, ref_b = _lstsq_reference(x, y, w, k, ridge, fit_intercept)
    np.testing.assert_allclose(head.weight.numpy(), ref_w, atol=1e-6, rtol=0)
    np.testing.assert_allclose(head.bias.numpy(), ref_b, atol=1e-6, rtol=0)
    assert head.weight.dtype == torch.float64 and head.weight.shape == (k, x.shape[1])


def test_square_head_binary_two_outputs_equal_pm1_regression():
    x, y, _ = _problem(k=2, d=4)
    w = torch.tensor([1.0, 5.0], dtype=torch.float64)
    head = fit_last_layer(x, y, weights=w)
    design = np.hstack([x.numpy(), np.ones((x.shape[0], 1))])
    sw = np.sqrt(w.numpy()[y.numpy()])[:, None]
    coef, *_ = np.linalg.lstsq(design * sw, (2.0 * y.numpy() - 1.0)[:, None] * sw, rcond=None)
    np.testing.assert_allclose((head.weight[1] - head.weight[0]).numpy(), coef[:-1, 0], atol=1e-8)
    np.testing.assert_allclose(float(head.bias[1] - head.bias[0]), coef[-1, 0], atol=1e-8)


def test_float32_features_give_float32_head_and_linear_layer():
    x, y, _ = _problem()
    head = fit_last_layer(x.float(), y)
    ref = fit_last_layer(x, y)
    assert head.weight.dtype == torch.float32
    np.testing.assert_allclose(head.weight.numpy(), ref.weight.numpy(), atol=1e-4)
    layer = head.to_linear()
    xf = x.float()
    assert torch.equal(layer(xf).detach(), head(xf))
    assert torch.equal(head.predict(xf), head(xf).argmax(1))


# ------------------------------------------------------------------------------------------ cross-entropy head
@pytest.mark.parametrize("fit_intercept", [True, False])
def test_ce_head_matches_sklearn_multinomial(fit_intercept):
    x, y, _ = _problem(n=150, d=5, k=3, seed=3, offset=1.0)
    sw = torch.from_numpy(np.random.default_rng(4).uniform(0.5, 2.0, x.shape[0]))
    ridge = 2.0
    head = fit_last_layer(x, y, weights=sw, loss="ce", ridge=ridge, fit_intercept=fit_intercept)
    clf = LogisticRegression(C=1.0 / ridge, fit_intercept=fit_intercept, tol=1e-12, max_iter=10_000)
    clf.fit(x.numpy(), y.numpy(), sample_weight=sw.numpy())
    np.testing.assert_allclose(head.weight.numpy(), clf.coef_, atol=1e-4, rtol=0)
    ref_bias = clf.intercept_ - clf.intercept_.mean() if fit_intercept else np.zeros(3)
    np.testing.assert_allclose(head.bias.numpy(), ref_bias, atol=1e-4, rtol=0)


def test_ce_head_per_class_weights_equal_per_sample_weights():
    x, y, _ = _problem(n=90, d=4, seed=5, offset=0.0)
    cw = torch.tensor([1.0, 3.0, 0.5], dtype=torch.float64)
    a = fit_last_layer(x, y, weights=cw, loss="ce", ridge=1.0)
    b = fit_last_layer(x, y, weights=cw[y], loss="ce", ridge=1.0)
    np.testing.assert_allclose(a.weight.numpy(), b.weight.numpy(), atol=1e-7)


# ------------------------------------------------------------------------------------------ bilevel hypergradient
@pytest.mark.parametrize(
    ("per", "objective", "val_loss", "ridge"),
    [
        ("class", "balanced", "square", 0.0),
        ("class", "worst_group", "ce", 0.5),
        ("group_class", "worst_group", "square", 0.0),
        ("group_class", "balanced", "ce", 0.0),
    ],
)
def test_bilevel_hypergradient_matches_central_differences(per, objective, val_loss, ridge):
    x, y, groups = _problem(n=160, d=5, seed=7)
    tr, va = slice(0, 100), slice(100, None)
    shape = (3,) if per == "class" else (2, 3)
    lw0 = torch.from_numpy(np.random.default_rng(8).normal(scale=0.5, size=shape))
    kwargs = dict(
        train_groups=groups[tr],
        val_groups=groups[va],
        objective=objective,
        val_loss=val_loss,
        ridge=ridge,
        temperature=0.2,
    )

    def f(lw):
        return bilevel_objective(lw, x[tr], y[tr], x[va], y[va], **kwargs)

    lw = lw0.clone().requires_grad_(True)
    f(lw).backward()
    eps = 1e-5
    fd = torch.zeros_like(lw0)
    for idx in np.ndindex(*shape):
        plus, minus = lw0.clone(), lw0.clone()
        plus[idx] += eps
        minus[idx] -= eps
        fd[idx] = (f(plus) - f(minus)) / (2 * eps)
    assert float(fd.abs().max()) > 1e-4  # the objective does depend on the weights
    np.testing.assert_allclose(lw.grad.numpy(), fd.numpy(), rtol=1e-5, atol=1e-8)


def test_bilevel_objective_is_validation_loss_of_refit_head():
    x, y, _ = _problem(n=100, d=4, seed=9)
    tr, va = slice(0, 60), slice(60, None)
    lw = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)
    value = bilevel_objective(lw, x[tr], y[tr], x[va], y[va], val_loss="square")
    head = fit_last_layer(x[tr], y[tr], weights=torch.exp(lw))
    sq = ((head(x[va]) - torch.eye(3, dtype=torch.float64)[y[va]]) ** 2).sum(1)
    ref = torch.stack([sq[y[va] == c].mean() for c in range(3)]).mean()
    assert math.isclose(float(value), float(ref), rel_tol=1e-9)


def test_bilevel_weights_deterministic_and_improve_objective():
    x, y, groups = _problem(n=240, d=5, seed=11)
    a = bilevel_weights(x, y, groups, per="class", objective="worst_group", steps=25, lr=0.1)
    b = bilevel_weights(x, y, groups, per="class", objective="worst_group", steps=25, lr=0.1)
    assert torch.equal(a.weights, b.weights) and a.history == b.history
    assert len(a.history) == 26 and a.weight_history.shape == (26, 3)
    assert a.history[a.best_step] <= a.history[0]
    assert a.history[-1] < a.history[0]
    counts = torch.bincount(y, minlength=3).double()
    assert math.isclose(float((counts * a.weights).sum()), x.shape[0], rel_tol=1e-9)  # mean weight 1
    gc = bilevel_weights(x, y, groups, steps=3)
    assert gc.weights.shape == (2, 3)


def _small_cell_problem():
    """Three classes; class 2 has 3 samples, so the bilevel split keeps round(0.3·3) = 1 of them for validation."""
    x, y, _ = _problem(n=150, d=4, k=2, seed=21)
    extra = torch.from_numpy(np.random.default_rng(22).normal(size=(3, 4)) + 4.0)
    return torch.cat([x, extra]), torch.cat([y, torch.full((3,), 2)])


def test_bilevel_min_cell_size_keeps_small_cells_at_prior_ratio():
    x, y = _small_cell_problem()
    counts = torch.bincount(y).double()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # frozen cells are the documented rule: no warning
        res = bilevel_weights(x, y, steps=30, lr=0.2, min_cell_size=3, anchor=0.0)
    assert res.tuned.tolist() == [True, True, False]
    assert res.best_step > 0  # the tuned cells did move
    corrections = torch.log(res.weights * counts)  # log-correction r_c relative to the inverse frequency
    assert not math.isclose(float(corrections[0]), float(corrections[1]), abs_tol=1e-6)
    # the 1-validation-sample cell gets the prior-ratio weight relative to the tuned cells: r₂ = mean(r₀, r₁)
    assert math.isclose(float(corrections[2]), float(corrections[:2].mean()), rel_tol=0, abs_tol=1e-12)
    free = bilevel_weights(x, y, steps=30, lr=0.2, min_cell_size=0, anchor=0.0)
    assert free.tuned.all() and not torch.allclose(free.weights, res.weights)
    # no tuned cell at all: the ratio of priors, one history entry
    none_tuned = bilevel_weights(x, y, steps=30, min_cell_size=10_000)
    assert not none_tuned.tuned.any() and len(none_tuned.history) == 1
    assert torch.allclose(none_tuned.weights, prior_class_weights(counts), rtol=1e-12, atol=0)


def test_bilevel_anchor_penalty_hand_computed_and_infinite_limit():
    x, y = _small_cell_problem()
    counts = torch.bincount(y).double()
    init = torch.tensor([1.0, 3.0, 0.5], dtype=torch.float64)
    kw = dict(steps=0, init=init, min_cell_size=0)
    plain, anchored = bilevel_weights(x, y, anchor=0.0, **kw), bilevel_weights(x, y, anchor=2.5, **kw)
    r = torch.log(init * counts)
    n_val = torch.tensor([min(max(round(0.3 * int(c)), 1), int(c) - 1) for c in counts], dtype=torch.float64)
    assert n_val[2] == 1  # the 3-sample class keeps one validation sample
    expected = 2.5 * float(((r - r.mean()) ** 2 / n_val).mean())  # per cell, scaled by 1/validation samples
    assert math.isclose(anchored.history[0] - plain.history[0], expected, rel_tol=1e-10)
    pw = prior_class_weights(counts)
    for strength in (math.inf, 1e8):  # the penalty → ∞ pins the weights to the ratio of priors
        res = bilevel_weights(x, y, steps=20, lr=0.2, min_cell_size=0, anchor=strength)
        assert torch.allclose(res.weights, pw, rtol=1e-12, atol=0)
    # a finite anchor pulls the log-corrections together (smaller spread than without it)
    loose = bilevel_weights(x, y, steps=40, lr=0.2, min_cell_size=0, anchor=0.0)
    tight = bilevel_weights(x, y, steps=40, lr=0.2, min_cell_size=0, anchor=10.0)
    assert float(torch.log(tight.weights * counts).std()) < float(torch.log(loose.weights * counts).std())
    mode = class_weights_for_mode("bilevel", y, x, bilevel_kwargs={"steps": 20, "anchor": math.inf})
    assert torch.allclose(mode, pw, rtol=1e-12, atol=0)


def test_bad_inputs_new_options_name_the_argument():
    x, y = _small_cell_problem()
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match="min_cell_size must be an integer ≥ 0"):
            bilevel_weights(x, y, min_cell_size=bad)
    for bad in (-0.1, math.nan):
        with pytest.raises(ValueError, match="anchor must be >= 0"):
            bilevel_weights(x, y, anchor=bad)
    for bad in (0.5, math.inf, math.nan):
        with pytest.raises(ValueError, match="max_correction must be a finite number >= 1"):
            thumb_class_weights([5, 3, 1], 0.1, max_correction=bad)
    with pytest.raises(ValueError, match="max_correction"):
        class_weights_for_mode("thumb", torch.tensor([0, 0, 1, 2]), delta=0.1, max_correction=0.0)


# ------------------------------------------------------------------------------------------ effective dimension
@pytest.mark.parametrize("variance", [0.5, 0.9, 0.99, 1.0])
@pytest.mark.parametrize(("n", "d", "rank"), [(400, 30, 4), (25, 60, 6)])
def test_effective_dimension_matches_numpy_svd(variance, n, d, rank):
    rng = np.random.default_rng(rank)
    scales = np.linspace(3.0, 1.0, rank)
    x = (rng.normal(size=(n, rank)) * scales) @ rng.normal(size=(rank, d)) + 0.05 * rng.normal(size=(n, d)) + 5.0
    s = np.linalg.svd(x - x.mean(0), compute_uv=False) ** 2
    frac = np.cumsum(s) / s.sum()
    expected = int(np.argmax(frac >= variance - 1e-12)) + 1
    assert effective_dimension(torch.from_numpy(x), variance) == expected
    if variance == 0.99:
        assert rank <= expected < d


def test_effective_dimension_constant_features_is_zero():
    assert effective_dimension(torch.ones(10, 3)) == 0


# ------------------------------------------------------------------------------------------ weights
@pytest.mark.parametrize(("prior", "delta"), [(0.2, 0.2), (0.1, 0.05), (0.3, 0.0), (0.45, 0.8)])
def test_optimal_weight_formula(prior, delta):
    expected = (2 * (1 - prior) - delta) / (2 * prior - delta)
    assert math.isclose(optimal_weight(prior, delta), expected, rel_tol=1e-12)


def test_optimal_weight_paper_value_and_prior_limit():
    assert math.isclose(optimal_weight(0.2, 0.2), 7.0, rel_tol=1e-12)
    for prior in (0.05, 0.2, 0.4):
        ratio = (1 - prior) / prior
        assert math.isclose(optimal_weight(prior, 1e-10), ratio, rel_tol=1e-8)
        assert optimal_weight(prior, 0.01) > ratio  # larger than the prior ratio at finite n
    assert optimal_weight(0.5, 3.0) == 1.0


@pytest.mark.parametrize("delta", [0.4, 0.5, 2.0])
def test_optimal_weight_warns_and_caps(delta):
    with pytest.warns(UserWarning, match="no weight equalizes"):
        assert optimal_weight(0.2, delta) == DEFAULT_MAX_WEIGHT
    with pytest.warns(UserWarning, match="max_weight=50"):
        assert optimal_weight(0.2, delta, max_weight=50.0) == 50.0
    with pytest.warns(UserWarning, match="exceeds max_weight"):
        assert optimal_weight(0.2, 0.399, max_weight=100.0) == 100.0


def test_optimal_weight_no_warning_in_valid_range():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        optimal_weight(0.2, 0.3)


def test_prior_and_thumb_class_weights():
    counts = torch.tensor([800.0, 200.0])
    pw = prior_class_weights(counts)
    assert torch.allclose(pw, torch.tensor([0.625, 2.5], dtype=torch.float64))
    tw = thumb_class_weights(counts, delta=0.2)
    assert math.isclose(float(tw[1] / tw[0]), 7.0, rel_tol=1e-12)
    assert math.isclose(float((tw * counts / counts.sum()).sum()), 1.0, rel_tol=1e-12)
    multi = torch.tensor([500.0, 300.0, 150.0, 50.0], dtype=torch.float64)
    priors = multi / multi.sum()
    assert torch.allclose(thumb_class_weights(multi, 0.0), prior_class_weights(multi))
    tm = thumb_class_weights(multi, 0.05)
    assert math.isclose(float((tm * priors).sum()), 1.0, rel_tol=1e-12)
    assert bool((tm.diff() > 0).all())  # rarer class, larger weight
    correction = tm / prior_class_weights(multi)
    assert bool((correction.diff() > 0).all())  # rarer class, larger finite-sample correction
    with pytest.warns(UserWarning, match=r"class 1: delta=0.5"):  # binary beyond 2π₊: the published cap
        thumb_class_weights(counts, 0.5)


def _correction(prior, delta):
    """Hand computation of the one-vs-rest correction ρ̃/ρ of the published formula (δ < 2π)."""
    rho_tilde = (2 * (1 - prior) - delta) / (2 * prior - delta)
    return rho_tilde / ((1 - prior) / prior)


def test_thumb_multiclass_relative_cap_hand_computed():
    counts = torch.tensor([600.0, 300.0, 100.0])
    priors = [0.6, 0.3, 0.1]
    delta = 0.25  # ≥ 2π₂ = 0.2: class 2 has no finite optimum; class 1 (2π₁ = 0.6) keeps the formula
    c1 = _correction(0.3, delta)
    assert 1.0 < c1 < 3.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the documented rule is not a failure: no warning
        w = thumb_class_weights(counts, delta, max_correction=3.0)
        w_default = thumb_class_weights(counts, delta)
    corrections = [1.0, c1, 3.0]  # class 0 has π ≥ 1/2: plain prior weight; class 2 at the cap
    total = sum(corrections)
    expected = torch.tensor([c / p / total for c, p in zip(corrections, priors, strict=True)], dtype=torch.float64)
    assert torch.allclose(w, expected, rtol=1e-12, atol=0)
    # class 1 vs class 0: exactly the published one-vs-rest ratio ρ̃₁ relative to the prior ratio
    assert math.isclose(float(w[1] * 0.3 / (w[0] * 0.6)), optimal_weight(0.3, delta) * 0.3 / 0.7, rel_tol=1e-12)
    # default cap 1.5: class 2 gets 1.5; class 1's formula value 1.41 is below the cap and kept
    assert DEFAULT_MAX_CORRECTION == 1.5 and c1 < 1.5
    expected_default = torch.tensor([1.0 / 0.6, c1 / 0.3, 1.5 / 0.1], dtype=torch.float64) / (1.0 + c1 + 1.5)
    assert torch.allclose(w_default, expected_default, rtol=1e-12, atol=0)
    # ratios stay within max_correction times the ratio of priors (the old absolute cap gave 1000)
    assert float(w[2] / w[0]) <= 3.0 * 6.0 + 1e-9
    # a class below 2π whose formula exceeds the cap is capped too, so the weights are continuous in δ
    assert _correction(0.1, 0.19) > 3.0
    below = thumb_class_weights(counts, 0.2 - 1e-9, max_correction=3.0)
    above = thumb_class_weights(counts, 0.2 + 1e-9, max_correction=3.0)
    assert torch.allclose(below, above, rtol=1e-7, atol=0)
    # max_correction=1 is the ratio of priors; the binary case ignores max_correction (published rule)
    assert torch.allclose(thumb_class_weights(counts, delta, max_correction=1.0), prior_class_weights(counts))
    binary = thumb_class_weights([800, 200], 0.3, max_correction=1.0)
    assert math.isclose(float(binary[1] / binary[0]), optimal_weight(0.2, 0.3), rel_tol=1e-12)
    assert torch.allclose(
        class_weights_for_mode("thumb", torch.tensor([0] * 6 + [1] * 3 + [2]), delta=delta),
        thumb_class_weights([6, 3, 1], delta),
    )


def test_downsample_weights_balance_and_seed():
    y = torch.tensor([0] * 30 + [1] * 8 + [2] * 12)
    w = downsample_weights(y, seed=3)
    assert torch.bincount(y, weights=w).tolist() == [8.0, 8.0, 8.0]
    assert torch.equal(w, downsample_weights(y, seed=3))
    assert not torch.equal(w, downsample_weights(y, seed=4))
    groups = torch.arange(50) % 2
    wg = downsample_weights(y, groups)
    cells = torch.bincount(groups * 3 + y, weights=wg)
    assert set(cells.tolist()) == {4.0}


def test_class_weights_for_mode():
    x, y, groups = _problem(n=200, d=5, seed=12)
    assert torch.equal(class_weights_for_mode("none", y), torch.ones(3, dtype=torch.float64))
    counts = torch.bincount(y).double()
    assert torch.allclose(class_weights_for_mode("priors", y), prior_class_weights(counts))
    d_eff = effective_dimension(x)
    assert torch.allclose(class_weights_for_mode("thumb", y, x), thumb_class_weights(counts, d_eff / 200))
    assert torch.allclose(class_weights_for_mode("thumb", y, delta=0.1), thumb_class_weights(counts, 0.1))
    ds = class_weights_for_mode("downsample", y, x, seed=1)
    assert ds.shape == (200,) and set(ds.unique().tolist()) == {0.0, 1.0}
    bl = class_weights_for_mode("bilevel", y, x, groups, bilevel_kwargs={"steps": 2})
    assert bl.shape == (2, 3)
    head = fit_last_layer(x, y, groups=groups, weights=bl)
    assert isinstance(head, LinearHead)


# ------------------------------------------------------------------------------------------ Gaussian mixture risks
def test_gaussian_mixture_class_errors_scipy_and_monte_carlo():
    rng = np.random.default_rng(13)
    d = 4
    mu, theta, b = rng.normal(size=d), rng.normal(size=d), 0.7
    e_pos, e_neg = gaussian_mixture_class_errors(torch.from_numpy(theta), b, torch.from_numpy(mu))
    nt = np.linalg.norm(theta)
    assert math.isclose(e_pos, norm.cdf(-(theta @ mu + b) / nt), rel_tol=1e-12)
    assert math.isclose(e_neg, norm.cdf(-(theta @ mu - b) / nt), rel_tol=1e-12)
    m = 200_000
    z = rng.normal(size=(m, d))
    mc_pos = np.mean(np.sign((mu + z) @ theta + b) != 1)
    mc_neg = np.mean(np.sign((-mu + z) @ theta + b) != -1)
    assert abs(mc_pos - e_pos) < 5e-3 and abs(mc_neg - e_neg) < 5e-3


# ------------------------------------------------------------------------------------------ bad inputs
def test_bad_inputs_fit_last_layer():
    x, y, groups = _problem(n=40, d=5)
    bad = x.clone()
    bad[3, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        fit_last_layer(bad, y)
    with pytest.raises(ValueError, match="only one class"):
        fit_last_layer(x, torch.zeros(40, dtype=torch.long), num_classes=2)
    with pytest.raises(ValueError, match="only one class"):
        fit_last_layer(x, y, weights=torch.tensor([1.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match=r"pass ridge>0 or fewer features"):
        fit_last_layer(x[:5], y[:5])
    fit_last_layer(x[:5], y[:5], ridge=1.0)  # ridge makes it well-posed
    collinear = torch.cat([x, x[:, :1]], dim=1)
    with pytest.raises(ValueError, match=r"singular.*pass ridge>0"):
        fit_last_layer(collinear, y)
    with pytest.raises(ValueError, match=r"1-D tensor of 40 class indices"):
        fit_last_layer(x, y[:30])
    with pytest.raises(ValueError, match=r"2-D \(N, d\)"):
        fit_last_layer(x[0], y)
    with pytest.raises(ValueError, match="negative values"):
        fit_last_layer(x, y, weights=torch.tensor([1.0, -1.0, 1.0]))
    with pytest.raises(ValueError, match=r"match neither per-sample"):
        fit_last_layer(x, y, weights=torch.ones(7))
    with pytest.raises(ValueError, match="need group labels; pass groups"):
        fit_last_layer(x, y, weights=torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"only 1 rows"):
        fit_last_layer(x, y, groups=groups, weights=torch.ones(1, 3))
    with pytest.raises(ValueError, match="increase num_classes"):
        fit_last_layer(x, y, num_classes=2)
    with pytest.raises(ValueError, match="integer class indices"):
        fit_last_layer(x, y.double())
    with pytest.raises(ValueError, match="loss must be 'square' or 'ce'"):
        fit_last_layer(x, y, loss="hinge")
    with pytest.raises(ValueError, match="ridge must be"):
        fit_last_layer(x, y, ridge=-1.0)


def test_bad_inputs_weights_and_modes():
    with pytest.raises(ValueError, match=r"minority_prior must be in \(0, 0.5\]"):
        optimal_weight(0.7, 0.1)
    with pytest.raises(ValueError, match=r"minority_prior must be in \(0, 0.5\]"):
        optimal_weight(0.0, 0.1)
    with pytest.raises(ValueError, match="delta"):
        optimal_weight(0.2, -0.1)
    with pytest.raises(ValueError, match="max_weight"):
        optimal_weight(0.2, 0.1, max_weight=0.5)
    with pytest.raises(ValueError, match=r"classes \[1\] have no samples"):
        thumb_class_weights([10, 0, 5], 0.1)
    with pytest.raises(ValueError, match=r"variance must be in \(0, 1\]"):
        effective_dimension(torch.randn(10, 3), 1.5)
    with pytest.raises(ValueError, match="mode must be one of"):
        class_weights_for_mode("magic", torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="needs features"):
        class_weights_for_mode("thumb", torch.tensor([0, 1, 1]))
    x, y, _ = _problem(n=60, d=5)
    with pytest.raises(ValueError, match="objective must be"):
        bilevel_weights(x, y, objective="max")
    with pytest.raises(ValueError, match="per='group_class' needs group labels"):
        bilevel_weights(x, y, per="group_class")
    small_x, small_y = torch.randn(12, 8, dtype=torch.float64), torch.arange(12) % 3
    with pytest.raises(ValueError, match=r"n <= d in the bilevel training split.*ridge>0"):
        bilevel_weights(small_x, small_y, val_fraction=0.5)
    bilevel_weights(small_x, small_y, val_fraction=0.5, ridge=1.0, steps=1)  # ridge makes it well-posed
    with pytest.raises(ValueError, match="theta must be finite and non-zero"):
        gaussian_mixture_class_errors(torch.zeros(3), 0.0, torch.ones(3))


# ------------------------------------------------------------------------------------------ docstrings
def test_doctests():
    result = run_doctests(llr, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 10 and result.failed == 0


def test_module_does_not_import_lightning():
    for source in package_sources(llr):  # every module of the llr package
        names = imported_modules(source)
        assert not any(name.split(".")[0] in {"lightning", "pytorch_lightning"} for name in names)
