"""Group baselines (group re-weighting, balanced subsampling, up-sampling, JTT) against independent references."""

import logging
import warnings

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities.model_helpers import is_overridden
from omegaconf import OmegaConf
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from lightning_autobalance import GroupBalancedSubsample, HeldOutSplit, Upsample, error_set, jtt
from lightning_autobalance.data.labels import dataset_labels, group_class_counts
from lightning_autobalance.losses import ParametricCrossEntropy
from lightning_autobalance.metrics import worst_group_accuracy
from lightning_autobalance.mixin import AutoBalanceMixin
from tests._helpers.trainers import quiet_trainer
from tests.conftest import ROOT


@pytest.fixture(autouse=True)
def quiet():
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(num_workers|LeafSpec|val_dataloader|litlogger).*")
        yield


def cells_dataset(table, seed=0):
    """TensorDataset (x, y, g) with table[g][y] samples per cell, shuffled; x[:, 0] is the sample's position."""
    y = torch.cat([torch.full((n,), k) for row in table for k, n in enumerate(row)])
    g = torch.cat([torch.full((n,), gi) for gi, row in enumerate(table) for n in row])
    order = torch.randperm(y.numel(), generator=torch.Generator().manual_seed(seed))
    y, g = y[order], g[order]
    x = torch.stack([torch.arange(y.numel()).float(), torch.randn(y.numel())], 1)
    return TensorDataset(x, y, g)


class CellData(pl.LightningDataModule):
    """A datamodule with train / val / test loaders of (x, y, g) items."""

    def __init__(self, table, batch_size=16):
        super().__init__()
        self.train_set, self.batch_size = cells_dataset(table), batch_size
        self.val_set, self.test_set = cells_dataset([[3, 3], [3, 3]], 1), cells_dataset([[4, 4], [4, 4]], 2)

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=8)

    def test_dataloader(self):
        return DataLoader(self.test_set, batch_size=8)


class TrainOnly(pl.LightningDataModule):
    def __init__(self, dataset):
        super().__init__()
        self.dataset = dataset

    def train_dataloader(self):
        return DataLoader(self.dataset, batch_size=16)


TABLE = [[40, 6], [9, 45]]  # (group, class) training cells; the smallest has 6 samples


# ---------------------------------------------------------------------------------------------- group re-weighting
def test_group_weighted_preset_is_inverse_cell_frequency_with_mean_one():
    table = [[30, 10], [5, 55]]
    n = 100
    hand = [[n / (4 * 30), n / (4 * 10)], [n / (4 * 5), n / (4 * 55)]]  # ω_{g,y} = n / (G·K·n_{g,y})
    loss = ParametricCrossEntropy.from_preset("weighted", group_counts=table)
    assert torch.allclose(loss.omega(), torch.tensor(hand, dtype=loss.omega().dtype), rtol=1e-6)
    mean_weight = sum(table[g][y] * hand[g][y] for g in range(2) for y in range(2)) / n
    assert mean_weight == pytest.approx(1.0)
    # the config the CLI instantiates (a partial completed with the training counts) gives the same weights
    cfg = OmegaConf.load(ROOT / "conf" / "loss" / "group_weighted.yaml")
    from_config = instantiate(cfg)(class_counts=[35, 65], group_counts=table)
    assert torch.allclose(from_config.omega(), loss.omega())
    # and the loss weights each sample by its cell's ω
    logits, y, g = torch.randn(6, 2), torch.tensor([0, 1, 0, 1, 1, 0]), torch.tensor([0, 0, 1, 1, 0, 1])
    expected = torch.tensor([hand[gi][yi] for gi, yi in zip(g.tolist(), y.tolist(), strict=True)])
    expected = expected * F.cross_entropy(logits, y, reduction="none")
    assert torch.allclose(loss(logits, y, g, reduction="none"), expected.to(torch.float32), rtol=1e-5)


# ---------------------------------------------------------------------------------------------- subsampling
def test_subsample_has_equal_cells_and_passes_loaders_through():
    dm = CellData(TABLE)
    sub = GroupBalancedSubsample(dm, seed=0)
    sub.setup("fit")
    assert sub.group_class_counts.tolist() == [[6, 6], [6, 6]]
    assert sub.class_counts.tolist() == [12, 12]
    assert sub.sample_counts.max() == 1 and int(sub.sample_counts.sum()) == 24
    seen = torch.cat([batch[0][:, 0] for batch in sub.train_dataloader()]).long()
    assert sorted(seen.tolist()) == sub.train_indices.tolist()  # one epoch = the subsample, each sample once
    targets, groups = dataset_labels(dm.train_set)
    assert group_class_counts(targets[seen], groups[seen], 2, 2).tolist() == [[6, 6], [6, 6]]
    assert sub.val_dataloader().dataset is dm.val_set and sub.test_dataloader().dataset is dm.test_set
    assert is_overridden("val_dataloader", sub) and not is_overridden("predict_dataloader", sub)


def test_subsample_over_groups_and_without_groups():
    dm = CellData(TABLE)
    sub = GroupBalancedSubsample(dm, seed=0, over="group")
    sub.setup("fit")
    assert sub.group_class_counts.sum(1).tolist() == [46, 46]  # group 0 has 46 samples, group 1 54
    x, y, _ = dm.train_set.tensors
    plain = GroupBalancedSubsample(TrainOnly(TensorDataset(x, y)), seed=0)
    plain.setup("fit")
    assert plain.num_groups == 1 and plain.class_counts.tolist() == [49, 49]  # classes of 49 and 51 samples


def test_subsample_is_seed_deterministic_and_follows_seed_everything():
    def indices(seed):
        sub = GroupBalancedSubsample(CellData(TABLE), seed=seed)
        sub.setup("fit")
        return sub.train_indices.tolist()

    assert indices(3) == indices(3)
    assert indices(3) != indices(4)
    pl.seed_everything(4, verbose=False)
    assert indices(None) == indices(4)


def test_subsample_of_a_heldout_split_leaves_the_split_untouched():
    dm = CellData(TABLE)
    alone = HeldOutSplit(CellData(TABLE), fraction=0.25, seed=1)
    alone.setup("fit")
    split = HeldOutSplit(dm, fraction=0.25, seed=1)
    sub = GroupBalancedSubsample(split, seed=2)
    sub.setup("fit")
    held = list(split.heldout_dataset.indices)
    assert held == list(alone.heldout_dataset.indices)
    assert list(sub.heldout_dataloader().dataset.indices) == held  # passed through
    assert sub.val_dataloader().dataset is dm.val_set and sub.test_dataloader().dataset is dm.test_set
    # the subsample is drawn from the train part only, balanced to its smallest cell
    original = torch.tensor(split.train_dataset.indices)[sub.train_indices]
    assert not set(original.tolist()) & set(held)
    smallest = int(split.group_class_counts.min())
    assert sub.group_class_counts.tolist() == [[smallest] * 2] * 2
    targets, groups = dataset_labels(dm.train_set)
    assert group_class_counts(targets[original], groups[original], 2, 2).tolist() == [[smallest] * 2] * 2


def test_subsample_trains_with_a_trainer():
    sub = GroupBalancedSubsample(HeldOutSplit(CellData(TABLE), fraction=0.25, seed=0), seed=0)
    model = Linear()
    trainer(1).fit(model, datamodule=sub)
    assert model.seen == int(sub.group_class_counts.sum())
    assert trainer(1).validate(model, datamodule=sub, verbose=False)  # the wrapped validation loader


def test_subsample_names_the_empty_cell():
    sub = GroupBalancedSubsample(CellData([[10, 5], [0, 7]]), seed=0)
    with pytest.raises(ValueError, match=r"\(group 1, class 0\)"):
        sub.setup("fit")
    with pytest.raises(ValueError, match="over must be"):
        GroupBalancedSubsample(CellData(TABLE), over="cells")
    x, y, _ = cells_dataset(TABLE).tensors
    with pytest.raises(ValueError, match="no group labels"):
        GroupBalancedSubsample(TrainOnly(TensorDataset(x, y)), over="group").setup("fit")


# ---------------------------------------------------------------------------------------------- up-sampling
def test_upsample_counts_match_numpy():
    dm = CellData(TABLE)
    n = len(dm.train_set)
    rng = np.random.default_rng(0)
    chosen = rng.choice(n, size=17, replace=False)
    up = Upsample(dm, chosen, factor=4, seed=0)
    up.setup("fit")
    reference = np.ones(n, dtype=np.int64)
    reference[chosen] = 4  # each listed sample 4 times in total, the others once
    assert np.array_equal(up.sample_counts.numpy(), reference)
    seen = torch.cat([batch[0][:, 0] for batch in up.train_dataloader()]).long().numpy()
    assert np.array_equal(np.bincount(seen, minlength=n), reference)
    targets, groups = (t.numpy() for t in dataset_labels(dm.train_set))
    expected = np.zeros((2, 2), dtype=np.int64)
    np.add.at(expected, (groups, targets), reference)
    assert np.array_equal(up.group_class_counts.numpy(), expected)
    assert up.val_dataloader().dataset is dm.val_set


def test_upsample_rejects_bad_arguments():
    dm = CellData(TABLE)
    with pytest.raises(ValueError, match="factor"):
        Upsample(dm, [1], factor=0)
    with pytest.raises(ValueError, match="distinct"):
        Upsample(dm, [1, 1], factor=2)
    with pytest.raises(ValueError, match="outside"):
        Upsample(dm, [100], factor=2).setup("fit")
    empty = Upsample(dm, [], factor=3)
    empty.setup("fit")
    assert empty.sample_counts.tolist() == [1] * len(dm.train_set)


# ---------------------------------------------------------------------------------------------- JTT
class Linear(AutoBalanceMixin, pl.LightningModule):
    def __init__(self, inputs=2, lr=0.1):
        super().__init__()
        self.net, self.lr, self.seen = nn.Linear(inputs, 2), lr, 0

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        self.seen += batch[1].numel()
        return self.autobalance_step_loss(batch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def trainer(max_epochs):
    return quiet_trainer(max_epochs=max_epochs)


def test_error_set_matches_numpy_argmax_of_a_fixed_linear_model():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(53, 3)).astype(np.float32)
    y, g = rng.integers(0, 3, size=53), rng.integers(0, 2, size=53)
    weight, bias = rng.normal(size=(3, 3)).astype(np.float32), rng.normal(size=3).astype(np.float32)
    reference = np.flatnonzero((x @ weight.T + bias).argmax(1) != y)
    assert 0 < reference.size < 53
    model = nn.Linear(3, 3)
    with torch.no_grad():
        model.weight.copy_(torch.from_numpy(weight))
        model.bias.copy_(torch.from_numpy(bias))
    dataset = TensorDataset(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(g))
    assert error_set(model, DataLoader(dataset, batch_size=10)).tolist() == reference.tolist()
    mixin = Linear(3)
    mixin.net = model
    mixin.train()
    assert error_set(mixin, DataLoader(dataset, batch_size=7)).tolist() == reference.tolist()
    assert mixin.training  # its mode is restored


def test_error_set_refuses_loaders_out_of_dataset_order():
    dataset = TensorDataset(torch.randn(8, 2), torch.randint(0, 2, (8,)))
    model = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="unshuffled loader"):
        error_set(model, DataLoader(dataset, batch_size=4, shuffle=True))
    with pytest.raises(ValueError, match="drop_last=True"):
        error_set(model, DataLoader(dataset, batch_size=3, drop_last=True))


def spurious(n_per_class, seed, majority=0.95, balanced=False):
    """A core feature (label ± 1 plus unit noise) and a spurious one (group ± 1 plus 0.2 noise); group = label for a
    ``majority`` share of the samples, or every (group, class) cell equally often (``balanced``)."""
    gen = torch.Generator().manual_seed(seed)
    if balanced:
        y = torch.tensor([0, 1, 0, 1]).repeat_interleave(n_per_class)
        a = torch.tensor([0, 0, 1, 1]).repeat_interleave(n_per_class)
    else:
        y = torch.arange(2).repeat_interleave(n_per_class)
        a = torch.where(torch.rand(y.numel(), generator=gen) < majority, y, 1 - y)
    core = (2 * y - 1).float() + torch.randn(y.numel(), generator=gen)
    spur = (2 * a - 1).float() + 0.2 * torch.randn(y.numel(), generator=gen)
    return TensorDataset(torch.stack([core, spur], 1), y, a)


class Spurious(pl.LightningDataModule):
    def __init__(self, seed):
        super().__init__()
        self.train_set, self.test_set = spurious(500, seed), spurious(200, seed + 1000, balanced=True)

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=64, shuffle=True)


def worst_group(model, dataset):
    x, y, a = dataset.tensors
    with torch.no_grad():
        return float(worst_group_accuracy(model(x).argmax(1), y, a, num_classes=2, num_groups=2))


@pytest.mark.parametrize("seed", [0, 1])
def test_jtt_beats_erm_on_worst_group_accuracy(seed):
    # T = 10, λ_up = 20, 20 epochs: JTT beat ERM on seeds 0-7 (worst-group accuracy 0.63-0.80 vs 0.21-0.37)
    dm = Spurious(seed)
    pl.seed_everything(seed, verbose=False)
    erm = Linear()
    trainer(20).fit(erm, datamodule=dm)
    pl.seed_everything(seed, verbose=False)
    model, report = jtt(Linear, dm, stage1_epochs=10, upweight=20, trainer_factory=trainer, epochs=20)
    assert worst_group(model, dm.test_set) > worst_group(erm, dm.test_set) + 0.2
    # mechanics: the error set is the stage-1 model's, mostly the minority cells, and stage 2 saw it 20 times
    ordered = DataLoader(dm.train_set, batch_size=100)
    assert torch.equal(report.error_set, error_set(report.stage1_model, ordered))
    errors = report.error_group_class_counts
    assert errors[0, 1] + errors[1, 0] > errors[0, 0] + errors[1, 1]
    assert report.num_train == 1000 and model.seen == 20 * (1000 + 19 * report.error_set.numel())


def test_jtt_on_a_heldout_split_trains_on_the_train_part():
    split = HeldOutSplit(Spurious(0), fraction=0.2, seed=0)
    pl.seed_everything(0, verbose=False)
    model, report = jtt(Linear, split, stage1_epochs=2, upweight=5, trainer_factory=trainer, epochs=1)
    assert report.num_train == len(split.train_dataset) == 800
    assert report.group_class_counts.tolist() == split.group_class_counts.tolist()
    assert model.seen == 800 + 4 * report.error_set.numel()
    with pytest.raises(ValueError, match="upweight"):
        jtt(Linear, split, stage1_epochs=2, upweight=0, trainer_factory=trainer, epochs=1)


def test_resample_state_is_checkpointed_with_the_wrapped_split():
    sub = GroupBalancedSubsample(HeldOutSplit(CellData(TABLE), fraction=0.25, seed=1), seed=2)
    sub.setup("fit")
    state = sub.state_dict()
    assert state == {"seed": 2, "wrapped": {"seed": 1}}
    sub.load_state_dict(state)
    with pytest.raises(ValueError, match="seed 5"):
        sub.load_state_dict({"seed": 5, "wrapped": {"seed": 1}})
    with pytest.raises(ValueError, match="HeldOutSplit of seed 7"):
        sub.load_state_dict({"seed": 2, "wrapped": {"seed": 7}})
    up = Upsample(CellData(TABLE), torch.tensor([3, 1]), factor=2)
    up.setup("fit")
    assert up.indices.tolist() == [1, 3] and int(up.sample_counts.sum()) == 102
