"""Tests for lightning_autobalance.metrics against scikit-learn / fairlearn references."""

from __future__ import annotations

import doctest
import itertools
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache, cached_property
from typing import Any

import numpy as np
import pytest
import torch
from fairlearn.metrics import (
    MetricFrame,
    demographic_parity_difference,
    equal_opportunity_difference,
    equalized_odds_difference,
    false_positive_rate,
    selection_rate,
    true_positive_rate,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, recall_score

import lightning_autobalance.metrics as M
from lightning_autobalance.metrics.counts import confusion_counts
from tests.conftest import run_doctests

# --------------------------------------------------------------------------------------------------------
# Random data
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    seed: int
    k: int
    g: int
    scenario: str  # plain | empty_group | absent_class | small

    @property
    def id(self) -> str:
        return f"s{self.seed}-K{self.k}-G{self.g}-{self.scenario}"


@dataclass(eq=False)  # hashable by identity, for the reference caches
class Data:
    logits: torch.Tensor
    target: torch.Tensor
    groups: torch.Tensor
    k: int
    g: int
    y: np.ndarray = field(init=False)
    p: np.ndarray = field(init=False)
    s: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.y = self.target.numpy()
        self.p = self.logits.argmax(1).numpy()
        self.s = self.groups.numpy()

    @cached_property
    def labels(self) -> torch.Tensor:
        return self.logits.argmax(1)

    @cached_property
    def probs(self) -> torch.Tensor:
        return self.logits.softmax(1)


def make_data(seed: int, k: int, g: int, scenario: str = "plain", n: int | None = None, balanced: bool = False) -> Data:
    rng = np.random.default_rng(1000 * seed + 10 * k + g)
    if n is None:
        n = int(rng.integers(6, 16)) if scenario == "small" else int(rng.integers(60, 160))
    classes = np.arange(k)
    if scenario == "absent_class":
        classes = np.delete(classes, rng.integers(k))  # one class never appears in the targets
    present_groups = np.arange(g)
    if scenario == "empty_group" and g > 1:
        present_groups = np.delete(present_groups, rng.integers(g))  # one group never appears
    class_p = rng.dirichlet(np.ones(len(classes)) * (100.0 if balanced else 1.0))  # imbalanced by default
    group_p = rng.dirichlet(np.ones(len(present_groups)) * (100.0 if balanced else 1.0))
    target = rng.choice(classes, size=n, p=class_p)
    groups = rng.choice(present_groups, size=n, p=group_p)
    # logits that are informative but noisy, with a group-dependent bias towards class 0
    logits = rng.normal(size=(n, k)) * 1.5 + 1.2 * np.eye(k)[target]
    logits[:, 0] += 0.4 * groups
    return Data(
        logits=torch.tensor(logits, dtype=torch.float32),
        target=torch.tensor(target, dtype=torch.long),
        groups=torch.tensor(groups, dtype=torch.long),
        k=k,
        g=g,
    )


CASES = [
    Case(seed, k, g, scenario)
    for seed in (0, 1)
    for k in (2, 3, 5)
    for g in (1, 2, 4)
    for scenario in ("plain", "empty_group", "absent_class", "small")
    if not (scenario == "empty_group" and g == 1)
]


@cache
def data_for(case: Case) -> Data:
    return make_data(case.seed, case.k, case.g, case.scenario)


# --------------------------------------------------------------------------------------------------------
# Independent references (numpy / scikit-learn / fairlearn)
# --------------------------------------------------------------------------------------------------------


def _quiet(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def _nanmax(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=float)
    return float("nan") if np.all(np.isnan(x)) else float(np.nanmax(x))


def _nanmean(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=float)
    return float("nan") if np.all(np.isnan(x)) else float(np.nanmean(x))


@cache
def ref_balanced_error(d: Data) -> float:
    return 1.0 - _quiet(balanced_accuracy_score, d.y, d.p)


@cache
def ref_class_errors(d: Data) -> np.ndarray:
    recall = _quiet(recall_score, d.y, d.p, labels=np.arange(d.k), average=None, zero_division=np.nan)
    return 1.0 - recall


def ref_worst_class_error(d: Data) -> float:
    return _nanmax(ref_class_errors(d))


@cache
def ref_group_errors(d: Data) -> np.ndarray:
    out = np.full(d.g, np.nan)
    by_group = MetricFrame(metrics=accuracy_score, y_true=d.y, y_pred=d.p, sensitive_features=d.s).by_group
    for group, acc in by_group.items():
        out[int(group)] = 1.0 - acc
    return out


@cache
def ref_group_class_errors(d: Data) -> np.ndarray:
    out = np.full((d.g, d.k), np.nan)
    for group in range(d.g):
        mask = d.s == group
        if mask.any():
            cm = confusion_matrix(d.y[mask], d.p[mask], labels=np.arange(d.k))
            with np.errstate(invalid="ignore", divide="ignore"):
                out[group] = 1.0 - np.diag(cm) / cm.sum(1)
    return out


def ref_worst_group_error(d: Data, over: str = "class_group") -> float:
    return _nanmax(ref_group_class_errors(d) if over == "class_group" else ref_group_errors(d))


def _positive_classes(k: int) -> list[int]:
    return [1] if k == 2 else list(range(k))


@cache
def _class_gaps(d: Data, c: int) -> dict[str, float]:
    """fairlearn's by-group rates for class c (one-vs-rest), max − min over the groups where defined.

    The selection rate is defined in every present group, the TPR in groups with a sample of class c, the
    FPR in groups with a sample of another class (fairlearn reports 0 for an undefined rate instead).
    """
    yb, pb = (d.y == c).astype(int), (d.p == c).astype(int)
    frame = MetricFrame(
        metrics={"selection": selection_rate, "tpr": true_positive_rate, "fpr": false_positive_rate},
        y_true=yb,
        y_pred=pb,
        sensitive_features=d.s,
    ).by_group
    gaps = {}
    for name in ("selection", "tpr", "fpr"):
        rates = []
        for group, rate in frame[name].items():
            y_group = yb[d.s == group]
            if (name == "tpr" and not y_group.any()) or (name == "fpr" and y_group.all()):
                continue
            rates.append(rate)
        gaps[name] = max(rates) - min(rates) if rates else float("nan")
    return gaps


def _reduce(gaps: list[float], reduction: str) -> float:
    return _nanmax(np.array(gaps)) if reduction == "max" else _nanmean(np.array(gaps))


def ref_dp_gap(d: Data, reduction: str = "max") -> float:
    return _reduce([_class_gaps(d, c)["selection"] for c in _positive_classes(d.k)], reduction)


def ref_eopp_gap(d: Data, reduction: str = "max") -> float:
    return _reduce([_class_gaps(d, c)["tpr"] for c in _positive_classes(d.k)], reduction)


def ref_eodds_gap(d: Data, reduction: str = "max") -> float:
    gaps = [np.fmax(_class_gaps(d, c)["tpr"], _class_gaps(d, c)["fpr"]) for c in _positive_classes(d.k)]
    return _reduce(gaps, reduction)


# --------------------------------------------------------------------------------------------------------
# Metric table
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    name: str
    cls: type[M.GroupConfusionMetric]
    fn: Callable[..., torch.Tensor]
    ref: Callable[[Data], Any]
    kwargs: tuple[tuple[str, Any], ...] = ()


def gap_specs(name: str, cls: type[M.GroupConfusionMetric], fn: Callable[..., torch.Tensor], ref: Callable) -> list:
    """A fairness gap twice: its default maximum over the positive classes and, with ``reduction="mean"``, the mean."""
    return [
        Spec(f"{name}_max", cls, fn, ref),
        Spec(f"{name}_mean", cls, fn, lambda d: ref(d, "mean"), (("reduction", "mean"),)),
    ]


SPECS = [
    Spec("balanced_error", M.BalancedError, M.balanced_error, ref_balanced_error),
    Spec("class_errors", M.ClassErrors, M.class_errors, ref_class_errors),
    Spec("worst_class_error", M.WorstClassError, M.worst_class_error, ref_worst_class_error),
    Spec("group_errors", M.GroupErrors, M.group_errors, ref_group_errors),
    Spec(
        "group_errors_per_class",
        M.GroupErrors,
        M.group_errors,
        ref_group_class_errors,
        (("per_class", True),),
    ),
    Spec("worst_group_error", M.WorstGroupError, M.worst_group_error, ref_worst_group_error),
    Spec(
        "worst_group_error_over_group",
        M.WorstGroupError,
        M.worst_group_error,
        lambda d: ref_worst_group_error(d, "group"),
        (("over", "group"),),
    ),
    *gap_specs("dp_gap", M.DemographicParityGap, M.demographic_parity_gap, ref_dp_gap),
    *gap_specs("eopp_gap", M.EqualOpportunityGap, M.equal_opportunity_gap, ref_eopp_gap),
    *gap_specs("eodds_gap", M.EqualizedOddsGap, M.equalized_odds_gap, ref_eodds_gap),
]


def assert_matches(actual: torch.Tensor, expected: Any) -> None:
    expected_t = torch.as_tensor(np.asarray(expected, dtype=np.float64))
    actual_t = actual.double().reshape(expected_t.shape)  # torchmetrics squeezes (1,) results
    torch.testing.assert_close(actual_t, expected_t, rtol=0, atol=1e-6, equal_nan=True)


def chunks(n: int) -> list[slice]:
    """Three unequal chunks (the first may be empty)."""
    a, b = n // 5, n // 2
    return [slice(0, a), slice(a, b), slice(b, n)]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_matches_reference(spec: Spec, case: Case) -> None:
    d = data_for(case)
    expected = spec.ref(d)
    kwargs = dict(spec.kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # functional twin, on labels and on logits
        for preds in (d.labels, d.logits):
            value = spec.fn(preds, d.target, d.groups, num_classes=d.k, num_groups=d.g, **kwargs)
            assert_matches(value, expected)
        # class form, several update calls on chunks given as logits, probabilities and labels
        metric = spec.cls(num_classes=d.k, num_groups=d.g, **kwargs)
        for sl, preds in zip(chunks(len(d.target)), (d.logits, d.probs, d.labels), strict=True):
            metric.update(preds[sl], d.target[sl], d.groups[sl])
        assert_matches(metric.compute(), expected)


@pytest.mark.parametrize("case", [c for c in CASES if c.seed == 1], ids=lambda c: c.id)
def test_logits_probabilities_labels_agree(case: Case) -> None:
    d = data_for(case)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for spec in SPECS:
            kwargs = dict(spec.kwargs)
            values = []
            for preds in (d.logits, d.probs, d.labels):
                values.append(spec.fn(preds, d.target, d.groups, num_classes=d.k, num_groups=d.g, **kwargs))
                metric = spec.cls(num_classes=d.k, num_groups=d.g, **kwargs)
                metric.update(preds, d.target, d.groups)
                values.append(metric.compute().reshape(values[0].shape))
            for value in values[1:]:
                torch.testing.assert_close(value, values[0], equal_nan=True, rtol=0, atol=0)


# --------------------------------------------------------------------------------------------------------
# Direct comparisons with fairlearn's own fairness functions (binary, where fairlearn is defined)
# --------------------------------------------------------------------------------------------------------


def _all_rates_defined(d: Data) -> bool:
    for group in np.unique(d.s):
        y = d.y[d.s == group]
        if not ((y == 1).any() and (y == 0).any()):
            return False
    return True


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("g", [1, 2, 3, 4])
def test_binary_equals_fairlearn_functions(seed: int, g: int) -> None:
    d = make_data(seed, 2, g, "empty_group" if seed % 2 else "plain", n=200, balanced=True)
    assert _all_rates_defined(d)  # otherwise fairlearn counts an undefined rate as 0 (see convention test)
    sf = {"sensitive_features": d.s}
    args = (d.labels, d.target, d.groups)
    kw = {"num_classes": 2, "num_groups": g}
    assert_matches(M.demographic_parity_gap(*args, **kw), demographic_parity_difference(d.y, d.p, **sf))
    assert_matches(M.equal_opportunity_gap(*args, **kw), equal_opportunity_difference(d.y, d.p, **sf))
    assert_matches(M.equalized_odds_gap(*args, **kw), equalized_odds_difference(d.y, d.p, **sf))
    # reduction is irrelevant for binary tasks
    assert_matches(M.equal_opportunity_gap(*args, **kw, reduction="mean"), equal_opportunity_difference(d.y, d.p, **sf))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("k", [3, 4])
def test_multiclass_one_vs_rest_equals_fairlearn_functions(seed: int, k: int) -> None:
    d = make_data(seed, k, 3, "plain", n=400, balanced=True)
    args = (d.labels, d.target, d.groups)
    kw = {"num_classes": k, "num_groups": 3}
    per_class: dict[str, list[float]] = {"dp": [], "eopp": [], "eodds": []}
    for c in range(k):
        yb, pb = (d.y == c).astype(int), (d.p == c).astype(int)
        for group in range(3):  # every rate is defined, so fairlearn's functions apply as they are
            assert yb[d.s == group].any() and not yb[d.s == group].all()
        per_class["dp"].append(demographic_parity_difference(yb, pb, sensitive_features=d.s))
        per_class["eopp"].append(equal_opportunity_difference(yb, pb, sensitive_features=d.s))
        per_class["eodds"].append(equalized_odds_difference(yb, pb, sensitive_features=d.s))
    for name, fn in (
        ("dp", M.demographic_parity_gap),
        ("eopp", M.equal_opportunity_gap),
        ("eodds", M.equalized_odds_gap),
    ):
        assert_matches(fn(*args, **kw), max(per_class[name]))
        assert_matches(fn(*args, **kw, reduction="mean"), np.mean(per_class[name]))


# --------------------------------------------------------------------------------------------------------
# Conventions, checked by hand
# --------------------------------------------------------------------------------------------------------


def test_zero_denominator_groups_are_excluded_by_hand() -> None:
    # group 0: targets 1,1,0,0 preds 1,0,1,0 -> TPR 1/2, FPR 1/2, selection 2/4
    # group 1: targets 0,0,0   preds 1,0,0   -> TPR undefined (no positive), FPR 1/3, selection 1/3
    # group 2: targets 1,1     preds 1,1     -> TPR 1, FPR undefined (no negative), selection 1
    target = torch.tensor([1, 1, 0, 0, 0, 0, 0, 1, 1])
    preds = torch.tensor([1, 0, 1, 0, 1, 0, 0, 1, 1])
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 2])
    kw = {"num_classes": 2, "num_groups": 4}  # group 3 is empty: ignored
    assert M.demographic_parity_gap(preds, target, groups, **kw).item() == pytest.approx(1 - 1 / 3)
    assert M.equal_opportunity_gap(preds, target, groups, **kw).item() == pytest.approx(1 - 1 / 2)
    # TPR gap over groups {0, 2} = 1/2, FPR gap over groups {0, 1} = 1/2 - 1/3
    assert M.equalized_odds_gap(preds, target, groups, **kw).item() == pytest.approx(1 / 2)
    # fairlearn counts the undefined TPR of group 1 as 0 (and the FPR of group 2 as 0), a different value:
    y, p, s = target.numpy(), preds.numpy(), groups.numpy()
    assert equal_opportunity_difference(y, p, sensitive_features=s) == pytest.approx(1.0)
    assert equalized_odds_difference(y, p, sensitive_features=s) == pytest.approx(1.0)


def test_multiclass_undefined_class_is_dropped_from_reduction_by_hand() -> None:
    # K=3, class 2 never in the targets: its TPR gap is undefined and left out of the mean.
    # class 0: group 0 TPR 1 (1/1), group 1 TPR 0 (0/1) -> gap 1
    # class 1: group 0 TPR 1/2,     group 1 TPR 1 (1/1) -> gap 1/2
    target = torch.tensor([0, 1, 1, 0, 1])
    preds = torch.tensor([0, 1, 2, 1, 1])
    groups = torch.tensor([0, 0, 0, 1, 1])
    kw = {"num_classes": 3, "num_groups": 2}
    assert M.equal_opportunity_gap(preds, target, groups, **kw).item() == pytest.approx(1.0)
    assert M.equal_opportunity_gap(preds, target, groups, **kw, reduction="mean").item() == pytest.approx(0.75)
    # selection rates: class 0: 1/3 vs 0; class 1: 1/3 vs 1; class 2: 1/3 vs 0 -> gaps 1/3, 2/3, 1/3
    assert M.demographic_parity_gap(preds, target, groups, **kw).item() == pytest.approx(2 / 3)
    mean = M.demographic_parity_gap(preds, target, groups, **kw, reduction="mean").item()
    assert mean == pytest.approx((1 / 3 + 2 / 3 + 1 / 3) / 3)


def test_single_group_gaps_are_zero() -> None:
    d = make_data(3, 4, 1)
    for fn in (M.demographic_parity_gap, M.equal_opportunity_gap, M.equalized_odds_gap):
        assert fn(d.logits, d.target, num_classes=4).item() == 0.0


def test_absent_class_follows_sklearn_and_warns() -> None:
    target = torch.tensor([0, 0, 1, 1, 1])
    preds = torch.tensor([0, 2, 1, 1, 0])  # class 2 predicted but never true
    with pytest.warns(UserWarning, match=r"classes \[2\] have no samples in target"):
        value = M.balanced_error(preds, target, num_classes=3)
    with pytest.warns(UserWarning, match="y_pred contains classes not in y_true"):
        expected = 1 - balanced_accuracy_score(target.numpy(), preds.numpy())
    assert value.item() == pytest.approx(expected)
    assert value.item() == pytest.approx(1 - (1 / 2 + 2 / 3) / 2)
    with pytest.warns(UserWarning, match=r"classes \[2\]"):
        errors = M.class_errors(preds, target, num_classes=3)
    assert torch.isnan(errors[2]) and errors[:2].tolist() == pytest.approx([1 / 2, 1 / 3])
    metric = M.WorstClassError(num_classes=3)
    metric.update(preds, target)
    with pytest.warns(UserWarning, match=r"classes \[2\]"):
        assert metric.compute().item() == pytest.approx(1 / 2)


def test_no_warning_when_all_classes_present() -> None:
    d = make_data(0, 3, 2, n=100)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        M.balanced_error(d.logits, d.target, d.groups, num_classes=3, num_groups=2)
        M.worst_group_error(d.logits, d.target, d.groups, num_classes=3, num_groups=2)


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric")
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_empty_metric_is_nan_with_warning(spec: Spec) -> None:
    kwargs = dict(spec.kwargs)
    metric = spec.cls(num_classes=3, num_groups=2, **kwargs)
    with pytest.warns(UserWarning, match="no samples were counted"):
        value = metric.compute()
    assert torch.isnan(value).all()
    empty_preds, empty_target = torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)
    with pytest.warns(UserWarning, match="no samples were counted"):
        value = spec.fn(empty_preds, empty_target, num_classes=3, num_groups=2, **kwargs)
    assert torch.isnan(value).all()
    expected_shape = {"class_errors": (3,), "group_errors": (2,), "group_errors_per_class": (2, 3)}
    assert value.shape == expected_shape.get(spec.name, ())


def test_empty_update_is_a_no_op() -> None:
    d = make_data(1, 3, 2)
    metric = M.BalancedError(num_classes=3, num_groups=2)
    metric.update(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))
    metric.update(d.logits, d.target, d.groups)
    assert_matches(metric.compute(), ref_balanced_error(d))


def test_worst_group_defaults_to_class_group_cell() -> None:
    preds = torch.tensor([0, 1, 1, 1, 2, 0])
    target = torch.tensor([0, 0, 1, 1, 2, 2])
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    kw = {"num_classes": 3, "num_groups": 2}
    assert M.worst_group_error(preds, target, groups, **kw).item() == pytest.approx(1 / 2)
    assert M.worst_group_error(preds, target, groups, **kw, over="group").item() == pytest.approx(1 / 3)
    assert M.WorstGroupError(**kw).over == "class_group"
    # with one group the worst (class, group) cell is the worst class
    d = make_data(2, 4, 1)
    assert_matches(M.worst_group_error(d.logits, d.target, num_classes=4), ref_worst_class_error(d))


def test_groups_none_means_group_zero() -> None:
    d = make_data(4, 3, 1)
    zeros = torch.zeros_like(d.target)
    for spec in SPECS:
        kwargs = dict(spec.kwargs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            a = spec.fn(d.logits, d.target, num_classes=3, num_groups=2, **kwargs)
            b = spec.fn(d.logits, d.target, zeros, num_classes=3, num_groups=2, **kwargs)
        torch.testing.assert_close(a, b, equal_nan=True)


# --------------------------------------------------------------------------------------------------------
# State, counting and torchmetrics conventions
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", [c for c in CASES if c.seed == 0], ids=lambda c: c.id)
def test_counts_equal_sklearn_confusion_matrix(case: Case) -> None:
    d = data_for(case)
    metric = M.GroupConfusionMetric(num_classes=d.k, num_groups=d.g)
    for sl in chunks(len(d.target)):
        metric.update(d.logits[sl], d.target[sl], d.groups[sl])
    counts = metric.compute()
    assert counts.dtype == torch.long and counts.shape == (d.g, d.k, d.k)
    for group in range(d.g):
        mask = d.s == group
        expected = confusion_matrix(d.y[mask], d.p[mask], labels=np.arange(d.k)) if mask.any() else 0
        np.testing.assert_array_equal(counts[group].numpy(), expected)
    functional = confusion_counts(d.labels, d.target, d.groups, d.k, d.g)
    torch.testing.assert_close(functional, counts)


def test_state_and_metric_attributes() -> None:
    for spec in SPECS:
        metric = spec.cls(num_classes=4, num_groups=3, **dict(spec.kwargs))
        assert isinstance(metric, M.GroupConfusionMetric)
        assert list(metric._defaults) == ["counts"]  # exactly one state
        assert metric._reductions["counts"] is not None
        assert metric._defaults["counts"].dtype == torch.long
        assert metric._defaults["counts"].shape == (3, 4, 4)
        assert metric.full_state_update is False
        assert metric.higher_is_better is False
        assert metric.is_differentiable is False
    # sum reduction across processes: the reduction function applied to stacked states sums them
    metric = M.BalancedError(num_classes=2)
    stacked = torch.stack([torch.ones(1, 2, 2, dtype=torch.long), 2 * torch.ones(1, 2, 2, dtype=torch.long)])
    torch.testing.assert_close(metric._reductions["counts"](stacked), 3 * torch.ones(1, 2, 2, dtype=torch.long))


def test_reset_and_forward() -> None:
    d = make_data(5, 3, 2, n=120)
    metric = M.BalancedError(num_classes=3, num_groups=2)
    first = make_data(6, 3, 2, n=50)
    metric.update(first.logits, first.target, first.groups)
    metric.reset()
    assert int(metric.counts.sum()) == 0
    batch_value = metric(d.logits[:60], d.target[:60], d.groups[:60])  # forward: value on the batch only
    head = Data(logits=d.logits[:60], target=d.target[:60], groups=d.groups[:60], k=3, g=2)
    assert_matches(batch_value, ref_balanced_error(head))
    metric(d.logits[60:], d.target[60:], d.groups[60:])
    assert_matches(metric.compute(), ref_balanced_error(d))


def test_accepts_lists_and_numpy() -> None:
    target, preds, groups = [0, 1, 1, 0], np.array([0, 1, 0, 0]), [0, 0, 1, 1]
    value = M.group_errors(preds, target, groups, num_classes=2, num_groups=2)
    torch.testing.assert_close(value, torch.tensor([0.0, 0.5]))


def test_int32_and_bool_inputs() -> None:
    target = torch.tensor([0, 1, 1, 0], dtype=torch.int32)
    preds = torch.tensor([False, True, False, False])
    value = M.balanced_error(preds, target, torch.tensor([0, 0, 1, 1], dtype=torch.uint8), num_classes=2, num_groups=2)
    assert value.item() == pytest.approx(0.25)


@settings(max_examples=40, deadline=None)
@given(
    data=st.data(),
    k=st.integers(2, 4),
    g=st.integers(1, 3),
    n=st.integers(1, 40),
)
def test_chunked_updates_equal_functional(data: st.DataObject, k: int, g: int, n: int) -> None:
    target = torch.tensor(data.draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n)))
    preds = torch.tensor(data.draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n)))
    groups = torch.tensor(data.draw(st.lists(st.integers(0, g - 1), min_size=n, max_size=n)))
    cuts = sorted(data.draw(st.lists(st.integers(0, n), max_size=4)))
    bounds = [0, *cuts, n]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for spec in SPECS:
            kwargs = dict(spec.kwargs)
            metric = spec.cls(num_classes=k, num_groups=g, **kwargs)
            for a, b in itertools.pairwise(bounds):
                metric.update(preds[a:b], target[a:b], groups[a:b])
            expected = spec.fn(preds, target, groups, num_classes=k, num_groups=g, **kwargs)
            torch.testing.assert_close(metric.compute().reshape(expected.shape), expected, equal_nan=True)
            if spec.name in ("class_errors", "group_errors", "group_errors_per_class"):
                continue
            value = expected.item()
            assert np.isnan(value) or 0.0 <= value <= 1.0


# --------------------------------------------------------------------------------------------------------
# Bad inputs
# --------------------------------------------------------------------------------------------------------

T = torch.tensor
GOOD_TARGET = T([0, 1, 2, 1, 0])
GOOD_GROUPS = T([0, 1, 0, 1, 0])

BAD_UPDATES = [
    pytest.param(
        {"num_classes": 10},
        (torch.randn(5, 3), GOOD_TARGET, None),
        r"num_classes=10 but preds have 3 columns: pass num_classes=3 or preds with 10 columns",
        id="float-preds-wrong-columns",
    ),
    pytest.param(
        {},
        (torch.randn(5, 3), T([0, 1, 2, 1]), None),
        r"target has 4 elements but preds have 5 rows",
        id="target-length",
    ),
    pytest.param(
        {"num_groups": 2},
        (T([0, 1, 2, 1, 0]), GOOD_TARGET, T([0, 1, 0, 1])),
        r"groups has 4 elements but preds have 5 rows",
        id="groups-length",
    ),
    pytest.param(
        {},
        (T([0, 1, 2, 1, 0]), T([0, 1, 3, 1, 0]), None),
        r"target contains the label 3, outside \[0, num_classes=3\): pass num_classes=4",
        id="target-too-large",
    ),
    pytest.param(
        {},
        (T([0, 1, 2, 1, 0]), T([0, -1, 2, 1, 0]), None),
        r"target contains the label -1, outside \[0, num_classes=3\)",
        id="target-negative",
    ),
    pytest.param(
        {},
        (T([0, 1, 7, 1, 0]), GOOD_TARGET, None),
        r"preds contains the label 7, outside \[0, num_classes=3\): pass num_classes=8",
        id="pred-label-too-large",
    ),
    pytest.param(
        {},
        (T([0, 1, -2, 1, 0]), GOOD_TARGET, None),
        r"preds contains the label -2",
        id="pred-label-negative",
    ),
    pytest.param(
        {"num_groups": 2},
        (T([0, 1, 2, 1, 0]), GOOD_TARGET, T([0, 1, 2, 1, 0])),
        r"groups contains the group index 2, outside \[0, num_groups=2\): pass num_groups=3",
        id="group-too-large",
    ),
    pytest.param(
        {},
        (T([0, 1, 2, 1, 0]), GOOD_TARGET, T([0, 0, 1, 0, 0])),
        r"groups contains the group index 1, outside \[0, num_groups=1\): pass num_groups=2",
        id="group-with-default-num-groups",
    ),
    pytest.param(
        {"num_groups": 2},
        (T([0, 1, 2, 1, 0]), GOOD_TARGET, T([0, -3, 1, 1, 0])),
        r"groups contains the group index -3",
        id="group-negative",
    ),
    pytest.param(
        {},
        (T([0, 1, 2, 1, 0]), GOOD_TARGET.float(), None),
        r"target must hold integer indices, got dtype torch.float32",
        id="float-target",
    ),
    pytest.param(
        {},
        (T([0, 1, 2, 1, 0]), GOOD_TARGET.reshape(5, 1), None),
        r"target must have shape \(N,\), got shape \(5, 1\)",
        id="2d-target",
    ),
    pytest.param(
        {"num_groups": 2},
        (T([0, 1, 2, 1, 0]), GOOD_TARGET, GOOD_GROUPS.float()),
        r"groups must hold integer indices, got dtype torch.float32",
        id="float-groups",
    ),
    pytest.param(
        {},
        (torch.rand(5), GOOD_TARGET, None),
        r"float preds must be logits or probabilities of shape \(N, num_classes\), got shape \(5,\)",
        id="1d-float-preds",
    ),
    pytest.param(
        {},
        (torch.zeros(5, 3, dtype=torch.long), GOOD_TARGET, None),
        r"integer preds must be class labels of shape \(N,\), got shape \(5, 3\)",
        id="2d-int-preds",
    ),
]


@pytest.mark.parametrize(("ctor", "args", "match"), BAD_UPDATES)
def test_bad_inputs_raise(ctor: dict[str, int], args: tuple[Any, ...], match: str) -> None:
    kw = {"num_classes": 3, "num_groups": 1, **ctor}
    metric = M.BalancedError(**kw)
    with pytest.raises(ValueError, match=match):
        metric.update(*args)
    with pytest.raises(ValueError, match=match):
        M.equalized_odds_gap(*args, **kw)
    with pytest.raises(ValueError, match=match):
        confusion_counts(*args, kw["num_classes"], kw["num_groups"])


def test_validate_args_false_skips_range_checks_only() -> None:
    metric = M.BalancedError(num_classes=3, validate_args=False)
    metric.update(T([0, 1, 2]), T([0, 1, 2]))  # fine
    with pytest.raises(ValueError, match="target has 2 elements"):  # shapes are always checked
        metric.update(T([0, 1, 2]), T([0, 1]))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_classes": 1}, r"num_classes=1 is invalid: pass an integer num_classes >= 2"),
        ({"num_classes": 0}, r"num_classes=0 is invalid"),
        ({"num_classes": 2.0}, r"num_classes=2.0 is invalid"),
        ({"num_classes": 3, "num_groups": 0}, r"num_groups=0 is invalid: pass an integer num_groups >= 1"),
        ({"num_classes": 3, "num_groups": -1}, r"num_groups=-1 is invalid"),
    ],
)
def test_bad_sizes_raise(kwargs: dict[str, Any], match: str) -> None:
    for spec in SPECS:
        with pytest.raises(ValueError, match=match):
            spec.cls(**kwargs, **dict(spec.kwargs))
        with pytest.raises(ValueError, match=match):
            spec.fn(T([0, 1]), T([0, 1]), **kwargs, **dict(spec.kwargs))


def test_bad_reduction_and_over_raise() -> None:
    for cls, fn in (
        (M.DemographicParityGap, M.demographic_parity_gap),
        (M.EqualOpportunityGap, M.equal_opportunity_gap),
        (M.EqualizedOddsGap, M.equalized_odds_gap),
    ):
        with pytest.raises(ValueError, match=r"reduction='sum' is not supported: pass reduction='max'"):
            cls(num_classes=3, reduction="sum")
        with pytest.raises(ValueError, match=r"reduction='sum' is not supported"):
            fn(T([0, 1]), T([0, 1]), num_classes=3, reduction="sum")
    with pytest.raises(ValueError, match=r"over='cell' is not supported: pass over='class_group' or over='group'"):
        M.WorstGroupError(num_classes=3, over="cell")
    with pytest.raises(ValueError, match=r"over='cell' is not supported"):
        M.worst_group_error(T([0, 1]), T([0, 1]), num_classes=3, over="cell")


# --------------------------------------------------------------------------------------------------------
# Docs
# --------------------------------------------------------------------------------------------------------


def test_doctests() -> None:
    result = run_doctests(M, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 40
    assert result.failed == 0


def test_public_api_is_documented() -> None:
    for name in M.__all__:
        obj = getattr(M, name)
        assert obj.__doc__ and ">>>" in obj.__doc__, name


def test_the_metric_names_shared_with_the_objectives_are_aliases_of_the_metric_classes():
    import lightning_autobalance as lab
    from lightning_autobalance import objectives

    assert M.EqualOpportunityGap is M.EqualOpportunityGapMetric
    assert M.EqualizedOddsGap is M.EqualizedOddsGapMetric
    assert lab.EqualOpportunityGap is objectives.EqualOpportunityGap  # the package root's are the objectives
    assert lab.EqualizedOddsGap is objectives.EqualizedOddsGap
