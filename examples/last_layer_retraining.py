"""Last-layer retraining (LLR) on long-tailed MNIST-1D with the weights of "Thumb on the Scale".

1. Hold out a small stratified retraining set (20% of every class) from the long-tailed training data (ρ = 100).
2. Train ``ImbalancedClassifier(MNIST1DConvNet())`` with plain cross-entropy on the rest. The
   :class:`LastLayerRetraining` callback refits the last layer (``net.head``) on the held-out set with Thumb weights
   at the end of ``trainer.fit`` and writes it back, so ``trainer.test`` evaluates the retrained model.
3. Extract the features once and compare every weight mode (``retrain_last_layer`` with ``write_back=False``).

Runs in about a minute on one CPU thread:  PYTHONPATH=. python examples/last_layer_retraining.py [--epochs 15]
"""

from __future__ import annotations

import argparse
import logging
import warnings

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Subset

from lightning_autobalance.classifier import ImbalancedClassifier
from lightning_autobalance.data import MNIST1DLongTail, stratified_split
from lightning_autobalance.last_layer import LastLayerRetraining, extract_features, retrain_last_layer
from lightning_autobalance.llr import MODES
from lightning_autobalance.metrics import class_errors
from lightning_autobalance.models import MNIST1DConvNet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--heldout-fraction", type=float, default=0.2)
    parser.add_argument("--ridge", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*(many workers|LeafSpec|val_dataloader).*")
    warnings.filterwarnings("ignore", message=".*capped at max_weight.*")  # summarised below

    # 1. Data: long-tailed training set, balanced test set, stratified held-out retraining set.
    dm = MNIST1DLongTail(imbalance_ratio=100)
    dm.prepare_data()
    dm.setup("fit")
    targets = dm.train_set.tensors[1]
    train_idx, held_idx = stratified_split(targets, None, args.heldout_fraction, seed=args.seed)
    train_loader = DataLoader(Subset(dm.train_set, train_idx.tolist()), batch_size=64, shuffle=True)
    held_loader = DataLoader(Subset(dm.train_set, held_idx.tolist()), batch_size=256)
    test_loader = dm.test_dataloader()
    print(f"training counts {torch.bincount(targets[train_idx]).tolist()}")
    print(f"retraining counts {torch.bincount(targets[held_idx]).tolist()}")

    # 2. Plain-CE training; the callback retrains the head at the end of fit.
    pl.seed_everything(args.seed, verbose=False)
    model = ImbalancedClassifier(MNIST1DConvNet(), num_classes=10)
    llr = LastLayerRetraining(held_loader, test_loader, mode="thumb", head="net.head", ridge=args.ridge)
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[llr],
    )
    trainer.fit(model, train_loader)
    report = llr.report
    print(
        f"callback (thumb): d_eff={report['llr/effective_dimension']:.0f}, δ={report['llr/delta']:.2f}; test "
        f"balanced error {report['llr/eval_before/balanced_error']:.3f} -> {report['llr/eval/balanced_error']:.3f}"
    )
    priors = torch.bincount(targets[held_idx]).double() / len(held_idx)
    capped = torch.nonzero(2 * priors <= report["llr/delta"]).flatten().tolist()
    print(f"thumb: δ ≥ 2π_k for classes {capped}: no weight equalizes their errors, their ratio is capped")
    tested = trainer.test(model, test_loader, verbose=False)[0]
    print(f"trainer.test after retraining: balanced error {tested['test/balanced_error']:.3f} (the refit head)")

    # 3. Every mode on the same frozen features (extracted once).
    held = extract_features(model, held_loader, head="net.head")
    test = extract_features(model, test_loader, head="net.head")
    rows = [("CE head (no LLR)", "-", report.previous_head)]
    for loss in ("square", "ce"):
        for mode in MODES:
            refit = retrain_last_layer(
                model, held, mode, loss=loss, ridge=args.ridge, head="net.head", eval_data=test, write_back=False
            )
            rows.append((mode, loss, refit.head))

    print()
    print("| mode | loss | balanced error | worst-class error | error | per-class test error (classes 0..9) |")
    print("|---|---|---|---|---|---|")
    for mode, loss, head in rows:
        preds = head.predict(test.features)
        per_class = class_errors(preds, test.targets, num_classes=10)
        print(
            f"| {mode} | {loss} | {per_class.mean():.3f} | {per_class.max():.3f} | "
            f"{(preds != test.targets).float().mean():.3f} | {' '.join(f'{v:.2f}' for v in per_class.tolist())} |"
        )


if __name__ == "__main__":
    main()
