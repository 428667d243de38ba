"""The `conf/experiment` entries compose, the image experiments run end to end on tiny files in the real layouts, and
the group-fairness example runs."""

import importlib.util
import json
import math

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

import tests.test_group_data as group_data
from lightning_autobalance import Neumann, load_loss
from lightning_autobalance.cli import run
from lightning_autobalance.data.celeba import CelebA
from lightning_autobalance.data.spurious import SpuriousMNIST1D
from lightning_autobalance.data.waterbirds import Waterbirds
from lightning_autobalance.hyperstep import FullNetwork
from lightning_autobalance.models import ImageResNet
from lightning_autobalance.objectives import WorstGroup
from tests.conftest import ROOT

CONF = ROOT / "conf"
EXPERIMENTS = {"spurious_mnist1d": SpuriousMNIST1D, "waterbirds": Waterbirds, "celeba": CelebA}
# A few steps of every phase on a handful of tiny images (the experiments' objective and schedule shape; ResNet-18
# instead of their ResNet-50 to keep the test fast: the same wrapper).
TINY_IMAGES = [
    "model=resnet18",
    "data.image_size=16",
    "data.batch_size=4",
    "data.num_workers=0",
    "train.max_epochs=1",
    "search.max_epochs=1",
    "autobalance.warmup_epochs=0",
    "autobalance.every_n_steps=1",
    "autobalance.train_batches=1",
    "autobalance.heldout_batches=1",
    "autobalance.batch_size=4",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "threads=1",
]


def compose_experiment(name, overrides=()):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=[f"experiment={name}", *overrides])


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_experiment_composes_and_instantiates(name, tmp_path):
    cfg = compose_experiment(name, [f"data.root={tmp_path}"])
    assert cfg.objective._target_.endswith("WorstGroup")
    datamodule = instantiate(cfg.data)
    assert isinstance(datamodule, EXPERIMENTS[name]) and datamodule.num_groups == 2
    assert isinstance(instantiate(cfg.objective), WorstGroup)
    assert cfg.phases == ["baseline", "search", "retrain"]
    if name != "spurious_mnist1d":
        net = instantiate(cfg.model, num_classes=2)
        assert isinstance(net, ImageResNet) and net.autobalance_head().out_features == 2


def test_experiment_values_win_over_the_primary_config():
    # `experiment` comes after `_self_` in the defaults list, so its values override config.yaml's
    cfg = compose_experiment("waterbirds", ["data.root=/data"])
    assert cfg.optimizer.lr == 1.0e-3 and cfg.train.max_epochs == 300 and cfg.data.root == "/data"
    spurious = compose_experiment("spurious_mnist1d")
    assert spurious.data._target_.endswith("SpuriousMNIST1D") and spurious.autobalance.solver is None
    engine = instantiate(spurious.autobalance.engine)
    assert isinstance(engine, FullNetwork) and engine.solver == Neumann(terms=5, alpha=0.05)
    assert spurious.autobalance.heldout_batches == 4 and spurious.objective.temperature == 1.0
    # and the command line still wins over the experiment
    assert compose_experiment("waterbirds", ["optimizer.lr=0.5", "data.root=/d"]).optimizer.lr == 0.5


def test_image_resnet_feature_hook_and_checkpoint(tmp_path):
    net = ImageResNet(num_classes=3, arch="resnet18")
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(net(x), net.autobalance_head()(net.autobalance_features(x)))
    assert net.autobalance_features(x).shape == (2, 512)
    # a torchvision-format state dict (its fc is ignored: the head is always new)
    from torchvision.models import resnet18

    source = resnet18(num_classes=7)
    torch.save(source.state_dict(), tmp_path / "r18.pth")
    loaded = ImageResNet(num_classes=3, arch="resnet18", checkpoint=str(tmp_path / "r18.pth"))
    assert torch.equal(loaded.body.conv1.weight, source.conv1.weight)
    with pytest.raises(FileNotFoundError, match="checkpoint=null"):
        ImageResNet(arch="resnet18", checkpoint=str(tmp_path / "missing.pth"))
    state = source.state_dict()
    state["layer1.0.conv1.weight"] = state["layer1.0.conv1.weight"][:32]
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"does not fit torchvision's resnet18.*other shapes \['layer1.0.conv1"):
        ImageResNet(arch="resnet18", checkpoint=str(tmp_path / "bad.pth"))
    with pytest.raises(ValueError, match="either weights="):
        ImageResNet(arch="resnet18", weights="IMAGENET1K_V1", checkpoint=str(tmp_path / "r18.pth"))
    with pytest.raises(ValueError, match="Unknown ResNet 'resnet19'"):
        ImageResNet(arch="resnet19")


def _check_results(out, results):
    assert set(results) == {"CE", "AutoBalance (search model)", "AutoBalance"}
    for r in results.values():
        assert 0.0 <= r["worst_group_error"] <= 1.0
    written = json.loads((out / "results.json").read_text())["results"]
    assert written["AutoBalance"]["worst_group_error"] == results["AutoBalance"]["worst_group_error"]
    learned = load_loss(out / "autobalance_loss.yaml")
    assert learned.num_groups == 2 and bool(learned.iota().abs().sum() > 0)  # hyper-steps moved α off CE


@pytest.mark.slow
def test_waterbirds_experiment_end_to_end(tmp_path, monkeypatch):
    # the group-data tests' layout with two more training images, so every (place, bird) cell of the training split
    # has two images (one for the held-out split)
    extra = [("005.Crested_Auklet/l.png", 0, 1, 0), ("005.Crested_Auklet/m.png", 1, 0, 0)]
    monkeypatch.setattr(group_data, "WATERBIRDS", group_data.WATERBIRDS + extra)
    root = group_data._write_waterbirds(tmp_path / "waterbird_complete95_forest2water2")
    cfg = compose_experiment("waterbirds", [f"data.root={root}", *TINY_IMAGES])
    results = run(cfg, tmp_path / "out")
    _check_results(tmp_path / "out", results)
    assert math.isfinite(results["AutoBalance"]["equal_opportunity_gap"])


@pytest.mark.slow
def test_celeba_experiment_end_to_end(tmp_path, monkeypatch):
    # eight training images, two per (hair, sex) cell; the test images cover both groups of the positive class
    monkeypatch.setattr(group_data, "PARTITION", [0] * 8 + [2, 2, 2, 1])
    root = group_data._write_celeba(tmp_path)
    overrides = [f"data.root={root}", "data.verify_md5=false", "data.crop_size=16", *TINY_IMAGES]
    cfg = compose_experiment("celeba", overrides)
    results = run(cfg, tmp_path / "out")
    _check_results(tmp_path / "out", results)
    assert math.isfinite(results["AutoBalance"]["equal_opportunity_gap"])


@pytest.mark.slow
def test_group_fairness_example_runs_fast(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("group_fairness", ROOT / "examples" / "group_fairness.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    results = example.main(["--fast", "--objective", "eo", "--root", str(tmp_path)])
    assert set(results) == {"ERM (CE)", "AutoBalance (search model)", "AutoBalance (retrained)"}
    for r in results.values():
        assert 0.0 <= r["worst_group_error"] <= 100.0 and 0.0 <= r["equal_opportunity_gap"] <= 100.0
    assert "| AutoBalance (retrained) |" in capsys.readouterr().out
