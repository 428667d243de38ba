"""The command-line app end to end on a small configuration (Hydra compose + run), and its config errors."""

import json
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from lightning_autobalance import load_loss
from lightning_autobalance.cli import run
from tests.conftest import SMALL_RUN, subprocess_env

CONF = __import__("pathlib").Path(__file__).resolve().parents[1] / "conf"
SMALL = SMALL_RUN


def compose_config(overrides, tmp_path):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=[*SMALL, f"data.root={tmp_path / 'data'}", *overrides])


@pytest.mark.slow
def test_search_retrain_test_writes_table_loss_and_plot(tmp_path, caplog):
    caplog.set_level("INFO", logger="lightning_autobalance.cli")  # the report is logged (Hydra: console and cli.log)
    cfg = compose_config([], tmp_path)
    results = run(cfg, tmp_path / "out")
    assert set(results) == {"CE", "AutoBalance (search model)", "AutoBalance"}
    for r in results.values():
        assert 0.0 <= r["balanced_error"] <= r["worst_class_error"] <= 1.0
        assert len(r["class_errors"]) == 10
        assert r["balanced_error"] == pytest.approx(sum(r["class_errors"]) / 10)
    out = tmp_path / "out"
    loss = load_loss(out / "autobalance_loss.yaml")
    assert loss.num_classes == 10
    report = (out / "results.md").read_text()
    assert "| CE |" in report and "| AutoBalance |" in report and "Δ" in report
    written = json.loads((out / "results.json").read_text())
    assert written["results"]["CE"] == results["CE"]
    assert set(written["seconds"]) == {"baseline", "search", "retrain"}  # each phase's fit time, wall and CPU
    assert all(t["wall"] > 0 and t["cpu"] > 0 for t in written["seconds"].values())
    assert "| search |" in report
    assert (out / "per_class.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "balanced error %" in caplog.text


def test_bad_phases_fail_early(tmp_path):
    with pytest.raises(ValueError, match="Unknown phases"):
        run(compose_config(["phases=[baseline,finetune]"], tmp_path), tmp_path / "out")
    with pytest.raises(ValueError, match="add 'search' to phases"):
        run(compose_config(["phases=[retrain]"], tmp_path), tmp_path / "out")
    with pytest.raises(
        ValueError, match=r"learned_loss=x.yaml retrains with a loss learned earlier.*phases=\[retrain\]"
    ):
        run(compose_config(["learned_loss=x.yaml"], tmp_path), tmp_path / "out")


@pytest.mark.slow
def test_search_with_posthoc_then_retrain_from_the_file_with_logits_saved(tmp_path):
    import numpy as np

    search = compose_config(["phases=[search]", "autobalance.posthoc=true", "save_logits=true"], tmp_path)
    run(search, tmp_path / "search")
    learned = load_loss(tmp_path / "search" / "autobalance_loss.yaml")
    assert bool(learned.prediction_shift.abs().sum() > 0)  # the post-hoc adjustment travels in the file
    saved = np.load(tmp_path / "search" / "logits_search.npz")
    assert saved["heldout_logits"].shape[1] == 10 and saved["test_logits"].shape == (200, 10)
    assert np.array_equal(saved["prediction_shift"], learned.prediction_shift.numpy())
    retrain = compose_config(
        ["phases=[retrain]", f"learned_loss={tmp_path / 'search' / 'autobalance_loss.yaml'}", "save_logits=true"],
        tmp_path,
    )
    results = run(retrain, tmp_path / "retrain")
    raw = np.load(tmp_path / "retrain" / "logits_retrain.npz")
    shifted = raw["test_logits"] + learned.prediction_shift.numpy()[0]
    targets = raw["test_targets"]
    errors = [float(np.mean(shifted[targets == k].argmax(1) != k)) for k in range(10)]
    assert results["AutoBalance"]["class_errors"] == pytest.approx(errors)  # the report predicts with the shift


@pytest.mark.slow
def test_console_entry_point_runs_hydra_app(tmp_path):
    command = [
        sys.executable,
        "-m",
        "lightning_autobalance",
        *SMALL,
        "phases=[baseline]",
        f"data.root={tmp_path / 'data'}",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    done = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| CE |" in done.stdout
    assert (tmp_path / "run" / "results.md").exists()


def test_sweeper_and_launcher_configs_compose(tmp_path):
    cfg = compose_config(["hparams_search=autobalance_optuna"], tmp_path)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        full = compose(
            "config", overrides=["hparams_search=autobalance_optuna", "hydra/launcher=slurm"], return_hydra_config=True
        )
    assert full.hydra.sweeper._target_.endswith("OptunaSweeper")
    assert "autobalance.hyper_optimizer.lr" in full.hydra.sweeper.params
    for key in full.hydra.sweeper.params:  # every swept key exists in the config it overrides
        assert OmegaConf.select(cfg, key) is not None, key
    assert full.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.autobalance.hyper_optimizer.lr == 0.01


@pytest.mark.slow
def test_optuna_sweep_minimises_heldout_error(tmp_path):
    command = [sys.executable, "-m", "lightning_autobalance", "hparams_search=autobalance_optuna",
               "hydra.sweeper.n_trials=2", "phases=[search]", *SMALL, f"data.root={tmp_path / 'data'}",
               f"hydra.sweep.dir={tmp_path / 'sweep'}"]  # fmt: skip
    done = subprocess.run(command, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    best = (tmp_path / "sweep" / "optimization_results.yaml").read_text()
    assert "best_value" in best
    value = float(best.split("best_value:")[1].split()[0])
    results = [json.loads((tmp_path / "sweep" / str(i) / "results.json").read_text()) for i in range(2)]
    heldout = [r["results"]["AutoBalance (search model)"]["heldout_balanced_error"] for r in results]
    assert value == pytest.approx(min(heldout))


def test_format_loss_lists_every_group_class_cell():
    from lightning_autobalance import ParametricCrossEntropy
    from lightning_autobalance.report import format_loss

    loss = ParametricCrossEntropy.from_preset("la", group_counts=[[80, 5], [10, 5]])
    rows = format_loss(loss).splitlines()
    assert rows[0].startswith("| group | class | Δ | ι")
    assert [r.split("|")[1:4] for r in rows[2:]] == [
        [" 0 ", " 0 ", " 1.000 "],
        [" 0 ", " 1 ", " 1.000 "],
        [" 1 ", " 0 ", " 1.000 "],
        [" 1 ", " 1 ", " 1.000 "],
    ]
    assert [float(r.split("|")[4]) for r in rows[2:]] == pytest.approx([-0.223, -2.996, -2.303, -2.996], abs=1e-3)
    single = format_loss(ParametricCrossEntropy.from_preset("la", [90, 10])).splitlines()
    assert single[0].startswith("| class | Δ | ι") and len(single) == 4


def test_plot_draws_the_learned_loss_of_every_group(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from lightning_autobalance import ParametricCrossEntropy
    from lightning_autobalance.cli import plot_results

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    loss = ParametricCrossEntropy.from_preset("la", group_counts=[[80, 5], [10, 5]])
    results = {"CE": {"class_errors": [0.1, 0.5]}}
    plot_results(results, loss, [90, 10], tmp_path / "per_class.png")
    assert (tmp_path / "per_class.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    _, labels = figures[0].axes[1].get_legend_handles_labels()
    assert labels == [
        "Δ (logit scale), group 0",
        "ι (logit shift), group 0",
        "Δ (logit scale), group 1",
        "ι (logit shift), group 1",
    ]
    iota_group_1 = figures[0].axes[1].lines[3].get_ydata()
    assert list(iota_group_1) == pytest.approx([-2.303, -2.996], abs=1e-3)
