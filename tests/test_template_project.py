"""Issue 17, acceptance 1: lightning-autobalance dropped into a lightning-hydra-template style project.

``tests/template_project`` is a user's repository in miniature (its own ``LitClassifier`` with torchmetrics metrics
and steps, ModelCheckpoint / EarlyStopping on its ``val/acc`` from a Hydra ``callbacks`` group, optional
``torch.compile``, a long-tailed version of scikit-learn's digits) plus the drop-in
``BalancedClassifier(AutoBalanceMixin, LitClassifier)``. Its ``src/train.py`` runs here as subprocesses, through Hydra:
search, retrain from the exported YAML / the search's best checkpoint / nothing, evaluation from a checkpoint in a
fresh process, resume from ``last.ckpt``, a ``-m seed=1,2`` multirun and a ``model.compile=true`` search.
"""

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from lightning_autobalance import AutoBalance, AutoBalanceMixin, HeldOutSplit, load_loss
from tests.conftest import subprocess_env
from tests.test_callback import K, TinyData, make_trainer

PROJECT = Path(__file__).resolve().parent / "template_project"
APP = PROJECT / "src" / "train.py"
SEARCH = ["task=search", "callbacks=[default,autobalance]"]


@dataclass
class Run:
    name: str
    args: list
    returncode: int | None = None
    output: str = ""
    seconds: float = 0.0

    def check(self):
        assert self.returncode == 0, (
            f"{self.name} ({' '.join(self.args)}) exited {self.returncode}:\n{self.output[-6000:]}"
        )
        return self


def launch(name, args, cwd):
    """Run the project's app as a user would: ``python src/train.py <overrides>``, one thread per process."""
    run = Run(name, args)
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(APP), *args], cwd=cwd, env=subprocess_env(), capture_output=True, text=True, timeout=900
    )
    run.returncode, run.output, run.seconds = done.returncode, done.stdout + done.stderr, time.perf_counter() - start
    return run


def checkpoint(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def model_checkpoint_state(ckpt):
    (state,) = [v for k, v in ckpt["callbacks"].items() if k.startswith("ModelCheckpoint")]
    return state


def autobalance_state(ckpt):
    return ckpt["callbacks"]["AutoBalance"]


def metadata(path):
    return yaml.safe_load(Path(path).read_text())["metadata"]


def csv_rows(run_dir):
    import csv

    with open(Path(run_dir) / "csv" / "version_0" / "metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every run of the project, two at a time (one thread each); a run starts once the runs it needs are done."""
    root = tmp_path_factory.mktemp("template_project")
    out = {}
    with ThreadPoolExecutor(max_workers=2) as pool:
        independent = {
            "search": [*SEARCH, "trainer.max_epochs=3", f"hydra.run.dir={root / 'search'}"],
            "seeds": ["-m", *SEARCH, "trainer.max_epochs=2", "seed=1,2", f"hydra.sweep.dir={root / 'seeds'}"],
            "compiled": [*SEARCH, "trainer.max_epochs=2", "model.compile=true", f"hydra.run.dir={root / 'compiled'}"],
        }
        futures = {name: pool.submit(launch, name, args, root) for name, args in independent.items()}
        out["search"] = futures.pop("search").result()
        if out["search"].returncode == 0:
            search = root / "search"
            best = model_checkpoint_state(checkpoint(search / "checkpoints" / "last.ckpt"))["best_model_path"]
            dependent = {
                "resume": [*SEARCH, "trainer.max_epochs=4", f"ckpt_path={search / 'checkpoints' / 'last.ckpt'}",
                           f"hydra.run.dir={root / 'resume'}"],
                "retrain": ["-m", "task=retrain", "trainer.max_epochs=3",
                            f"learned_loss={search / 'autobalance_loss.yaml'},{best},null",
                            f"hydra.sweep.dir={root / 'retrain'}"],
            }  # fmt: skip
            futures.update({name: pool.submit(launch, name, args, root) for name, args in dependent.items()})
            out["retrain"] = futures.pop("retrain").result()
            if out["retrain"].returncode == 0:
                retrained = model_checkpoint_state(checkpoint(root / "retrain" / "0" / "checkpoints" / "last.ckpt"))
                eval_args = ["task=eval", f"ckpt_path={retrained['best_model_path']}", f"hydra.run.dir={root / 'eval'}"]
                futures["eval"] = pool.submit(launch, "eval", eval_args, root)
        out.update({name: future.result() for name, future in futures.items()})
    out["root"] = root
    print({name: f"{run.seconds:.1f}s" for name, run in out.items() if isinstance(run, Run)})
    return out


def get(runs, name):
    if name not in runs:
        pytest.fail(f"{name} did not run because a run it needs failed: {sorted(k for k in runs if k != 'root')}")
    return runs[name].check()


def test_the_autobalance_callbacks_group_composes_with_the_library_defaults(tmp_path):
    with initialize_config_dir(config_dir=str(PROJECT / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=[*SEARCH, f"paths.output_dir={tmp_path}"])
    assert set(cfg.callbacks) == {"model_checkpoint", "early_stopping", "autobalance"}
    configured, default = instantiate(cfg.callbacks.autobalance), AutoBalance()
    assert (configured.warmup_epochs, configured.every_n_steps, configured.batch_size) == (1, 4, 64)
    for name in ("preset", "learn", "train_batches", "heldout_batches", "engine", "seed"):  # the library's defaults
        assert getattr(configured, name) == getattr(default, name), name


@pytest.mark.slow
def test_search_learns_a_loss_next_to_the_projects_own_metric_and_checkpoint(runs):
    get(runs, "search")
    run_dir = runs["root"] / "search"
    exported = metadata(run_dir / "autobalance_loss.yaml")
    assert exported["learned"] is True and exported["hyper_steps"] > 0 and exported["skipped_steps"] == 0
    learned = load_loss(run_dir / "autobalance_loss.yaml")
    assert not learned.is_plain_cross_entropy  # α moved away from the "ce" preset it started from
    # point 3: the project's own validation_step logged val/acc, and ModelCheckpoint(monitor="val/acc") used it
    state = model_checkpoint_state(checkpoint(run_dir / "checkpoints" / "last.ckpt"))
    assert state["monitor"] == "val/acc" and 0.1 < float(state["best_model_score"]) <= 1.0
    assert Path(state["best_model_path"]).name.startswith("epoch_") and Path(state["best_model_path"]).exists()
    rows = csv_rows(run_dir)
    validated = [row for row in rows if row["val/acc"]]
    assert len(validated) == 3
    # point 2: the mixin's metrics logged from the project's validation_step next to its torchmetrics Accuracy
    assert all(row["val/balanced_error"] and row["val/worst_class_error"] for row in validated)
    assert any(row["autobalance/iota/c9"] for row in rows)  # α reached the project's logger
    # point 4: the feature hooks select the fast engine, with no fall-back warning
    assert "no feature hook" not in runs["search"].output


@pytest.mark.slow
def test_retrain_from_the_exported_loss_the_best_checkpoint_or_nothing_then_eval_in_a_fresh_process(runs):
    get(runs, "retrain")
    search, retrain = runs["root"] / "search", runs["root"] / "retrain"
    best = model_checkpoint_state(checkpoint(search / "checkpoints" / "last.ckpt"))["best_model_path"]
    for job, source in (("0", search / "autobalance_loss.yaml"), ("1", Path(best))):  # point 6: YAML or any .ckpt
        used, learned = load_loss(retrain / job / "retrain_loss.yaml"), load_loss(source)
        for kind in ("delta", "iota"):
            assert torch.equal(getattr(used, kind)(), getattr(learned, kind)()), (job, kind)
        assert not (retrain / job / "autobalance_loss.yaml").exists()  # no search in a retrain
    assert not (retrain / "2" / "retrain_loss.yaml").exists()  # learned_loss=null: the mixin's plain cross-entropy
    search_steps = checkpoint(search / "checkpoints" / "last.ckpt")["global_step"] / 3
    for job in ("0", "1", "2"):
        ckpt = checkpoint(retrain / job / "checkpoints" / "last.ckpt")
        assert "AutoBalance" not in ckpt["callbacks"] and "HeldOutSplit" not in ckpt
        assert ckpt["global_step"] / 3 > search_steps  # all the training data, not the search's train split
        assert [row["val/acc"] for row in csv_rows(retrain / job) if row["val/acc"]]
    get(runs, "eval")  # a fresh process: load_from_checkpoint of the retrained model's best checkpoint, trainer.test
    metrics = json.loads((runs["root"] / "eval" / "test_metrics.json").read_text())
    assert {"test/acc", "test/loss", "test/balanced_error", "test/worst_class_error"} <= set(metrics)
    assert metrics["test/acc"] > 0.5 and metrics["test/balanced_error"] == pytest.approx(
        1 - metrics["test/acc"], abs=1e-5
    )


@pytest.mark.slow
def test_a_search_resumed_from_last_ckpt_continues(runs):
    get(runs, "resume")
    search, resume = runs["root"] / "search", runs["root"] / "resume"
    before, after = checkpoint(search / "checkpoints" / "last.ckpt"), checkpoint(resume / "checkpoints" / "last.ckpt")
    assert after["epoch"] == 3 and after["global_step"] == before["global_step"] * 4 // 3
    assert min(int(row["epoch"]) for row in csv_rows(resume) if row["val/acc"]) == 3  # no epoch trained twice
    assert autobalance_state(after)["hyper_steps"] > autobalance_state(before)["hyper_steps"]
    assert metadata(resume / "autobalance_loss.yaml")["hyper_steps"] == autobalance_state(after)["hyper_steps"]
    assert model_checkpoint_state(after)["monitor"] == "val/acc"


@pytest.mark.slow
def test_a_seed_multirun_varies_the_split_and_the_learned_loss(runs):
    get(runs, "seeds")
    seeds = runs["root"] / "seeds"
    ckpts = [checkpoint(seeds / job / "checkpoints" / "last.ckpt") for job in ("0", "1")]
    assert [c["HeldOutSplit"]["seed"] for c in ckpts] == [1, 2]  # point 7: the split follows seed_everything
    assert [autobalance_state(c)["seed"] for c in ckpts] == [1, 2]  # and so do the hyper-batch draws
    losses = [load_loss(seeds / job / "autobalance_loss.yaml") for job in ("0", "1")]
    assert all(metadata(seeds / job / "autobalance_loss.yaml")["learned"] for job in ("0", "1"))
    assert not torch.equal(losses[0].iota(), losses[1].iota())


@pytest.mark.slow
def test_a_compiled_model_searches_with_the_default_engine(runs):
    get(runs, "compiled")
    run_dir = runs["root"] / "compiled"
    assert any("_orig_mod" in key for key in checkpoint(run_dir / "checkpoints" / "last.ckpt")["state_dict"])
    exported = metadata(run_dir / "autobalance_loss.yaml")
    assert exported["learned"] is True and exported["hyper_steps"] > 0  # point 4: hyper-steps ran on the compiled net
    assert "no feature hook" not in runs["compiled"].output


class TemplateModel(AutoBalanceMixin, pl.LightningModule):
    """As lightning-hydra-template writes a module: the network and an optimizer partial in ``save_hyperparameters``."""

    def __init__(self, net, optimizer):
        super().__init__()
        self.save_hyperparameters(logger=False)  # pickles net (an nn.Module) and optimizer (a functools.partial)
        self.net = net

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        return self.autobalance_step_loss(batch)

    def autobalance_features(self, x):
        return self.net[:-1](x)

    def autobalance_head(self):
        return self.net[-1]

    def configure_optimizers(self):
        return self.hparams.optimizer(params=self.parameters())


def test_the_learned_loss_is_read_from_a_checkpoint_whose_hyperparameters_hold_the_network(tmp_path):
    """Such checkpoints need ``weights_only=False`` in torch ≥ 2.6, as Lightning's own resume / load_from_checkpoint."""
    model = TemplateModel(nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, K)), partial(torch.optim.SGD, lr=0.1))
    autobalance = AutoBalance(warmup_epochs=1, every_n_steps=2, batch_size=16, export_path=tmp_path / "loss.yaml")
    checkpoint_callback = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = make_trainer(tmp_path, [autobalance, checkpoint_callback], max_epochs=2, enable_checkpointing=True)
    trainer.fit(model, datamodule=HeldOutSplit(TinyData()))
    assert autobalance.hyper_steps > 0
    TemplateModel.load_from_checkpoint(
        tmp_path / "ckpt" / "last.ckpt", weights_only=False
    )  # Lightning: the user opts in
    learned = load_loss(tmp_path / "ckpt" / "last.ckpt", weights_only=False)  # the same opt-in for the loss in it
    assert torch.equal(learned.iota(), load_loss(tmp_path / "loss.yaml").iota())
