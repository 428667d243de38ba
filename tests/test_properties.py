"""Property-based tests (hypothesis) of the loss family, the baselines and the metrics: invariance under relabelling
classes and groups, invariance of the presets to scaling all counts, bounds, and finiteness under extreme logits."""

import math
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lightning_autobalance import FocalLoss, LDAMLoss, ParametricCrossEntropy, preset_values
from lightning_autobalance.losses import PRESETS
from lightning_autobalance.metrics import (
    balanced_error,
    class_errors,
    demographic_parity_gap,
    equal_opportunity_gap,
    equalized_odds_gap,
    error,
    group_errors,
    worst_class_error,
    worst_group_error,
)

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
COUNT_PRESETS = [p for p in PRESETS if p != "class_balanced"]  # class_balanced: see its own test


@st.composite
def problems(draw, max_classes=6, max_groups=3, min_classes=2):
    """A small classification batch: K classes, G groups, N samples, a seed for the tensors, and permutations."""
    k = draw(st.integers(min_classes, max_classes))
    g = draw(st.integers(1, max_groups))
    n = draw(st.integers(1, 40))
    return {
        "K": k,
        "G": g,
        "N": n,
        "seed": draw(st.integers(0, 2**31 - 1)),
        "classes": draw(st.permutations(range(k))),
        "groups": draw(st.permutations(range(g))),
    }


def tensors(p, dtype=torch.float64, scale=3.0):
    gen = torch.Generator().manual_seed(p["seed"])
    logits = (torch.randn(p["N"], p["K"], generator=gen) * scale).to(dtype)
    targets = torch.randint(0, p["K"], (p["N"],), generator=gen)
    groups = torch.randint(0, p["G"], (p["N"],), generator=gen)
    return logits, targets, groups, gen


def relabel(p, logits, targets, groups):
    """New class j is old class classes[j], new group h is old group groups[h]."""
    cls, grp = torch.tensor(p["classes"]), torch.tensor(p["groups"])
    return logits[:, cls], torch.argsort(cls)[targets], torch.argsort(grp)[groups], cls, grp


# ---------------------------------------------------------------------------------------------- the loss family
@SETTINGS
@given(problems())
def test_parametric_ce_is_invariant_under_relabelling_classes_and_groups(p):
    logits, targets, groups, gen = tensors(p)
    shape = (p["G"], p["K"])
    values = {
        "delta": torch.rand(shape, generator=gen, dtype=torch.float64) * 1.8 + 0.1,
        "iota": torch.randn(shape, generator=gen, dtype=torch.float64),
        "omega": torch.rand(shape, generator=gen, dtype=torch.float64) * 3 + 0.05,
    }
    loss = ParametricCrossEntropy(p["K"], p["G"], **values).double()
    logits2, targets2, groups2, cls, grp = relabel(p, logits, targets, groups)
    permuted = ParametricCrossEntropy(p["K"], p["G"], **{k: v[grp][:, cls] for k, v in values.items()}).double()
    g1, g2 = (groups, groups2) if p["G"] > 1 else (None, None)
    per_sample = loss(logits, targets, g1, reduction="none")
    torch.testing.assert_close(permuted(logits2, targets2, g2, reduction="none"), per_sample, rtol=1e-12, atol=1e-12)
    assert (per_sample >= 0).all()


@SETTINGS
@given(
    st.lists(st.integers(1, 10_000), min_size=2, max_size=8),
    st.sampled_from(COUNT_PRESETS),
    st.floats(0.01, 1000.0),
    st.floats(0.0, 2.0),
    st.floats(0.0, 1.0),
)
def test_presets_depend_only_on_the_ratios_of_the_counts(counts, preset, factor, tau, gamma):
    base = preset_values(preset, counts, tau=tau, gamma=gamma)
    scaled = preset_values(preset, [c * factor for c in counts], tau=tau, gamma=gamma)
    for kind in ("delta", "iota", "omega"):
        torch.testing.assert_close(scaled[kind], base[kind], rtol=1e-9, atol=1e-9)


@SETTINGS
@given(st.lists(st.integers(1, 10_000), min_size=2, max_size=8), st.floats(0.5, 0.9999), st.floats(0.1, 10.0))
def test_class_balanced_scales_with_the_counts_only_together_with_beta(counts, beta, factor):
    """Effective numbers (1 − β^n)/(1 − β): scaling every count by c is undone by β → β^(1/c) (the docstring)."""
    base = preset_values("class_balanced", counts, beta=beta)
    scaled = preset_values("class_balanced", [c * factor for c in counts], beta=beta ** (1 / factor))
    torch.testing.assert_close(scaled["omega"], base["omega"], rtol=1e-6, atol=1e-9)


@SETTINGS
@given(st.lists(st.integers(1, 10_000), min_size=2, max_size=8), st.sampled_from(PRESETS), st.randoms())
def test_presets_follow_a_permutation_of_the_classes(counts, preset, rnd):
    order = list(range(len(counts)))
    rnd.shuffle(order)
    base = preset_values(preset, counts)
    permuted = preset_values(preset, [counts[i] for i in order])
    for kind in ("delta", "iota", "omega"):
        torch.testing.assert_close(permuted[kind], base[kind][order], rtol=1e-12, atol=1e-12)
        assert torch.isfinite(base[kind]).all()
    assert (base["delta"] > 0).all() and (base["omega"] > 0).all()


@SETTINGS
@given(problems(max_groups=1), st.lists(st.integers(1, 5000), min_size=6, max_size=6), st.floats(0.1, 1000.0))
def test_ldam_is_invariant_under_relabelling_and_scaling_the_counts(p, counts, factor):
    logits, targets, groups, _ = tensors(p)
    counts = counts[: p["K"]]
    loss = LDAMLoss(counts).double()
    per_sample = loss(logits, targets, reduction="none")
    logits2, targets2, _, cls, _ = relabel(p, logits, targets, groups)
    permuted = LDAMLoss([counts[i] for i in cls.tolist()]).double()
    torch.testing.assert_close(permuted(logits2, targets2, reduction="none"), per_sample, rtol=1e-10, atol=1e-10)
    scaled = LDAMLoss([c * factor for c in counts]).double()
    torch.testing.assert_close(scaled(logits, targets, reduction="none"), per_sample, rtol=1e-9, atol=1e-9)
    assert (per_sample >= 0).all()


@SETTINGS
@given(problems(max_groups=1), st.floats(0.0, 5.0))
def test_focal_is_invariant_under_relabelling_and_non_negative(p, gamma):
    logits, targets, groups, gen = tensors(p)
    alpha = torch.rand(p["K"], generator=gen, dtype=torch.float64) + 0.1
    per_sample = FocalLoss(gamma, alpha=alpha).double()(logits, targets, reduction="none")
    logits2, targets2, _, cls, _ = relabel(p, logits, targets, groups)
    permuted = FocalLoss(gamma, alpha=alpha[cls]).double()(logits2, targets2, reduction="none")
    torch.testing.assert_close(permuted, per_sample, rtol=1e-10, atol=1e-12)
    assert (per_sample >= 0).all()


EXTREMES = st.lists(st.sampled_from([-1e4, -1e3, 0.0, 1e3, 1e4]), min_size=2, max_size=6)


def finite_value_and_grad(loss_fn, logits, targets, *args):
    logits = logits.clone().requires_grad_(True)
    value = loss_fn(logits, targets, *args)
    (grad,) = torch.autograd.grad(value, logits)
    return bool(torch.isfinite(value)) and bool(torch.isfinite(grad).all()), value


@settings(SETTINGS, max_examples=20)
@given(st.lists(EXTREMES, min_size=1, max_size=5), st.data())
def test_losses_stay_finite_under_extreme_float32_logits(rows, data):
    k = min(len(r) for r in rows)
    logits = torch.tensor([r[:k] for r in rows], dtype=torch.float32)
    targets = torch.tensor(data.draw(st.lists(st.integers(0, k - 1), min_size=len(rows), max_size=len(rows))))
    counts = data.draw(st.lists(st.integers(1, 5000), min_size=k, max_size=k))
    preset = data.draw(st.sampled_from(PRESETS))
    losses = {
        preset: ParametricCrossEntropy.from_preset(preset, counts, learnable=["delta", "iota", "omega"]),
        "ldam": LDAMLoss(counts),
        "focal": FocalLoss(data.draw(st.sampled_from([0.0, 0.5, 1.0, 2.0, 5.0])), num_classes=k),
    }
    for name, loss_fn in losses.items():
        ok, value = finite_value_and_grad(loss_fn, logits, targets)
        assert ok, (name, logits, targets, value)
        assert float(value.detach()) >= 0, name
    # the hypergradient path too: the loss is differentiable in α at extreme logits
    alpha = losses[preset].hparams()
    grads = torch.autograd.grad(losses[preset](logits, targets), list(alpha.values()), allow_unused=True)
    assert all(g is None or torch.isfinite(g).all() for g in grads)


# ---------------------------------------------------------------------------------------------- metrics
CLASS_METRICS = {
    "error": error,
    "balanced_error": balanced_error,
    "worst_class_error": worst_class_error,
}
GROUP_METRICS = {
    "worst_group_error": worst_group_error,
    "demographic_parity_gap": demographic_parity_gap,
    "equal_opportunity_gap": equal_opportunity_gap,
    "equalized_odds_gap": equalized_odds_gap,
}


def quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():  # absent classes / empty groups are warned about, by design
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def predictions(logits, mode):
    if mode == "labels":
        return logits.argmax(1)
    if mode == "probabilities":
        return logits.softmax(1)
    return logits


@SETTINGS
@given(problems(), st.sampled_from(["logits", "probabilities", "labels"]))
def test_metrics_are_bounded_and_invariant_under_relabelling(p, mode):
    logits, targets, groups, _ = tensors(p, dtype=torch.float32)
    preds = predictions(logits, mode)
    logits2, targets2, groups2, cls, _ = relabel(p, logits, targets, groups)
    preds2 = predictions(logits2, mode)
    kw = {"num_classes": p["K"]}
    for name, fn in CLASS_METRICS.items():
        value = float(quiet(fn, preds, targets, **kw))
        assert 0.0 <= value <= 1.0, (name, value)  # at least one class is present, so never nan
        assert float(quiet(fn, preds2, targets2, **kw)) == pytest.approx(value, abs=1e-6), name
    assert float(quiet(worst_class_error, preds, targets, **kw)) >= float(quiet(balanced_error, preds, targets, **kw))
    per_class, per_class2 = quiet(class_errors, preds, targets, **kw), quiet(class_errors, preds2, targets2, **kw)
    torch.testing.assert_close(per_class2, per_class[cls], equal_nan=True)
    kw = {"num_classes": p["K"], "num_groups": p["G"]}
    for name, fn in GROUP_METRICS.items():
        value = float(quiet(fn, preds, targets, groups, **kw))
        assert math.isnan(value) or 0.0 <= value <= 1.0, (name, value)
        if p["K"] > 2 or name == "worst_group_error":  # binary gaps are about class 1 only: no class symmetry
            relabelled = float(quiet(fn, preds2, targets2, groups2, **kw))
            assert relabelled == pytest.approx(value, abs=1e-6, nan_ok=True), name
    table = quiet(group_errors, preds, targets, groups, per_class=True, **kw)
    table2 = quiet(group_errors, preds2, targets2, groups2, per_class=True, **kw)
    grp = torch.tensor(p["groups"])
    torch.testing.assert_close(table2, table[grp][:, cls], equal_nan=True)
    finite = table[~torch.isnan(table)]
    assert ((finite >= 0) & (finite <= 1)).all()


@SETTINGS
@given(problems(), st.integers(1, 4))
def test_metrics_do_not_depend_on_how_the_data_is_batched(p, chunks):
    from lightning_autobalance.metrics import BalancedError, EqualizedOddsGap, WorstGroupError

    logits, targets, groups, _ = tensors(p, dtype=torch.float32)
    kw = {"num_classes": p["K"], "num_groups": p["G"]}
    for metric, fn in (
        (BalancedError(num_classes=p["K"]), balanced_error),
        (WorstGroupError(**kw), worst_group_error),
        (EqualizedOddsGap(**kw), equalized_odds_gap),
    ):
        with_groups = fn is not balanced_error
        for part in zip(logits.chunk(chunks), targets.chunk(chunks), groups.chunk(chunks), strict=True):
            metric.update(*(part if with_groups else part[:2]))
        if with_groups:
            expected = quiet(fn, logits, targets, groups, **kw)
        else:
            expected = quiet(fn, logits, targets, num_classes=p["K"])
        assert float(quiet(metric.compute)) == pytest.approx(float(expected), abs=1e-6, nan_ok=True)


@SETTINGS
@given(st.lists(EXTREMES, min_size=1, max_size=6), st.data())
def test_metrics_are_finite_under_extreme_float32_logits(rows, data):
    k = min(len(r) for r in rows)
    logits = torch.tensor([r[:k] for r in rows], dtype=torch.float32)
    targets = torch.tensor(data.draw(st.lists(st.integers(0, k - 1), min_size=len(rows), max_size=len(rows))))
    for name, fn in CLASS_METRICS.items():
        value = float(quiet(fn, logits, targets, num_classes=k))
        assert 0.0 <= value <= 1.0, (name, value)
        assert value == float(quiet(fn, logits.softmax(1), targets, num_classes=k)), name  # same argmax
