"""Tests of lightning_autobalance.last_layer: the refit head, the feature hooks, the callback and the error messages."""

import warnings
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_autobalance.last_layer as last_layer
from lightning_autobalance.data import HeldOutSplit
from lightning_autobalance.last_layer import (
    LastLayerModule,
    LastLayerReport,
    LastLayerRetraining,
    RetrainingFeatures,
    extract_features,
    retrain_last_layer,
)
from lightning_autobalance.llr import MODES, class_weights_for_mode, fit_last_layer
from lightning_autobalance.metrics import class_errors
from tests._helpers.loggers import MemoryLogger
from tests._helpers.trainers import quiet_trainer
from tests.conftest import run_doctests

K, D_IN, D_FEAT, N = 3, 5, 8, 120
CONFIG = Path(__file__).resolve().parents[1] / "conf" / "llr" / "default.yaml"


pytestmark = pytest.mark.usefixtures("single_thread")


class TinyNet(nn.Module):
    """Body with BatchNorm and Dropout (both behave differently in train mode) and a linear head."""

    def __init__(self, dropout: float = 0.5) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(D_IN, D_FEAT), nn.BatchNorm1d(D_FEAT), nn.ReLU(), nn.Dropout(dropout))
        self.head = nn.Linear(D_FEAT, K)

    def features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.head(self.body(x))


class TinyModule(pl.LightningModule):
    def __init__(self, num_classes: int = K) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = TinyNet()

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y, *_ = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class ProtocolModule(TinyModule):
    def autobalance_features(self, x):
        return self.net.features(x)

    def autobalance_head(self):
        return self.net.head


def _data(n=N, seed=0, groups=False):
    gen = torch.Generator().manual_seed(seed)
    y = torch.cat([torch.zeros(n * 6 // 10), torch.ones(n * 3 // 10), torch.full((n - n * 9 // 10,), 2)]).long()
    x = torch.randn(n, D_IN, generator=gen) + 1.5 * nn.functional.one_hot(y, D_IN).float()
    tensors = (x, y, torch.arange(n) % 2) if groups else (x, y)
    return TensorDataset(*tensors)


def _loader(dataset, batch_size=32):
    return DataLoader(dataset, batch_size=batch_size)


def _module(cls=TinyModule, seed=0):
    torch.manual_seed(seed)
    module = cls()
    module.net.body[1].running_mean.uniform_(-0.5, 0.5)  # non-trivial BatchNorm statistics
    module.net.body[1].running_var.uniform_(0.5, 2.0)
    return module


def _reference_features(module, x):
    """Features computed directly with the network's own feature function, in eval mode."""
    module.eval()
    with torch.no_grad():
        return module.net.features(x)


# --------------------------------------------------------------------------------------------------------------
# The refit head
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("hook", ["forward_hook", "feature_fn", "protocol"])
@pytest.mark.parametrize(("mode", "loss"), [("thumb", "square"), ("priors", "ce")])
def test_refit_head_equals_fit_last_layer(hook, mode, loss):
    module = _module(ProtocolModule if hook == "protocol" else TinyModule)
    dataset = _data()
    x, y = dataset.tensors
    kwargs = {
        "forward_hook": {"head": "net.head"},
        "feature_fn": {"head": module.net.head, "feature_fn": module.net.features},
        "protocol": {},
    }[hook]
    module.train()
    before = _reference_features(module, x)
    old_logits = module.net.head(before)
    module.train()

    report = retrain_last_layer(module, _loader(dataset), mode, loss=loss, ridge=0.5, **kwargs)

    feats = _reference_features(module, x)
    torch.testing.assert_close(feats, before)  # the backbone is untouched
    weights = class_weights_for_mode(mode, y, feats, num_classes=K)
    expected = fit_last_layer(feats, y, weights=weights, loss=loss, ridge=0.5, num_classes=K)
    torch.testing.assert_close(module.net.head.weight.detach(), expected.weight, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(module.net.head.bias.detach(), expected.bias, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(report.weights, weights)
    with torch.no_grad():
        logits = module(x)
    torch.testing.assert_close(logits, expected(feats), atol=1e-4, rtol=1e-4)  # module(x) uses the new head
    assert not torch.allclose(logits, old_logits, atol=1e-3)
    assert report.head_name == "net.head" and report.written_back


def test_report_metrics_match_the_metrics_module():
    module, dataset = _module(), _data()
    eval_set = _data(n=60, seed=1, groups=True)
    report = retrain_last_layer(
        module, _loader(dataset), "priors", head="net.head", ridge=0.5, eval_data=_loader(eval_set)
    )
    assert isinstance(report, LastLayerReport) and dict(report) == report.metrics
    x, y, _ = eval_set.tensors
    with torch.no_grad():
        preds = module.eval()(x).argmax(1)
    expected = class_errors(preds, y, num_classes=K)
    got = torch.tensor([report[f"llr/eval/class_error_{k}"] for k in range(K)])
    torch.testing.assert_close(got, expected.float())
    assert report["llr/eval/worst_class_error"] == pytest.approx(float(expected.max()))
    assert report["llr/eval/balanced_error"] == pytest.approx(float(expected.mean()))
    assert {"llr/eval/worst_group_error", "llr/eval/group_error_1", "llr/eval_before/balanced_error"} <= set(report)
    assert "llr/retrain/worst_group_error" not in report  # the retraining batches carry no groups
    assert report["llr/num_samples"] == N
    assert report["llr/delta"] == pytest.approx(report["llr/effective_dimension"] / N)
    assert torch.equal(report.class_errors["eval"], expected.float())


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_runs_with_groups(mode):
    module, dataset = _module(), _data(groups=True)
    bilevel = {"steps": 3, "val_fraction": 0.3}
    report = retrain_last_layer(module, _loader(dataset), mode, head="net.head", ridge=1.0, bilevel=bilevel)
    shapes = {"none": (K,), "priors": (K,), "thumb": (K,), "downsample": (N,), "bilevel": (2, K)}
    assert tuple(report.weights.shape) == shapes[mode]
    assert report.mode == mode
    assert {"llr/retrain/worst_group_error", "llr/retrain/group_error_0", "llr/retrain/class_error_2"} <= set(report)
    if mode == "downsample":  # group-balanced: every (group, class) cell keeps the size of the smallest cell
        _, y, g = dataset.tensors
        kept = torch.bincount((g * K + y)[report.weights > 0], minlength=2 * K)
        assert kept.unique().numel() == 1


def test_use_groups_false_ignores_group_labels():
    module, dataset = _module(), _data(groups=True)
    report = retrain_last_layer(module, _loader(dataset), "downsample", head="net.head", ridge=1.0, use_groups=False)
    _, y, _ = dataset.tensors
    assert torch.bincount(y[report.weights > 0]).tolist() == [N - N * 9 // 10] * K
    assert "llr/retrain/worst_group_error" not in report


def test_cached_features_give_the_same_head_and_write_back_false_keeps_the_module():
    module, dataset = _module(), _data()
    cached = extract_features(module, _loader(dataset), head="net.head")
    assert isinstance(cached, RetrainingFeatures) and len(cached) == N
    state = {k: v.clone() for k, v in module.state_dict().items()}
    from_cache = retrain_last_layer(module, cached, "thumb", head="net.head", write_back=False)
    for key, value in module.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert not from_cache.written_back
    from_loader = retrain_last_layer(module, _loader(dataset, batch_size=7), "thumb", head="net.head")
    torch.testing.assert_close(from_cache.head.weight, from_loader.head.weight)
    torch.testing.assert_close(from_loader.previous_head.weight, state["net.head.weight"])


def test_extraction_in_eval_mode_without_grad_and_training_flags_restored():
    module, dataset = _module(), _data()
    module.train()
    module.net.body[1].eval()  # a deliberately frozen BatchNorm must stay in eval mode
    flags = {name: sub.training for name, sub in module.named_modules()}
    stats = module.net.body[1].running_mean.clone()
    first = extract_features(module, _loader(dataset), head="net.head")
    second = extract_features(module, _loader(dataset), head="net.head")
    assert {name: sub.training for name, sub in module.named_modules()} == flags
    torch.testing.assert_close(first.features, second.features)  # dropout off
    torch.testing.assert_close(first.features, _reference_features(module, dataset.tensors[0]))
    assert torch.equal(module.net.body[1].running_mean, stats)  # BatchNorm statistics untouched
    assert not first.features.requires_grad
    assert first.features.dtype == torch.float32 and first.features.device.type == "cpu"
    assert first.targets.dtype == torch.long and first.groups is None
    module.train()
    retrain_last_layer(module, _loader(dataset), "none", head="net.head")
    assert module.training and module.net.body[3].training


def test_training_flags_restored_after_an_error():
    module = _module()
    module.train()
    with pytest.raises(ValueError, match="only one class"):
        retrain_last_layer(module, [(torch.randn(4, D_IN), torch.zeros(4, dtype=torch.long))], head="net.head")
    assert all(sub.training for sub in module.modules())


def test_protocol_is_recognised():
    assert isinstance(ProtocolModule(), LastLayerModule)
    assert not isinstance(TinyModule(), LastLayerModule)


def test_warns_when_module_output_is_not_head_of_features():
    class Scaled(TinyModule):
        def forward(self, x):
            return 2.0 * self.net(x) + 1.0

    module, dataset = _module(Scaled), _data()
    with pytest.warns(UserWarning, match=r"module\(x\) differs from head\(features\)"):
        retrain_last_layer(module, _loader(dataset), "none", head="net.head")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        retrain_last_layer(module, _loader(dataset), "none", head="net.head", check_forward=False)


# --------------------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------------------
def test_error_missing_hook():
    with pytest.raises(ValueError, match=r"Cannot find the last layer.*pass head=.*\['net.body.0', 'net.head'\]"):
        retrain_last_layer(_module(), _loader(_data()))
    with pytest.raises(ValueError, match="Cannot find the last layer"):  # a feature function alone has no head
        extract_features(_module(), _loader(_data()))


def test_error_bad_head():
    module = _module()
    with pytest.raises(ValueError, match=r"head='net.tail' is not a submodule"):
        retrain_last_layer(module, _loader(_data()), head="net.tail")
    with pytest.raises(TypeError, match=r"must be an nn\.Linear"):
        retrain_last_layer(module, _loader(_data()), head="net.body")
    with pytest.raises(ValueError, match=r"not a submodule of TinyModule.*would not change module\(x\)"):
        retrain_last_layer(module, _loader(_data()), head=nn.Linear(D_FEAT, K))


def test_error_width_mismatch():
    module = _module()
    with pytest.raises(ValueError, match="width 4 but the head has in_features=8"):
        retrain_last_layer(module, _loader(_data()), head="net.head", feature_fn=lambda x: x[:, :4])
    with pytest.raises(ValueError, match=r"features of shape \(32, 2, 4\), expected \(B, d\)"):
        retrain_last_layer(
            module, _loader(_data()), head="net.head", feature_fn=lambda x: x.repeat(1, 2)[:, :8].view(-1, 2, 4)
        )


def test_error_class_count_mismatch():
    module = _module()
    with pytest.raises(ValueError, match="out_features=3 but num_classes=4"):
        retrain_last_layer(module, _loader(_data()), head="net.head", num_classes=4)
    declared = TinyModule(num_classes=5)
    with pytest.raises(ValueError, match=r"out_features=3 but TinyModule.hparams.num_classes=5"):
        retrain_last_layer(declared, _loader(_data()), head="net.head")
    x, y = _data().tensors
    with pytest.raises(ValueError, match=r"labels span \[0, 3\] but the head has out_features=3"):
        retrain_last_layer(module, [(x, torch.where(y == 2, 3, y))], head="net.head")


def test_error_one_class_and_absent_class():
    module = _module()
    x, y = _data().tensors
    with pytest.raises(ValueError, match=r"only one class \(\[0\]\) in the retraining set"):
        retrain_last_layer(module, [(x, torch.zeros_like(y))], head="net.head")
    with pytest.raises(ValueError, match=r"classes \[2\] have no sample in the retraining set"):
        retrain_last_layer(module, [(x, y.clamp(max=1))], head="net.head")


def test_error_options_and_batches():
    module = _module()
    with pytest.raises(ValueError, match="mode must be one of"):
        retrain_last_layer(module, _loader(_data()), "balanced", head="net.head")
    with pytest.raises(ValueError, match="loss must be 'square'"):
        retrain_last_layer(module, _loader(_data()), loss="hinge", head="net.head")
    with pytest.raises(ValueError, match=r"expects \(x, y\) or \(x, y, g\) batches"):
        retrain_last_layer(module, [{"x": torch.randn(2, D_IN)}], head="net.head")
    with pytest.raises(TypeError, match=r"pass batches, e\.g\. DataLoader"):
        retrain_last_layer(module, _data(), head="net.head")
    with pytest.raises(ValueError, match="yielded no batch"):
        retrain_last_layer(module, [], head="net.head")
    x, y = _data().tensors
    with pytest.raises(ValueError, match="has group labels unlike the first batch"):
        retrain_last_layer(module, [(x[:60], y[:60]), (x[60:], y[60:], y[60:])], head="net.head")
    with pytest.raises(ValueError, match="must hold integer labels"):
        retrain_last_layer(module, [(x, y.float())], head="net.head")


def test_error_head_called_twice():
    class Twice(TinyModule):
        def forward(self, x):
            return self.net(x) + self.net.head(self.net.body(x))

    with pytest.raises(ValueError, match="head was called 2 times"):
        retrain_last_layer(_module(Twice), _loader(_data()), head="net.head")


def test_error_downsample_needs_ridge_when_n_is_small():
    x, y = _data().tensors
    keep = torch.cat([torch.nonzero(y == c).flatten()[:n] for c, n in ((0, 50), (1, 30), (2, 2))])
    # downsampling keeps 2 samples per class: 6 samples for 8 features plus an intercept
    with pytest.raises(ValueError, match="pass ridge>0"):
        retrain_last_layer(_module(), [(x[keep], y[keep])], "downsample", head="net.head")
    retrain_last_layer(_module(), [(x[keep], y[keep])], "downsample", head="net.head", ridge=1.0)


# --------------------------------------------------------------------------------------------------------------
# Callback, logging and config
# --------------------------------------------------------------------------------------------------------------
class ToyDataModule(pl.LightningDataModule):
    def __init__(self, groups=False):
        super().__init__()
        self.dataset = _data(n=200, groups=groups)

    def train_dataloader(self):
        return DataLoader(self.dataset, batch_size=50, shuffle=True)

    def val_dataloader(self):
        return DataLoader(_data(n=60, seed=3, groups=True), batch_size=60)


def _trainer(callbacks, logger):
    return quiet_trainer(max_epochs=1, logger=logger, callbacks=callbacks, limit_val_batches=0)


def test_callback_retrains_on_heldout_split_at_train_end():
    module, logger = _module(), MemoryLogger()
    callback = LastLayerRetraining("heldout", "val", mode="thumb", head="net.head", ridge=0.5)
    datamodule = HeldOutSplit(ToyDataModule(groups=True), fraction=0.3)
    _trainer([callback], logger).fit(module, datamodule=datamodule)

    report = callback.report
    assert report is not None and report.mode == "thumb"
    heldout = datamodule.heldout_dataset
    x = torch.stack([heldout[i][0] for i in range(len(heldout))])
    y = torch.tensor([int(heldout[i][1]) for i in range(len(heldout))])
    g = torch.tensor([int(heldout[i][2]) for i in range(len(heldout))])
    feats = _reference_features(module, x)
    weights = class_weights_for_mode("thumb", y, feats, g, num_classes=K)
    expected = fit_last_layer(feats, y, g, weights, ridge=0.5, num_classes=K)
    torch.testing.assert_close(module.net.head.weight.detach(), expected.weight, atol=1e-5, rtol=1e-4)
    step, metrics = logger.rows[-1]
    assert step == module.trainer.global_step
    assert metrics == report.metrics
    assert {"llr/eval/balanced_error", "llr/eval/worst_group_error", "llr/retrain/worst_group_error"} <= set(metrics)


def test_callback_on_demand_and_function_logging():
    module, logger = _module(), MemoryLogger()
    loader = _loader(_data(seed=5))
    callback = LastLayerRetraining(loader, mode="priors", head="net.head", run_on_train_end=False)
    trainer = _trainer([callback], logger)
    trainer.fit(module, datamodule=ToyDataModule())
    assert callback.report is None and not logger.rows
    report = callback.retrain(trainer, module)
    assert logger.rows[-1][1] == report.metrics
    logger.rows.clear()
    retrain_last_layer(module, loader, "none", head="net.head", prefix="again")  # the function logs too
    assert logger.rows and all(name.startswith("again/") for name in logger.rows[-1][1])
    retrain_last_layer(module, loader, "none", head="net.head", log=False)
    assert len(logger.rows) == 1


def test_callback_validates_eagerly_and_names_missing_loaders():
    with pytest.raises(ValueError, match="mode must be one of"):
        LastLayerRetraining(mode="thumbs")
    with pytest.raises(ValueError, match="not a loader name"):
        LastLayerRetraining("holdout")
    with pytest.raises(ValueError, match="max_weight must be"):
        LastLayerRetraining(max_weight=0.5)
    callback = LastLayerRetraining("heldout", head="net.head")
    with pytest.raises(ValueError, match=r"needs a datamodule with a heldout_dataloader\(\).*HeldOutSplit"):
        _trainer([callback], False).fit(_module(), datamodule=ToyDataModule())


def test_hydra_config_instantiates_the_callback():
    node = OmegaConf.merge({"seed": 7}, {"llr": OmegaConf.load(CONFIG)})
    callback = instantiate(node.llr)
    assert isinstance(callback, LastLayerRetraining)
    assert callback.mode in MODES and callback.loss in ("square", "ce") and callback.seed == 7
    assert callback.head is None and callback.dataloader == "heldout"  # None: the module's autobalance_head()
    assert {"steps", "objective", "val_fraction"} <= set(callback.bilevel)


def test_doctests():
    result = run_doctests(last_layer)
    assert result.failed == 0 and result.attempted > 0
