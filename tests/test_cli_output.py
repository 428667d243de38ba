"""What the command-line app writes for a person: the progress bar only on a terminal, Lightning's tips silenced, the
report and phase lines in Hydra's job log, the ``logger`` config group, and the α-trajectory plot."""

import io
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from lightning.pytorch.loggers import CSVLogger

from lightning_autobalance import cli
from lightning_autobalance.cli import progress_bar_enabled, quiet_lightning, run
from lightning_autobalance.plots import alpha_trajectories, plot_alpha_trajectory
from tests.conftest import SMALL_RUN, subprocess_env

CONF = Path(__file__).resolve().parents[1] / "conf"
PNG = b"\x89PNG\r\n\x1a\n"


class Terminal(io.StringIO):
    def isatty(self):
        return True


def compose_config(overrides, tmp_path=None):
    data = [f"data.root={tmp_path / 'data'}"] if tmp_path is not None else []
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=[*data, *overrides])


# ------------------------------------------------------------------ progress bar
def test_progress_bar_follows_the_terminal_unless_set():
    assert progress_bar_enabled(None, Terminal()) is True
    assert progress_bar_enabled(None, io.StringIO()) is False  # redirected to a file or a pipe
    assert progress_bar_enabled(None, object()) is False  # a stream without isatty
    assert progress_bar_enabled(False, Terminal()) is False  # explicit settings win
    assert progress_bar_enabled(True, io.StringIO()) is True


def test_trainer_default_is_auto_and_overrides_win(tmp_path, monkeypatch):
    assert compose_config([]).trainer.enable_progress_bar is None  # the default: decided from the console
    for stdout, overrides, shown in (
        (Terminal(), [], True),
        (io.StringIO(), [], False),
        (io.StringIO(), ["trainer.enable_progress_bar=true"], True),
        (Terminal(), ["trainer.enable_progress_bar=false"], False),
    ):
        monkeypatch.setattr(sys, "stdout", stdout)
        trainer = cli._trainer(compose_config(overrides), tmp_path, "baseline", 1)
        assert (trainer.progress_bar_callback is not None) is shown, (type(stdout).__name__, overrides)


# ------------------------------------------------------------------ Lightning's informational loggers
def test_lightning_info_loggers_are_quiet_only_inside_the_app():
    loggers = [logging.getLogger(name) for name in cli.QUIET_LOGGERS]
    before = [logger.level for logger in loggers]
    assert "lightning.pytorch.utilities.rank_zero" in cli.QUIET_LOGGERS  # GPU/TPU available, tips
    assert "lightning.fabric.utilities.seed" in cli.QUIET_LOGGERS  # "Seed set to 0"
    with quiet_lightning():
        assert all(not logger.isEnabledFor(logging.INFO) for logger in loggers)
        assert all(logger.isEnabledFor(logging.WARNING) for logger in loggers)
    assert [logger.level for logger in loggers] == before  # importing the library changes nothing; run() restores


# ------------------------------------------------------------------ logger group
def test_logger_group_defaults_to_csv_in_the_phase_directory(tmp_path):
    cfg = compose_config([])
    assert cfg.logger._target_ == "lightning.pytorch.loggers.CSVLogger"
    logger = cli._logger(cfg, tmp_path, "search")
    assert isinstance(logger, CSVLogger)
    assert Path(logger.log_dir) == tmp_path / "logs" / "search" / "version_0"  # what benchmarks and tests read
    assert cli._logger(compose_config(["~logger"]), tmp_path, "search") is False  # no group: no logger


def test_tensorboard_logger_without_the_package_fails_before_anything_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "_installed", lambda package: False)
    cfg = compose_config([*SMALL_RUN, "logger=tensorboard"], tmp_path)
    with pytest.raises(ModuleNotFoundError, match=r"logger=TensorBoardLogger needs the `tensorboard` package.*pip"):
        run(cfg, tmp_path / "out")
    assert not (tmp_path / "data").exists() and not (tmp_path / "out" / "logs").exists()  # before the data


def test_tensorboard_logger_when_installed(tmp_path):  # tensorboard is in the dev extra
    cfg = compose_config(["logger=tensorboard"])
    cli.check_logger(cfg)
    logger = cli._logger(cfg, tmp_path, "search")
    assert type(logger).__name__ == "TensorBoardLogger"
    assert Path(logger.log_dir) == tmp_path / "logs" / "search" / "version_0"


# ------------------------------------------------------------------ α trajectory plot
def _write_metrics(path, kinds=("delta", "iota", "omega"), classes=3, groups=1, steps=4):
    cells = [f"g{g}_c{c}" if groups > 1 else f"c{c}" for g in range(groups) for c in range(classes)]
    alpha = [f"autobalance/{kind}/{cell}" for kind in kinds for cell in cells]
    columns = ["autobalance/hyper_steps", "autobalance/objective", *alpha, "epoch", "step", "train/loss_step"]
    lines = [",".join(columns)]
    for s in range(1, steps + 1):
        values = [str(s), "1.5", *(str(0.1 * s * (i + 1)) for i in range(len(alpha))), "0", str(10 * s), ""]
        lines.append(",".join(values))
        lines.append(",".join(["", "", *[""] * len(alpha), "0", str(10 * s), "2.0"]))  # a train-loss row
    path.write_text("\n".join(lines) + "\n")
    return path


def test_plot_draws_one_line_per_class_for_every_kind(tmp_path):
    metrics = _write_metrics(tmp_path / "metrics.csv")
    fig = plot_alpha_trajectory(metrics, tmp_path / "alpha_trajectory.png")
    assert (tmp_path / "alpha_trajectory.png").read_bytes()[:8] == PNG
    assert not list(tmp_path.glob(".*.tmp.png"))  # written atomically
    assert [ax.get_ylabel() for ax in fig.axes] == ["Δ (logit scale)", "ι (logit shift)", "ω (class weight)"]
    for ax in fig.axes:
        assert len(ax.lines) == 3 and ax.get_xlabel() == "hyper-step"
        assert [list(line.get_xdata()) for line in ax.lines] == [[1.0, 2.0, 3.0, 4.0]] * 3  # train rows skipped
    _, labels = fig.axes[-1].get_legend_handles_labels()
    assert labels == ["class 0", "class 1", "class 2"]
    colours = [line.get_color() for line in fig.axes[0].lines]
    assert len(set(colours)) == 3 and colours == [line.get_color() for line in fig.axes[1].lines]  # colour = class
    iota_class_1 = fig.axes[1].lines[1].get_ydata()  # iota is the 2nd kind: columns 3..5, class 1 is index 4
    assert list(iota_class_1) == pytest.approx([0.1 * s * 5 for s in range(1, 5)])


def test_plot_with_groups_and_many_classes(tmp_path):
    grouped = plot_alpha_trajectory(_write_metrics(tmp_path / "g.csv", kinds=("iota",), classes=2, groups=2))
    (ax,) = grouped.axes
    assert len(ax.lines) == 4 and {line.get_linestyle() for line in ax.lines} == {"-", "--"}  # style = group
    assert ax.get_legend_handles_labels()[1][-1] == "class 1, group 1"
    many = plot_alpha_trajectory(_write_metrics(tmp_path / "m.csv", kinds=("delta",), classes=12))
    assert len(many.axes[0].lines) == 12 and len(many.axes) == 2  # a class colour bar instead of a 12-entry legend
    assert many.axes[1].get_ylabel() == "class"


def test_plot_from_rows_and_without_hyper_steps(tmp_path):
    rows = [{"step": 5, "autobalance/mix/c0": 0.2}, {"step": 9, "autobalance/mix/c0": float("nan")}]
    axis, table = alpha_trajectories(rows)
    assert axis == "step" and table == {"mix": {(0, 0): ([5.0], [0.2])}}  # non-finite values dropped
    with pytest.raises(ValueError, match="no hyper-step"):
        plot_alpha_trajectory([{"step": 1, "train/loss_step": 2.0}])


# ------------------------------------------------------------------ the app end to end
@pytest.mark.slow
def test_tiny_job_writes_the_plot_and_the_report_through_logging(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="lightning_autobalance.cli")
    run(compose_config([*SMALL_RUN, "search.max_epochs=3"], tmp_path), tmp_path / "out")
    png = (tmp_path / "out" / "alpha_trajectory.png").read_bytes()
    assert png[:8] == PNG and len(png) > 20_000
    assert (tmp_path / "out" / "logs" / "search" / "version_0" / "metrics.csv").exists()
    text = caplog.text
    for line in ("phase baseline: training", "phase search: done in", "hyper-steps (0 skipped)", "| CE |"):
        assert line in text


@pytest.mark.slow
def test_redirected_command_line_job_is_short_and_its_job_log_is_not_empty(tmp_path):
    overrides = [o for o in SMALL_RUN if not o.startswith("trainer.enable_progress_bar")]  # the default: auto
    command = [
        sys.executable, "-m", "lightning_autobalance", *overrides, f"data.root={tmp_path / 'data'}",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    output = done.stdout + done.stderr
    assert len(output.encode()) < 20_000, output[-3000:]  # no progress-bar refreshes when not on a terminal
    for noise in ("💡", "GPU available", "TPU available", "Seed set to", "\r"):
        assert noise not in output
    assert "| AutoBalance |" in done.stdout  # the report still reaches the console (Hydra's stdout handler)
    job_log = (tmp_path / "run" / "cli.log").read_text()
    assert "phase search: done in" in job_log and "| AutoBalance |" in job_log
    assert (tmp_path / "run" / "alpha_trajectory.png").read_bytes()[:8] == PNG
