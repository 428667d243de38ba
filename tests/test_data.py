"""Tests of the data utilities: long-tail profiles, label reading, the held-out split and long-tailed MNIST-1D."""

import itertools
import random
from collections import Counter

import lightning.pytorch as pl
import mnist1d.data
import numpy as np
import pytest
import torch
from torch.utils.data import (
    DataLoader,
    Dataset,
    DistributedSampler,
    IterableDataset,
    SequentialSampler,
    Subset,
    TensorDataset,
)

from lightning_autobalance.data import (
    HeldOutSplit,
    MNIST1DLongTail,
    dataset_labels,
    long_tail_counts,
    stratified_split,
)
from lightning_autobalance.data.mnist1d_lt import generate_mnist1d
from tests._helpers.data import prepared

# ---------------------------------------------------------------------------------------------- long_tail_counts


def test_exponential_profile_matches_hand_values():
    # 5000 · 100^(−i/9), floored (computed with 50-digit decimals): 2997.42, 1796.91, 1077.22, 645.77, ...
    assert long_tail_counts(5000, 10, 100) == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    # 60 · 10^(−i/9): 46.46, 35.97, 27.85, 21.56, 16.70, 12.93, 10.009, 7.75, 6.0
    assert long_tail_counts(60, 10, 10) == [60, 46, 35, 27, 21, 16, 12, 10, 7, 6]
    # exact powers: the floor must not lose one to rounding error (100 · 16^(−1/4) = 50 exactly)
    assert long_tail_counts(1000, 3, 100) == [1000, 100, 10]
    assert long_tail_counts(100, 5, 16) == [100, 50, 25, 12, 6]
    # in floating point 1000 · (10^(−1/4))^4 = 99.99999999999997 and 5000 · (1000^(−1/2))^2 = 4.999999999999999
    assert long_tail_counts(1000, 5, 10) == [1000, 562, 316, 177, 100]  # 562.34, 316.23, 177.83
    assert long_tail_counts(5000, 3, 1000) == [5000, 158, 5]  # 158.11
    assert long_tail_counts(1000, 5, 2) == [1000, 840, 707, 594, 500]  # 840.90, 707.11, 594.60


def test_exponential_profile_against_numpy_formula():
    n_max, num_classes, rho = 3000, 7, 37.0
    i = np.arange(num_classes)
    expected = np.floor(n_max * rho ** (-i / (num_classes - 1)) + 1e-6).astype(int).tolist()
    assert long_tail_counts(n_max, num_classes, rho) == expected
    assert expected[0] == 3000 and expected[-1] == 81  # 3000 / 37 = 81.08


@pytest.mark.parametrize(
    ("n_max", "num_classes", "rho"),
    [(5000, 10, 100), (1000, 3, 100), (160, 5, 16), (800, 4, 8), (1000, 5, 10), (2000, 5, 2)],
)
def test_exponential_ratio_first_to_last_equals_rho(n_max, num_classes, rho):
    counts = long_tail_counts(n_max, num_classes, rho)
    assert len(counts) == num_classes
    assert counts[0] / counts[-1] == rho
    assert all(a >= b for a, b in itertools.pairwise(counts))


def test_rho_one_is_balanced_and_every_class_keeps_one_sample():
    assert long_tail_counts(17, 4, 1) == [17, 17, 17, 17]
    # 7 · 1000^(−i/3) = 7, 0.7, 0.07, 0.007: clamped to one sample
    assert long_tail_counts(7, 4, 1000) == [7, 1, 1, 1]


def test_step_profile():
    assert long_tail_counts(1000, 4, 10, "step") == [1000, 1000, 100, 100]
    # odd K: ⌊5/2⌋ = 2 head classes
    assert long_tail_counts(1000, 5, 10, "step") == [1000, 1000, 100, 100, 100]
    assert long_tail_counts(100, 2, 3, "step") == [100, 33]  # ⌊100 / 3⌋
    assert long_tail_counts(10, 3, 1000, "step") == [10, 1, 1]  # ⌊0.01⌋ clamped to 1


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"n_max": 100, "num_classes": 10, "imbalance_ratio": 0.5},
            ValueError,
            "imbalance_ratio .* must be ≥ 1, got 0.5",
        ),
        (
            {"n_max": 100, "num_classes": 10, "imbalance_ratio": float("nan")},
            ValueError,
            "imbalance_ratio .* must be ≥ 1",
        ),
        (
            {"n_max": 100, "num_classes": 1, "imbalance_ratio": 10},
            ValueError,
            "num_classes must be an integer ≥ 2, got 1",
        ),
        ({"n_max": 0, "num_classes": 10, "imbalance_ratio": 10}, ValueError, "n_max must be an integer ≥ 1, got 0"),
        (
            {"n_max": 100, "num_classes": 10, "imbalance_ratio": 10, "profile": "linear"},
            ValueError,
            "Unknown long-tail profile 'linear': choose one of exponential, step",
        ),
    ],
)
def test_long_tail_counts_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        long_tail_counts(**kwargs)


# ---------------------------------------------------------------------------------------------- dataset_labels


def test_dataset_labels_tensor_dataset_without_groups():
    ds = TensorDataset(torch.zeros(4, 3), torch.tensor([2, 0, 1, 2], dtype=torch.int32))
    targets, groups = dataset_labels(ds)
    assert targets.dtype == torch.long
    assert targets.tolist() == [2, 0, 1, 2]
    assert groups is None


def test_dataset_labels_tensor_dataset_with_groups():
    ds = TensorDataset(torch.zeros(4, 3), torch.tensor([2, 0, 1, 2]), torch.tensor([[1], [0], [1], [1]]))
    targets, groups = dataset_labels(ds)
    assert targets.tolist() == [2, 0, 1, 2]
    assert groups.dtype == torch.long
    assert groups.tolist() == [1, 0, 1, 1]


def test_dataset_labels_tensor_dataset_without_labels():
    with pytest.raises(ValueError, match=r"needs \(inputs, labels\[, groups\]\) tensors"):
        dataset_labels(TensorDataset(torch.zeros(3, 2)))


def test_dataset_labels_subset_selects_in_subset_order():
    ds = TensorDataset(torch.zeros(6, 2), torch.tensor([0, 1, 2, 3, 4, 5]), torch.tensor([0, 0, 1, 1, 2, 2]))
    targets, groups = dataset_labels(Subset(ds, [4, 0, 3]))
    assert targets.tolist() == [4, 0, 3]
    assert groups.tolist() == [2, 0, 1]
    # nested subsets and subsets without groups
    nested = Subset(Subset(TensorDataset(torch.zeros(6, 2), torch.tensor([5, 4, 3, 2, 1, 0])), [1, 2, 5]), [2, 0])
    targets, groups = dataset_labels(nested)
    assert targets.tolist() == [0, 4]
    assert groups is None


class _TargetsDataset(Dataset):
    """Has ``targets`` (and optionally ``groups``); reading an item fails, so only the fast path works."""

    def __init__(self, targets, groups=None):
        self.targets = targets
        if groups is not None:
            self.groups = groups

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        raise AssertionError("dataset_labels should not read the items of a data set with `targets`")


def test_dataset_labels_targets_attribute():
    targets, groups = dataset_labels(_TargetsDataset([3, 1, 1, 0]))
    assert targets.tolist() == [3, 1, 1, 0]
    assert groups is None
    targets, groups = dataset_labels(_TargetsDataset(np.array([3, 1, 1, 0]), groups=[0, 1, 0, 1]))
    assert targets.dtype == torch.long and groups.dtype == torch.long
    assert targets.tolist() == [3, 1, 1, 0]
    assert groups.tolist() == [0, 1, 0, 1]
    targets, _ = dataset_labels(Subset(_TargetsDataset([3, 1, 1, 0]), [3, 0]))
    assert targets.tolist() == [0, 3]


class _ItemDataset(Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_dataset_labels_generic_dataset_of_tuples():
    ds = _ItemDataset([(torch.zeros(2), 1), (torch.ones(2), torch.tensor(0)), (torch.zeros(2), 2)])
    targets, groups = dataset_labels(ds)
    assert targets.dtype == torch.long
    assert targets.tolist() == [1, 0, 2]
    assert groups is None


def test_dataset_labels_generic_dataset_of_triples():
    ds = _ItemDataset([(torch.zeros(2), 1, 0), [torch.ones(2), 0, 1], (torch.zeros(2), 2, torch.tensor(1))])
    targets, groups = dataset_labels(ds)
    assert targets.tolist() == [1, 0, 2]
    assert groups.tolist() == [0, 1, 1]


@pytest.mark.parametrize("bad_item", [torch.zeros(2), {"x": torch.zeros(2), "y": 1}, (torch.zeros(2),)])
def test_dataset_labels_rejects_items_that_are_not_tuples(bad_item):
    ds = _ItemDataset([(torch.zeros(2), 0), bad_item])
    with pytest.raises(ValueError, match=r"Item 1 of _ItemDataset is not an \(x, y\) or \(x, y, g\) tuple"):
        dataset_labels(ds)


def test_dataset_labels_rejects_iterable_dataset():
    class Stream(IterableDataset):
        def __iter__(self):
            yield torch.zeros(2), 0

    with pytest.raises(TypeError, match="Stream has no length"):
        dataset_labels(Stream())


# ---------------------------------------------------------------------------------------------- stratified_split


def _shuffled_labels(counts, seed=0):
    labels = torch.tensor([c for c, n in enumerate(counts) for _ in range(n)])
    return labels[torch.randperm(labels.numel(), generator=torch.Generator().manual_seed(seed))]


def _check_partition(train, held, n):
    assert set(train.tolist()).isdisjoint(held.tolist())
    assert sorted(train.tolist() + held.tolist()) == list(range(n))
    assert train.tolist() == sorted(train.tolist()) and held.tolist() == sorted(held.tolist())


@pytest.mark.parametrize(
    ("fraction", "expected_held"),
    [
        # class sizes 20, 7, 3, 2
        (0.3, [6, 2, 1, 1]),  # round(6.0), round(2.1), round(0.9), round(0.6)
        (0.9, [18, 6, 2, 1]),  # round(18), round(6.3), round(2.7)=3 capped at 3−1, round(1.8)=2 capped at 2−1
        (0.01, [1, 1, 1, 1]),  # round(0.2) etc. = 0, raised to one
    ],
)
def test_stratified_split_per_class_counts(fraction, expected_held):
    counts = [20, 7, 3, 2]
    targets = _shuffled_labels(counts)
    train, held = stratified_split(targets, None, fraction, seed=3)
    _check_partition(train, held, sum(counts))
    assert torch.bincount(targets[held], minlength=4).tolist() == expected_held
    assert torch.bincount(targets[train], minlength=4).tolist() == [
        n - h for n, h in zip(counts, expected_held, strict=True)
    ]
    # every class is in both parts
    assert set(targets[held].tolist()) == set(targets[train].tolist()) == {0, 1, 2, 3}


def test_stratified_split_by_group_and_class():
    # (group, class) cells: (0,0)=6, (1,0)=4, (0,1)=3, (1,1)=3, (0,2)=2, (1,2)=2
    cells = [(0, 0)] * 6 + [(1, 0)] * 4 + [(0, 1)] * 3 + [(1, 1)] * 3 + [(0, 2)] * 2 + [(1, 2)] * 2
    order = torch.randperm(len(cells), generator=torch.Generator().manual_seed(1)).tolist()
    groups = torch.tensor([cells[i][0] for i in order])
    targets = torch.tensor([cells[i][1] for i in order])
    train, held = stratified_split(targets, groups, 0.2, seed=0)
    _check_partition(train, held, len(cells))
    # per cell: round(1.2)=1, round(0.8)=1, round(0.6)=1, round(0.6)=1, then 1 and 1 (at least one, at most n−1)
    held_cells = Counter(zip(groups[held].tolist(), targets[held].tolist(), strict=True))
    assert held_cells == {(0, 0): 1, (1, 0): 1, (0, 1): 1, (1, 1): 1, (0, 2): 1, (1, 2): 1}
    # by class alone the split would hold out round(0.2·10)=2, round(0.2·6)=1, round(0.2·4)=1
    _, held_only_class = stratified_split(targets, None, 0.2, seed=0)
    assert torch.bincount(targets[held_only_class]).tolist() == [2, 1, 1]
    assert torch.bincount(targets[held]).tolist() == [2, 2, 2]


def test_stratified_split_is_deterministic_for_a_seed():
    targets = _shuffled_labels([30, 12, 5])
    first = stratified_split(targets, None, 0.25, seed=7)
    second = stratified_split(targets, None, 0.25, seed=7)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    other = stratified_split(targets, None, 0.25, seed=8)
    assert not torch.equal(first[1], other[1])
    # the other seed still respects the per-class counts: round(7.5)=8, round(3.0)=3, round(1.25)=1
    assert torch.bincount(targets[other[1]]).tolist() == torch.bincount(targets[first[1]]).tolist() == [8, 3, 1]


@pytest.mark.parametrize("fraction", [0.0, 1.0, 1.5, -0.2])
def test_stratified_split_rejects_fraction_outside_open_interval(fraction):
    with pytest.raises(ValueError, match=f"strictly between 0 and 1, got {fraction}"):
        stratified_split(torch.tensor([0, 0, 1, 1]), None, fraction)


def test_stratified_split_rejects_single_sample_class():
    with pytest.raises(ValueError, match="class 1 has a single training sample"):
        stratified_split(torch.tensor([0, 0, 1, 2, 2, 0]), None, 0.5)


def test_stratified_split_rejects_single_sample_cell_and_names_it():
    targets = torch.tensor([0, 0, 1, 1, 0, 1, 1])
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1])  # cell (group 1, class 0) has one sample
    with pytest.raises(ValueError, match=r"\(group, class\) cell \(1, 0\) has a single training sample"):
        stratified_split(targets, groups, 0.3)


# ---------------------------------------------------------------------------------------------- HeldOutSplit


class TinyDataModule(pl.LightningDataModule):
    """A datamodule around a TensorDataset (x, y[, g]); x[i] = i so items can be traced back to their index."""

    def __init__(self, targets, groups=None, batch_size=4):
        super().__init__()
        self.targets, self.groups, self.batch_size = torch.tensor(targets), groups, batch_size
        self.calls = []

    def prepare_data(self):
        self.calls.append("prepare_data")

    def setup(self, stage):
        self.calls.append(f"setup:{stage}")
        x = torch.arange(len(self.targets), dtype=torch.float32).unsqueeze(1)
        tensors = (x, self.targets) if self.groups is None else (x, self.targets, torch.tensor(self.groups))
        self.train_set = TensorDataset(*tensors)

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)


class TinyDataModuleWithVal(TinyDataModule):
    def setup(self, stage):
        super().setup(stage)
        self.val_loader = DataLoader(TensorDataset(torch.zeros(3, 1), torch.tensor([0, 1, 2])), batch_size=2)

    def val_dataloader(self):
        return self.val_loader


# class sizes 10, 6, 4 (interleaved so the split must pick indices, not ranges)
TARGETS = [0, 1, 0, 2, 0, 1, 0, 0, 2, 1, 0, 0, 1, 2, 0, 1, 0, 2, 1, 0]
# (group, class) cells: (0,0)=6, (1,0)=4, (0,1)=3, (1,1)=3, (0,2)=2, (1,2)=2
GROUPS = [0, 0, 0, 0, 0, 0, 1, 0, 1, 1, 1, 0, 1, 0, 1, 1, 1, 1, 0, 0]


def test_tiny_fixture_has_the_documented_cells():
    assert Counter(TARGETS) == {0: 10, 1: 6, 2: 4}
    assert Counter(zip(GROUPS, TARGETS, strict=True)) == {
        (0, 0): 6,
        (1, 0): 4,
        (0, 1): 3,
        (1, 1): 3,
        (0, 2): 2,
        (1, 2): 2,
    }


def test_held_out_split_counts_without_groups():
    dm = TinyDataModule(TARGETS)
    split = prepared(HeldOutSplit(dm, fraction=0.2, seed=1))
    assert dm.calls == ["prepare_data", "setup:fit"]
    # held out: round(2.0)=2, round(1.2)=1, round(0.8)=1
    assert split.heldout_class_counts.tolist() == [2, 1, 1]
    assert split.class_counts.tolist() == [8, 5, 3]
    assert split.group_class_counts.tolist() == [[8, 5, 3]]
    assert split.num_groups == 1 and split.num_classes == 3


def test_held_out_split_counts_with_groups():
    dm = TinyDataModule(TARGETS, groups=GROUPS)
    split = prepared(HeldOutSplit(dm, fraction=0.2, seed=1))
    # one held-out sample per (group, class) cell (see test_stratified_split_by_group_and_class)
    assert split.heldout_class_counts.tolist() == [2, 2, 2]
    assert split.class_counts.tolist() == [8, 4, 2]
    assert split.group_class_counts.tolist() == [[5, 2, 1], [3, 2, 1]]
    assert split.num_groups == 2


@pytest.mark.parametrize("groups", [None, GROUPS])
def test_held_out_split_partitions_the_original_data(groups):
    dm = TinyDataModule(TARGETS, groups=groups)
    split = prepared(HeldOutSplit(dm, fraction=0.3, seed=0))
    train_idx, held_idx = split.train_dataset.indices, split.heldout_dataset.indices
    assert set(train_idx).isdisjoint(held_idx)
    assert sorted(train_idx + held_idx) == list(range(len(TARGETS)))
    assert split.train_dataset.dataset is dm.train_set and split.heldout_dataset.dataset is dm.train_set
    # the items read through the loaders are the original items (x = index), labels included
    seen = []
    for batch in split.train_dataloader():
        assert len(batch) == (2 if groups is None else 3)
        for x, y in zip(batch[0].flatten().long().tolist(), batch[1].tolist(), strict=True):
            assert TARGETS[x] == y
            seen.append(x)
    assert sorted(seen) == sorted(train_idx)
    held_seen = torch.cat([batch[0].flatten() for batch in split.heldout_dataloader()]).long().tolist()
    assert held_seen == sorted(held_idx)  # held-out loader keeps a fixed order
    counts = Counter(TARGETS[i] for i in train_idx)
    assert split.class_counts.tolist() == [counts[0], counts[1], counts[2]]


def test_held_out_split_train_loader_follows_wrapped_loader():
    dm = TinyDataModule(TARGETS, batch_size=3)
    split = prepared(HeldOutSplit(dm, fraction=0.2, seed=4))
    loader = split.train_dataloader()
    assert loader.batch_size == 3 == dm.train_dataloader().batch_size
    assert isinstance(loader.sampler, DistributedSampler)
    assert [len(b[0]) for b in loader] == [3, 3, 3, 3, 3, 1]  # 16 training samples
    # each epoch is a permutation fixed by (seed, epoch), the same as torch's DistributedSampler on one process
    for epoch in range(3):
        loader.sampler.set_epoch(epoch)
        expected = torch.randperm(16, generator=torch.Generator().manual_seed(4 + epoch)).tolist()
        assert list(loader.sampler) == expected
    loader.sampler.set_epoch(0)
    # the order is fixed by (seed, epoch): two loaders give the same batches
    first = [b[0].flatten().tolist() for b in split.train_dataloader()]
    second = [b[0].flatten().tolist() for b in split.train_dataloader()]
    assert first == second


def test_held_out_split_is_deterministic_and_seed_dependent():
    a = prepared(HeldOutSplit(TinyDataModule(TARGETS), fraction=0.3, seed=0))
    b = prepared(HeldOutSplit(TinyDataModule(TARGETS), fraction=0.3, seed=0))
    c = prepared(HeldOutSplit(TinyDataModule(TARGETS), fraction=0.3, seed=1))
    assert a.heldout_dataset.indices == b.heldout_dataset.indices
    assert a.heldout_dataset.indices != c.heldout_dataset.indices


def test_held_out_split_val_falls_back_to_held_out():
    split = prepared(HeldOutSplit(TinyDataModule(TARGETS, batch_size=5), fraction=0.2))
    val = split.val_dataloader()
    assert val.dataset is split.heldout_dataset
    assert isinstance(val.sampler, SequentialSampler)
    assert val.batch_size == 5
    assert len(val.dataset) == 4


def test_held_out_split_val_delegates_to_wrapped_datamodule():
    dm = TinyDataModuleWithVal(TARGETS)
    split = prepared(HeldOutSplit(dm, fraction=0.2))
    assert split.val_dataloader() is dm.val_loader


@pytest.mark.parametrize("loader", ["train_dataloader", "heldout_dataloader", "val_dataloader"])
def test_held_out_split_loaders_need_setup(loader):
    split = HeldOutSplit(TinyDataModule(TARGETS))
    split.setup("validate")  # e.g. trainer.validate(...) without a fit: no split is built
    with pytest.raises(RuntimeError, match=r"HeldOutSplit.setup\('fit'\) must run before its loaders are used"):
        getattr(split, loader)()


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.2])
def test_held_out_split_rejects_fraction(fraction):
    with pytest.raises(ValueError, match=f"strictly between 0 and 1, got {fraction}"):
        HeldOutSplit(TinyDataModule(TARGETS), fraction=fraction)


def test_held_out_split_rejects_non_datamodule():
    with pytest.raises(TypeError, match="HeldOutSplit wraps a LightningDataModule, got TensorDataset"):
        HeldOutSplit(TensorDataset(torch.zeros(3, 1), torch.tensor([0, 1, 0])))


def test_held_out_split_rejects_labels_outside_num_classes():
    split = HeldOutSplit(TinyDataModule(TARGETS), fraction=0.2, num_classes=2)
    split.prepare_data()
    with pytest.raises(
        ValueError, match=r"lie in \[0, 2\), found \[2\]: remap the labels or pass the right num_classes"
    ):
        split.setup("fit")


def test_held_out_split_rejects_negative_labels():
    split = HeldOutSplit(TinyDataModule([0, 1, -1, 0, 1, -1]), fraction=0.5)
    with pytest.raises(ValueError, match=r"lie in \[0, 2\), found \[-1\]: remap the labels"):
        split.setup("fit")


def test_held_out_split_accepts_larger_num_classes():
    split = prepared(HeldOutSplit(TinyDataModule(TARGETS), fraction=0.2, seed=1, num_classes=5))
    assert split.class_counts.tolist() == [8, 5, 3, 0, 0]
    assert split.heldout_class_counts.tolist() == [2, 1, 1, 0, 0]


# ---------------------------------------------------------------------------------------------- MNIST1DLongTail

LT_KWARGS = {"n_max": 60, "test_per_class": 10, "imbalance_ratio": 10, "batch_size": 16}
LT_COUNTS = [60, 46, 35, 27, 21, 16, 12, 10, 7, 6]  # 60 · 10^(−i/9), floored


@pytest.fixture(scope="module")
def mnist1d_lt(tmp_path_factory):
    return prepared(MNIST1DLongTail(root=str(tmp_path_factory.mktemp("mnist1d")), **LT_KWARGS))


def test_mnist1d_lt_class_counts(mnist1d_lt):
    assert mnist1d_lt.class_counts.tolist() == LT_COUNTS == long_tail_counts(60, 10, 10)
    y = mnist1d_lt.train_set.tensors[1]
    assert np.bincount(y.numpy(), minlength=10).tolist() == LT_COUNTS
    assert sum(len(b[1]) for b in mnist1d_lt.train_dataloader()) == sum(LT_COUNTS) == 240


def test_mnist1d_lt_test_set_is_balanced(mnist1d_lt):
    y = mnist1d_lt.test_set.tensors[1]
    assert np.bincount(y.numpy(), minlength=10).tolist() == [10] * 10


def test_mnist1d_lt_shapes_and_dtypes(mnist1d_lt):
    x, y = mnist1d_lt.train_set.tensors
    assert x.shape == (240, 1, 40) and x.dtype == torch.float32
    assert y.dtype == torch.int64
    x_test = mnist1d_lt.test_set.tensors[0]
    assert x_test.shape == (100, 1, 40) and x_test.dtype == torch.float32
    xb, yb = next(iter(mnist1d_lt.train_dataloader()))
    assert xb.shape == (16, 1, 40) and yb.shape == (16,)
    assert torch.isfinite(x).all()


def test_mnist1d_lt_train_and_test_are_disjoint(mnist1d_lt):
    train_rows = {row.tobytes() for row in mnist1d_lt.train_set.tensors[0].numpy()}
    test_rows = {row.tobytes() for row in mnist1d_lt.test_set.tensors[0].numpy()}
    assert len(train_rows) == 240 and len(test_rows) == 100  # no duplicate sequences at all
    assert train_rows.isdisjoint(test_rows)


def test_mnist1d_lt_step_profile(mnist1d_lt):
    root = mnist1d_lt.root  # same pool (n_max + test_per_class per class): the cache is shared
    dm = MNIST1DLongTail(root=root, profile="step", **LT_KWARGS)
    dm.setup("fit")
    assert dm.class_counts.tolist() == [60] * 5 + [6] * 5


def _counting_make_dataset(monkeypatch):
    calls = []
    real = mnist1d.data.make_dataset

    def make_dataset(args=None, template=None):
        calls.append(args.seed)
        return real(args, template)

    monkeypatch.setattr(mnist1d.data, "make_dataset", make_dataset)
    return calls


def test_mnist1d_lt_cache_is_created_and_reused(tmp_path, monkeypatch):
    calls = _counting_make_dataset(monkeypatch)
    dm = prepared(MNIST1DLongTail(root=str(tmp_path), **LT_KWARGS))
    assert calls == [0]
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 1 and files[0].startswith("mnist1d_70x10_seed0_") and files[0].endswith(".npz")
    with np.load(tmp_path / files[0], allow_pickle=False) as cached:
        assert cached["x"].shape == (700, 40) and cached["x"].dtype == np.float32
        assert np.bincount(cached["y"]).tolist() == [70] * 10

    def no_regeneration(*args, **kwargs):
        raise AssertionError("the cached data set was regenerated")

    monkeypatch.setattr(mnist1d.data, "make_dataset", no_regeneration)
    again = prepared(MNIST1DLongTail(root=str(tmp_path), **LT_KWARGS))
    assert torch.equal(again.train_set.tensors[0], dm.train_set.tensors[0])
    assert torch.equal(again.test_set.tensors[1], dm.test_set.tensors[1])
    assert sorted(p.name for p in tmp_path.iterdir()) == files


def _truncate(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _flip_a_byte(data: bytes) -> bytes:
    return data[:200] + bytes([data[200] ^ 0xFF]) + data[201:]


@pytest.mark.parametrize(
    "corrupt",
    [
        pytest.param(lambda data: b"this is not a numpy file", id="garbage"),
        pytest.param(lambda data: b"", id="empty"),
        pytest.param(_truncate, id="truncated"),
        pytest.param(_flip_a_byte, id="bit-flip"),
    ],
)
def test_mnist1d_corrupted_cache_is_regenerated(tmp_path, monkeypatch, corrupt):
    reference = generate_mnist1d(7, seed=3, root=tmp_path)
    (path,) = tmp_path.iterdir()
    path.write_bytes(corrupt(path.read_bytes()))
    calls = _counting_make_dataset(monkeypatch)
    data = generate_mnist1d(7, seed=3, root=tmp_path)
    assert calls == [3]
    np.testing.assert_array_equal(data["x"], reference["x"])
    np.testing.assert_array_equal(data["y"], reference["y"])
    with np.load(path, allow_pickle=False) as cached:  # the file was rewritten and is valid again
        np.testing.assert_array_equal(cached["x"], reference["x"])
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_mnist1d_generation_keeps_numpy_global_rng_state(tmp_path):
    np.random.seed(1234)
    before = np.random.get_state()
    data = generate_mnist1d(5, seed=0, root=tmp_path)
    after = np.random.get_state()
    assert data["x"].shape == (50, 40)
    assert before[0] == after[0] and before[2:] == after[2:]
    np.testing.assert_array_equal(before[1], after[1])
    # the next draw is the one a fresh generator seeded with 1234 gives
    assert np.random.rand() == np.random.RandomState(1234).rand()


def test_mnist1d_generation_keeps_python_global_rng_state(tmp_path):
    random.seed(1234)
    before = random.getstate()
    generate_mnist1d(5, seed=0, root=tmp_path)
    assert random.getstate() == before


def test_mnist1d_different_seeds_give_different_data(tmp_path):
    a = generate_mnist1d(5, seed=0, root=tmp_path)
    b = generate_mnist1d(5, seed=1, root=tmp_path)
    assert len(list(tmp_path.iterdir())) == 2
    assert not np.array_equal(a["x"], b["x"])
    assert np.bincount(a["y"]).tolist() == np.bincount(b["y"]).tolist() == [5] * 10


def test_mnist1d_lt_rejects_bad_sizes():
    with pytest.raises(ValueError, match="test_per_class must be an integer ≥ 1, got 0"):
        MNIST1DLongTail(test_per_class=0)
    with pytest.raises(ValueError, match=r"test_per_class must be an integer ≥ 1, got 2\.5"):
        MNIST1DLongTail(test_per_class=2.5)
    with pytest.raises(ValueError, match="batch_size must be an integer ≥ 1, got True"):
        MNIST1DLongTail(batch_size=True)
    with pytest.raises(ValueError, match="seed must be an integer ≥ 0, got -1"):
        MNIST1DLongTail(seed=-1)
    with pytest.raises(ValueError, match=r"imbalance_ratio .* must be ≥ 1"):
        MNIST1DLongTail(imbalance_ratio=0.1)
