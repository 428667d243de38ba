"""Spurious digits (scikit-learn's 8×8 digits on a red / blue background): splits, correlation, balance, argument
checks, the Hydra experiment and a few training steps of DigitsConvNet."""

import pytest
import torch
from hydra.utils import instantiate

from lightning_autobalance.classifier import ImbalancedClassifier
from lightning_autobalance.cli_checks import check_config
from lightning_autobalance.data.split import HeldOutSplit
from lightning_autobalance.data.spurious_digits import DIGITS_CLASS_SIZES, SpuriousDigits, load_digit_images
from lightning_autobalance.models import DigitsConvNet
from tests._helpers.data import prepared
from tests._helpers.trainers import quiet_trainer
from tests.test_cli_checks import compose_config

SPLITS = ("train", "val", "test")


def _setup(**kwargs) -> SpuriousDigits:
    return prepared(SpuriousDigits(**kwargs))


@pytest.fixture(scope="module")
def digits():
    return _setup()


def _dataset(dm, split):
    return getattr(dm, f"{split}_set")


def _cells(dataset) -> list[list[int]]:
    """Counts (G, K): rows group, columns class."""
    return torch.bincount(dataset.groups * 2 + dataset.targets, minlength=4).view(2, 2).tolist()


def test_class_sizes_match_scikit_learn():
    _, digits = load_digit_images()
    assert digits.numel() == 1797
    assert tuple(torch.bincount((digits >= 5).long()).tolist()) == DIGITS_CLASS_SIZES


def test_shapes_dtypes_and_loaders(digits):
    dm = digits
    assert (dm.num_classes, dm.num_groups) == (2, 2)
    assert [len(_dataset(dm, s)) for s in SPLITS] == [1197, 200, 400]
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        x, y, g = next(iter(loader))
        assert x.shape == (64, 3, 8, 8) and x.dtype == torch.float32
        assert y.dtype == torch.long and g.dtype == torch.long
        assert set(y.tolist()) <= {0, 1} and set(g.tolist()) <= {0, 1}
        assert x.min() >= 0.0 and x.max() <= 1.0
    assert dm.group_class_counts.tolist() == [[571, 30], [30, 566]]
    assert torch.equal(dm.group_class_counts, dm.expected_group_class_counts())
    assert dm.class_counts.tolist() == [601, 596]


@pytest.mark.parametrize("correlation", [0.9, 0.95])
def test_training_correlation_is_the_requested_one_per_class(correlation):
    train = _setup(correlation=correlation).train_set
    for label in (0, 1):
        in_class = train.groups[train.targets == label]
        agree = int((in_class == label).sum())
        assert agree == round(correlation * in_class.numel())
        assert abs(agree / in_class.numel() - correlation) <= 0.5 / in_class.numel()


def test_validation_and_test_are_group_balanced(digits):
    for split, per_cell in (("val", 50), ("test", 100)):
        cells = _cells(_dataset(digits, split))
        assert cells == [[per_cell, per_cell], [per_cell, per_cell]]  # background independent of the label
    odd = _setup(val_per_cell=7, test_per_cell=13)
    assert _cells(odd.val_set) == [[7, 7], [7, 7]] and _cells(odd.test_set) == [[13, 13], [13, 13]]


def test_images_are_the_digits_on_the_group_background(digits):
    ink, labels = load_digit_images()
    for split in SPLITS:
        ds, index = _dataset(digits, split), digits.split_indices[split]
        assert torch.equal(ds.targets, (labels[index] >= 5).long())
        assert torch.equal(ds.inputs[:, 1], ink[index])  # green: the digit alone, in both groups
        red, blue = ds.inputs[:, 0], ds.inputs[:, 2]
        g0 = ds.groups == 0
        assert torch.equal(red[g0], torch.ones_like(red[g0])) and torch.equal(blue[g0], ink[index][g0])
        assert torch.equal(blue[~g0], torch.ones_like(blue[~g0])) and torch.equal(red[~g0], ink[index][~g0])
    control = _setup(strength=0.0)
    assert torch.equal(control.train_set.inputs, ink[control.split_indices["train"]].unsqueeze(1).expand(-1, 3, -1, -1))


def test_no_image_in_two_splits_and_every_image_used(digits):
    ink, _ = load_digit_images()
    rows = [set(digits.split_indices[s].tolist()) for s in SPLITS]
    assert sum(map(len, rows)) == 1797 and set().union(*rows) == set(range(1797))
    assert not (rows[0] & rows[1] or rows[0] & rows[2] or rows[1] & rows[2])
    # and by content: no two of the 1,797 images are equal, so no image (whatever its background) is in two splits
    green = torch.cat([digits.train_set.inputs[:, 1], digits.val_set.inputs[:, 1], digits.test_set.inputs[:, 1]])
    assert torch.unique(green.flatten(1), dim=0).shape[0] == 1797 == torch.unique(ink.flatten(1), dim=0).shape[0]


def test_split_is_deterministic_and_depends_on_the_seed(digits):
    again = _setup()
    for split in SPLITS:
        assert torch.equal(_dataset(again, split).inputs, _dataset(digits, split).inputs)
        assert torch.equal(_dataset(again, split).groups, _dataset(digits, split).groups)
    other = _setup(seed=1)
    assert not torch.equal(other.split_indices["test"], digits.split_indices["test"])
    assert other.group_class_counts.tolist() == digits.group_class_counts.tolist()


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"correlation": 0.5}, "correlation must lie strictly between 0.5 and 1"),
        ({"correlation": 1.0}, "correlation must lie strictly between 0.5 and 1"),
        ({"correlation": "high"}, "correlation must lie"),
        ({"strength": -0.1}, "strength must lie in"),
        ({"strength": 1.5}, "strength must lie in"),
        ({"val_per_cell": 0}, "val_per_cell must be an integer ≥ 1"),
        ({"val_per_cell": 2.5}, "val_per_cell must be an integer ≥ 1"),
        ({"test_per_cell": 0}, "test_per_cell must be an integer ≥ 1"),
        ({"batch_size": 0}, "batch_size must be an integer ≥ 1"),
        ({"seed": -1}, "seed must be an integer ≥ 0"),
        ({"seed": 1.5}, "seed must be an integer ≥ 0"),
        ({"seed": True}, "seed must be an integer ≥ 0"),
        ({"test_per_cell": 340, "val_per_cell": 100}, "val_per_cell=100 and test_per_cell=340 take 880 images"),
        ({"test_per_cell": 400}, "test_per_cell=400"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        SpuriousDigits(**kwargs)


def test_experiment_composes_and_check_config_accepts_it():
    cfg = compose_config(["experiment=spurious_digits"], small=False)
    check_config(cfg)
    assert cfg.objective._target_.endswith("WorstGroup")
    assert cfg.data._target_ == "lightning_autobalance.data.spurious_digits.SpuriousDigits"
    assert isinstance(instantiate(cfg.data), SpuriousDigits)
    net = instantiate(cfg.model, num_classes=2)
    assert isinstance(net, DigitsConvNet) and net.autobalance_head().out_features == 2


@pytest.mark.parametrize(
    "overrides",
    [["experiment=spurious_digits", "model=mnist1d_cnn"], ["experiment=spurious_mnist1d", "model=digits_cnn"]],
)
def test_sequence_and_image_pairings_are_rejected(overrides):
    with pytest.raises(ValueError, match=r"model \(lightning_autobalance\.models\.\w+\) takes"):
        check_config(compose_config(overrides, small=False))


def test_a_resnet_on_the_digits_passes_the_check_and_runs():
    # 3-channel 8×8 images are "image" inputs: torchvision's ResNet runs on them (silly, but not wrong)
    check_config(compose_config(["experiment=spurious_digits", "model=resnet18"], small=False))
    # and DigitsConvNet (adaptive pooling) runs on larger images, e.g. CIFAR's
    assert DigitsConvNet(num_classes=10)(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_tiny_fit_of_the_digits_cnn(digits, tmp_path):
    torch.manual_seed(0)
    model = ImbalancedClassifier(DigitsConvNet(num_classes=2, channels=8), num_classes=2, num_groups=2, lr=0.05)
    split = HeldOutSplit(digits, fraction=0.2, seed=0, num_classes=2)
    trainer = quiet_trainer(max_steps=5, limit_val_batches=1, default_root_dir=tmp_path)
    before = [p.detach().clone() for p in model.parameters()]
    trainer.fit(model, datamodule=split)
    assert trainer.global_step == 5
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    # the search phase's held-out split: 20% of every training cell, 6 images of each minority cell
    assert split.heldout_group_class_counts.tolist() == [[114, 6], [6, 113]]
    assert torch.equal(split.group_class_counts + split.heldout_group_class_counts, digits.group_class_counts)
