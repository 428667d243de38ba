"""What the default search costs next to plain training on the same weight steps (issue 16, acceptance 2).

``PYTHONPATH=. python benchmarks/search_cost.py`` (about 6 minutes on 2 cores). The command-line app's setting at the
paper's scale — MNIST-1D-LT, n_max = 5000, ρ = 100, the MNIST-1D CNN, batch 64, SGD — is trained on the train part
of the same ``HeldOutSplit`` (so both arms take exactly the same weight steps) in two arms, alternately, ``--repeats``
times each, one thread, in this one process:

* ``plain``: the mixin module with its loss frozen, no callback;
* ``search``: the same with ``AutoBalance()`` at its defaults (= ``conf/autobalance/default.yaml``: warm-up 10 epochs,
  a hyper-step every 10 weight steps on 2 + 2 batches of 256, last-layer engine, Adam 0.01).

It prints each arm's fit wall and process-CPU seconds, and the ratios search / plain for the whole search phase
(``--epochs``, 30 by default, of which the warm-up is a third) and for the epochs after the warm-up (the steady
state, where every epoch has hyper-steps; measured as the difference between a full run and a warm-up-only run is
noisy, so it is measured directly with ``warmup_epochs=0``). Ratios of runs interleaved in one process are what this
reports: the machine is shared and absolute seconds move with its load.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def fit_seconds(arm: str, epochs: int, n_max: int, warmup: int) -> tuple[float, float, int]:
    """Wall and CPU seconds of one fit of ``arm`` and its number of hyper-steps."""
    import lightning.pytorch as pl

    from lightning_autobalance import AutoBalance, HeldOutSplit
    from lightning_autobalance.classifier import ImbalancedClassifier
    from lightning_autobalance.data import MNIST1DLongTail
    from lightning_autobalance.models import MNIST1DConvNet

    pl.seed_everything(0, verbose=False)
    data = HeldOutSplit(MNIST1DLongTail(n_max=n_max, test_per_class=10, batch_size=64), fraction=0.2)
    model = ImbalancedClassifier(MNIST1DConvNet(num_classes=10), num_classes=10)
    export = Path(tempfile.mkdtemp()) / "loss.yaml"
    callbacks = [AutoBalance(warmup_epochs=warmup, export_path=export)] if arm == "search" else []
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    wall, cpu = time.perf_counter(), time.process_time()
    trainer.fit(model, datamodule=data)
    hyper_steps = callbacks[0].hyper_steps if callbacks else 0
    return time.perf_counter() - wall, time.process_time() - cpu, hyper_steps


def main(argv: list[str] | None = None) -> int:
    import torch

    from lightning_autobalance.cli import quiet_lightning

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--steady-epochs", type=int, default=5, help="epochs of the warm-up-free (steady) runs")
    parser.add_argument("--n-max", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    settings = {
        "whole search phase": (args.epochs, args.epochs // 3),  # the default: 10 of 30
        "steady state (no warm-up)": (args.steady_epochs, 0),
    }
    print(
        f"# search_cost.py: MNIST-1D-LT n_max={args.n_max}, batch 64, 1 thread, arms interleaved, "
        f"{args.repeats} repeats"
    )
    with quiet_lightning():  # no per-fit banner between the rows
        for label, (epochs, warmup) in settings.items():
            times: dict[str, list[tuple[float, float]]] = {"plain": [], "search": []}
            steps = 0
            for _ in range(args.repeats):
                for arm in ("plain", "search"):
                    wall, cpu, hyper = fit_seconds(arm, epochs, args.n_max, warmup)
                    times[arm].append((wall, cpu))
                    steps = max(steps, hyper)
            plain_wall = statistics.mean(w for w, _ in times["plain"])
            plain_cpu = statistics.mean(c for _, c in times["plain"])
            search_wall = statistics.mean(w for w, _ in times["search"])
            search_cpu = statistics.mean(c for _, c in times["search"])
            print(f"\n## {label}: {epochs} epochs, warm-up {warmup}, {steps} hyper-steps")
            print("arm      wall s   CPU s")
            print(f"plain   {plain_wall:7.1f} {plain_cpu:7.1f}")
            print(f"search  {search_wall:7.1f} {search_cpu:7.1f}")
            print(f"ratio search / plain: wall {search_wall / plain_wall:.2f}, CPU {search_cpu / plain_cpu:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
