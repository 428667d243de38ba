"""DDP check: metrics synced over 2 gloo CPU processes equal the single-process value on the union.

Each rank updates every metric on its own shard (unequal sizes, several ``update`` calls, and a group that
only one rank sees); rank results are written to a temp dir and compared in the parent process.
"""

from __future__ import annotations

import os
import socket
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import lightning_autobalance.metrics as M

pytestmark = pytest.mark.ddp

WORLD_SIZE = 2
K, G = 4, 3
N = 157
SPLIT = 48  # rank 0 gets 48 samples, rank 1 gets 109
TIMEOUT_S = 120.0
# training counts per (group, class) for the weighted average accuracy: skewed, one zero cell, weight on the
# group that only rank 1 sees (so rank 0's local value would drop it and renormalise)
TRAIN_CELL_COUNTS = [[50, 5, 30, 2], [4, 40, 3, 25], [10, 0, 6, 20]]

# (name, class name, functional name, kwargs); names only, so that everything pickles by reference
SPECS: list[tuple[str, str, str, dict[str, Any]]] = [
    ("balanced_error", "BalancedError", "balanced_error", {}),
    ("class_errors", "ClassErrors", "class_errors", {}),
    ("worst_class_error", "WorstClassError", "worst_class_error", {}),
    ("group_errors", "GroupErrors", "group_errors", {}),
    ("group_errors_per_class", "GroupErrors", "group_errors", {"per_class": True}),
    ("worst_group_error", "WorstGroupError", "worst_group_error", {}),
    ("worst_group_error_over_group", "WorstGroupError", "worst_group_error", {"over": "group"}),
    ("dp_gap", "DemographicParityGap", "demographic_parity_gap", {}),
    ("dp_gap_mean", "DemographicParityGap", "demographic_parity_gap", {"reduction": "mean"}),
    ("eopp_gap", "EqualOpportunityGap", "equal_opportunity_gap", {}),
    ("eodds_gap", "EqualizedOddsGap", "equalized_odds_gap", {}),
    ("eodds_gap_mean", "EqualizedOddsGap", "equalized_odds_gap", {"reduction": "mean"}),
    ("worst_group_accuracy", "WorstGroupAccuracy", "worst_group_accuracy", {}),
    ("worst_group_accuracy_over_group", "WorstGroupAccuracy", "worst_group_accuracy", {"over": "group"}),
    ("mean_group_accuracy", "MeanGroupAccuracy", "mean_group_accuracy", {}),
    (
        "weighted_average_accuracy",
        "WeightedAverageAccuracy",
        "weighted_average_accuracy",
        {"train_cell_counts": TRAIN_CELL_COUNTS},
    ),
]


def make_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1234)
    target = torch.randint(0, K, (N,), generator=gen)
    groups = torch.randint(0, G - 1, (N,), generator=gen)
    groups[SPLIT + 20 : SPLIT + 45] = G - 1  # the last group appears on rank 1 only
    logits = torch.randn(N, K, generator=gen) + 1.5 * torch.nn.functional.one_hot(target, K)
    return logits, target, groups


def _shard(rank: int) -> slice:
    return slice(0, SPLIT) if rank == 0 else slice(SPLIT, N)


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"  # loopback only
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE)
    try:
        logits, target, groups = make_data()
        sl = _shard(rank)
        logits, target, groups = logits[sl], target[sl], groups[sl]
        results: dict[str, Any] = {}
        for name, cls_name, _, kwargs in SPECS:
            metric = getattr(M, cls_name)(num_classes=K, num_groups=G, **kwargs)
            for part in torch.arange(len(target)).tensor_split(3):  # several updates per rank
                metric.update(logits[part], target[part], groups[part])
            results[name] = metric.compute()
            results[f"{name}/local_n"] = int(metric.counts.sum())  # state is unsynced again after compute
        # a rank without any sample (rank 0 here) must not break the synced value
        metric = M.BalancedError(num_classes=K, num_groups=G)
        if rank == 1:
            metric.update(logits, target, groups)
        results["balanced_error_rank0_empty"] = metric.compute()
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run_workers(out_dir: Path) -> None:
    ctx = mp.start_processes(
        _worker, args=(_free_port(), str(out_dir)), nprocs=WORLD_SIZE, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + TIMEOUT_S
    while not ctx.join(timeout=1.0):
        if time.monotonic() > deadline:
            for proc in ctx.processes:
                proc.terminate()
            pytest.fail(f"DDP workers did not finish within {TIMEOUT_S} s")


def test_ddp_sync_equals_single_process(tmp_path: Path) -> None:
    _run_workers(tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD_SIZE)]
    logits, target, groups = make_data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, cls_name, fn_name, kwargs in SPECS:
            expected = getattr(M, fn_name)(logits, target, groups, num_classes=K, num_groups=G, **kwargs)
            single = getattr(M, cls_name)(num_classes=K, num_groups=G, **kwargs)
            single.update(logits, target, groups)
            torch.testing.assert_close(single.compute().reshape(expected.shape), expected, equal_nan=True)
            for rank, results in enumerate(ranks):
                torch.testing.assert_close(
                    results[name].reshape(expected.shape),
                    expected,
                    equal_nan=True,
                    rtol=0,
                    atol=1e-6,
                    msg=lambda m, name=name, rank=rank: f"{name} on rank {rank}: {m}",
                )
                assert results[f"{name}/local_n"] == len(target[_shard(rank)])
                # without the sync a rank would report its shard's value, which differs: the test can fail
                sl = _shard(rank)
                local = getattr(M, fn_name)(logits[sl], target[sl], groups[sl], num_classes=K, num_groups=G, **kwargs)
                assert not torch.allclose(local, expected, equal_nan=True), (name, rank)
        expected_be = M.balanced_error(logits[SPLIT:], target[SPLIT:], num_classes=K)
    for results in ranks:
        torch.testing.assert_close(results["balanced_error_rank0_empty"], expected_be, rtol=0, atol=1e-6)
    # sanity: rank 0's shard has no sample of the last group, so its local group errors would contain nan
    assert not (groups[:SPLIT] == G - 1).any()
    assert not torch.isnan(ranks[0]["group_errors"]).any()
