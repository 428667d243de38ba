"""Tests of lightning_autobalance.group_last_layer: DFR and AFR against scikit-learn and hand computations."""

import warnings

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier
from sklearn.preprocessing import StandardScaler
from torch import nn

import lightning_autobalance.group_last_layer as gll
from lightning_autobalance.group_last_layer import afr_head, afr_weights, dfr_head, group_balanced_indices
from lightning_autobalance.group_last_layer.selection import best_index
from tests._helpers.sources import imported_modules
from tests.conftest import package_sources, run_doctests

pytestmark = pytest.mark.usefixtures("single_thread")


def _cells_problem(n=400, d=5, k=2, g=2, seed=0, majority=0.8):
    """Features of k classes with a group attribute agreeing with the class (mod g) for `majority` of samples."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    agree = rng.random(n) < majority
    groups = np.where(agree, y % g, rng.integers(0, g, n))
    means = rng.normal(0, 1.5, (k, d))
    shift = rng.normal(0, 1.0, (g, d))
    x = means[y] + shift[groups] + rng.normal(0, 1.0, (n, d)) * rng.uniform(0.5, 3.0, d) + 4.0
    return torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(groups)


def _worst_group_accuracy_by_hand(pred, y, g):
    accs = []
    for gi in np.unique(g):
        for yi in np.unique(y):
            mask = (g == gi) & (y == yi)
            if mask.any():
                accs.append(float((pred[mask] == y[mask]).mean()))
    return min(accs)


# ------------------------------------------------------------------------------------------ DFR
@pytest.mark.parametrize(("k", "solver"), [(2, "liblinear"), (3, "liblinear"), (3, "saga"), (2, "saga")])
def test_dfr_head_equals_sklearn_fitted_directly(k, solver):
    x, y, g = _cells_problem(n=360, d=6, k=k, seed=k)
    x_test, _, _ = _cells_problem(n=200, d=6, k=k, seed=k + 10)
    c = 0.3
    weight, bias, report = dfr_head(x, y, g, C_grid=(c,), num_subsamples=1, seed=3, solver=solver)
    assert report.selection_metric is None and report.scores == [] and report.params == {"C": c}
    assert weight.shape == (k, 6) and bias.shape == (k,) and weight.dtype == torch.float64

    # Independent reference: scikit-learn's scaler on the fitting set, LogisticRegression on the balanced rows.
    scaler = StandardScaler().fit(x.numpy())
    np.testing.assert_allclose(report.mean.numpy(), scaler.mean_, rtol=1e-12)
    np.testing.assert_allclose(report.scale.numpy(), scaler.scale_, rtol=1e-12)
    idx = report.subsamples[0].numpy()
    counts = np.bincount(g.numpy()[idx] * k + y.numpy()[idx])
    assert counts.min() == counts.max() > 0
    clf = LogisticRegression(l1_ratio=1.0, C=c, solver=solver, tol=1e-4, max_iter=1000, random_state=3)
    if solver == "liblinear" and k > 2:
        clf = OneVsRestClassifier(clf)
    clf.fit(scaler.transform(x.numpy())[idx], y.numpy()[idx])
    z_ref = clf.decision_function(scaler.transform(x_test.numpy()))
    scores = (x_test @ weight.T + bias).numpy()
    z_ours = scores[:, 1] - scores[:, 0] if k == 2 else scores
    np.testing.assert_allclose(z_ours, z_ref, rtol=1e-6, atol=1e-6 * np.abs(z_ref).max())
    np.testing.assert_array_equal(scores.argmax(1), clf.predict(scaler.transform(x_test.numpy())))
    if k == 2:  # the two rows are (-z/2, z/2): softmax equals the logistic probability
        probs = torch.softmax(torch.from_numpy(scores), dim=1).numpy()
        np.testing.assert_allclose(probs, clf.predict_proba(scaler.transform(x_test.numpy())), rtol=1e-6)


def test_dfr_head_averages_subsample_coefficients():
    x, y, g = _cells_problem(n=300, d=4, seed=7)
    c = 0.5
    _, _, report = dfr_head(x, y, g, C_grid=c, num_subsamples=4, seed=1)
    weight, bias, _ = dfr_head(x, y, g, C_grid=c, num_subsamples=4, seed=1)
    scaler = StandardScaler().fit(x.numpy())
    xs = scaler.transform(x.numpy())
    coefs, intercepts = [], []
    for idx in report.subsamples:
        clf = LogisticRegression(l1_ratio=1.0, C=c, solver="liblinear", random_state=1, max_iter=1000)
        clf.fit(xs[idx.numpy()], y.numpy()[idx.numpy()])
        coefs.append(clf.coef_[0])
        intercepts.append(clf.intercept_[0])
    w_ref = np.mean(coefs, axis=0) / scaler.scale_  # un-standardised direction of z = w·x + b
    b_ref = np.mean(intercepts) - w_ref @ scaler.mean_
    np.testing.assert_allclose((weight[1] - weight[0]).numpy(), w_ref, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(float(bias[1] - bias[0]), b_ref, rtol=1e-6)
    assert len({tuple(s.tolist()) for s in report.subsamples}) == 4  # distinct subsamples
    np.testing.assert_allclose(report.sample_weights.sum().item(), len(report.subsamples[0]))


def test_dfr_c_selection_picks_best_worst_group_accuracy():
    x, y, g = _cells_problem(n=400, d=6, seed=11, majority=0.9)
    xs_sel, ys_sel, gs_sel = _cells_problem(n=400, d=6, seed=12, majority=0.5)
    grid = (1.0, 0.3, 0.1, 0.03, 0.01, 0.003)
    _, _, report = dfr_head(
        x, y, g, C_grid=grid, num_subsamples=1, seed=0,
        selection_features=xs_sel, selection_targets=ys_sel, selection_groups=gs_sel,
    )  # fmt: skip
    assert report.selection_metric == "worst_group" and report.num_selection == 400 and report.num_fit == 400
    scaler = StandardScaler().fit(x.numpy())
    idx = report.subsamples[0].numpy()
    brute = []
    for c in grid:
        clf = LogisticRegression(l1_ratio=1.0, C=c, solver="liblinear", random_state=0, max_iter=1000)
        clf.fit(scaler.transform(x.numpy())[idx], y.numpy()[idx])
        pred = clf.predict(scaler.transform(xs_sel.numpy()))
        brute.append(_worst_group_accuracy_by_hand(pred, ys_sel.numpy(), gs_sel.numpy()))
    assert len(set(brute)) > 1  # the grid matters on this problem
    np.testing.assert_allclose([s for _, s in report.scores], brute, atol=1e-12)
    assert [p["C"] for p, _ in report.scores] == list(grid)
    assert report.params["C"] == grid[int(np.argmax(brute))]


def test_dfr_split_selection_and_refit():
    x, y, g = _cells_problem(n=300, d=4, seed=5)
    _, _, refit = dfr_head(x, y, g, C_grid=(1.0, 0.1), num_subsamples=2, selection_fraction=0.3)
    assert refit.num_fit == 300 and 0 < refit.num_selection < 300 and len(refit.scores) == 2
    _, _, kept = dfr_head(x, y, g, C_grid=(1.0, 0.1), num_subsamples=2, selection_fraction=0.3, refit=False)
    assert kept.num_fit + kept.num_selection == 300 and kept.params == refit.params
    # Without groups: class balancing and worst-class selection; explicitly by worst class with groups too.
    _, _, no_groups = dfr_head(x, y, C_grid=(1.0, 0.1), num_subsamples=2)
    assert no_groups.selection_metric == "worst_class"
    counts = torch.bincount(y[no_groups.subsamples[0]])
    assert counts.min() == counts.max()
    _, _, by_class = dfr_head(x, y, g, C_grid=(1.0, 0.1), num_subsamples=2, selection_metric="worst_class")
    assert by_class.selection_metric == "worst_class"


def test_dfr_head_writes_into_linear_layer():
    x, y, g = _cells_problem(n=200, d=5, k=3, seed=9)
    weight, bias, _ = dfr_head(x.float(), y, g, C_grid=0.5, num_subsamples=2)
    assert weight.dtype == torch.float32
    layer = nn.Linear(5, 3)
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)
    assert torch.equal(layer(x.float()).argmax(1), (x.float() @ weight.T + bias).argmax(1))


def test_group_balanced_indices_equal_cell_counts():
    rng = np.random.default_rng(0)
    y = torch.from_numpy(rng.integers(0, 3, 500))
    g = torch.from_numpy(np.where(rng.random(500) < 0.85, y.numpy() % 2, rng.integers(0, 2, 500)))
    smallest = int(torch.bincount(g * 3 + y, minlength=6).min())
    draws = []
    for seed in range(5):
        idx = group_balanced_indices(y, g, seed=seed)
        counts = torch.bincount(g[idx] * 3 + y[idx], minlength=6)
        assert counts.tolist() == [smallest] * 6
        assert torch.equal(idx, torch.sort(idx).values) and idx.unique().numel() == idx.numel()
        draws.append(tuple(idx.tolist()))
    assert len(set(draws)) > 1 and tuple(group_balanced_indices(y, g, seed=0).tolist()) == draws[0]
    # Without groups: classes balanced.
    idx = group_balanced_indices(y)
    assert torch.bincount(y[idx]).tolist() == [int(torch.bincount(y).min())] * 3
    # Group labels that encode the class (Waterbirds-style): structurally empty cells, allowed on request.
    wb_groups = y * 2 + torch.from_numpy(rng.random(500) < 0.5).long()
    with pytest.raises(ValueError, match="groups: the \\(group, class\\) cells"):
        group_balanced_indices(y, wb_groups)
    idx = group_balanced_indices(y, wb_groups, require_all_cells=False)
    counts = torch.bincount(wb_groups[idx])
    assert counts.min() == counts.max()


# ------------------------------------------------------------------------------------------ AFR
@pytest.mark.parametrize("class_balance", ["count", "sum", "none"])
def test_afr_weights_hand_computation(class_balance):
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 2, (40, 3))
    y = rng.integers(0, 3, 40)
    gamma = 3.5
    w = afr_weights(torch.from_numpy(logits), torch.from_numpy(y), gamma, class_balance=class_balance).numpy()
    ref = np.empty(40)
    for i in range(40):
        p = np.exp(logits[i]) / np.exp(logits[i]).sum()
        ref[i] = np.exp(-gamma * p[y[i]])
    if class_balance == "count":
        ref = ref / np.array([(y == y[i]).sum() for i in range(40)])
    elif class_balance == "sum":
        totals = {c: ref[y == c].sum() for c in range(3)}
        ref = ref / np.array([totals[y[i]] for i in range(40)])
    ref = ref / ref.sum()
    np.testing.assert_allclose(w, ref, rtol=1e-12)
    assert abs(w.sum() - 1) < 1e-12
    if class_balance == "sum":  # classes keep equal total weight
        np.testing.assert_allclose([w[y == c].sum() for c in range(3)], [1 / 3] * 3, rtol=1e-12)
    # gamma = 0: uniform within each class.
    w0 = afr_weights(torch.from_numpy(logits), torch.from_numpy(y), 0.0, class_balance=class_balance).numpy()
    for c in range(3):
        assert np.ptp(w0[y == c]) < 1e-15


def _overlapping(n=300, d=3, k=3, seed=0, counts=None):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n) if counts is None else np.repeat(np.arange(k), counts)
    x = rng.normal(0, 1, (n if counts is None else sum(counts), d)) + 0.8 * np.eye(k, d)[y]
    return torch.from_numpy(x), torch.from_numpy(y)


@pytest.mark.parametrize(("k", "class_balance"), [(3, "none"), (2, "none"), (3, "count")])
def test_afr_gamma0_l2_0_equals_unweighted_logistic_regression(k, class_balance):
    counts = [150, 60, 30][:k] if class_balance == "count" else None
    x, y = _overlapping(n=300, k=k, seed=k, counts=counts)
    erm = torch.randn(x.shape[0], k, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    weight, bias, report = afr_head(
        x, y, erm, init_weight=torch.zeros(k, 3), init_bias=torch.zeros(k),
        gamma_grid=(0.0,), l2=0.0, class_balance=class_balance,
    )  # fmt: skip
    assert report.converged and report.params == {"gamma": 0.0, "l2": 0.0}
    clf = LogisticRegression(
        C=np.inf, solver="lbfgs", tol=1e-12, max_iter=10_000,
        class_weight="balanced" if class_balance == "count" else None,
    )  # fmt: skip
    clf.fit(x.numpy(), y.numpy())
    probs = torch.softmax(x @ weight.T + bias, dim=1).numpy()
    np.testing.assert_allclose(probs, clf.predict_proba(x.numpy()), rtol=1e-6, atol=1e-9)
    if k > 2:  # multinomial coefficients (sklearn's rows sum to zero, like the returned representative)
        np.testing.assert_allclose(weight.numpy(), clf.coef_, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(bias.numpy(), clf.intercept_ - clf.intercept_.mean(), rtol=1e-5, atol=1e-7)


def test_afr_head_is_stationary_point_of_the_reference_objective():
    x, y = _overlapping(n=200, seed=4)
    w0 = torch.randn(3, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    b0 = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)
    gamma, lam = 2.0, 0.05
    weight, bias, report = afr_head(x, y, init_weight=w0, init_bias=b0, gamma_grid=gamma, l2=lam)
    w = afr_weights(x @ w0.T + b0, y, gamma)
    torch.testing.assert_close(report.sample_weights, w)
    weight_, bias_ = weight.clone().requires_grad_(True), bias.clone().requires_grad_(True)
    ce = torch.nn.functional.cross_entropy(x @ weight_.T + bias_, y, reduction="none")
    objective = (w * ce).sum() + lam * ((weight_ - w0).pow(2).sum() + (bias_ - b0).pow(2).sum())
    grads = torch.autograd.grad(objective, (weight_, bias_))
    assert max(float(gr.abs().max()) for gr in grads) < 1e-8
    # A huge penalty keeps the ERM head.
    weight, bias, _ = afr_head(x, y, init_weight=w0, init_bias=b0, gamma_grid=gamma, l2=1e8)
    torch.testing.assert_close(weight, w0, atol=1e-7, rtol=0)
    torch.testing.assert_close(bias, b0, atol=1e-7, rtol=0)


def _spurious(n, agree, seed):
    """Binary label, a noisy core feature and a clean spurious one that agrees with the label w.p. `agree`."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=gen)
    a = torch.where(torch.rand(n, generator=gen) < agree, y, 1 - y)
    core = (2.0 * y - 1.0) + 1.0 * torch.randn(n, generator=gen)
    spurious = (2.0 * a - 1.0) + 0.3 * torch.randn(n, generator=gen)
    return torch.stack([core, spurious], dim=1).double(), y, a


@pytest.mark.parametrize("seed", [0, 1])
def test_afr_improves_worst_group_accuracy_on_spurious_problem(seed):
    x_erm, y_erm, _ = _spurious(2000, 0.95, seed=10 * seed)  # ERM data: 95% agreement
    erm = LogisticRegression(C=1.0, max_iter=1000).fit(x_erm.numpy(), y_erm.numpy())
    z = torch.from_numpy(erm.coef_[0])
    w0 = torch.stack([-z / 2, z / 2])
    b0 = torch.tensor([-erm.intercept_[0] / 2, erm.intercept_[0] / 2], dtype=torch.float64)
    x_ho, y_ho, a_ho = _spurious(2000, 0.95, seed=10 * seed + 1)  # held-out set: same 95% agreement
    x_te, y_te, a_te = _spurious(4000, 0.5, seed=10 * seed + 2)  # test: the attribute is uninformative

    def wga(weight, bias):
        pred = (x_te @ weight.T + bias).argmax(1).numpy()
        return _worst_group_accuracy_by_hand(pred, y_te.numpy(), a_te.numpy())

    grid = (0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0)
    weight, bias, report = afr_head(x_ho, y_ho, None, a_ho, init_weight=w0, init_bias=b0, gamma_grid=grid, l2=(0, 0.01))
    erm_wga, afr_wga = wga(w0, b0), wga(weight, bias)
    assert report.selection_metric == "worst_group" and report.params["gamma"] > 0
    assert erm_wga < 0.45 and afr_wga > erm_wga + 0.2, (erm_wga, afr_wga, report.params)
    # Without group labels the selection falls back to worst-class accuracy (a weak signal here: the classes are
    # balanced and the selection part has the training correlation) -- it runs, no claim on its accuracy.
    _, _, report = afr_head(x_ho, y_ho, None, init_weight=w0, init_bias=b0, gamma_grid=grid, l2=0.01)
    assert report.selection_metric == "worst_class" and len(report.scores) == len(grid)


# ------------------------------------------------------------------------------------------ bad inputs
def test_bad_inputs_name_the_argument():
    x, y, g = _cells_problem(n=120, d=3, seed=0)
    logits = torch.zeros(120, 2)
    w0 = torch.zeros(2, 3)
    cases = [
        (lambda: dfr_head(x, y, torch.where(y == 1, 0, g)), "groups: the \\(group, class\\) cells"),
        (lambda: dfr_head(x, y, g, C_grid=()), "C_grid is empty"),
        (lambda: dfr_head(x, y, g, C_grid=(1.0, -0.1)), "C_grid must hold finite values > 0"),
        (lambda: dfr_head(x, y, g, C_grid=(0.0,)), "C_grid must hold finite values > 0"),
        (lambda: dfr_head(x, y[:-1], g), "targets must be a 1-D tensor of 120"),
        (lambda: dfr_head(x, y, g[:-1]), "groups must be a 1-D tensor of 120"),
        (lambda: dfr_head(x, y, g, num_subsamples=0), "num_subsamples must be >= 1"),
        (lambda: dfr_head(x, y, g, solver="lbfgs"), "solver must be 'liblinear'"),
        (lambda: dfr_head(x, y, selection_metric="worst_group"), "selection_metric='worst_group' needs group"),
        (lambda: dfr_head(x, y, g, selection_metric="mean"), "selection_metric must be"),
        (lambda: dfr_head(x, y, g, selection_fraction=1.0), "selection_fraction must be in \\(0, 1\\)"),
        (lambda: dfr_head(x, y, g, selection_features=x), "pass both selection_features and selection_targets"),
        (lambda: dfr_head(x, y, g, selection_features=x[:, :2], selection_targets=y), "selection_features has 2"),
        (lambda: dfr_head(x, y, g, selection_features=x, selection_targets=y[:5]), "selection_targets must be"),
        (lambda: afr_head(x, y, logits, gamma_grid=(1.0, -1.0)), "gamma_grid must hold finite values >= 0"),
        (lambda: afr_head(x, y, logits, gamma_grid=()), "gamma_grid is empty"),
        (lambda: afr_head(x, y, logits, l2=-1.0), "l2 must hold finite values >= 0"),
        (lambda: afr_head(x, y, logits[:-1]), "erm_logits has 119 rows"),
        (lambda: afr_head(x, y, torch.zeros(120, 3), init_weight=w0), "erm_logits has 3 columns"),
        (lambda: afr_head(x, y[:-1], logits), "targets must be a 1-D tensor of 120"),
        (lambda: afr_head(x, y, logits, g[:-1]), "groups must be a 1-D tensor of 120"),
        (lambda: afr_head(x, y), "pass erm_logits"),
        (lambda: afr_head(x, y, init_weight=torch.zeros(2, 4)), "init_weight must have shape \\(K, 3\\)"),
        (lambda: afr_head(x, y, init_weight=w0, init_bias=torch.zeros(3)), "init_bias must have shape \\(2,\\)"),
        (lambda: afr_head(x, y, logits, class_balance="equal"), "class_balance must be"),
        (lambda: afr_weights(logits, y, -0.5), "gamma must hold finite values >= 0"),
        (lambda: afr_weights(logits, y[:3], 1.0), "targets must be a 1-D tensor of 120"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
    one = torch.tensor([0, 0, 1, 1, 1, 1])
    with pytest.raises(ValueError, match="single sample"):
        dfr_head(torch.randn(6, 2).double(), one, torch.tensor([0, 1, 0, 0, 1, 1]), C_grid=(1.0, 0.1))


def test_afr_warns_when_not_converged():
    x, y = _overlapping(n=100, seed=2)
    with pytest.warns(UserWarning, match="did not reach the gradient tolerance"):
        afr_head(x, y, init_weight=torch.zeros(3, 3), gamma_grid=1.0, l2=0.0, max_iter=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        afr_head(x, y, init_weight=torch.zeros(3, 3), gamma_grid=1.0, l2=0.01)


# ------------------------------------------------------------------------------------------ module
def test_doctests():
    result = run_doctests(gll)
    assert result.attempted >= 4 and result.failed == 0


def test_module_does_not_import_lightning():
    for source in package_sources(gll):  # every module of the group_last_layer package
        names = imported_modules(source)
        assert not any(name.split(".")[0] in {"lightning", "pytorch_lightning"} for name in names)


def test_grid_order_and_ties_pick_first():
    assert best_index([0.5, 0.7, 0.7, 0.1]) == 1


# ------------------------------------------------------------------------------------------ retrain_last_layer modes
def test_retrain_last_layer_modes_dfr_and_afr():
    from lightning_autobalance.last_layer import LastLayerRetraining, extract_features, retrain_last_layer

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2)).double()
    x_in = torch.randn(240, 4, dtype=torch.float64)
    y = (x_in[:, 0] > 0).long()
    g = torch.where(torch.rand(240) < 0.8, y, 1 - y)
    loader = [(x_in[:120], y[:120], g[:120]), (x_in[120:], y[120:], g[120:])]
    feats = extract_features(net, loader, head="2")

    options = {"C_grid": (1.0, 0.1), "num_subsamples": 2}
    report = retrain_last_layer(net, loader, "dfr", head="2", group_head=options, seed=4)
    weight, bias, ref = dfr_head(feats.features.double(), feats.targets, feats.groups, seed=4, **options)
    torch.testing.assert_close(net[2].weight.detach(), weight.float().double())
    torch.testing.assert_close(net[2].bias.detach(), bias.float().double())
    assert report.mode == "dfr" and report.loss == "ce" and report["llr/dfr/C"] == ref.params["C"]
    assert "llr/dfr/selection_score" in report and "llr/retrain/worst_group_error" in report
    assert report.weights.shape == (240,)

    erm_weight, erm_bias = net[2].weight.detach().clone(), net[2].bias.detach().clone()
    report = retrain_last_layer(net, loader, "afr", head="2", group_head={"gamma_grid": (0.0, 2.0), "l2": 0.1})
    weight, bias, ref = afr_head(
        feats.features.double(), feats.targets, None, feats.groups,
        init_weight=erm_weight, init_bias=erm_bias, gamma_grid=(0.0, 2.0), l2=0.1,
    )  # fmt: skip
    torch.testing.assert_close(report.head.weight, weight.float())
    assert report["llr/afr/gamma"] == ref.params["gamma"] and report["llr/afr/l2"] == 0.1
    # Without group labels (use_groups=False): class balancing and worst-class selection.
    report = retrain_last_layer(net, loader, "dfr", head="2", group_head=options, use_groups=False, write_back=False)
    assert "llr/retrain/worst_group_error" not in report

    callback = LastLayerRetraining(mode="afr", head="2", group_head={"gamma_grid": (1.0,)})
    assert callback.mode == "afr" and callback.group_head == {"gamma_grid": (1.0,)}
    with pytest.raises(ValueError, match="mode must be one of"):
        LastLayerRetraining(mode="jtt")
