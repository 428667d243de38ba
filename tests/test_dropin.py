"""Drop-in use in a project's own LightningModule (issue 17, points 2-9 of the library side).

The project module below is built like a lightning-hydra-template model: its own torchmetrics metric, its own
``validation_step`` logging ``val/acc``, a ModelCheckpoint on that metric. Each test fails on 4486b91.
"""

import warnings

import lightning.pytorch as pl
import pytest
import torch
import yaml
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import OmegaConf
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import MulticlassAccuracy

from lightning_autobalance import AutoBalance, AutoBalanceMixin, HeldOutSplit, ParametricCrossEntropy, load_loss
from lightning_autobalance.hyperstep import make_engine
from lightning_autobalance.mixin import PlainCrossEntropy
from tests.conftest import ROOT
from tests.test_callback import K, TinyData, make_trainer


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 16), nn.Tanh())
        self.head = nn.Linear(16, K)

    def forward(self, x):
        return self.head(self.body(x))


class ProjectModel(pl.LightningModule):
    """A project's own module: its own metric and steps, trained with plain cross-entropy."""

    def __init__(self):
        super().__init__()
        self.net = Net()
        self.val_acc = MulticlassAccuracy(K)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.val_acc(self(x), y)
        self.log("val/acc", self.val_acc, on_epoch=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


class Balanced(AutoBalanceMixin, ProjectModel):
    """The three-line drop-in: the mixin first, the loss call in training_step, the feature hooks."""

    def training_step(self, batch, batch_idx):
        return self.autobalance_step_loss(batch)

    def autobalance_features(self, x):
        return self.net.body(x)  # attribute access passes through a torch.compile-d net

    def autobalance_head(self):
        return self.net.head


class BalancedWithBothMetrics(Balanced):
    """The project's validation plus the AutoBalance metrics, as the mixin's docstring suggests."""

    def validation_step(self, batch, batch_idx):
        super().validation_step(batch, batch_idx)  # the project's step: logs its own metric first
        self.autobalance_evaluate("val", batch)


class TinyDataWithValidation(TinyData):
    def val_dataloader(self):
        return val_loader()


def val_loader():
    gen = torch.Generator().manual_seed(1)
    data = TinyData(counts=(20, 20, 20), seed=0).dataset
    x, y = data.tensors
    return DataLoader(TensorDataset(x + 0.1 * torch.randn(x.shape, generator=gen), y), batch_size=20)


def callback(tmp_path, **options):
    defaults = dict(warmup_epochs=1, every_n_steps=3, export_path=tmp_path / "loss.yaml", batch_size=16)
    return AutoBalance(**{**defaults, **options})


def test_the_projects_own_validation_step_wins_over_the_mixins(tmp_path):
    model = Balanced()
    metrics = make_trainer(tmp_path, []).validate(model, dataloaders=val_loader(), verbose=False)[0]
    assert set(metrics) == {"val/acc"}  # the project's metric, not replaced by the mixin's default step


def test_evaluate_next_to_the_projects_own_metric_does_not_crash(tmp_path):
    model = BalancedWithBothMetrics()
    metrics = make_trainer(tmp_path, []).validate(model, dataloaders=val_loader(), verbose=False)[0]
    assert {"val/acc", "val/balanced_error", "val/worst_class_error", "val/error"} <= set(metrics)


def test_search_with_a_checkpoint_on_the_projects_metric_and_loss_from_the_best_checkpoint(tmp_path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/acc", mode="max", save_top_k=1, save_last=True)
    autobalance = callback(tmp_path)
    trainer = make_trainer(tmp_path, [autobalance, checkpoint], max_epochs=4, enable_checkpointing=True)
    pl.seed_everything(0, verbose=False)
    trainer.fit(Balanced(), datamodule=HeldOutSplit(TinyDataWithValidation()))
    assert autobalance.hyper_steps > 0 and checkpoint.best_model_path
    best = load_loss(checkpoint.best_model_path)  # α of the best epoch, straight from the checkpoint
    last = load_loss(tmp_path / "ckpt" / "last.ckpt")
    exported = load_loss(tmp_path / "loss.yaml")
    assert best.num_classes == K and best.learnable == ()
    for kind in ("delta", "iota"):
        assert torch.equal(getattr(last, kind)(), getattr(exported, kind)())  # last checkpoint = the end of fit


def test_a_checkpoint_without_autobalance_state_is_refused_by_name(tmp_path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0)
    make_trainer(tmp_path, [checkpoint], max_epochs=1, enable_checkpointing=True).fit(
        ProjectModel(), train_dataloaders=TinyData().train_dataloader()
    )
    with pytest.raises(ValueError, match="no AutoBalance state"):
        load_loss(tmp_path / "ckpt" / "last.ckpt")


def test_without_callback_or_loss_the_mixin_trains_with_plain_cross_entropy(tmp_path):
    model = Balanced()
    assert not model.has_autobalance_loss and isinstance(model.autobalance_loss, PlainCrossEntropy)
    x, y = TinyData().dataset.tensors
    assert torch.equal(model.autobalance_step_loss((x, y)), F.cross_entropy(model(x), y))
    make_trainer(tmp_path, [], max_epochs=1).fit(model, train_dataloaders=TinyData().train_dataloader())
    metrics = make_trainer(tmp_path, []).validate(BalancedWithBothMetrics(), dataloaders=val_loader(), verbose=False)
    assert "val/balanced_error" in metrics[0]  # metrics sized from the logits


def test_the_callback_warns_before_replacing_a_loss_the_user_assigned(tmp_path):
    model = Balanced()
    model.autobalance_loss = ParametricCrossEntropy(K, iota=[0.0, 1.0, 2.0])  # e.g. a loss loaded for retraining
    with pytest.warns(UserWarning, match="replaces the loss already on Balanced"):
        make_trainer(tmp_path, [callback(tmp_path)], max_epochs=2).fit(model, datamodule=HeldOutSplit(TinyData()))
    quiet = Balanced()
    quiet.autobalance_loss = ParametricCrossEntropy(K)  # plain cross-entropy: nothing is lost
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*replaces the loss.*")
        make_trainer(tmp_path, [callback(tmp_path)], max_epochs=2).fit(quiet, datamodule=HeldOutSplit(TinyData()))


def test_seeds_follow_seed_everything_unless_set(tmp_path):
    def split_and_draw_seed(global_seed, **seeds):
        pl.seed_everything(global_seed, verbose=False)
        split = HeldOutSplit(TinyData(), seed=seeds.get("split"))
        autobalance = callback(tmp_path, seed=seeds.get("autobalance"))
        make_trainer(tmp_path, [autobalance], max_epochs=2, limit_train_batches=1).fit(Balanced(), datamodule=split)
        return split.heldout_dataset.indices, autobalance.run_seed

    one, two = split_and_draw_seed(1), split_and_draw_seed(2)
    assert one[1] == 1 and two[1] == 2 and one[0] != two[0]  # -m seed=1,2 varies the split and the draws
    fixed = split_and_draw_seed(2, split=1, autobalance=7)
    assert fixed[0] == one[0] and fixed[1] == 7


def test_the_callbacks_defaults_are_the_benchmarked_configuration():
    cfg = OmegaConf.load(ROOT / "conf" / "autobalance" / "default.yaml")
    cfg.seed = None
    configured, default = instantiate(cfg), AutoBalance()
    assert default.learn == tuple(configured.learn)
    for name in ("preset", "warmup_epochs", "every_n_steps", "train_batches", "heldout_batches", "batch_size"):
        assert getattr(default, name) == getattr(configured, name), name
    assert default.engine == configured.engine == make_engine("default", cache_size=default.train_batches)
    param = [nn.Parameter(torch.zeros(2))]
    a, b = default.hyper_optimizer_factory(param), configured.hyper_optimizer_factory(param)
    assert type(a) is type(b) and a.defaults == b.defaults


def test_a_search_that_cannot_take_a_hyper_step_fails_before_training(tmp_path):
    model = Balanced()
    with pytest.raises(ValueError, match=r"warmup_epochs=10.*max_epochs=5"):
        make_trainer(tmp_path, [AutoBalance()], max_epochs=5).fit(model, datamodule=HeldOutSplit(TinyData()))
    assert model.global_step == 0


def test_a_search_that_took_no_hyper_step_says_so_and_records_it(tmp_path):
    autobalance = callback(tmp_path, every_n_steps=1000)
    with pytest.warns(UserWarning, match="NO hyper-step was taken.*every_n_steps=1000"):
        make_trainer(tmp_path, [autobalance], max_epochs=2).fit(Balanced(), datamodule=HeldOutSplit(TinyData()))
    metadata = yaml.safe_load((tmp_path / "loss.yaml").read_text())["metadata"]
    assert metadata["learned"] is False and "every_n_steps=1000" in metadata["not_learned_because"]


def test_nan_inputs_get_the_right_cause(tmp_path):
    data = TinyData()
    data.dataset.tensors[0][::2] = float("nan")  # held-out and train samples alike
    autobalance = callback(tmp_path, every_n_steps=2)
    with pytest.warns(UserWarning, match="held-out objective itself is not finite"):
        make_trainer(tmp_path, [autobalance], max_epochs=2).fit(Balanced(), datamodule=HeldOutSplit(data))
    metadata = yaml.safe_load((tmp_path / "loss.yaml").read_text())["metadata"]
    assert metadata["learned"] is False and "NaN" in metadata["not_learned_because"]


def test_no_feature_hook_is_said_at_fit_start_not_after_the_warm_up(tmp_path):
    model = ProjectWithMixinOnly()
    with pytest.warns(UserWarning, match="no feature hook"):
        make_trainer(tmp_path, [callback(tmp_path, every_n_steps=1000)], max_epochs=2, limit_train_batches=1).fit(
            model, datamodule=HeldOutSplit(TinyData())
        )


class ProjectWithMixinOnly(AutoBalanceMixin, ProjectModel):
    def training_step(self, batch, batch_idx):
        return self.autobalance_step_loss(batch)


class Compiled(Balanced):
    def setup(self, stage):  # as lightning-hydra-template does with model.compile=true
        self.net = torch.compile(self.net, backend="eager")


class CompiledWithoutHooks(ProjectWithMixinOnly):
    def setup(self, stage):
        self.net = torch.compile(self.net, backend="eager")


def test_a_compiled_network_runs_with_the_default_engine_and_is_refused_by_the_full_one(tmp_path):
    autobalance = callback(tmp_path, every_n_steps=2)
    make_trainer(tmp_path, [autobalance], max_epochs=2).fit(Compiled(), datamodule=HeldOutSplit(TinyData()))
    assert autobalance.hyper_steps > 0
    model = CompiledWithoutHooks()
    refused = pytest.raises(ValueError, match=r"torch.compile-d submodules \(net\).*autobalance_features")
    with refused, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fall-back warning that comes first
        make_trainer(tmp_path, [callback(tmp_path)], max_epochs=2).fit(model, datamodule=HeldOutSplit(TinyData()))
    assert model.global_step == 0


def test_a_retrained_models_checkpoint_keeps_its_learned_loss_and_prediction_shift(tmp_path):
    learned = ParametricCrossEntropy(K, iota=[0.5, 0.0, -0.5])
    learned.set_prediction_shift([[0.0, 0.25, 0.5]])  # e.g. a post-hoc adjustment fitted by the search
    model = Balanced()
    model.autobalance_loss = learned
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0)
    make_trainer(tmp_path, [checkpoint], max_epochs=1, enable_checkpointing=True).fit(
        model, train_dataloaders=TinyData().train_dataloader()
    )
    restored = Balanced.load_from_checkpoint(tmp_path / "ckpt" / "last.ckpt")
    assert torch.equal(restored.autobalance_loss.iota(), learned.iota())
    assert torch.equal(restored.autobalance_loss.prediction_shift, learned.prediction_shift)
    assert torch.equal(load_loss(tmp_path / "ckpt" / "last.ckpt").iota(), learned.iota())


def test_a_checkpoint_that_pickles_objects_needs_the_same_opt_in_as_lightning(tmp_path):
    class WithPickledHyperparameters(Balanced):
        def __init__(self, optimizer=None):
            super().__init__()
            self.save_hyperparameters()  # a functools.partial: not loadable with weights_only=True

    from functools import partial

    model = WithPickledHyperparameters(partial(torch.optim.SGD, lr=0.1))
    model.autobalance_loss = ParametricCrossEntropy(K, iota=[0.5, 0.0, -0.5])
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0)
    make_trainer(tmp_path, [checkpoint], max_epochs=1, enable_checkpointing=True).fit(
        model, train_dataloaders=TinyData().train_dataloader()
    )
    with pytest.raises(ValueError, match=r"load_loss\(path, weights_only=False\)"):
        load_loss(tmp_path / "ckpt" / "last.ckpt")
    assert torch.equal(
        load_loss(tmp_path / "ckpt" / "last.ckpt", weights_only=False).iota(), model.autobalance_loss.iota()
    )
