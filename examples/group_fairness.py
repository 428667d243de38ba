"""Group-sensitive AutoBalance on the offline spurious-correlation MNIST-1D, through the Python API.

The task: digits 0–4 vs 5–9; the group is a constant offset of the sequence that agrees with the label for 95% of the
training samples (the Waterbirds "background"). Plain cross-entropy (ERM) leans on the offset and fails on the two
minority (group, class) cells; AutoBalance learns per-(class, group) logit scales Δ and shifts ι that minimise a
held-out fairness objective instead.

1. ``SpuriousMNIST1D`` (binary, 2 groups) and ``ImbalancedClassifier(MNIST1DConvNet)`` trained with CE: the baseline.
2. The search phase: ``AutoBalance(objective=WorstGroup(temperature=1.0))`` (``--objective eo``: the equal-opportunity
   gap; ``blend``: both) on ``HeldOutSplit(dm, fraction=0.2)``, stratified by (class, group). The hyper-step engine is
   ``full`` (all weights): the cure for a spurious feature is in the body's features, which the last-layer engine holds
   fixed (on this data it left α near CE).
3. The retrain phase: a fresh model trained on all the training data with the learned loss frozen.
4. Test metrics from ``lightning_autobalance.metrics``: worst-group error and the equal-opportunity gap.

The settings are those of ``conf/experiment/spurious_mnist1d.yaml``. About two minutes of one CPU thread (``--fast``:
seconds, for the tests):

    PYTHONPATH=. python examples/group_fairness.py [--objective worst_group|eo|blend] [--seed 0] [--fast]

The command-line twin with the tuned settings is ``python -m lightning_autobalance experiment=spurious_mnist1d``.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import warnings
from functools import partial

import lightning.pytorch as pl
import torch

from lightning_autobalance import AutoBalance, Blend, EqualOpportunityGap, HeldOutSplit, Neumann, WorstGroup
from lightning_autobalance.classifier import ImbalancedClassifier
from lightning_autobalance.data.spurious import SpuriousMNIST1D
from lightning_autobalance.metrics import EqualOpportunityGapMetric, WorstGroupError
from lightning_autobalance.models import MNIST1DConvNet

# What each --objective optimises on the held-out split (conf/objective/worst_group.yaml, equal_opportunity_gap.yaml,
# blend.yaml with a = the worst-group loss). The equal-opportunity gap alone only looks at class 1 (the TPR gap), so it
# leaves the minority cell of class 0 alone; the blend adds the worst-group loss.
OBJECTIVES = {
    "worst_group": lambda: WorstGroup(temperature=1.0),
    "eo": lambda: EqualOpportunityGap(),
    "blend": lambda: Blend(WorstGroup(temperature=1.0), "equal_opportunity_gap", lam=0.5),
}


@torch.no_grad()
def evaluate(model: ImbalancedClassifier, loader: torch.utils.data.DataLoader) -> dict[str, float]:
    """Test worst-(group, class) error and equal-opportunity gap (TPR gap of class 1 across groups), in %."""
    worst, gap = WorstGroupError(num_classes=2, num_groups=2), EqualOpportunityGapMetric(num_classes=2, num_groups=2)
    model.eval()
    for batch in loader:
        logits, y, g = model.autobalance_forward(batch)
        worst.update(logits, y, g)
        gap.update(logits, y, g)
    return {"worst_group_error": 100 * float(worst.compute()), "equal_opportunity_gap": 100 * float(gap.compute())}


def trainer(epochs: int, callbacks: list[pl.Callback] | None = None) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks or [],
    )


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objective", choices=sorted(OBJECTIVES), default="worst_group")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fast", action="store_true", help="a tiny run (seconds) that exercises every step")
    parser.add_argument("--root", default=None, help="cache folder of the generated data (default: the package's)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*(many workers|LeafSpec|val_dataloader|jit).*")

    epochs = 2 if args.fast else args.epochs
    n_train, per_cell = (400, 20) if args.fast else (4000, 250)
    dm = SpuriousMNIST1D(n_train=n_train, strength=0.5, test_per_cell=per_cell, root=args.root)  # the conf defaults
    dm.prepare_data()
    dm.setup("fit")
    print(f"training (group, class) counts {dm.group_class_counts.tolist()}; test: {dm.test_per_cell} per cell")

    def model() -> ImbalancedClassifier:
        pl.seed_everything(args.seed, verbose=False)
        return ImbalancedClassifier(MNIST1DConvNet(num_classes=2), num_classes=2, num_groups=2)

    results: dict[str, dict[str, float]] = {}

    # 1. ERM: plain cross-entropy on all the training data.
    erm = model()
    trainer(epochs).fit(erm, datamodule=dm)
    results["ERM (CE)"] = evaluate(erm, dm.test_dataloader())

    # 2. Search: tune Δ, ι per (class, group) on a held-out 20% of every cell.
    with tempfile.TemporaryDirectory() as folder:
        callback = AutoBalance(
            learn=("delta", "iota"),
            objective=OBJECTIVES[args.objective](),
            warmup_epochs=1 if args.fast else epochs // 3,
            every_n_steps=2 if args.fast else 10,
            train_batches=2,
            heldout_batches=4,  # 4 × 256 ≥ 800: every held-out sample of the minority cells in every hyper-step
            batch_size=256,
            hyper_optimizer=partial(torch.optim.Adam, lr=0.05),
            engine="full",  # all weights: the body's features must change, not only the head (see the docstring)
            solver=Neumann(terms=5, alpha=0.05),
            export_path=f"{folder}/autobalance_loss.yaml",
            seed=args.seed,
        )
        searched = model()
        split = HeldOutSplit(dm, fraction=0.2, seed=args.seed, num_classes=2)
        trainer(epochs, [callback]).fit(searched, datamodule=split)
    learned = callback.loss.frozen()
    results["AutoBalance (search model)"] = evaluate(searched, dm.test_dataloader())

    # 3. Retrain: a fresh model on all the training data with the learned loss, frozen.
    retrained = model()
    retrained.autobalance_loss = learned
    trainer(epochs).fit(retrained, datamodule=dm)
    results["AutoBalance (retrained)"] = evaluate(retrained, dm.test_dataloader())

    print(f"\nobjective: {OBJECTIVES[args.objective]()!r}, seed {args.seed}, {epochs} epochs per phase\n")
    print("| model | test worst-group error % | test equal-opportunity gap % |")
    print("|---|---:|---:|")
    for name, r in results.items():
        print(f"| {name} | {r['worst_group_error']:.2f} | {r['equal_opportunity_gap']:.2f} |")
    print("\nlearned loss (rows: group, columns: class)")
    print(f"Δ = {[[round(v, 3) for v in row] for row in learned.delta().tolist()]}")
    print(f"ι = {[[round(v, 3) for v in row] for row in learned.iota().tolist()]}")
    return results


if __name__ == "__main__":
    main()
