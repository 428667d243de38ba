"""The command-line app's group-robustness baselines: ``resample=group_subsample`` (baseline phase), the ``jtt``
phase and the ``llr`` phase (``llr=dfr`` / ``llr=afr`` / Thumb).

Each phase is checked against the same pipeline written directly with the library (the datamodule, the wrappers,
:func:`~lightning_autobalance.jtt.jtt`, :class:`~lightning_autobalance.last_layer.LastLayerRetraining` and a plain
Trainer), with the test errors computed by scikit-learn: the app trains what its config says, with the seed it says.
The config checks of the new keys fail before anything is trained, naming the key.
"""

import json

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from sklearn.metrics import balanced_accuracy_score

from lightning_autobalance.classifier import ImbalancedClassifier
from lightning_autobalance.cli import run
from lightning_autobalance.data.resample import GroupBalancedSubsample
from lightning_autobalance.data.split import HeldOutSplit
from lightning_autobalance.data.spurious_digits import SpuriousDigits
from lightning_autobalance.jtt import jtt
from lightning_autobalance.last_layer import LastLayerRetraining
from lightning_autobalance.models import DigitsConvNet
from tests._helpers.data import prepared
from tests._helpers.trainers import quiet_trainer
from tests.conftest import ROOT, SMALL_RUN
from tests.test_cli_checks import fails_before_anything_is_written

CONF = ROOT / "conf"
# spurious digits, 2 epochs, one thread: every phase in a few seconds
DIGITS = ["experiment=spurious_digits", "train.max_epochs=2", "trainer.enable_progress_bar=false", "threads=1"]
OPTIMIZER = {"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4}  # conf/config.yaml's optimizer


def compose_config(overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def digits() -> SpuriousDigits:
    return prepared(
        SpuriousDigits(correlation=0.95, strength=1.0, val_per_cell=50, test_per_cell=100, batch_size=64, seed=0)
    )


def model() -> ImbalancedClassifier:
    return ImbalancedClassifier(DigitsConvNet(num_classes=2), num_classes=2, num_groups=2, **OPTIMIZER)


def trainer(max_epochs: int, callbacks=()) -> pl.Trainer:
    return quiet_trainer(max_epochs=max_epochs, callbacks=list(callbacks), devices=1)


@torch.no_grad()
def balanced_error(net: ImbalancedClassifier, data: SpuriousDigits) -> float:
    """1 − scikit-learn's balanced accuracy of ``net`` on the test set."""
    net.eval()
    preds, targets = [], []
    for x, y, _ in data.test_dataloader():
        preds.append(net(x).argmax(1))
        targets.append(y)
    return 1.0 - balanced_accuracy_score(torch.cat(targets).numpy(), torch.cat(preds).numpy())


def test_group_subsample_baseline_is_the_library_subsample(tmp_path, single_thread):
    results = run(compose_config([*DIGITS, "phases=[baseline]", "resample=group_subsample"]), tmp_path / "out")
    assert list(results) == ["CE + group-balanced subsample"]

    pl.seed_everything(0, workers=True)
    data = GroupBalancedSubsample(digits(), seed=0)
    data.setup("fit")
    assert data.group_class_counts.tolist() == [[30, 30], [30, 30]]  # every cell cut to the smallest (30)
    pl.seed_everything(0, workers=True)
    net = model()
    trainer(2).fit(net, datamodule=data)
    assert results["CE + group-balanced subsample"]["balanced_error"] == pytest.approx(balanced_error(net, digits()))
    log = (tmp_path / "out" / "logs" / "baseline" / "version_0" / "metrics.csv").read_text()
    assert "train/loss" in log


def test_jtt_phase_is_the_library_jtt(tmp_path, single_thread):
    overrides = [*DIGITS, "phases=[jtt]", "jtt.stage1_epochs=1", "jtt.upweight=5"]
    results = run(compose_config(overrides), tmp_path / "out")

    pl.seed_everything(0, workers=True)
    net, report = jtt(model, digits(), stage1_epochs=1, upweight=5, trainer_factory=trainer, epochs=2, seed=0)
    assert results["JTT"]["error_set_size"] == report.error_set.numel() > 0
    assert results["JTT"]["balanced_error"] == pytest.approx(balanced_error(net, digits()))
    for stage in ("jtt_stage1", "jtt"):  # one log per stage
        assert (tmp_path / "out" / "logs" / stage / "version_0" / "metrics.csv").exists()
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["results"]["JTT"]["error_set_size"] == report.error_set.numel()


@pytest.mark.parametrize("choice, mode, chosen", [("dfr", "dfr", "C"), ("afr", "afr", "gamma")])
def test_llr_phase_is_the_library_last_layer_retraining(tmp_path, single_thread, choice, mode, chosen):
    results = run(compose_config([*DIGITS, "phases=[llr]", f"llr={choice}"]), tmp_path / "out")
    row = results[f"CE + last layer ({mode})"]
    assert row["llr"]["retraining_set"] == "heldout"

    pl.seed_everything(0, workers=True)
    split = HeldOutSplit(digits(), fraction=0.2, seed=0, num_classes=2)
    split.setup("fit")
    net = model()
    group_head = compose_config([f"llr={choice}"]).llr.group_head
    callback = LastLayerRetraining(mode=mode, group_head=dict(group_head), seed=0)
    trainer(2, [callback]).fit(net, datamodule=split)
    assert row["llr"]["retraining_samples"] == sum(split.heldout_class_counts.tolist()) == 239
    assert row["llr"][chosen] == callback.report[f"llr/{mode}/{chosen}"]
    assert row["balanced_error"] == pytest.approx(balanced_error(net, digits()))
    assert "worst_group_error" in row


def test_llr_phase_on_the_validation_set_and_thumb_without_groups(tmp_path, single_thread):
    results = run(compose_config([*DIGITS, "phases=[llr]", "llr=dfr", "llr.dataloader=val"]), tmp_path / "dfr")
    assert results["CE + last layer (dfr)"]["llr"]["retraining_samples"] == 200  # the group-balanced validation set
    # long-tailed MNIST-1D (no groups) with the default llr group: Thumb weights on a square-loss head
    overrides = [*SMALL_RUN, "phases=[baseline,llr]"]
    results = run(compose_config(overrides), tmp_path / "thumb")
    assert list(results) == ["CE", "CE + last layer (thumb)"]
    report = (tmp_path / "thumb" / "results.md").read_text()
    assert "| CE + last layer (thumb) |" in report


@pytest.mark.parametrize(
    "overrides, pattern",
    [
        (["phases=[llr]", "~llr"], r"phases has llr, but the llr group is not set .* llr=dfr"),
        (["phases=[llr]", "llr.dataloader=test"], r"llr.dataloader='test': the test set, which would then select"),
        (["phases=[llr]", "llr.dataloader=train"], r"llr.dataloader='train': the backbone's own training data"),
        (["phases=[llr]", "llr.eval_dataloader=test"], r"llr.eval_dataloader='test': .* null \(default\)"),
        (["phases=[llr]", "llr.mode=bogus"], r"The `llr` config is invalid: .*bogus"),
        (["phases=[llr]", "search.heldout_fraction=1.5"], r"search.heldout_fraction must lie strictly between 0"),
        (["phases=[jtt]", "jtt.upweight=0"], r"jtt.upweight must be an integer ≥ 1, got 0: e.g. jtt.upweight=20"),
        (["phases=[jtt]", "jtt.stage1_epochs=1.5"], r"jtt.stage1_epochs must be an integer ≥ 1, got 1.5"),
        (["phases=[search,retrain]", "resample=group_subsample"], r"resample=GroupBalancedSubsample changes the"),
    ],
)
def test_bad_group_phase_settings_fail_before_anything_is_written(tmp_path, overrides, pattern):
    cfg = compose_config([*SMALL_RUN, f"data.root={tmp_path / 'data'}", *overrides])
    fails_before_anything_is_written(cfg, tmp_path, ValueError, pattern)


@pytest.mark.parametrize(
    "overrides, pattern",
    [
        (["phases=[llr]", "llr.dataloader=val"], r"llr.dataloader=val, but data .* has no validation set"),
        (["phases=[baseline]", "resample=group_subsample", "resample.over=group"], r"resample.over=group .* no groups"),
    ],
)
def test_data_the_group_phases_cannot_use_fails_before_training(tmp_path, overrides, pattern):
    cfg = compose_config([*SMALL_RUN, *overrides])  # long-tailed MNIST-1D: no validation set, no groups
    with pytest.raises(ValueError, match=pattern):
        run(cfg, tmp_path / "out")
    assert not (tmp_path / "out" / "logs").exists() and not (tmp_path / "out" / "results.md").exists()


def test_llr_config_group_lists_the_dfr_and_afr_choices():
    for choice, mode in (("default", "thumb"), ("dfr", "dfr"), ("afr", "afr")):
        node = compose_config([f"llr={choice}"]).llr
        assert node.mode == mode and node.dataloader == "heldout" and node.head is None
    assert np.allclose(list(compose_config(["llr=dfr"]).llr.group_head.C_grid), [1.0, 0.7, 0.3, 0.1, 0.07, 0.03, 0.01])
