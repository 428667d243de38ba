"""Tests for the group-robustness metric conventions of the field in lightning_autobalance.metrics.

Worst-group accuracy, the DFR / JTT "average accuracy" weighted by the training cell proportions, and the
unweighted mean group accuracy: hand computations from small confusion tables, an independent numpy
implementation of each convention on raw predictions, scikit-learn / fairlearn where they apply, the
functional twins, batch accumulation and bad inputs. (DDP exactness: tests/test_metrics_ddp.py.)
"""

from __future__ import annotations

import doctest
import itertools
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from fairlearn.metrics import MetricFrame
from sklearn.metrics import accuracy_score, balanced_accuracy_score
from torchmetrics import MetricCollection

import lightning_autobalance
import lightning_autobalance.metrics as M

NEW_NAMES = [
    "WorstGroupAccuracy",
    "worst_group_accuracy",
    "WeightedAverageAccuracy",
    "weighted_average_accuracy",
    "MeanGroupAccuracy",
    "mean_group_accuracy",
]

# --------------------------------------------------------------------------------------------------------
# Data written as a confusion table by hand
# --------------------------------------------------------------------------------------------------------


def from_table(cells: dict[tuple[int, int], tuple[int, int]], k: int = 2) -> tuple[torch.Tensor, ...]:
    """Samples from ``{(group, class): (n_correct, n_wrong)}``; a wrong prediction is the next class."""
    preds, target, groups = [], [], []
    for (g, c), (right, wrong) in cells.items():
        preds += [c] * right + [(c + 1) % k] * wrong
        target += [c] * (right + wrong)
        groups += [g] * (right + wrong)
    perm = torch.randperm(len(target), generator=torch.Generator().manual_seed(0))  # order must not matter
    return torch.tensor(preds)[perm], torch.tensor(target)[perm], torch.tensor(groups)[perm]


# Waterbirds-like K=2 classes x G=2 attributes, 20 test samples:
#   cell (g, c)   correct / total   accuracy
#   (0, 0)          5 / 6             5/6
#   (0, 1)          1 / 2             1/2
#   (1, 0)          1 / 4             1/4
#   (1, 1)          7 / 8             7/8
# group 0: 6/8 = 3/4, group 1: 8/12 = 2/3, all: 14/20
TABLE = {(0, 0): (5, 1), (0, 1): (1, 1), (1, 0): (1, 3), (1, 1): (7, 1)}
TRAIN = [[70, 5], [10, 15]]  # training counts per (group, class), 100 samples
KW = {"num_classes": 2, "num_groups": 2}


def test_worst_group_accuracy_by_hand() -> None:
    preds, target, groups = from_table(TABLE)
    assert M.worst_group_accuracy(preds, target, groups, **KW).item() == pytest.approx(1 / 4)
    assert M.worst_group_accuracy(preds, target, groups, **KW, over="group").item() == pytest.approx(2 / 3)
    metric = M.WorstGroupAccuracy(**KW)
    assert metric.over == "class_group"  # the field's group = (class, attribute) cell is the default
    metric.update(preds, target, groups)
    assert metric.compute().item() == pytest.approx(1 / 4)
    # 1 − worst-group error, for both choices of "group"
    for over in ("class_group", "group"):
        wge = M.worst_group_error(preds, target, groups, **KW, over=over)
        torch.testing.assert_close(M.worst_group_accuracy(preds, target, groups, **KW, over=over), 1 - wge)


def test_mean_group_accuracy_by_hand() -> None:
    preds, target, groups = from_table(TABLE)
    # (5/6 + 1/2 + 1/4 + 7/8) / 4 = (20 + 12 + 6 + 21) / 96
    assert M.mean_group_accuracy(preds, target, groups, **KW).item() == pytest.approx(59 / 96)
    assert M.mean_group_accuracy(preds, target, groups, **KW, over="group").item() == pytest.approx((3 / 4 + 2 / 3) / 2)
    metric = M.MeanGroupAccuracy(**KW)
    metric.update(preds, target, groups)
    assert metric.compute().item() == pytest.approx(59 / 96)


def test_weighted_average_accuracy_by_hand() -> None:
    preds, target, groups = from_table(TABLE)
    # 0.70 * 5/6 + 0.05 * 1/2 + 0.10 * 1/4 + 0.15 * 7/8 = (280 + 12 + 12 + 63) / 480
    expected = 367 / 480
    assert M.weighted_average_accuracy(preds, target, groups, **KW, train_cell_counts=TRAIN).item() == pytest.approx(
        expected
    )
    # proportions instead of counts, as a tensor, a list of floats or an int tensor: same value
    for train in (torch.tensor(TRAIN) / 100, [[0.7, 0.05], [0.1, 0.15]], torch.tensor(TRAIN, dtype=torch.int32)):
        metric = M.WeightedAverageAccuracy(**KW, train_cell_counts=train)
        metric.update(preds, target, groups)
        assert metric.compute().item() == pytest.approx(expected)
    # it is neither the test accuracy (14/20) nor the mean group accuracy
    assert expected != pytest.approx(14 / 20)
    assert expected != pytest.approx(59 / 96)


def test_weighted_average_accuracy_differs_from_accuracy_on_group_balanced_test_set() -> None:
    # group-balanced test set, 10 samples per cell, accuracies [[1, 1/2], [1/2, 1]]: test accuracy 3/4
    preds, target, groups = from_table({(0, 0): (10, 0), (0, 1): (5, 5), (1, 0): (5, 5), (1, 1): (10, 0)})
    train = [[90, 10], [10, 90]]  # 90% spurious-aligned training set, 200 samples
    waa = M.weighted_average_accuracy(preds, target, groups, **KW, train_cell_counts=train).item()
    assert waa == pytest.approx(0.45 * 1 + 0.05 * 0.5 + 0.05 * 0.5 + 0.45 * 1)  # 0.95
    assert 1 - M.error(preds, target, groups, **KW).item() == pytest.approx(0.75)
    assert M.mean_group_accuracy(preds, target, groups, **KW).item() == pytest.approx(0.75)
    # weighted by the test cell counts instead, it is the test accuracy
    test_cells = [[10, 10], [10, 10]]
    assert M.weighted_average_accuracy(
        preds, target, groups, **KW, train_cell_counts=test_cells
    ).item() == pytest.approx(0.75)


def test_three_classes_with_empty_cells_by_hand() -> None:
    # K=3, G=2; test cells (0,0) 1/2, (0,1) 1/1, (1,1) 1/1, (1,2) 1/2; cells (0,2) and (1,0) have no test sample
    preds, target = torch.tensor([0, 1, 1, 1, 2, 0]), torch.tensor([0, 0, 1, 1, 2, 2])
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    kw = {"num_classes": 3, "num_groups": 2}
    assert M.worst_group_accuracy(preds, target, groups, **kw).item() == pytest.approx(1 / 2)
    assert M.mean_group_accuracy(preds, target, groups, **kw).item() == pytest.approx(3 / 4)  # empty cells ignored
    # training weight only on tested cells: no warning
    train = [[60, 20, 0], [0, 5, 15]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value = M.weighted_average_accuracy(preds, target, groups, **kw, train_cell_counts=train)
    assert value.item() == pytest.approx(0.60 * 0.5 + 0.20 * 1 + 0.05 * 1 + 0.15 * 0.5)


def test_weighted_cell_without_test_sample_is_dropped_and_renormalised() -> None:
    preds, target = torch.tensor([0, 1, 1, 1, 2, 0]), torch.tensor([0, 0, 1, 1, 2, 2])
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    kw = {"num_classes": 3, "num_groups": 2}
    train = [[50, 20, 10], [10, 5, 5]]  # cells (0, 2) and (1, 0) have weight but no test sample
    # the remaining weights 50, 20, 5, 5 (sum 80) are renormalised
    expected = (50 * 0.5 + 20 * 1 + 5 * 1 + 5 * 0.5) / 80
    with pytest.warns(UserWarning, match=r"cells \[\(0, 2\), \(1, 0\)\] have training weight but no test samples"):
        value = M.weighted_average_accuracy(preds, target, groups, **kw, train_cell_counts=train)
    assert value.item() == pytest.approx(expected)
    metric = M.WeightedAverageAccuracy(**kw, train_cell_counts=train)
    metric.update(preds, target, groups)
    with pytest.warns(UserWarning, match="have training weight but no test samples"):
        assert metric.compute().item() == pytest.approx(expected)
    # no tested cell carries weight: nan with a warning
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = M.weighted_average_accuracy(preds, target, groups, **kw, train_cell_counts=[[0, 0, 1], [1, 0, 0]])
    assert torch.isnan(value)
    assert [str(w.message) for w in caught] == [
        "WeightedAverageAccuracy: no (group, class) cell with positive training weight has test samples; returning nan."
    ]


# --------------------------------------------------------------------------------------------------------
# Independent references on raw predictions (numpy, scikit-learn, fairlearn)
# --------------------------------------------------------------------------------------------------------


@dataclass
class Data:
    logits: torch.Tensor
    target: torch.Tensor
    groups: torch.Tensor
    train_target: np.ndarray
    train_groups: np.ndarray
    k: int
    g: int

    @property
    def y(self) -> np.ndarray:
        return self.target.numpy()

    @property
    def p(self) -> np.ndarray:
        return self.logits.argmax(1).numpy()

    @property
    def s(self) -> np.ndarray:
        return self.groups.numpy()

    @property
    def train_cell_counts(self) -> np.ndarray:
        counts = np.zeros((self.g, self.k), dtype=np.int64)
        np.add.at(counts, (self.train_groups, self.train_target), 1)
        return counts


def make_data(seed: int, k: int, g: int, n: int = 150, drop_cell: bool = False) -> Data:
    """Spurious-correlation data: the training set is mostly aligned (class c with group c mod g)."""
    rng = np.random.default_rng(seed)
    train_target = rng.integers(0, k, 400)
    aligned = rng.random(400) < 0.85
    train_groups = np.where(aligned, train_target % g, rng.integers(0, g, 400))
    target = rng.integers(0, k, n)
    groups = rng.integers(0, g, n)  # the test set is roughly group-balanced
    if drop_cell:  # one (group, class) cell with training weight gets no test sample
        gone = (groups == train_groups[0]) & (target == train_target[0])
        target, groups = target[~gone], groups[~gone]
    logits = rng.normal(size=(len(target), k)) * 1.5 + 1.2 * np.eye(k)[target]
    logits[np.arange(len(target)), groups % k] += 0.8  # the model uses the spurious attribute
    return Data(
        torch.tensor(logits, dtype=torch.float32),
        torch.tensor(target),
        torch.tensor(groups),
        train_target,
        train_groups,
        k,
        g,
    )


def ref_cell_accuracy(d: Data) -> np.ndarray:
    """Test accuracy per (group, class), nan where there is no test sample."""
    out = np.full((d.g, d.k), np.nan)
    for g, c in itertools.product(range(d.g), range(d.k)):
        mask = (d.s == g) & (d.y == c)
        if mask.any():
            out[g, c] = np.mean(d.p[mask] == d.y[mask])
    return out


def ref_weighted_average_accuracy(d: Data) -> float:
    """Σ_cells p_train(cell) · acc_test(cell), straight from the raw training / test labels.

    Cells with training weight but no test sample are left out and the other weights renormalised.
    """
    total, weight = 0.0, 0.0
    for g, c in itertools.product(range(d.g), range(d.k)):
        p_train = np.mean((d.train_groups == g) & (d.train_target == c))
        test = (d.s == g) & (d.y == c)
        if p_train > 0 and test.any():
            total += p_train * np.mean(d.p[test] == d.y[test])
            weight += p_train
    return total / weight


CASES = [(seed, k, g) for seed in range(3) for k, g in ((2, 2), (3, 2), (2, 4), (4, 3))]


@pytest.mark.parametrize(("seed", "k", "g"), CASES)
def test_matches_independent_reference(seed: int, k: int, g: int) -> None:
    d = make_data(seed, k, g)
    kw = {"num_classes": k, "num_groups": g}
    args = (d.logits, d.target, d.groups)
    cells = ref_cell_accuracy(d)
    assert not np.isnan(cells).any()
    waa = M.weighted_average_accuracy(*args, **kw, train_cell_counts=d.train_cell_counts)
    assert waa.item() == pytest.approx(ref_weighted_average_accuracy(d), abs=1e-6)
    assert M.worst_group_accuracy(*args, **kw).item() == pytest.approx(np.min(cells), abs=1e-6)
    assert M.mean_group_accuracy(*args, **kw).item() == pytest.approx(np.mean(cells), abs=1e-6)
    # over="group": fairlearn's per-group accuracy
    by_group = MetricFrame(metrics=accuracy_score, y_true=d.y, y_pred=d.p, sensitive_features=d.s).by_group
    assert M.worst_group_accuracy(*args, **kw, over="group").item() == pytest.approx(by_group.min(), abs=1e-6)
    assert M.mean_group_accuracy(*args, **kw, over="group").item() == pytest.approx(by_group.mean(), abs=1e-6)
    # with the test cell counts as "training" counts the weighted average is the plain test accuracy
    test_cells = np.zeros((g, k), dtype=np.int64)
    np.add.at(test_cells, (d.s, d.y), 1)
    plain = M.weighted_average_accuracy(*args, **kw, train_cell_counts=test_cells)
    assert plain.item() == pytest.approx(accuracy_score(d.y, d.p), abs=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_weighted_reference_with_an_untested_cell(seed: int) -> None:
    d = make_data(seed, 3, 2, drop_cell=True)
    assert np.isnan(ref_cell_accuracy(d)).sum() == 1
    with pytest.warns(UserWarning, match="have training weight but no test samples"):
        value = M.weighted_average_accuracy(
            d.logits, d.target, d.groups, num_classes=3, num_groups=2, train_cell_counts=d.train_cell_counts
        )
    assert value.item() == pytest.approx(ref_weighted_average_accuracy(d), abs=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_one_group_reduces_to_class_metrics(seed: int) -> None:
    d = make_data(seed, 4, 1)
    kw = {"num_classes": 4}
    assert M.mean_group_accuracy(d.logits, d.target, **kw).item() == pytest.approx(
        balanced_accuracy_score(d.y, d.p), abs=1e-6
    )
    torch.testing.assert_close(
        M.worst_group_accuracy(d.logits, d.target, **kw), 1 - M.worst_class_error(d.logits, d.target, **kw)
    )
    # uniform training weights: the weighted average is the unweighted mean over cells
    uniform = M.weighted_average_accuracy(d.logits, d.target, **kw, train_cell_counts=torch.ones(1, 4))
    torch.testing.assert_close(uniform, M.mean_group_accuracy(d.logits, d.target, **kw))


# --------------------------------------------------------------------------------------------------------
# Class = functional twin, batch accumulation, torchmetrics conventions
# --------------------------------------------------------------------------------------------------------


def specs(d: Data) -> list[tuple[type[M.GroupConfusionMetric], Any, dict[str, Any]]]:
    return [
        (M.WorstGroupAccuracy, M.worst_group_accuracy, {}),
        (M.WorstGroupAccuracy, M.worst_group_accuracy, {"over": "group"}),
        (M.MeanGroupAccuracy, M.mean_group_accuracy, {}),
        (M.MeanGroupAccuracy, M.mean_group_accuracy, {"over": "group"}),
        (M.WeightedAverageAccuracy, M.weighted_average_accuracy, {"train_cell_counts": d.train_cell_counts}),
    ]


@pytest.mark.parametrize(("seed", "k", "g"), CASES[:4])
def test_class_equals_functional_and_batches_accumulate(seed: int, k: int, g: int) -> None:
    d = make_data(seed, k, g)
    kw = {"num_classes": k, "num_groups": g}
    n = len(d.target)
    for cls, fn, extra in specs(d):
        expected = fn(d.logits, d.target, d.groups, **kw, **extra)
        for preds in (d.logits.argmax(1), d.logits.softmax(1)):
            torch.testing.assert_close(fn(preds, d.target, d.groups, **kw, **extra), expected, rtol=0, atol=0)
        one = cls(**kw, **extra)
        one.update(d.logits, d.target, d.groups)
        torch.testing.assert_close(one.compute(), expected, rtol=0, atol=0)
        for bounds in ([0, 0, 7, 60, n], [0, n // 3, n // 2, n - 1, n]):  # includes an empty batch
            metric = cls(**kw, **extra)
            for a, b in itertools.pairwise(bounds):
                metric.update(d.logits[a:b], d.target[a:b], d.groups[a:b])
            torch.testing.assert_close(metric.compute(), expected, rtol=0, atol=0)
        # forward: value on the batch; the state accumulates; reset keeps the training weights
        metric = cls(**kw, **extra)
        head = metric(d.logits[:70], d.target[:70], d.groups[:70])
        torch.testing.assert_close(head, fn(d.logits[:70], d.target[:70], d.groups[:70], **kw, **extra))
        metric(d.logits[70:], d.target[70:], d.groups[70:])
        torch.testing.assert_close(metric.compute(), expected)
        metric.reset()
        metric.update(d.logits, d.target, d.groups)
        torch.testing.assert_close(metric.compute(), expected)


def test_in_a_metric_collection_with_shared_counts() -> None:
    # torchmetrics merges metrics with the same state into one compute group: the weights must survive it
    d = make_data(7, 2, 2)
    kw = {"num_classes": 2, "num_groups": 2}
    collection = MetricCollection(
        {
            "error": M.Error(**kw),
            "waa": M.WeightedAverageAccuracy(**kw, train_cell_counts=d.train_cell_counts),
            "waa_uniform": M.WeightedAverageAccuracy(**kw, train_cell_counts=torch.ones(2, 2)),
            "wga": M.WorstGroupAccuracy(**kw),
        }
    )
    for part in torch.arange(len(d.target)).tensor_split(3):
        collection.update(d.logits[part], d.target[part], d.groups[part])
    out = collection.compute()
    args = (d.logits, d.target, d.groups)
    torch.testing.assert_close(
        out["waa"], M.weighted_average_accuracy(*args, **kw, train_cell_counts=d.train_cell_counts)
    )
    torch.testing.assert_close(out["waa_uniform"], M.mean_group_accuracy(*args, **kw))
    torch.testing.assert_close(out["wga"], M.worst_group_accuracy(*args, **kw))


def test_state_and_metric_attributes() -> None:
    d = make_data(0, 4, 3)
    for cls, _, extra in specs(d):
        metric = cls(num_classes=4, num_groups=3, **extra)
        assert isinstance(metric, M.GroupConfusionMetric)
        assert list(metric._defaults) == ["counts"]  # exactly one state, summed under DDP
        assert metric._defaults["counts"].dtype == torch.long
        assert metric.higher_is_better is True
        assert metric.is_differentiable is False
        assert metric.full_state_update is False
        assert list(metric.state_dict()) == []  # the training weights are a constant, not a checkpointed state
    metric = M.WeightedAverageAccuracy(num_classes=2, num_groups=2, train_cell_counts=TRAIN)
    torch.testing.assert_close(metric.train_weights, torch.tensor(TRAIN, dtype=torch.float64) / 100)


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric")
def test_empty_metric_is_nan_with_warning() -> None:
    d = make_data(0, 3, 2)
    for cls, fn, extra in specs(d):
        metric = cls(num_classes=3, num_groups=2, **extra)
        with pytest.warns(UserWarning, match="no samples were counted"):
            assert torch.isnan(metric.compute())
        with pytest.warns(UserWarning, match="no samples were counted"):
            value = fn(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), num_classes=3, num_groups=2, **extra)
        assert torch.isnan(value) and value.shape == ()


def test_exported_documented_and_doctested() -> None:
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    for name in NEW_NAMES:
        assert name in M.__all__ and name in lightning_autobalance.__all__, name
        assert getattr(lightning_autobalance, name) is getattr(M, name)
        obj = getattr(M, name)
        assert obj.__doc__ and ">>>" in obj.__doc__, name
        for test in finder.find(obj, name, globs=vars(M).copy()):
            runner.run(test)
    assert runner.failures == 0 and runner.tries >= 12


# --------------------------------------------------------------------------------------------------------
# Bad inputs
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("train", "match"),
    [
        pytest.param(
            [1, 2, 3],
            r"train_cell_counts must have shape \(num_groups, num_classes\) = \(2, 3\), got shape \(3,\)",
            id="1d",
        ),
        pytest.param(
            torch.ones(3, 2),
            r"train_cell_counts must have shape .* = \(2, 3\), got shape \(3, 2\) \(it looks transposed",
            id="transposed",
        ),
        pytest.param(torch.ones(2, 3, 1), r"train_cell_counts must have shape .* got shape \(2, 3, 1\)", id="3d"),
        pytest.param(
            [[5, -1, 2], [1, 1, 1]],
            r"train_cell_counts\[0, 1\] = -1 is negative: training counts or proportions must be >= 0",
            id="negative",
        ),
        pytest.param(torch.zeros(2, 3), r"train_cell_counts sums to 0", id="zero-sum"),
        pytest.param([[1.0, float("nan"), 1.0], [1.0, 1.0, 1.0]], r"train_cell_counts contains non-finite", id="nan"),
        pytest.param([[1.0, float("inf"), 1.0], [1.0, 1.0, 1.0]], r"train_cell_counts contains non-finite", id="inf"),
        pytest.param(torch.ones(2, 3, dtype=torch.bool), r"train_cell_counts must hold real counts", id="bool"),
        pytest.param([[1, 2, 3], [1, 2]], r"train_cell_counts could not be turned into a tensor", id="ragged"),
    ],
)
def test_bad_train_cell_counts_raise(train: Any, match: str) -> None:
    kw = {"num_classes": 3, "num_groups": 2}
    with pytest.raises(ValueError, match=match):
        M.WeightedAverageAccuracy(**kw, train_cell_counts=train)
    with pytest.raises(ValueError, match=match):
        M.weighted_average_accuracy(torch.tensor([0, 1]), torch.tensor([0, 1]), **kw, train_cell_counts=train)


def test_train_cell_counts_is_required() -> None:
    with pytest.raises(TypeError, match="train_cell_counts"):
        M.WeightedAverageAccuracy(num_classes=3)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="train_cell_counts"):
        M.weighted_average_accuracy(torch.tensor([0]), torch.tensor([0]), num_classes=3)  # type: ignore[call-arg]


def test_bad_over_and_sizes_raise() -> None:
    for cls, fn in ((M.WorstGroupAccuracy, M.worst_group_accuracy), (M.MeanGroupAccuracy, M.mean_group_accuracy)):
        with pytest.raises(ValueError, match=r"over='cell' is not supported: pass over='class_group' or over='group'"):
            cls(num_classes=3, over="cell")
        with pytest.raises(ValueError, match=r"over='cell' is not supported"):
            fn(torch.tensor([0, 1]), torch.tensor([0, 1]), num_classes=3, over="cell")
        with pytest.raises(ValueError, match=r"num_classes=1 is invalid"):
            cls(num_classes=1)
    with pytest.raises(ValueError, match=r"num_groups=0 is invalid"):
        M.WeightedAverageAccuracy(num_classes=2, num_groups=0, train_cell_counts=torch.ones(0, 2))
    # the usual input checks apply
    metric = M.WeightedAverageAccuracy(num_classes=2, num_groups=2, train_cell_counts=TRAIN)
    with pytest.raises(ValueError, match=r"groups contains the group index 2, outside \[0, num_groups=2\)"):
        metric.update(torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor([0, 2]))
