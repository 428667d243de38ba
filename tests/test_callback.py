"""AutoBalance callback + mixin inside real Trainer.fit runs on a tiny problem."""

import csv
import warnings
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_autobalance import AutoBalance, AutoBalanceMixin, ConjugateGradient, HeldOutSplit, load_loss
from tests._helpers.data import Blobs
from tests._helpers.searches import tiny_search
from tests._helpers.trainers import quiet_trainer

K = 3


class TinyData(Blobs):
    def __init__(self, counts=(120, 40, 12), seed=0, num_features=6):
        super().__init__(counts, seed=seed, num_features=num_features)

    @property
    def dataset(self):
        """The training samples (test_dropin builds its validation data from them)."""
        return self.train


class TinyModel(AutoBalanceMixin, pl.LightningModule):
    """A small MLP with BatchNorm and the feature hook of the default (last-layer) engine: body net[:3], head net[3]."""

    def __init__(self, num_classes=K, num_features=6):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(num_features, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, num_classes))

    def forward(self, x):
        return self.net(x)

    def autobalance_features(self, x):
        return self.net[:3](x)

    def autobalance_head(self):
        return self.net[3]

    def training_step(self, batch, batch_idx):
        return self.autobalance_step_loss(batch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


class PlainModel(pl.LightningModule):  # no mixin
    def __init__(self):
        super().__init__()
        self.net = nn.Linear(6, K)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def make_callback(tmp_path, **kwargs):
    options = dict(every_n_steps=3, train_batches=2, heldout_batches=2, export_path=tmp_path / "loss.yaml")
    return tiny_search(**{**options, **kwargs})


def make_trainer(tmp_path, callbacks, max_epochs=3, **kwargs):
    return quiet_trainer(
        callbacks=callbacks, **{"max_epochs": max_epochs, "devices": 1, "default_root_dir": tmp_path, **kwargs}
    )


def fit(tmp_path, callback, max_epochs=3, seed=0, model_class=None, **trainer_kwargs):
    pl.seed_everything(seed, verbose=False)
    model = (model_class or TinyModel)()
    callbacks = trainer_kwargs.pop("callbacks", [callback])
    trainer = make_trainer(tmp_path, callbacks, max_epochs=max_epochs, **trainer_kwargs)
    trainer.fit(model, datamodule=HeldOutSplit(TinyData(), fraction=0.25, seed=seed))
    return model, trainer


def test_fit_changes_alpha_logs_it_and_exports_yaml_that_loads_back(tmp_path):
    callback = make_callback(tmp_path)
    logger = CSVLogger(tmp_path, name="logs")
    _model, _trainer = fit(tmp_path, callback, logger=logger, log_every_n_steps=1)
    assert callback.hyper_steps > 3 and callback.skipped_steps == 0
    # α moved away from the CE start (Δ = 1, ι = 0)
    assert not torch.allclose(callback.loss.delta(), torch.ones(1, K))
    assert not torch.allclose(callback.loss.iota(), torch.zeros(1, K))
    # logged per class under stable names
    with open(Path(logger.log_dir) / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    logged = [float(r["autobalance/iota/c2"]) for r in rows if r.get("autobalance/iota/c2")]
    assert len(logged) == callback.hyper_steps
    assert logged[-1] == pytest.approx(float(callback.loss.iota()[0, 2]), abs=1e-6)
    assert any(r.get("autobalance/objective") for r in rows)
    # exported file loads back to the same loss, frozen
    loaded = load_loss(callback.exported_path)
    assert callback.exported_path == tmp_path / "loss.yaml"
    for name in ("raw_delta", "raw_iota", "raw_omega"):
        assert torch.equal(getattr(loaded, name), getattr(callback.loss, name).detach())
    logits, y = torch.randn(9, K), torch.randint(0, K, (9,))
    assert torch.equal(loaded(logits, y), callback.loss(logits, y).detach())
    assert loaded.hparams() == {}
    assert AutoBalance.load_loss is load_loss


# the default engine with its own solver (last layer, Exact), and the full-network engine with conjugate gradient
ENGINES = {"default": {}, "full": {"engine": "full", "solver": ConjugateGradient(iters=3, damping=1.0)}}


@pytest.mark.parametrize("engine", list(ENGINES))
def test_resume_mid_search_is_bit_identical(tmp_path, engine):
    options = ENGINES[engine]
    full = make_callback(tmp_path / "a", **options)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*no feature hook.*")  # the default engine really ran
        fit(tmp_path / "a", full, max_epochs=4)
    assert type(full.engine).__name__ == {"default": "LastLayer", "full": "FullNetwork"}[engine]

    first = make_callback(tmp_path / "b", **options)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0)
    fit(tmp_path / "b", first, max_epochs=2, enable_checkpointing=True, callbacks=[first, checkpoint])
    assert 0 < first.hyper_steps < full.hyper_steps  # stopped mid-search

    resumed = make_callback(tmp_path / "c", **options)
    pl.seed_everything(123, verbose=False)  # a different RNG state must not matter
    model = TinyModel()
    trainer = make_trainer(tmp_path / "c", [resumed], max_epochs=4)
    split = HeldOutSplit(TinyData(), fraction=0.25, seed=0)  # the split of the checkpoint's run (fit() seeds it 0)
    trainer.fit(model, datamodule=split, ckpt_path=tmp_path / "ckpt" / "last.ckpt")

    assert resumed.hyper_steps == full.hyper_steps
    assert not torch.equal(full.loss.raw_iota, torch.zeros_like(full.loss.raw_iota))  # α moved
    for name in ("raw_delta", "raw_iota"):
        assert torch.equal(getattr(resumed.loss, name), getattr(full.loss, name))
    state_a, state_c = full.hyper_optimizer.state_dict(), resumed.hyper_optimizer.state_dict()
    assert state_a["param_groups"] == state_c["param_groups"]
    for key in state_a["state"]:
        assert torch.equal(state_a["state"][key]["momentum_buffer"], state_c["state"][key]["momentum_buffer"])


class Probe(Callback):
    """Records BatchNorm statistics around AutoBalance's on_train_batch_end."""

    def __init__(self, store, key):
        self.store, self.key = store, key

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        bn = pl_module.net[1]
        self.store.setdefault(self.key, []).append(
            (trainer.global_step, bn.running_mean.clone(), bn.running_var.clone(), int(bn.num_batches_tracked))
        )


def test_hyperstep_leaves_batchnorm_alone_and_alpha_out_of_model_optimizer(tmp_path):
    store = {}
    callback = make_callback(tmp_path)
    model, trainer = fit(
        tmp_path, callback, callbacks=[Probe(store, "before"), callback, Probe(store, "after")], max_epochs=2
    )
    assert callback.hyper_steps > 0
    for (step, mean_b, var_b, n_b), (_, mean_a, var_a, n_a) in zip(store["before"], store["after"], strict=True):
        assert torch.equal(mean_b, mean_a) and torch.equal(var_b, var_a) and n_b == n_a, step
    alpha_ids = {id(p) for p in callback.loss.hparams().values()}
    optimizer_ids = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert alpha_ids and not alpha_ids & optimizer_ids
    assert not alpha_ids & {id(p) for p in model.parameters()}
    assert not any("raw_" in key for key in model.state_dict())
    assert model.autobalance_loss is callback.loss


def test_non_finite_hypergradient_is_skipped_with_a_warning(tmp_path):
    def broken(logits, targets, groups):
        return logits.sum() * float("nan")

    callback = make_callback(tmp_path, objective=broken)
    with pytest.warns(UserWarning, match="non-finite hypergradient"):
        fit(tmp_path, callback, max_epochs=2)
    assert callback.hyper_steps == 0 and callback.skipped_steps > 0
    assert torch.equal(callback.loss.delta(), torch.ones(1, K))
    assert torch.isfinite(callback.loss.raw_iota).all()


def test_errors_say_what_to_change(tmp_path):
    with pytest.raises(TypeError, match=r"AutoBalanceMixin.*class PlainModel\(AutoBalanceMixin, LightningModule\)"):
        make_trainer(tmp_path, [make_callback(tmp_path)]).fit(PlainModel(), datamodule=HeldOutSplit(TinyData()))
    with pytest.raises(TypeError, match=r"HeldOutSplit\(datamodule, fraction=0.2\)"):
        make_trainer(tmp_path, [make_callback(tmp_path)]).fit(TinyModel(), datamodule=TinyData())
    with pytest.raises(ValueError, match=r"Classes \[3\] have no held-out sample"):
        make_trainer(tmp_path, [make_callback(tmp_path)]).fit(
            TinyModel(), datamodule=HeldOutSplit(TinyData(), num_classes=4)
        )
    with pytest.raises(ValueError, match=r"num_classes=4 but (the logits have shape|preds have 3 columns)"):
        # the data has 4 classes, the model outputs 3 logits
        make_trainer(tmp_path, [make_callback(tmp_path)]).fit(
            TinyModel(), datamodule=HeldOutSplit(TinyData(counts=(50, 30, 20, 10)))
        )
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        HeldOutSplit(TinyData(), fraction=1.2)
    with pytest.raises(ValueError, match=r"Training labels must lie in \[0, 2\)"):
        make_trainer(tmp_path, [make_callback(tmp_path)]).fit(
            TinyModel(), datamodule=HeldOutSplit(TinyData(), num_classes=2)
        )
    with pytest.raises(ValueError, match="Unknown loss preset"):
        AutoBalance(preset="focal-ish")
    with pytest.raises(ValueError, match="every_n_steps must be an integer"):
        AutoBalance(every_n_steps=0)


def test_mixin_moves_loss_with_module_and_keeps_it_out_of_the_tree():
    from lightning_autobalance import ParametricCrossEntropy

    model = TinyModel()
    model.autobalance_loss = ParametricCrossEntropy(K, learnable=["iota"])
    model.to(torch.float64)
    assert model.autobalance_loss.raw_iota.dtype == torch.float64
    assert "autobalance_loss" not in dict(model.named_modules())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(TypeError, match="must be a ParametricCrossEntropy"):
            model.autobalance_loss = nn.CrossEntropyLoss()


def test_mixin_logs_validation_and_test_metrics_equal_to_sklearn(tmp_path):
    from sklearn.metrics import balanced_accuracy_score, recall_score

    from lightning_autobalance import ParametricCrossEntropy

    pl.seed_everything(0, verbose=False)
    model = TinyModel()
    model.autobalance_loss = ParametricCrossEntropy(K)
    data = TinyData()
    make_trainer(tmp_path, [], max_epochs=2).fit(model, train_dataloaders=data.train_dataloader())
    loader = DataLoader(data.train, batch_size=50)
    logged = make_trainer(tmp_path, []).test(model, dataloaders=loader, verbose=False)[0]
    model.eval()
    with torch.no_grad():
        preds = model(data.train.tensors[0]).argmax(1).numpy()
    y = data.train.tensors[1].numpy()
    assert set(logged) == {"test/balanced_error", "test/worst_class_error", "test/error"}
    assert logged["test/balanced_error"] == pytest.approx(1 - balanced_accuracy_score(y, preds), abs=1e-6)
    assert logged["test/worst_class_error"] == pytest.approx(1 - recall_score(y, preds, average=None).min(), abs=1e-6)
    assert logged["test/error"] == pytest.approx(float((preds != y).mean()), abs=1e-6)


def test_mixin_logs_group_metrics_under_stable_names(tmp_path):
    from lightning_autobalance import ParametricCrossEntropy

    model = TinyModel()
    model.autobalance_loss = ParametricCrossEntropy(K, num_groups=2)
    x, y = TinyData().train.tensors
    groups = (torch.arange(len(y)) % 2).long()
    loader = DataLoader(TensorDataset(x, y, groups), batch_size=40)
    logged = make_trainer(tmp_path, []).validate(model, dataloaders=loader, verbose=False)[0]
    assert set(logged) == {
        f"val/{name}"
        for name in ("balanced_error", "worst_class_error", "error", "worst_group_error", "demographic_parity_gap",
                     "equal_opportunity_gap", "equalized_odds_gap")
    }  # fmt: skip


@pytest.mark.parametrize("strategy", ["fsdp", "deepspeed"])
def test_unsupported_strategies_fail_with_a_clear_message(strategy):
    from types import SimpleNamespace

    from lightning.pytorch.strategies import FSDPStrategy, SingleDeviceStrategy

    from lightning_autobalance.callback import _check_strategy

    if strategy == "fsdp":
        instance = FSDPStrategy()
    else:  # DeepSpeed is a DDPStrategy subclass that needs the deepspeed package: a stand-in with its name
        instance = type("DeepSpeedStrategy", (SingleDeviceStrategy,), {})(device=torch.device("cpu"))
    with pytest.raises(ValueError, match=r"not (FSDPStrategy|DeepSpeedStrategy): use `Trainer\(strategy='ddp'\)`"):
        _check_strategy(SimpleNamespace(strategy=instance))
    _check_strategy(SimpleNamespace(strategy=SingleDeviceStrategy(device=torch.device("cpu"))))  # supported


def test_group_objective_without_groups_fails_early(tmp_path):
    from lightning_autobalance import WorstGroup

    callback = make_callback(tmp_path, objective=WorstGroup())
    with pytest.raises(ValueError, match=r"WorstGroup needs group labels.*return \(x, y, g\) batches"):
        make_trainer(tmp_path, [callback]).fit(TinyModel(), datamodule=HeldOutSplit(TinyData()))


class GroupTinyData(TinyData):
    """TinyData with a group label per sample; ``empty_cell`` leaves (group 1, class 2) without samples."""

    def __init__(self, empty_cell=False):
        super().__init__()
        x, y = self.train.tensors
        groups = (torch.arange(len(y)) % 3 == 0).long()  # about a third of each class in group 1
        if empty_cell:
            groups[y == 2] = 0
        self.train = TensorDataset(x, y, groups)


def test_preset_starts_each_group_from_its_own_counts(tmp_path):
    from lightning_autobalance.losses import preset_values

    callback = make_callback(tmp_path, preset="la", warmup_epochs=2)  # one weight step: α stays the preset
    split = HeldOutSplit(GroupTinyData())
    make_trainer(tmp_path, [callback], max_steps=1).fit(TinyModel(), datamodule=split)
    cells = split.group_class_counts.double()
    assert cells.shape == (2, K) and (cells > 0).all()
    expected = preset_values("la", cells)["iota"]
    assert torch.allclose(callback.loss.iota().double(), expected, atol=1e-6)
    # The rows differ because the groups' cells differ: not the class preset repeated.
    class_preset = preset_values("la", cells.sum(0))["iota"]
    assert not torch.allclose(callback.loss.iota()[0].double(), class_preset, atol=1e-3)


def test_preset_with_an_empty_group_class_cell_fails_early(tmp_path):
    callback = make_callback(tmp_path, preset="la")
    message = r"cells \(group, class\) \[\[1, 2\]\] have no training sample: use preset='ce'"
    with pytest.raises(ValueError, match=message):
        make_trainer(tmp_path, [callback]).fit(TinyModel(), datamodule=HeldOutSplit(GroupTinyData(empty_cell=True)))


def test_group_without_heldout_sample_fails_early(tmp_path):
    from lightning_autobalance import WorstGroup

    data = GroupTinyData()
    x, y, groups = data.train.tensors
    data.train = TensorDataset(x, y, groups * 2)  # labels 0 and 2: group 1 has no sample at all
    callback = make_callback(tmp_path, objective=WorstGroup())
    with pytest.raises(ValueError, match=r"Groups \[1\] have no held-out sample, so WorstGroup cannot see them"):
        make_trainer(tmp_path, [callback]).fit(TinyModel(), datamodule=HeldOutSplit(data))


def test_posthoc_adjustment_is_fitted_on_the_whole_heldout_split_and_exported(tmp_path):
    from lightning_autobalance.posthoc import fit_logit_adjustment

    callback = make_callback(tmp_path, posthoc=True)
    model, trainer = fit(tmp_path, callback)
    split = trainer.datamodule
    model.eval()
    with torch.no_grad():
        x, y = zip(*(split.heldout_dataset[i] for i in range(len(split.heldout_dataset))), strict=True)
        logits = model(torch.stack(x))
    tau = fit_logit_adjustment(logits, torch.stack(y), split.class_counts)  # independent recomputation
    assert callback.posthoc_tau == pytest.approx(tau, abs=1e-5)
    prior = split.class_counts.double() / split.class_counts.sum()
    expected = (-tau * torch.log(prior)).float()
    assert torch.allclose(callback.loss.prediction_shift[0], expected, atol=1e-4)
    loaded = load_loss(callback.exported_path)
    assert torch.equal(loaded.prediction_shift, callback.loss.prediction_shift)
    assert yaml_metadata(callback.exported_path)["posthoc_tau"] == pytest.approx(tau, abs=1e-5)
    # the mixin's metrics predict with the shift: the test error equals that of the shifted arg-max
    result = trainer.test(model, dataloaders=DataLoader(TensorDataset(torch.stack(x), torch.stack(y)), batch_size=64))
    shifted = (logits + expected).argmax(1)
    assert result[0]["test/error"] == pytest.approx(float((shifted != torch.stack(y)).float().mean()), abs=1e-6)


def yaml_metadata(path):
    import yaml

    return yaml.safe_load(Path(path).read_text())["metadata"]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(objective="worst_group"), "posthoc=True fits a logit adjustment for the balanced error"),
        (dict(posthoc="yes"), "posthoc must be True or False"),
    ],
)
def test_posthoc_needs_the_balanced_objective(tmp_path, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make_callback(tmp_path, **{"posthoc": True, **kwargs})
