"""Files written by an earlier version still work: a learned-loss file and a search checkpoint written by commit
4486b91 (before the issue-17 and issue-19 changes), kept in ``tests/data/legacy_4486b91/``.

They were made with that commit's command-line app (``config.yaml`` is its Hydra config)::

    python -m lightning_autobalance 'phases=[search]' data.n_max=120 data.test_per_class=20 data.imbalance_ratio=10 \
        search.max_epochs=3 autobalance.warmup_epochs=1 autobalance.every_n_steps=2 model.channels=4 threads=1

``autobalance_loss.yaml`` is its export (learned-loss format version 2); ``search.ckpt`` its last checkpoint
(``epoch=2-step=21.ckpt``: α in the AutoBalance callback's state, version 1, after 7 hyper-steps).
"""

import copy

import lightning.pytorch as pl
import pytest
import torch
import yaml
from omegaconf import OmegaConf

from lightning_autobalance import AutoBalance, load_loss
from lightning_autobalance.classifier import ImbalancedClassifier
from lightning_autobalance.cli import run
from lightning_autobalance.data.mnist1d_lt import MNIST1DLongTail
from lightning_autobalance.data.split import HeldOutSplit
from lightning_autobalance.learned_loss import LearnedLossError
from lightning_autobalance.models import MNIST1DConvNet
from tests._helpers.data import prepared
from tests.conftest import ROOT, SMALL_RUN
from tests.test_cli_checks import compose_config

LEGACY = ROOT / "tests" / "data" / "legacy_4486b91"


def test_learned_loss_file_of_4486b91_loads_with_its_values():
    saved = yaml.safe_load((LEGACY / "autobalance_loss.yaml").read_text())
    assert saved["version"] == 2
    loss = load_loss(LEGACY / "autobalance_loss.yaml", num_classes=10, num_groups=1)
    for kind in ("delta", "iota", "omega"):
        assert torch.equal(getattr(loss, kind)(), torch.tensor(saved["values"][kind])), kind  # float32 round trip
    assert not any(p.requires_grad for p in loss.parameters())  # frozen, as the retrain phase wants it


def test_the_app_retrains_with_the_learned_loss_file_of_4486b91(tmp_path, single_thread):
    overrides = [*SMALL_RUN, "phases=[retrain]", f"learned_loss={LEGACY / 'autobalance_loss.yaml'}", "model.channels=4"]
    results = run(compose_config(overrides, tmp_path), tmp_path / "out")
    assert 0.0 <= results["AutoBalance"]["balanced_error"] <= 1.0
    assert "1.035" in (tmp_path / "out" / "results.md").read_text()  # the file's Δ in the learned-loss table


def _legacy_setup():
    cfg = OmegaConf.load(LEGACY / "config.yaml")
    data = prepared(MNIST1DLongTail(**{k: v for k, v in cfg.data.items() if k != "_target_"}))
    split = HeldOutSplit(data, fraction=cfg.search.heldout_fraction, seed=cfg.seed, num_classes=10)
    net = MNIST1DConvNet(num_classes=10, channels=cfg.model.channels)
    model = ImbalancedClassifier(net, num_classes=10, **cfg.optimizer)
    return model, split


def test_module_weights_of_the_4486b91_checkpoint_load_into_the_current_classifier():
    checkpoint = torch.load(LEGACY / "search.ckpt", map_location="cpu", weights_only=False)
    model, _ = _legacy_setup()
    model.load_state_dict(checkpoint["state_dict"])  # strict: the module's parameter names are unchanged


def test_a_search_resumes_from_the_4486b91_checkpoint(tmp_path, single_thread):
    checkpoint = torch.load(LEGACY / "search.ckpt", map_location="cpu", weights_only=False)
    state = checkpoint["callbacks"]["AutoBalance"]
    assert state["version"] == 1 and state["hyper_steps"] == 7
    model, split = _legacy_setup()
    callback = AutoBalance(warmup_epochs=1, every_n_steps=2, seed=0)
    trainer = pl.Trainer(
        max_epochs=4, callbacks=[callback], logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    before = copy.deepcopy(state["loss"])
    trainer.fit(model, datamodule=split, ckpt_path=LEGACY / "search.ckpt", weights_only=False)
    assert trainer.current_epoch == 4 and callback.hyper_steps > 7  # continued from the saved counters
    raw = {k: v for k, v in callback.loss.state_dict().items() if k in before}
    assert raw and any(not torch.equal(raw[k], before[k]) for k in raw)  # and α kept learning from the saved α


def test_load_loss_of_a_4486b91_checkpoint_says_where_its_loss_is():
    with pytest.raises(LearnedLossError, match=r"written by an earlier version, .* Resume .* autobalance_loss\.yaml"):
        load_loss(LEGACY / "search.ckpt", weights_only=False)
