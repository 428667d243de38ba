"""Faults a long search run meets, injected on purpose: SIGKILL and resume, non-finite hypergradients and α,
a diverging hyper-optimizer, torn or malicious checkpoint and learned-loss files.

The SIGKILL tests run ``tests/scripts/fault_run.py`` in its own process group (``start_new_session``): the run kills
the whole group at a seeded random step, as a cluster scheduler would, and is then resumed from ``last.ckpt``.
"""

import copy
import inspect
import math
import pickle
import random
import re
from dataclasses import replace
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.fabric.utilities.types import _Stateful
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_autobalance import HeldOutSplit, LearnedLossError, ParametricCrossEntropy, load_loss, save_loss
from lightning_autobalance.hypergrad import ConjugateGradient
from lightning_autobalance.hyperstep import FullNetwork
from tests._helpers.ddp import ddp_environment, rank_records, run_script
from tests._helpers.loggers import MemoryLogger
from tests._helpers.trainers import quiet_trainer
from tests.conftest import ROOT
from tests.scripts.fault_run import Data, Model, make_autobalance

SCRIPT = Path(__file__).parent / "scripts" / "fault_run.py"
STEPS_PER_EPOCH = 8  # 138 train samples of Data, batches of 16 (drop_last); under DDP 2 × 8
EPOCHS = 3


# ---------------------------------------------------------------------------------------------- in-process runs
def fit(tmp_path, autobalance, epochs=EPOCHS, ckpt_path=None, weights_only=None, **trainer_kwargs):
    pl.seed_everything(0, verbose=False)
    logger = MemoryLogger()
    options = dict(devices=1, max_epochs=epochs, callbacks=[autobalance], logger=logger, default_root_dir=tmp_path)
    trainer = quiet_trainer(**{**options, **trainer_kwargs})
    datamodule = HeldOutSplit(Data(), fraction=0.25)
    trainer.fit(Model(), datamodule=datamodule, ckpt_path=ckpt_path, weights_only=weights_only)
    return trainer, logger


def record_hyper_steps(autobalance):
    """Wrap ``autobalance.hyper_step`` to keep, per call, its result and α / optimizer state before and after."""
    calls = []
    original = autobalance.hyper_step

    def recording(trainer, pl_module):
        alpha = {k: v.detach().clone() for k, v in autobalance.loss.hparams().items()}
        state = copy.deepcopy(autobalance.hyper_optimizer.state_dict())
        updated = original(trainer, pl_module)
        after = {k: v.detach().clone() for k, v in autobalance.loss.hparams().items()}
        calls.append((updated, alpha, after, state, copy.deepcopy(autobalance.hyper_optimizer.state_dict())))
        return updated

    autobalance.hyper_step = recording
    return calls


def same_optimizer_state(a, b):
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    return all(torch.equal(a["state"][k]["momentum_buffer"], b["state"][k]["momentum_buffer"]) for k in a["state"])


def make_loss_engine(faults):
    """The full engine, with the hypergradient of chosen calls (1-based) replaced by a non-finite value."""
    engine = FullNetwork(solver=ConjugateGradient(iters=3, damping=1.0))
    calls = []

    def faulty(context):
        result = engine(context)
        calls.append(len(calls) + 1)
        value = faults.get(len(calls))
        if value is None:
            return result
        grads = {name: grad.clone() for name, grad in result.grads.items()}
        next(iter(grads.values())).view(-1)[0] = value  # one poisoned entry is enough
        return replace(result, grads=grads)

    return faulty, calls


def test_injected_non_finite_hypergradient_is_skipped_counted_and_training_continues(tmp_path):
    engine, calls = make_loss_engine({2: math.nan, 5: math.inf})
    autobalance = make_autobalance(engine=engine)
    recorded = record_hyper_steps(autobalance)
    with pytest.warns(UserWarning, match=r"non-finite hypergradient at step \d+; hyper-step skipped") as caught:
        trainer, logger = fit(tmp_path, autobalance)
    assert len([w for w in caught if "non-finite hypergradient" in str(w.message)]) == 2
    # training ran to the end; 8 hyper-step calls (steps 10, 12, ..., 24), two of them skipped
    assert trainer.global_step == EPOCHS * STEPS_PER_EPOCH and len(calls) == len(recorded) == 8
    assert [updated for updated, *_ in recorded] == [True, False, True, True, False, True, True, True]
    assert autobalance.skipped_steps == 2 and autobalance.hyper_steps == 6
    for updated, before, after, state_before, state_after in recorded:
        if not updated:  # a skipped step changes nothing
            assert all(torch.equal(before[k], after[k]) for k in before)
            assert same_optimizer_state(state_before, state_after)
    assert all(torch.isfinite(p).all() for p in autobalance.loss.hparams().values())
    # counted in the logs: 1 after the first skip, 2 after the second, and 2 on the last update
    assert logger.values("autobalance/skipped_steps")[:2] == [0.0, 1.0]
    assert logger.values("autobalance/skipped_steps")[-1] == 2.0 and max(logger.values("autobalance/hyper_steps")) == 6


class PoisonedSGD(torch.optim.SGD):
    """SGD whose step writes a non-finite value into α on chosen calls (1-based): a diverging hyper-optimizer."""

    def __init__(self, params, poison, **kwargs):
        super().__init__(params, **kwargs)
        self.poison, self.calls = poison, 0

    @torch.no_grad()
    def step(self, closure=None):
        loss = super().step(closure)
        self.calls += 1
        if self.calls in self.poison:
            self.param_groups[0]["params"][-1].view(-1)[-1] = self.poison[self.calls]
        return loss


def test_non_finite_alpha_after_the_step_is_restored_with_the_optimizer_state(tmp_path):
    autobalance = make_autobalance(
        hyper_optimizer=lambda params: PoisonedSGD(params, {3: math.nan, 4: -math.inf}, lr=0.5, momentum=0.9)
    )
    recorded = record_hyper_steps(autobalance)
    with pytest.warns(UserWarning, match=r"made raw_iota non-finite .* α and the hyper-optimizer state were restored"):
        trainer, logger = fit(tmp_path, autobalance)
    assert trainer.global_step == EPOCHS * STEPS_PER_EPOCH
    assert [updated for updated, *_ in recorded] == [True, True, False, False, True, True, True, True]
    assert autobalance.skipped_steps == 2 and autobalance.hyper_steps == 6
    for updated, before, after, state_before, state_after in recorded:
        if not updated:  # α and the momentum buffers exactly as before the step
            assert all(torch.equal(before[k], after[k]) for k in before)
            assert same_optimizer_state(state_before, state_after)
        else:
            assert not all(torch.equal(before[k], after[k]) for k in before)
    assert all(torch.isfinite(p).all() for p in autobalance.loss.hparams().values())
    assert logger.values("autobalance/skipped_steps")[-1] == 2.0
    # the logged per-class values stay finite throughout
    assert all(math.isfinite(v) for _, row in logger.rows for k, v in row.items() if k.startswith("autobalance/"))


def test_diverging_hyper_optimizer_is_clipped_and_bounded_as_configured(tmp_path):
    bounds = {"delta": (0.5, 1.5), "iota": (-2.0, 2.0)}
    autobalance = make_autobalance(hyper_optimizer=None, hyper_lr=1e6, max_hypergrad_norm=0.05, bounds=bounds)
    _, logger = fit(tmp_path, autobalance)
    assert autobalance.hyper_steps == 8 and autobalance.skipped_steps == 0
    delta, iota = autobalance.loss.delta().detach(), autobalance.loss.iota().detach()
    assert torch.isfinite(delta).all() and torch.isfinite(iota).all()
    tol = 1e-6  # the box is applied to the float32 raw parameters
    assert ((delta >= 0.5 - tol) & (delta <= 1.5 + tol)).all(), delta
    assert ((iota >= -2.0 - tol) & (iota <= 2.0 + tol)).all(), iota
    assert float(iota.abs().max()) == pytest.approx(2.0, abs=tol)  # it really ran into the bound
    for key in [k for _, row in logger.rows for k in row if re.match(r"autobalance/(delta|iota)/c\d", k)]:
        low, high = bounds[key.split("/")[1]]
        assert all(low - tol <= v <= high + tol for v in logger.values(key)), key
    # the pre-clip norm is logged, every step above the threshold was clipped and counted
    norms = logger.values("autobalance/hypergrad_norm")
    assert len(norms) == 8 and all(math.isfinite(n) for n in norms)
    assert autobalance.clipped_steps == sum(n > 0.05 for n in norms) > 0
    assert logger.values("autobalance/clipped_steps")[-1] == autobalance.clipped_steps
    assert autobalance.state_dict()["clipped_steps"] == autobalance.clipped_steps


def test_the_same_diverging_hyper_optimizer_without_bounds_leaves_the_box(tmp_path):
    """Control for the test above: the bounds, not the problem, keep α in the box."""
    autobalance = make_autobalance(hyper_optimizer=None, hyper_lr=1e6)
    fit(tmp_path, autobalance)
    delta, iota = autobalance.loss.delta().detach(), autobalance.loss.iota().detach()
    # ι runs off to ~1e5 and Δ collapses towards 0 (the loss stops seeing the logits) or saturates at delta_max
    assert float(iota.abs().max()) > 1e3
    assert float(delta.min()) < 0.5 or float(delta.max()) > 1.5


# ---------------------------------------------------------------------------------------------- SIGKILL + resume
def run(tmp_path, out, *args, devices=1, expect_kill=False):
    env = ddp_environment()
    env["TMPDIR"] = str(tmp_path)  # where a checkpoint is written before its rename: the checkpoints' file system
    strategy = ["--devices", "2", "--strategy", "ddp", "--batch-size", "8"] if devices == 2 else []
    done = run_script(SCRIPT, out, "--epochs", EPOCHS, *strategy, *args, env=env, cwd=ROOT, start_new_session=True)
    if expect_kill:
        assert done.returncode == -9, (done.returncode, done.stderr[-3000:])
        return None
    assert done.returncode == 0, done.stderr[-3000:]
    return rank_records(out, devices)


def kill_step(seed, first_checkpoint):
    """A seeded random step after the first checkpoint and before the end of the run."""
    return random.Random(seed).randint(first_checkpoint + 1, EPOCHS * STEPS_PER_EPOCH - 1)


def checkpoint_step(path):
    return torch.load(path, weights_only=True, map_location="cpu")["global_step"]


def assert_same_alpha(a, b, tol=0.0):
    assert a.keys() == b.keys()
    for key in a:
        if tol == 0.0:
            assert a[key] == b[key], key  # exact float32 values: torch.equal
        else:
            assert max(abs(x - y) for x, y in zip(a[key], b[key], strict=True)) <= tol, key


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("uninterrupted")
    return run(tmp, tmp / "out", "--checkpoint-dir", tmp / "ckpt", "--every-n-train-steps", STEPS_PER_EPOCH)[0]


def test_train_loader_saves_its_position_in_the_epoch():
    # Lightning stores a `_Stateful` loader's state in checkpoints: a mid-epoch resume continues with the next batch
    split = HeldOutSplit(Data(), fraction=0.25)
    split.setup("fit")
    assert isinstance(split.train_dataloader(), _Stateful)


@pytest.mark.slow
def test_sigkill_at_a_random_step_then_resume_gives_the_same_alpha(tmp_path, uninterrupted):
    step = kill_step(seed=10, first_checkpoint=STEPS_PER_EPOCH)
    ckpt = tmp_path / "ckpt"
    every = ["--checkpoint-dir", ckpt, "--every-n-train-steps", STEPS_PER_EPOCH]
    run(tmp_path, tmp_path / "killed", *every, "--kill-at-step", step, expect_kill=True)
    assert not (tmp_path / "killed" / "rank0.json").exists()  # really killed
    # the kill comes before that step's own checkpoint: the last one is of the epoch end before it
    assert checkpoint_step(ckpt / "last.ckpt") == (step - 1) // STEPS_PER_EPOCH * STEPS_PER_EPOCH
    resumed = run(tmp_path, tmp_path / "resumed", *every, "--resume", ckpt / "last.ckpt")[0]
    assert resumed["global_step"] == uninterrupted["global_step"] == EPOCHS * STEPS_PER_EPOCH
    assert resumed["hyper_steps"] == uninterrupted["hyper_steps"] == 8
    assert_same_alpha(resumed["alpha"], uninterrupted["alpha"])


@pytest.mark.slow
def test_sigkill_during_a_checkpoint_write_never_leaves_a_torn_last_ckpt(tmp_path, uninterrupted):
    """Killed half-way through writing the step-16 checkpoint: last.ckpt is still the complete step-8 one."""
    ckpt = tmp_path / "ckpt"
    every = ["--checkpoint-dir", ckpt, "--every-n-train-steps", STEPS_PER_EPOCH]
    step = kill_step(seed=3, first_checkpoint=STEPS_PER_EPOCH)
    run(tmp_path, tmp_path / "killed", *every, "--kill-at-step", step, "--kill-mode", "mid-save", expect_kill=True)
    written = (step + STEPS_PER_EPOCH - 1) // STEPS_PER_EPOCH * STEPS_PER_EPOCH  # the write that was torn
    assert checkpoint_step(ckpt / "last.ckpt") == written - STEPS_PER_EPOCH
    assert list(ckpt.iterdir()) == [ckpt / "last.ckpt"]  # the torn bytes went to a temporary file, never renamed
    resumed = run(tmp_path, tmp_path / "resumed", *every, "--resume", ckpt / "last.ckpt")[0]
    assert resumed["hyper_steps"] == uninterrupted["hyper_steps"]
    assert_same_alpha(resumed["alpha"], uninterrupted["alpha"])


@pytest.mark.slow
def test_sigkill_after_a_mid_epoch_checkpoint_then_resume_gives_the_same_alpha(tmp_path, uninterrupted):
    ckpt = tmp_path / "ckpt"
    every = ["--checkpoint-dir", ckpt, "--every-n-train-steps", 3]
    step = kill_step(seed=1, first_checkpoint=3)
    run(tmp_path, tmp_path / "killed", *every, "--kill-at-step", step, expect_kill=True)
    assert checkpoint_step(ckpt / "last.ckpt") % STEPS_PER_EPOCH  # the resume point is inside an epoch
    resumed = run(tmp_path, tmp_path / "resumed", *every, "--resume", ckpt / "last.ckpt")[0]
    assert resumed["hyper_steps"] == uninterrupted["hyper_steps"]
    assert_same_alpha(resumed["alpha"], uninterrupted["alpha"])


@pytest.mark.slow
@pytest.mark.ddp
def test_sigkill_of_a_two_process_ddp_run_then_resume_gives_the_same_alpha(tmp_path):
    every = ["--every-n-train-steps", STEPS_PER_EPOCH]
    full = run(tmp_path, tmp_path / "full", "--checkpoint-dir", tmp_path / "ckpt_full", *every, devices=2)
    assert full[0]["world_size"] == 2 and full[0]["alpha"] == full[1]["alpha"]
    ckpt = tmp_path / "ckpt"
    step = kill_step(seed=7, first_checkpoint=STEPS_PER_EPOCH)
    run(tmp_path, tmp_path / "killed", "--checkpoint-dir", ckpt, *every, "--kill-at-step", step, devices=2,
        expect_kill=True)  # fmt: skip
    assert checkpoint_step(ckpt / "last.ckpt") < step
    resumed = run(tmp_path, tmp_path / "resumed", "--checkpoint-dir", ckpt, *every, "--resume", ckpt / "last.ckpt",
                  devices=2)  # fmt: skip
    assert resumed[0]["alpha"] == resumed[1]["alpha"]  # identical on both ranks
    assert resumed[0]["hyper_steps"] == full[0]["hyper_steps"] == 8
    assert_same_alpha(resumed[0]["alpha"], full[0]["alpha"], tol=1e-6)


# ---------------------------------------------------------------------------------------------- files
def small_checkpoint(tmp_path):
    autobalance = make_autobalance()
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0)
    fit(tmp_path, autobalance, epochs=2, callbacks=[autobalance, checkpoint], enable_checkpointing=True)
    return tmp_path / "ckpt" / "last.ckpt", autobalance


def test_checkpoints_resume_with_weights_only_and_torn_or_malicious_ones_are_refused(tmp_path):
    path, first = small_checkpoint(tmp_path)
    # the AutoBalance state is plain tensors and numbers: loadable without unpickling arbitrary objects
    state = torch.load(path, weights_only=True)
    (saved,) = [v for k, v in state["callbacks"].items() if k.startswith("AutoBalance")]
    assert saved["hyper_steps"] == first.hyper_steps > 0
    resumed = make_autobalance()
    fit(tmp_path / "resumed", resumed, epochs=2, ckpt_path=path, weights_only=True)
    assert torch.equal(resumed.loss.raw_iota, first.loss.raw_iota)  # nothing left to train: restored as saved

    torn = tmp_path / "torn.ckpt"
    torn.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    # refused, never loaded; the message is torch's / fsspec's (`OSError: [Errno 22] Invalid argument` on a cut zip)
    with pytest.raises((RuntimeError, OSError)):
        pl.Trainer(accelerator="cpu", max_epochs=3, logger=False, enable_progress_bar=False).fit(
            Model(), datamodule=HeldOutSplit(Data(), fraction=0.25), ckpt_path=torn
        )

    marker = tmp_path / "pwned"
    malicious = tmp_path / "malicious.ckpt"
    torch.save({"state": Exploit(marker)}, malicious)
    for weights_only in (True, None):  # None: what Trainer.fit(ckpt_path=...) passes by default
        with pytest.raises(pickle.UnpicklingError, match=r"Weights only load failed"):
            pl.Trainer(accelerator="cpu", max_epochs=3, logger=False, enable_progress_bar=False).fit(
                Model(), datamodule=HeldOutSplit(Data(), fraction=0.25), ckpt_path=malicious, weights_only=weights_only
            )
    assert not marker.exists()


class Exploit:
    """Unpickling it would create a file (a stand-in for running any code)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_package_loads_torch_files_only_with_weights_only_true():
    calls = []
    for path in sorted((ROOT / "lightning_autobalance").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        for match in re.finditer(r"torch\.load\(|torch\.serialization\.load\(|pickle\.loads?\(|yaml\.load\(", text):
            call = text[match.start() : text.find(")", match.end()) + 1]
            calls.append((path.name, call))
    # the one opt-in, as Lightning's load_from_checkpoint(weights_only=False): load_loss(path, weights_only=False) for
    # a trusted checkpoint that pickles objects; safe by default
    opt_in = ("learned_loss.py", 'torch.load(path, map_location="cpu", weights_only=weights_only)')
    assert inspect.signature(load_loss).parameters["weights_only"].default is True
    bad = [(name, call) for name, call in calls if "weights_only=True" not in call and (name, call) != opt_in]
    assert not bad, f"unsafe loaders (use torch.load(..., weights_only=True) / yaml.safe_load): {bad}"


@pytest.fixture
def loss_file(tmp_path):
    loss = ParametricCrossEntropy.from_preset("la", [90, 30, 10], learnable=["delta", "iota"])
    path = tmp_path / "loss.yaml"
    save_loss(loss, path, {"hyper_steps": 3})
    return path


def test_a_truncated_learned_loss_file_is_detected_or_loads_the_exact_loss(loss_file):
    """Cut at every third byte: the load fails with a message naming the file, or, when only the human-readable
    ``values`` / ``metadata`` after the last raw entry were cut, gives the saved loss bit for bit."""
    text, saved = loss_file.read_text(), load_loss(loss_file)
    end_of_raw = text.index("values:")
    failures = 0
    for cut in range(0, len(text), 3):
        loss_file.write_text(text[:cut])
        try:
            loaded = load_loss(loss_file)
        except LearnedLossError as error:
            assert str(loss_file) in str(error), (cut, str(error))
            failures += 1
            continue
        assert cut >= end_of_raw - 1, (cut, text[:cut][-40:])  # everything that defines the loss was there
        for kind in ("delta", "iota", "omega", "noise", "mix"):
            assert torch.equal(getattr(loaded, f"raw_{kind}"), getattr(saved, f"raw_{kind}")), cut
    assert failures >= end_of_raw // 3


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda text: text.replace("raw:", "raw: [", 1),  # broken YAML syntax
        lambda text: "\x00\xff\xfe garbage \x89PNG",  # binary junk
        lambda text: text.replace("num_classes: 3", "num_classes: three"),  # an entry of the wrong type
        lambda text: text.replace("delta:\n  - [0.0", "delta:\n  - [.nan", 1),  # a NaN parameter
        lambda text: "",  # an empty file
    ],
    ids=["syntax", "binary", "type", "nan", "empty"],
)
def test_a_corrupted_learned_loss_file_is_detected(loss_file, corrupt):
    loss_file.write_text(corrupt(loss_file.read_text()))
    with pytest.raises(LearnedLossError, match=re.escape(str(loss_file))):
        load_loss(loss_file)


def test_loading_a_learned_loss_file_never_executes_code(loss_file, tmp_path):
    marker = tmp_path / "pwned"
    text = loss_file.read_text()
    for tag in (
        f"!!python/object/apply:os.system ['touch {marker}']",
        f"!!python/object/apply:pathlib.Path.touch [!!python/object/apply:pathlib.Path ['{marker}']]",
        "!!python/name:os.system ''",
        "!!python/object/new:pathlib.Path []",
    ):
        loss_file.write_text(text.replace("metadata: {hyper_steps: 3}", f"metadata: {{hyper_steps: {tag}}}"))
        with pytest.raises(LearnedLossError, match=r"holds a tag that safe loading refuses .*python/.*not loaded"):
            load_loss(loss_file)
    assert not marker.exists()


def test_an_interrupted_write_keeps_the_previous_learned_loss_file(loss_file, monkeypatch):
    """save_loss writes a temporary file and renames it: a crash before the rename leaves the old file intact."""
    from lightning_autobalance import learned_loss

    before = loss_file.read_bytes()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # e.g. a SIGINT between the write and the rename

    monkeypatch.setattr(learned_loss.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        save_loss(ParametricCrossEntropy(3, learnable=["iota"]), loss_file)
    assert loss_file.read_bytes() == before
    assert [p.name for p in loss_file.parent.iterdir()] == [loss_file.name]  # no temporary file left behind
    assert load_loss(loss_file).num_classes == 3
