"""The benchmark scripts' job list, held-out selection, aggregation, tables and resume, on fabricated results."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str) -> Any:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


accuracy = _load("accuracy")
paper_scale = _load("paper_scale")
blackbox = _load("blackbox_tuning")


class HeldOutOnly(Mapping):
    """A record that fails the test if anything but the held-out number is read."""

    def __init__(self, heldout: float) -> None:
        self._data = {"heldout_balanced_error": heldout}

    def __getitem__(self, key: str) -> Any:
        if key != "heldout_balanced_error":
            raise AssertionError(f"selection read {key!r}: it may only read the held-out error")
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return 1


def record(method: str, seed: int, balanced: float, worst: float = 0.9, profile: str = "exponential", **extra) -> dict:
    return {
        "job": {"dataset": "mnist1d_lt", "profile": profile, "seed": seed, "method": method},
        "test": {"balanced_error": balanced, "worst_class_error": worst, "error": balanced, "class_errors": []},
        "cpu_seconds": 10.0,
        "wall_seconds": 20.0,
        "config": {"train_epochs": 30},
        **extra,
    }


# ---------------------------------------------------------------------------------------------------------- selection


def test_selection_reads_only_heldout_errors():
    assert accuracy.select_by_heldout({"autobalance_ce": HeldOutOnly(0.30), "autobalance_la": HeldOutOnly(0.20)}) == (
        "autobalance_la"
    )
    assert accuracy.select_by_heldout({"a": HeldOutOnly(0.2), "b": HeldOutOnly(0.2)}) == "a"  # ties: the first
    with pytest.raises(ValueError):
        accuracy.select_by_heldout({})


def test_best_of_inits_follows_heldout_not_test():
    records = [
        # seed 0: LA init better on held-out, worse on test -> LA's test numbers are reported
        record("autobalance_ce", 0, 0.10, heldout_balanced_error=0.30),
        record("autobalance_la", 0, 0.50, heldout_balanced_error=0.20),
        # seed 1: CE init better on held-out
        record("autobalance_ce", 1, 0.40, heldout_balanced_error=0.10),
        record("autobalance_la", 1, 0.05, heldout_balanced_error=0.15),
        # seed 2: one initialisation missing -> no best-of record
        record("autobalance_ce", 2, 0.01, heldout_balanced_error=0.01),
        record("ce", 0, 0.30),
    ]
    best = accuracy.add_best_of_inits(records)
    assert [(b["job"]["seed"], b["selected_init"], b["test"]["balanced_error"]) for b in best] == [
        (0, "autobalance_la", 0.50),
        (1, "autobalance_ce", 0.40),
    ]
    assert all(b["job"]["method"] == accuracy.BEST for b in best)
    assert best[0]["heldout_balanced_error"] == {"autobalance_ce": 0.30, "autobalance_la": 0.20}


def test_sweep_selection_reads_only_heldout_errors():
    trials = {"0": HeldOutOnly(0.4), "1": HeldOutOnly(0.25), "2": HeldOutOnly(0.3)}
    assert blackbox.select_trial(trials) == "1"


# ---------------------------------------------------------------------------------------------------------- tables


def fabricated() -> list[dict]:
    records = []
    for seed, (ce, la, ab_ce, ab_la) in enumerate([(0.30, 0.24, 0.22, 0.23), (0.32, 0.26, 0.24, 0.21)]):
        records += [
            record("ce", seed, ce, worst=0.8),
            record("la", seed, la, worst=0.6),
            record("autobalance_ce", seed, ab_ce, worst=0.5, heldout_balanced_error=0.2 + seed * 0.1),
            record("autobalance_la", seed, ab_la, worst=0.4, heldout_balanced_error=0.25),
            record("ce", seed, ce + 0.1, profile="step"),
        ]
    return records


def test_summary_mean_and_sample_std():
    summary = accuracy.summarize(fabricated())
    ce = summary["mnist1d_lt"]["exponential"]["ce"]["balanced_error"]
    assert ce["mean"] == pytest.approx(0.31) and ce["std"] == pytest.approx(0.02**0.5 * 0.1) and ce["n"] == 2
    assert ce["values"] == [0.30, 0.32]


def test_table_format():
    records = fabricated()
    summary = accuracy.summarize([*records, *accuracy.add_best_of_inits(records)])
    table = accuracy.format_table(summary, "mnist1d_lt")
    lines = table.splitlines()
    assert lines[0] == (
        "| method | exponential: balanced % | exponential: worst-class % | step: balanced % | step: worst-class % |"
    )
    assert lines[1] == "|---|---:|---:|---:|---:|"
    assert lines[2] == "| CE | 31.00 ± 1.41 | 80.00 ± 0.00 | **41.00 ± 1.41** | 90.00 ± 0.00 |"
    assert "| LA | 25.00 ± 1.41 | 60.00 ± 0.00 | — | — |" in lines
    # best of inits: seed 0 -> CE init (held-out 0.20 < 0.25): 0.22; seed 1 -> LA init (0.25 < 0.30): 0.21
    assert "| AutoBalance (best init by held-out) | **21.50 ± 0.71** | 45.00 ± 7.07 | — | — |" in lines
    assert [line.split(" |")[0] for line in lines[2:]] == [
        "| CE",
        "| LA",
        "| AutoBalance (CE init)",
        "| AutoBalance (LA init)",
        "| AutoBalance (best init by held-out)",
    ]


def test_report_compares_with_ce_la_cdt_and_best_baseline(tmp_path):
    records = fabricated()
    meta = {
        "command": "x",
        "wall_minutes": 1.0,
        "total_wall_minutes": 3.0,
        "invocations": [
            {"started": "t0", "command": "a", "wall_seconds": 120.0, "jobs_run": 6, "load": "load 1"},
            {"started": "t1", "command": "a --resume", "wall_seconds": 60.0, "jobs_run": 4, "load": "load 2"},
        ],
        "jobs_total": 10,
        "jobs_run": 10,
        "jobs_resumed": 0,
        "parallel": 2,
        "cpu_hours": 0.1,
        "seeds": [0, 1],
        "machine": "test",
    }
    for r in records:
        if r["job"]["method"].startswith("autobalance"):
            r["config"]["autobalance"] = {"engine": "default", "preset": r["job"]["method"][-2:], "solver": {}}
    markdown, document = accuracy.build_report(records, meta, ["CIFAR not present, skipped (no --cifar-root given)."])
    assert "lower than CE (21.50 vs 31.00)" in markdown and "lower than LA (21.50 vs 25.00)" in markdown
    assert "better than the best hand-tuned loss, LA (25.00), by 3.50 points" in markdown
    assert "seed 0: CE init (CE 20.00%, LA 25.00%); seed 1: LA init (CE 30.00%, LA 25.00%)" in markdown
    assert "engine `default`" in markdown and "WARNING" not in markdown  # the preset is not a config difference
    assert "CIFAR not present, skipped" in markdown
    assert "Wall time: 3.0 min in 2 invocation(s)" in markdown and "- t1: `a --resume`: 4 job(s), 1.0 min" in markdown
    json.dumps(document)  # serialisable
    path = tmp_path / "plot.png"
    accuracy.plot(document["summary"], "mnist1d_lt", path)
    assert path.stat().st_size > 1000


def test_chance_level_is_flagged():
    records = [{**record("ldam_drw", s, 0.9), "class_counts": [100] * 10} for s in range(2)] + [
        {**record("ce", s, 0.3), "class_counts": [100] * 10} for s in range(2)
    ]
    notes = accuracy.chance_level_notes(accuracy.summarize(records), records)
    assert len(notes) == 1 and notes[0].startswith("Note: LDAM-DRW on MNIST-1D-LT exponential is at chance level")


def test_invocation_history(tmp_path):
    first = {"started": "a", "command": "x", "wall_seconds": 60.0, "jobs_run": 5, "load": ""}
    assert accuracy.update_history(tmp_path, False, first) == [first]
    second = {**first, "started": "b", "jobs_run": 3}
    assert accuracy.update_history(tmp_path, True, second) == [first, second]
    assert accuracy.update_history(tmp_path, True, {**first, "jobs_run": 0}) == [first, second]  # nothing ran
    assert accuracy.update_history(tmp_path, False, second) == [second]  # a fresh run starts a new history


def test_report_says_when_autobalance_is_not_better():
    records = [record("ce", 0, 0.20), record("cdt", 0, 0.18)]
    records += [
        record("autobalance_ce", 0, 0.25, heldout_balanced_error=0.1),
        record("autobalance_la", 0, 0.15, heldout_balanced_error=0.2),
    ]
    summary = accuracy.summarize([*records, *accuracy.add_best_of_inits(records)])
    sentences = accuracy.compare_to_baselines(summary, "mnist1d_lt", "exponential")
    assert sentences == [
        "NOT lower than CE (25.00 vs 20.00)",
        "NOT lower than CDT (25.00 vs 18.00)",
        "behind the best hand-tuned loss, CDT (18.00), by 7.00 points",
    ]


# ---------------------------------------------------------------------------------------------------------- jobs


def test_job_list():
    jobs = accuracy.make_jobs({"mnist1d_lt": []}, accuracy.PROFILES, [0, 1, 2], accuracy.METHODS, {"mnist1d_lt": None})
    assert len(jobs) == 2 * 3 * 11 and len({j.name for j in jobs}) == len(jobs)
    assert all(j.is_autobalance for j in jobs[:12]) and not any(j.is_autobalance for j in jobs[12:])
    by_name = {j.name: j for j in jobs}
    la = by_name["mnist1d_lt/step/autobalance_la/seed2"]
    assert la.choice == ("autobalance.preset", "la")
    assert "phases=[search,retrain]" in la.overrides and "data.profile=step" in la.overrides
    assert "seed=2" in la.overrides and "threads=1" in la.overrides and "data.imbalance_ratio=100" in la.overrides
    assert not any("epochs" in o for o in la.overrides)  # the CLI's defaults
    ldam = by_name["mnist1d_lt/exponential/ldam_drw/seed0"]
    assert "phases=[baseline]" in ldam.overrides and ldam.choice == ("loss", "ldam_drw")
    short = accuracy.make_jobs({"mnist1d_lt": []}, ["exponential"], [0], ["ce", "ldam_drw"], {"mnist1d_lt": 10})
    assert {"train.max_epochs=10", "loss.drw_epoch=8"} <= set(short[1].overrides)
    assert [len(g) for g in accuracy.group_jobs(short)] == [1, 1]  # drw_epoch cannot be set on the other losses
    with pytest.raises(ValueError, match="Unknown methods"):
        accuracy.make_jobs({"mnist1d_lt": []}, ["step"], [0], ["bogus"], {})


def test_groups_share_a_process(tmp_path):
    jobs = accuracy.make_jobs({"mnist1d_lt": []}, accuracy.PROFILES, [0, 1, 2], accuracy.METHODS, {"mnist1d_lt": None})
    groups = accuracy.group_jobs(jobs)
    assert len(groups) == 2 * 3 * 2  # per (profile, seed): the two AutoBalance inits, the nine baselines
    assert sorted(len(g) for g in groups) == [2] * 6 + [9] * 6
    assert sorted(j.name for g in groups for j in g) == sorted(j.name for j in jobs)
    cmd = accuracy.group_command(groups[0], tmp_path, python="python")
    assert cmd[:4] == ["python", "-m", "lightning_autobalance", "--multirun"]
    assert "autobalance.preset=ce,la" in cmd and "seed=0" in cmd
    assert f"hydra.sweep.dir={tmp_path / 'mnist1d_lt' / 'exponential'}" in cmd
    assert "hydra.sweep.subdir=autobalance_${autobalance.preset}/seed0" in cmd
    baselines = next(g for g in groups if len(g) == 9)
    cmd = accuracy.group_command(baselines, tmp_path, python="python")
    assert "loss=ce,weighted,class_balanced,la,cdt,vs,ldam_drw,focal,balanced_softmax" in cmd
    assert f"hydra.sweep.subdir=${{hydra:runtime.choices.loss}}/seed{baselines[0].seed}" in cmd


def test_resume_skips_jobs_with_a_result(tmp_path):
    jobs = accuracy.make_jobs({"mnist1d_lt": []}, ["exponential"], [0, 1], ["ce", "la"], {"mnist1d_lt": None})
    done = jobs[1]
    path = accuracy.job_result_path(tmp_path, done)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(record(done.method, done.seed, 0.3)))
    todo, skipped = accuracy.pending_jobs(jobs, tmp_path, resume=True)
    assert skipped == [done] and todo == [j for j in jobs if j != done]
    assert accuracy.pending_jobs(jobs, tmp_path, resume=False) == (jobs, [])

    ran, lines = [], []

    def runner(group, work, on_done):
        for job in group:
            ran.append(job.name)
            if job.method == "la" and job.seed == 1:
                raise accuracy.JobFailedError("boom")
            on_done(job, record(job.method, job.seed, 0.25))

    records, failures = accuracy.run_all(jobs, tmp_path, parallel=2, resume=True, runner=runner, log=lines.append)
    assert sorted(ran) == sorted(j.name for j in jobs if j != done)
    assert len(records) == 3 and len(failures) == 1 and "boom" in failures[0]
    assert lines[0].startswith("--resume: 1 of 4 jobs")
    progress = [line for line in lines if line.startswith("[")]
    assert len(progress) == 3  # one progress line per finished (or failed) job
    assert sum("FAILED" in line for line in progress) == 1


def test_cifar_absent_is_reported(tmp_path):
    found, notes = accuracy.cifar_datasets(None)
    assert found == {} and notes == ["CIFAR not present, skipped (no --cifar-root given)."]
    (tmp_path / "cifar-10-batches-py").mkdir()
    found, notes = accuracy.cifar_datasets(str(tmp_path))
    assert (
        list(found) == ["cifar10_lt"] and "model._target_=lightning_autobalance.models.resnet32" in found["cifar10_lt"]
    )
    assert len(notes) == 1 and "CIFAR100-LT: CIFAR not present, skipped" in notes[0]


def test_blackbox_report_and_ratio():
    def seed(s, optuna_test, ab_test, optuna_cpu, ab_cpu):
        sweep = {
            "sweep": {"cpu_seconds": optuna_cpu - 10, "wall_seconds": 1.0},
            "retrain": {"cpu_seconds": 10, "wall_seconds": 1.0},
            "trials": {
                "0": {"gamma": 0.1, "tau": 1.0, "heldout_balanced_error": 0.3, "test_80": {"balanced_error": 0.1}},
                "1": {"gamma": 0.2, "tau": 0.5, "heldout_balanced_error": 0.2, "test_80": {"balanced_error": 0.5}},
            },
            "best_trial": "1",
            "retrain_outputs": {"test": {"balanced_error": optuna_test, "worst_class_error": 0.7, "error": 0.2}},
        }
        auto = {
            "timing": {"cpu_seconds": ab_cpu, "wall_seconds": 1.0},
            "outputs": {
                "heldout_balanced_error": 0.21,
                "test": {"balanced_error": ab_test, "worst_class_error": 0.6, "error": 0.2},
                "config": {"autobalance": {"engine": "default", "solver": {}}},
            },
        }
        return blackbox.seed_summary(s, sweep, auto)

    seeds = [seed(0, 0.22, 0.225, 400, 50), seed(1, 0.24, 0.245, 400, 50)]
    assert seeds[0]["cpu_ratio"] == pytest.approx(0.125) and seeds[0]["gap_points"] == pytest.approx(0.5)
    meta = {"command": "x", "wall_minutes": 1, "parallel": 2, "machine": "m", "epochs": 30}
    text = blackbox.format_report(seeds, meta)
    assert "| 0 | (0.200, 0.500) | 20.00 | 22.00 | 50.00 | 400 | 21.00 | 22.50 | 50 | 0.125 | +0.50 |" in text
    assert "Compute ratio AutoBalance / Optuna: **0.125** (1/8.0)" in text
    assert "AutoBalance meets it" in text
    worse = blackbox.format_report([seed(0, 0.20, 0.23, 400, 150)], meta)
    assert "does NOT meet it (not within 1 point, > 1/4 of the compute)" in worse


@pytest.mark.slow
def test_accuracy_end_to_end_tiny(tmp_path):
    """Three tiny CLI jobs (1 epoch, small data) through the real runner; then a resume that runs nothing."""
    args = [
        "--profiles",
        "exponential",
        "--seeds",
        "0",
        "--methods",
        "ce",
        "autobalance_ce",
        "autobalance_la",
        "--epochs",
        "1",
        "--work",
        str(tmp_path / "work"),
        "--out",
        str(tmp_path / "out"),
        "--override",
        "data.n_max=200",
        "data.test_per_class=10",
        "autobalance.every_n_steps=2",
    ]
    assert accuracy.main(args) == 0
    document = json.loads((tmp_path / "out" / "accuracy.json").read_text())
    assert len(document["jobs"]) == 3 and len(document["best_of_inits"]) == 1
    assert document["autobalance_configs"] and "engine" in document["autobalance_configs"][0]
    markdown = (tmp_path / "out" / "accuracy.md").read_text()
    assert "| AutoBalance (best init by held-out) |" in markdown
    assert (tmp_path / "out" / "accuracy_mnist1d_lt.png").is_file()
    assert accuracy.main([*args, "--resume"]) == 0
    meta = json.loads((tmp_path / "out" / "accuracy.json").read_text())["meta"]
    assert meta["jobs_resumed"] == 3 and len(meta["invocations"]) == 1  # a resume that ran nothing adds no entry


dev_sweep = _load("dev_sweep")


def test_dev_sweep_never_uses_the_benchmark_data_and_summarises_fabricated_runs(tmp_path, capsys):
    with pytest.raises(SystemExit):
        dev_sweep.main(["--data-seeds", "0", "1", "--work", str(tmp_path)])
    assert "data seed 0 is the benchmark's data set" in capsys.readouterr().err
    runs = dev_sweep.runs({"lr 0.01": ["autobalance.hyper_optimizer.lr=0.01"]})
    assert runs["lr 0.01 [LA init]"] == [
        "phases=[search,retrain]",
        "autobalance.preset=la",
        "autobalance.hyper_optimizer.lr=0.01",
    ]
    assert set(runs) == {"CE", "LA", "CDT", "lr 0.01 [CE init]", "lr 0.01 [LA init]"}
    for seed, (test, held) in {1: (0.2, 0.1), 2: (0.3, 0.25)}.items():
        out = dev_sweep.folder(tmp_path, "lr 0.01 [CE init]", seed)
        out.mkdir(parents=True)
        results = {
            "AutoBalance (search model)": {"heldout_balanced_error": held},
            "AutoBalance": {"balanced_error": test},
        }
        (out / "results.json").write_text(json.dumps({"results": results}))
    line = dev_sweep.summary_line(tmp_path, "lr 0.01 [CE init]", [1, 2])
    assert line == "| lr 0.01 [CE init] | 20.0 / 30.0 | **25.00** | 10.0 / 25.0 |"
    assert "missing" in dev_sweep.summary_line(tmp_path, "CE", [1])


@pytest.mark.slow
def test_hyperstep_benchmark_runs_every_configuration_on_the_small_model(tmp_path):
    """A reduced run of benchmarks/hyperstep.py (about 45 s): every row, the cosines and the acceptance line print,
    and the weights it hands between its processes do not outlive the run."""
    import re
    import subprocess

    from tests.conftest import subprocess_env

    command = [sys.executable, str(ROOT / "benchmarks" / "hyperstep.py"), "--models", "mnist1d", "--steps", "20"]
    command += [
        "--draws",
        "2",
        "--accurate-iters",
        "3",
        "--cos-batches",
        "2",
        "--cos-batch",
        "32",
        "--target-batches",
        "2",
        "--subsets",
    ]
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**subprocess_env(), "TMPDIR": str(scratch)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert not any(scratch.iterdir()), sorted(scratch.iterdir())
    rows = {line.split()[0]: line.split()[1:] for line in done.stdout.splitlines() if line[:1].isalpha()}
    for config in ("plain", "default", "cached", "reference"):
        assert float(rows[config][0]) > 0  # epoch seconds
    cosines = dict(
        re.findall(r"^  ([\w+]+)\s+(-?\d\.\d+) ± \d\.\d+  \(-?\d\.\d+, -?\d\.\d+\)$", done.stdout, flags=re.M)
    )
    assert set(cosines) >= {"default", "reference", "one_step", "head+last_bn_cg10"}
    assert all(-1.0 <= float(c) <= 1.0 for c in cosines.values())
    assert "acceptance: default epoch" in done.stdout and "ratios: default/reference" in done.stdout


# ---------------------------------------------------------------------------------------------- paper scale


def test_paired_difference_interval_matches_scipy():
    from scipy import stats

    a = {s: {"balanced_error": v} for s, v in enumerate([0.041, 0.052, 0.047, 0.039, 0.050])}
    b = {s: {"balanced_error": v} for s, v in enumerate([0.045, 0.050, 0.052, 0.046, 0.049])}
    d = paper_scale.paired_difference(a, b)
    diffs = [100 * (a[s]["balanced_error"] - b[s]["balanced_error"]) for s in range(5)]
    low, high = stats.ttest_rel(
        [100 * a[s]["balanced_error"] for s in range(5)], [100 * b[s]["balanced_error"] for s in range(5)]
    ).confidence_interval(0.95)
    assert d["mean"] == pytest.approx(sum(diffs) / 5) and d["n"] == 5
    assert (d["low"], d["high"]) == pytest.approx((low, high))


def test_paper_scale_jobs_use_the_benchmark_data_and_the_same_seeds_for_every_method():
    jobs = paper_scale.make_jobs("paper", ["exponential", "step"], [0, 1, 2, 3, 4], ["la", "autobalance"])
    assert len(jobs) == 20 and len({j.name for j in jobs}) == 20
    for job in jobs:
        assert "data.seed=0" in job.overrides and "data.test_per_class=2000" in job.overrides
        assert "data.n_max=5000" in job.overrides and "threads=1" in job.overrides
    seeds = {m: sorted(j.name.rsplit("seed", 1)[1] for j in jobs if f"/{m}/" in j.name) for m in ("la", "autobalance")}
    assert seeds["la"] == seeds["autobalance"]


def test_paper_scale_report_lists_rows_noise_floor_and_paired_differences():
    def cells(values):
        return {s: {"balanced_error": v, "worst_class_error": 2 * v} for s, v in enumerate(values)}

    table = {
        "exponential": {
            "la": cells([0.040, 0.045, 0.042]),
            "frozen_la": cells([0.041, 0.044, 0.043]),
            "autobalance": cells([0.050, 0.052, 0.049]),
        }
    }
    report = paper_scale.format_report(table, "paper", [0, 1, 2])
    assert "| LA | 4.23 ± 0.25 | 8.47 ± 0.50 |" in report
    assert "Noise floor (control minus LA" in report and "exponential +0.03" in report
    assert "| LA | +0.80 |" in report  # AutoBalance minus LA, points


def test_search_cost_prints_both_settings_with_ratios(capsys):
    search_cost = _load("search_cost")
    assert search_cost.main(["--epochs", "3", "--steady-epochs", "1", "--n-max", "200", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "## whole search phase: 3 epochs, warm-up 1" in out and "## steady state (no warm-up)" in out
    assert out.count("ratio search / plain: wall") == 2


groups = _load("groups")


def test_groups_report_bolds_the_best_row_and_lists_paired_differences():
    def cells(values):
        return {
            s: {
                "worst_group_accuracy": v,
                "weighted_average_accuracy": 0.9,
                "mean_group_accuracy": 0.8,
                "accuracy": 0.8,
            }
            for s, v in enumerate(values)
        }

    table = {
        "spurious_digits": {
            "erm": {"group": cells([0.30, 0.32, 0.31]), "class": cells([0.30, 0.32, 0.31])},
            "dfr": {"group": cells([0.80, 0.82, 0.84]), "class": cells([0.70, 0.75, 0.72])},
        }
    }
    report = groups.format_report(table, [0, 1, 2], groups.SMOKE)
    assert "## spurious digits" in report and "SpuriousMNIST1D" not in report
    assert "| ERM | 31.0 ± 1.0 | 90.0 ± 0.0 | 80.0 ± 0.0 | 80.0 ± 0.0 | 3 |" in report
    assert "| **DFR (sel. worst group)** | **82.0 ± 2.0** | 90.0 ± 0.0 |" in report
    assert "| DFR (sel. worst class) | 72.3 ± 2.5 |" in report
    assert "minus the best (DFR (sel. worst group))" in report
    assert "| ERM | -51.0 | [-55.3, -46.7] | 3 |" in report  # −50, −50, −53: −51 ± t(2)·√3/√3 = ±4.30
    assert report.count("| ERM |") == 2  # no selection row for ERM: once in the table, once in the differences


@pytest.mark.slow
def test_groups_smoke_run_reports_every_method_on_both_data_sets(tmp_path):
    work, results = tmp_path / "work", tmp_path / "results"
    assert groups.main(["--smoke", "--work", str(work), "--results", str(results)]) == 0
    report = (results / "groups_smoke.md").read_text()
    summary = json.loads((results / "groups_smoke.json").read_text())
    assert (results / "groups_smoke.png").stat().st_size > 0
    for data in groups.DATASETS:
        assert f"## {groups.DATA_LABELS[data]}" in report
        assert set(summary["table"][data]) == set(groups.METHODS)
        section = report.split(f"## {groups.DATA_LABELS[data]}")[1].split("Paired difference")[0]
        for method in groups.METHODS:
            assert f"| {groups.LABELS[method]}" in section or f"| **{groups.LABELS[method]}" in section
        assert (work / data / "erm" / "seed0" / "erm.pt").exists()
