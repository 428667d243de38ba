"""Group DRO (Sagawa et al. 2020): the q update against hand computations, the loss, its gradient, the callback's
logging and checkpointing, the Hydra preset and DDP parity (2 gloo processes = 1 process)."""

import json
import math
from pathlib import Path

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

from lightning_autobalance import AutoBalance, GroupDRO, GroupDROLoss, HeldOutSplit
from tests._helpers.ddp import assert_close, rank_records, run_script
from tests._helpers.models import TanhNet
from tests._helpers.trainers import quiet_trainer

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).parent / "scripts" / "ddp_group_dro.py"
LN2, LN3 = math.log(2.0), math.log(3.0)


def normalised(values):
    total = sum(values)
    return torch.tensor([v / total for v in values], dtype=torch.float64)


# Two batches of a K = 2, G = 2 problem, DRO groups (group, class) = g0c0, g0c1, g1c0, g1c1. Logits (0, 0) cost log 2
# for either class; logits (0, log 3) cost log 4 for class 0 and log(4/3) for class 1. In float64, so that q is
# exact to 1e-12 (the per-sample losses are computed in the logits' dtype).
BATCH_1 = (
    torch.tensor([[0.0, 0.0], [0.0, LN3], [0.0, LN3], [0.0, 0.0]], dtype=torch.float64),
    torch.tensor([0, 0, 1, 1]),
    torch.tensor([0, 0, 1, 0]),
)  # g0c0: log 2, log 4 (mean 1.5 log 2); g0c1: log 2; g1c1: log(4/3); g1c0 absent
BATCH_2 = (torch.zeros(2, 2, dtype=torch.float64), torch.tensor([0, 0]), torch.tensor([1, 0]))  # g1c0, g0c0: log 2
COUNTS = [[16, 4], [1, 9]]  # training sizes n_g: C/√n_g = C·(1/4, 1/2, 1, 1/3)


def test_two_updates_match_a_hand_computation():
    loss_fn = GroupDROLoss(2, 2, step_size=1.0)
    assert torch.equal(loss_fn.q, torch.full((4,), 0.25, dtype=torch.float64))
    loss_1 = loss_fn(*BATCH_1)
    # q ∝ ¼·(e^{1.5 ln 2}, e^{ln 2}, e^0, e^{ln 4/3}) = ¼·(2√2, 2, 1, 4/3); the absent g1c0 keeps ¼·1
    q_1 = normalised([2 * math.sqrt(2), 2, 1, 4 / 3])
    torch.testing.assert_close(loss_fn.q, q_1, rtol=0, atol=1e-12)
    expected_loss_1 = q_1[0] * 1.5 * LN2 + q_1[1] * LN2 + q_1[3] * math.log(4 / 3)
    assert float(loss_1) == pytest.approx(float(expected_loss_1), abs=1e-6)
    loss_2 = loss_fn(*BATCH_2)
    # g0c0 and g1c0 (now present) both multiply by e^{ln 2} = 2
    q_2 = normalised([4 * math.sqrt(2), 2, 2, 4 / 3])
    torch.testing.assert_close(loss_fn.q, q_2, rtol=0, atol=1e-12)
    assert float(loss_2) == pytest.approx(float((q_2[0] + q_2[2]) * LN2), abs=1e-6)
    assert int(loss_fn.num_updates) == 2
    group_loss = loss_fn.group_loss.tolist()
    assert group_loss[0] == pytest.approx(LN2) and group_loss[2] == pytest.approx(LN2)
    assert math.isnan(group_loss[1]) and math.isnan(group_loss[3])  # absent from the last batch
    assert loss_fn.worst_group_loss() == pytest.approx(LN2)


def test_two_updates_with_the_group_adjustment_match_a_hand_computation():
    loss_fn = GroupDROLoss(2, 2, step_size=0.5, adjustment=2.0, group_counts=COUNTS)
    torch.testing.assert_close(loss_fn.adjust, torch.tensor([0.5, 1.0, 2.0, 2 / 3], dtype=torch.float64))
    loss_fn(*BATCH_1)
    # exponents η·(ℓ_g + C/√n_g) of the present groups, 0 for the absent g1c0 (the adjustment is not added there)
    u_1 = [
        math.exp(0.5 * (1.5 * LN2 + 0.5)),
        math.exp(0.5 * (LN2 + 1.0)),
        1.0,
        math.exp(0.5 * (math.log(4 / 3) + 2 / 3)),
    ]
    torch.testing.assert_close(loss_fn.q, normalised(u_1), rtol=0, atol=1e-12)
    loss_2 = loss_fn(*BATCH_2)
    u_2 = [u_1[0] * math.exp(0.5 * (LN2 + 0.5)), u_1[1], u_1[2] * math.exp(0.5 * (LN2 + 2.0)), u_1[3]]
    q_2 = normalised(u_2)
    torch.testing.assert_close(loss_fn.q, q_2, rtol=0, atol=1e-12)
    # the loss holds the plain group losses, not the adjusted ones
    assert float(loss_2) == pytest.approx(float((q_2[0] + q_2[2]) * LN2), abs=1e-6)


def test_over_groups_pools_the_classes_of_a_group():
    loss_fn = GroupDROLoss(2, 2, step_size=1.0, over="group")
    assert loss_fn.group_names() == ["g0", "g1"]
    loss_fn(*BATCH_1)
    # g0: log 2, log 4, log 2 (mean 4/3 log 2); g1: log(4/3)
    expected = normalised([math.exp(4 / 3 * LN2), 4 / 3])
    torch.testing.assert_close(loss_fn.q, expected, rtol=0, atol=1e-12)


def test_absent_groups_keep_their_unnormalised_weight():
    loss_fn = GroupDROLoss(3, 2, step_size=0.7, adjustment=1.0, group_counts=[[5, 5, 5], [5, 5, 5]])
    loss_fn.q.copy_(torch.tensor([0.1, 0.2, 0.3, 0.15, 0.15, 0.1], dtype=torch.float64))
    before = loss_fn.q.clone()
    logits = torch.randn(4, 3, dtype=torch.float64)
    targets, groups = torch.tensor([0, 0, 2, 2]), torch.tensor([0, 0, 1, 1])  # only cells g0c0 and g1c2
    loss_fn(logits, targets, groups)
    losses = F.cross_entropy(logits, targets, reduction="none")
    factors = torch.ones(6, dtype=torch.float64)
    factors[0] = torch.exp(0.7 * (losses[:2].mean() + 1 / math.sqrt(5)))
    factors[5] = torch.exp(0.7 * (losses[2:].mean() + 1 / math.sqrt(5)))
    normaliser = (before * factors).sum()
    torch.testing.assert_close(loss_fn.q, before * factors / normaliser, rtol=0, atol=1e-12)
    absent = [1, 2, 3, 4]
    torch.testing.assert_close(loss_fn.q[absent] * normaliser, before[absent], rtol=0, atol=1e-12)


def test_eval_mode_does_not_update_q():
    loss_fn = GroupDROLoss(2, 2, step_size=1.0)
    loss_fn.eval()
    value = loss_fn(*BATCH_1)
    assert torch.equal(loss_fn.q, torch.full((4,), 0.25, dtype=torch.float64)) and int(loss_fn.num_updates) == 0
    assert float(value) == pytest.approx(0.25 * (1.5 * LN2 + LN2 + math.log(4 / 3)), abs=1e-6)
    # through the mixin: the loss follows the module's train/eval flag
    model = Model()
    model.autobalance_loss = GroupDROLoss(2, 2, step_size=1.0)
    model.eval()
    model.autobalance_loss(*BATCH_1)
    assert int(model.autobalance_loss.num_updates) == 0
    model.train()
    model.autobalance_loss(*BATCH_1)
    assert int(model.autobalance_loss.num_updates) == 1


def test_loss_equals_the_q_weighted_sum_of_group_mean_losses():
    torch.manual_seed(0)
    loss_fn = GroupDROLoss(3, 2, step_size=0.3)
    for _ in range(3):
        logits, targets, groups = torch.randn(20, 3), torch.randint(0, 3, (20,)), torch.randint(0, 2, (20,))
        value = loss_fn(logits, targets, groups)
        per_sample = -torch.log_softmax(logits.double(), 1)[torch.arange(20), targets]
        expected = 0.0
        for index, (g, k) in enumerate((g, k) for g in range(2) for k in range(3)):
            members = (groups == g) & (targets == k)
            if members.any():
                expected += float(loss_fn.q[index]) * float(per_sample[members].mean())
        assert float(value) == pytest.approx(expected, abs=1e-6)


def test_gradient_with_q_fixed_passes_gradcheck():
    torch.manual_seed(0)
    logits = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    targets, groups = torch.tensor([0, 1, 2, 0, 1, 1, 2]), torch.tensor([0, 0, 1, 1, 1, 0, 0])
    q = torch.tensor([0.05, 0.25, 0.1, 0.2, 0.3, 0.1], dtype=torch.float64)
    for training in (False, True):  # eval: q untouched; training with η = 0: the update leaves q where it is
        loss_fn = GroupDROLoss(3, 2, step_size=0.0).train(training)
        loss_fn.q.copy_(q)
        assert torch.autograd.gradcheck(lambda z, f=loss_fn: f(z, targets, groups), (logits,))
        torch.testing.assert_close(loss_fn.q, q, rtol=0, atol=1e-15)


def test_state_stays_float64_when_the_module_is_cast():
    model = Model()
    model.autobalance_loss = GroupDROLoss(2, 2, step_size=1.0)
    model.to(torch.bfloat16)
    assert model.autobalance_loss.q.dtype == torch.float64
    assert model.autobalance_loss.adjust.dtype == torch.float64


# ---------------------------------------------------------------------------------------------- Lightning side
class Data(pl.LightningDataModule):
    """x, y, g with a rare (group 1, class 0) cell; the order is fixed (no shuffling) so a resumed fit is exact."""

    def __init__(self, cells=((0, 0, 40), (0, 1, 12), (1, 0, 4), (1, 1, 40))):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        g = torch.cat([torch.full((n,), group) for group, _, n in cells])
        y = torch.cat([torch.full((n,), label) for _, label, n in cells])
        x = torch.randn(len(y), 4, generator=gen) + torch.stack([y, g, y - g, 1 - y], 1).float()
        order = torch.randperm(len(y), generator=gen)
        self.dataset = TensorDataset(x[order], y[order], g[order])

    def train_dataloader(self):
        return DataLoader(self.dataset, batch_size=16, shuffle=False, drop_last=True)


class Model(TanhNet):
    def __init__(self):
        super().__init__(num_classes=2, num_features=4, hidden=8, lr=0.1)


def trainer(tmp_path, callbacks, max_epochs, **kwargs):
    options = dict(devices=1, max_epochs=max_epochs, default_root_dir=tmp_path)
    return quiet_trainer(callbacks=callbacks, **{**options, **kwargs})


def test_callback_installs_the_loss_from_the_data_counts_and_logs_q(tmp_path):
    pl.seed_everything(0, verbose=False)
    model, callback = Model(), GroupDRO(step_size=0.5, adjustment=1.0)
    trainer(tmp_path, [callback], max_epochs=1).fit(model, datamodule=Data())
    loss = model.autobalance_loss
    assert loss is callback.loss and isinstance(loss, GroupDROLoss)
    assert loss.group_counts.tolist() == [[40, 12], [4, 40]] and loss.num_groups == 2 and loss.num_classes == 2
    assert int(loss.num_updates) == 6  # 96 samples, batches of 16
    trainer_metrics = model.trainer.callback_metrics
    for name, value in zip(loss.group_names(), loss.q.tolist(), strict=True):
        assert float(trainer_metrics[f"group_dro/q/{name}"]) == pytest.approx(value)
    assert float(trainer_metrics["group_dro/worst_group_loss"]) == pytest.approx(loss.worst_group_loss())
    assert sorted(trainer_metrics) == sorted(
        ["group_dro/worst_group_loss"] + [f"group_dro/q/g{g}c{k}" for g in range(2) for k in range(2)]
    )


def test_callback_reads_the_counts_of_a_heldout_split_and_keeps_a_user_loss(tmp_path):
    pl.seed_everything(0, verbose=False)
    model, callback = Model(), GroupDRO(over="group")
    split = HeldOutSplit(Data(), fraction=0.25, seed=0)
    trainer(tmp_path / "a", [callback], max_epochs=1).fit(model, datamodule=split)
    assert torch.equal(callback.loss.group_counts, split.group_class_counts.float())
    assert callback.loss.group_names() == ["g0", "g1"]

    own = GroupDROLoss(2, 2, step_size=0.2)
    model = Model()
    model.autobalance_loss = own
    callback = GroupDRO()
    with pytest.warns(UserWarning, match="keeps the GroupDROLoss already on Model"):
        trainer(tmp_path / "b", [callback], max_epochs=1).fit(model, datamodule=Data())
    assert callback.loss is own and model.autobalance_loss is own and int(own.num_updates) == 6


def test_resumed_fit_ends_with_the_same_q_and_weights(tmp_path):
    pl.seed_everything(0, verbose=False)
    full_model, full = Model(), GroupDRO(step_size=0.5, adjustment=1.0)
    trainer(tmp_path / "a", [full], max_epochs=4).fit(full_model, datamodule=Data())

    pl.seed_everything(0, verbose=False)
    first_model, first = Model(), GroupDRO(step_size=0.5, adjustment=1.0)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0)
    fit = trainer(tmp_path / "b", [first, checkpoint], max_epochs=2, enable_checkpointing=True)
    fit.fit(first_model, datamodule=Data())
    assert 0 < int(first.loss.num_updates) < int(full.loss.num_updates)
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["callbacks"]["GroupDRO"]
    assert torch.equal(saved["q"], first.loss.q)

    pl.seed_everything(123, verbose=False)  # another initialisation and RNG state must not matter
    resumed_model, resumed = Model(), GroupDRO(step_size=0.5, adjustment=1.0)
    fit = trainer(tmp_path / "c", [resumed], max_epochs=4)
    fit.fit(resumed_model, datamodule=Data(), ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert int(resumed.loss.num_updates) == int(full.loss.num_updates) == 24
    assert not torch.equal(full.loss.q, torch.full((4,), 0.25, dtype=torch.float64))  # q moved
    assert torch.equal(resumed.loss.q, full.loss.q)
    for a, b in zip(resumed_model.parameters(), full_model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_hydra_preset_builds_the_loss_from_the_counts():
    cfg = OmegaConf.create(yaml.safe_load((ROOT / "conf" / "loss" / "group_dro.yaml").read_text(encoding="utf-8")))
    loss = instantiate(cfg)(class_counts=[44, 52], group_counts=torch.tensor([[40, 12], [4, 40]]))
    assert isinstance(loss, GroupDROLoss) and loss.over == "class_group" and loss.num_dro_groups == 4
    assert loss.step_size == 0.01 and loss.adjustment == 0.0
    cfg.adjustment = 1.0
    loss = instantiate(cfg)(class_counts=[44, 52], group_counts=None)  # no groups: class DRO
    assert loss.num_groups == 1 and loss.group_names() == ["g0c0", "g0c1"]
    assert loss.adjust.tolist() == pytest.approx([1 / math.sqrt(44), 1 / math.sqrt(52)])


# ---------------------------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(num_classes=1), "num_classes must be an integer ≥ 2"),
        (dict(num_classes=2.0), "num_classes must be an integer ≥ 2"),
        (dict(num_groups=0), "num_groups must be an integer ≥ 1"),
        (dict(step_size=-0.1), "step_size must be a finite number ≥ 0"),
        (dict(step_size=math.inf), "step_size must be a finite number ≥ 0"),
        (dict(adjustment=-1.0), "adjustment must be a finite number ≥ 0"),
        (dict(adjustment=True), "adjustment must be a finite number ≥ 0"),
        (dict(over="cell"), "over must be 'class_group'"),
        (dict(num_groups=1, over="group"), "over='group' with num_groups=1"),
        (dict(adjustment=1.0), "pass group_counts"),
        (dict(group_counts=[[1, 2, 3], [4, 5, 6]]), r"group_counts must have shape \(num_groups, num_classes\)"),
        (dict(group_counts=[[1, -2], [4, 5]]), "group_counts must be finite and non-negative"),
        (dict(adjustment=1.0, group_counts=[[3, 0], [4, 5]]), r"no training sample in the DRO groups \['g0c1'\]"),
    ],
)
def test_loss_rejects_bad_arguments(kwargs, match):
    options = dict(num_classes=2, num_groups=2) | kwargs
    with pytest.raises(ValueError, match=match):
        GroupDROLoss(options.pop("num_classes"), options.pop("num_groups"), **options)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(name="ldam", class_counts=[3, 4]), "builds the 'group_dro' loss"),
        (dict(), "needs class_counts"),
        (dict(class_counts=[3, 4], group_counts=[[1, 1], [1, 1]]), "differ from the class totals"),
        (dict(class_counts=[[3, 4]]), "class_counts must be a 1-D sequence"),
    ],
)
def test_from_counts_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GroupDROLoss.from_counts(**kwargs)


def test_forward_rejects_bad_batches():
    loss_fn = GroupDROLoss(2, 2)
    logits, targets = torch.zeros(3, 2), torch.tensor([0, 1, 1])
    with pytest.raises(ValueError, match="no groups were passed"):
        loss_fn(logits, targets)
    with pytest.raises(ValueError, match=r"Group labels must lie in \[0, 2\)"):
        loss_fn(logits, targets, torch.tensor([0, 2, 1]))
    with pytest.raises(ValueError, match=r"Labels must lie in \[0, 2\)"):
        loss_fn(logits, torch.tensor([0, 1, 2]), torch.tensor([0, 1, 1]))
    assert int(loss_fn.num_updates) == 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(step_size=-1.0), "step_size must be"),
        (dict(adjustment=math.nan), "adjustment must be"),
        (dict(over="class"), "over must be"),
        (dict(num_classes=1), "num_classes must be"),
        (dict(num_groups=0), "num_groups must be"),
    ],
)
def test_callback_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GroupDRO(**kwargs)


def test_callback_fails_early_on_a_wrong_set_up(tmp_path):
    class NoMixin(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Linear(4, 2)

        def training_step(self, batch, batch_idx):
            return F.cross_entropy(self.net(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    with pytest.raises(TypeError, match="needs a LightningModule with AutoBalanceMixin"):
        trainer(tmp_path, [GroupDRO()], max_epochs=1).fit(NoMixin(), datamodule=Data())
    with pytest.raises(ValueError, match="GroupDRO and AutoBalance both install the training loss"):
        split = HeldOutSplit(Data(), fraction=0.25, seed=0)
        trainer(tmp_path, [GroupDRO(), AutoBalance(warmup_epochs=0)], max_epochs=1).fit(Model(), datamodule=split)
    with pytest.raises(TypeError, match="the fit has no datamodule"):
        trainer(tmp_path, [GroupDRO()], max_epochs=1).fit(Model(), train_dataloaders=Data().train_dataloader())
    with pytest.raises(ValueError, match=r"group labels lie in \[0, 1\] but num_groups=1"):
        trainer(tmp_path, [GroupDRO(num_groups=1)], max_epochs=1).fit(Model(), datamodule=Data())
    callback = GroupDRO()
    with pytest.raises(ValueError, match="state version"):
        callback.load_state_dict({"version": 0})
    model, callback = Model(), GroupDRO(over="group")
    callback.load_state_dict({"version": 1, "groups": ["g0c0", "g0c1", "g1c0", "g1c1"]})
    with pytest.raises(ValueError, match="differ from this run's"):
        trainer(tmp_path, [callback], max_epochs=1).fit(model, datamodule=Data())


# ---------------------------------------------------------------------------------------------- DDP parity
def launch(out, *args):
    done = run_script(SCRIPT, out, *args)
    assert done.returncode == 0, done.stderr[-3000:]
    world = json.loads((Path(out) / "rank0.json").read_text())["world_size"]
    return rank_records(out, world)


@pytest.mark.slow
@pytest.mark.ddp
def test_two_gloo_processes_match_one_process(tmp_path):
    (single,) = launch(tmp_path / "single", "--batch-size", 32)
    rank0, rank1 = launch(tmp_path / "ddp", "--devices", 2, "--strategy", "ddp", "--batch-size", 16)
    assert single["world_size"] == 1 and rank0["world_size"] == 2 and rank1["rank"] == 1
    assert single["updates"] == rank0["updates"] == rank1["updates"] == len(single["history"]) == 24
    # q identical on both ranks after every step, and equal to the single process's on the same global batches
    assert rank0["history"] == rank1["history"]
    for step_ddp, step_single in zip(rank0["history"], single["history"], strict=True):
        assert_close(step_ddp, step_single)
    # every rank reports the single-process loss, and the gradient is the single process's: the same final weights
    assert rank0["losses"] == rank1["losses"]
    assert_close(rank0["losses"], single["losses"])
    assert rank0["weights"] == rank1["weights"]
    assert_close(rank0["weights"], single["weights"])
    assert max(single["q"]) > 0.5  # q really moved away from uniform (0.25)
