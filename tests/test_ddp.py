"""AutoBalance under DDP on the CPU (gloo): 2 processes, resume, and 2 torchrun nodes on 127.0.0.1.

Exactness and resume are checked for the default engine (last layer) and the full-network engine; the launchers
(torchrun nodes, ddp_spawn) with the default engine.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests._helpers.ddp import assert_close, ddp_environment, rank_records, run_script

SCRIPT = Path(__file__).parent / "scripts" / "ddp_search.py"
pytestmark = [pytest.mark.ddp, pytest.mark.slow]


def launch(out, *args, env=None):
    done = run_script(SCRIPT, out, *args, env=env)
    assert done.returncode == 0, done.stderr[-3000:]


ENGINE_CLASSES = {"default": "LastLayer", "full": "FullNetwork"}


@pytest.fixture(scope="module", params=list(ENGINE_CLASSES))
def engine(request):
    return request.param


@pytest.fixture(scope="module")
def single(tmp_path_factory, engine):
    out = tmp_path_factory.mktemp(f"single_{engine}")
    # the same global batches as 2 processes × 16; the last layer is refit on the held-out split at the end
    launch(out, "--engine", engine, "--batch-size", 32, "--llr", "thumb")
    return rank_records(out, 1)[0]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory, engine):
    out = tmp_path_factory.mktemp(f"ddp_{engine}")
    launch(out, "--engine", engine, "--devices", 2, "--strategy", "ddp", "--batch-size", 16, "--llr", "thumb")
    return rank_records(out, 2)


def test_two_processes_match_single_process_and_each_other(single, two_processes, engine):
    rank0, rank1 = two_processes
    assert rank0["world_size"] == 2 and rank1["rank"] == 1
    assert single["engine"] == rank0["engine"] == rank1["engine"] == ENGINE_CLASSES[engine]
    assert single["hyper_steps"] == rank0["hyper_steps"] == rank1["hyper_steps"] > 3
    # α identical on both ranks after every hyper-step
    assert rank0["history"] == rank1["history"]
    # and equal to the single-process run on the same global batches
    for step_ddp, step_single in zip(rank0["history"], single["history"], strict=True):
        assert_close(step_ddp, step_single)
    assert any(abs(v) > 0.05 for v in single["alpha"])  # α really moved
    # metrics synced: every rank reports the single-process value on the union
    assert rank0["metrics"] == rank1["metrics"]
    assert set(single["metrics"]) == {"val/balanced_error", "val/worst_class_error", "val/error"}  # the mixin's
    for key, value in single["metrics"].items():
        assert rank0["metrics"][key] == pytest.approx(value, abs=1e-7)


def test_last_layer_retraining_under_ddp_gives_every_rank_the_single_process_head(single, two_processes):
    rank0, rank1 = two_processes
    assert rank0["head"] == rank1["head"]  # bit-identical: rank 0's head is broadcast
    assert rank0["llr"] == rank1["llr"]
    assert_close(rank0["head"], single["head"], tol=1e-5)
    assert max(abs(a - b) for a, b in zip(single["head"], single["head_before"], strict=True)) > 0.1  # really refit
    assert single["llr"]["llr/num_samples"] == rank0["llr"]["llr/num_samples"] == 60  # the whole held-out split
    for key, value in single["llr"].items():
        assert rank0["llr"][key] == pytest.approx(value, abs=1e-5), key


def test_crash_and_resume_under_ddp_reproduces_alpha(tmp_path, two_processes, engine):
    checkpoints = tmp_path / "ckpt"
    ddp = ("--engine", engine, "--devices", 2, "--strategy", "ddp")
    launch(tmp_path / "first", *ddp, "--epochs", 2, "--checkpoint-dir", checkpoints)
    first = rank_records(tmp_path / "first", 2)[0]
    assert 0 < first["hyper_steps"] < two_processes[0]["hyper_steps"]  # stopped mid-search
    launch(tmp_path / "resumed", *ddp, "--resume", checkpoints / "last.ckpt")
    resumed = rank_records(tmp_path / "resumed", 2)
    assert resumed[0]["alpha"] == resumed[1]["alpha"]
    assert resumed[0]["hyper_steps"] == two_processes[0]["hyper_steps"]
    assert resumed[0]["alpha"] == two_processes[0]["alpha"]


@pytest.mark.parametrize("engine", ["default"], scope="module")
def test_two_torchrun_nodes_match_single_node_ddp(tmp_path, two_processes, engine):
    env = ddp_environment()
    port = env.pop("MASTER_PORT")
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "2",
        "--nproc-per-node",
        "1",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        port,
    ]
    script = [str(SCRIPT), "--out", str(tmp_path), "--engine", engine, "--devices", "1", "--num-nodes", "2"]
    script += ["--strategy", "ddp"]
    nodes = [
        subprocess.Popen(
            [*torchrun, "--node-rank", str(rank), "--log-dir", str(tmp_path / f"torchrun{rank}"), *script],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    node0, node1 = rank_records(tmp_path, 2)
    assert (node0["world_size"], node1["node_rank"]) == (2, 1)
    assert node0["history"] == node1["history"]
    for a, b in zip(node0["history"], two_processes[0]["history"], strict=True):
        assert_close(a, b)


@pytest.mark.parametrize("engine", ["default"], scope="module")
def test_ddp_spawn_exports_the_same_alpha(tmp_path, two_processes, engine):
    from lightning_autobalance import load_loss

    # Lightning's spawn launcher hands the weights back through a tempfile.mkdtemp() folder it never removes
    env = {**ddp_environment(), "TMPDIR": str(tmp_path)}
    launch(tmp_path, "--engine", engine, "--devices", 2, "--strategy", "ddp_spawn", "--batch-size", 16, env=env)
    # the calling process never ran the search itself; the learned loss reaches it through the exported file
    assert json.loads((tmp_path / "spawn.json").read_text()) == {"has_loss": False}
    loss = load_loss(tmp_path / "loss.yaml")
    alpha = [float(v) for v in torch.cat([loss.raw_delta.flatten(), loss.raw_iota.flatten()])]
    assert_close(alpha, two_processes[0]["alpha"])
