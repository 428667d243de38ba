"""Acceptance experiment of last-layer retraining (LLR) on MNIST-1D-LT: every weight mode, several seeds.

For every seed:

1. hold out a stratified ``--heldout-fraction`` of the long-tailed MNIST-1D training set (ρ = ``--imbalance``);
2. train ``ImbalancedClassifier(MNIST1DConvNet())`` with plain cross-entropy on the rest for ``--epochs`` epochs;
3. extract the penultimate features of the held-out part and of the balanced test set once (the backbone is frozen);
4. for every retraining-set size in ``--subsets`` (fractions of the held-out part, nested stratified subsets, so the
   backbone is the same and only ``n`` — hence ``δ = d_eff / n`` — changes; at least 2 samples per class are kept,
   as the bilevel split needs them) and every loss in ``--losses``, refit
   the head with every weight mode (``none``, ``priors``, ``thumb``, ``downsample``, ``bilevel``) and measure the
   worst-class and the balanced test error. The CE-trained head itself is the baseline row.

Prints a markdown table of mean ± std over the seeds. The data set is fixed (generator seed 0); the seed drives the
held-out split, the backbone's initialisation and data order, the downsampling draw and the bilevel split.
``--paired MODE`` adds paired differences (mode − MODE, per seed) with 95% t-intervals; ``--features-cache DIR``
stores the frozen features of every seed (``seed{s}_e{epochs}.pt``) and reuses them, so that a rerun compares the
weight modes on exactly the same backbones; ``--json`` writes the per-seed errors.

Usage:  PYTHONPATH=. python benchmarks/llr_mnist1d.py [--seeds 0 1 2] [--epochs 50] [--heldout-fraction 0.3]
        [--subsets 1.0 0.33] [--losses square ce] [--ridge 10] [--paired priors] [--features-cache DIR]
        [--json per_seed.json] [--output table.md]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import tempfile
import time
import warnings
from collections import defaultdict
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Subset

from lightning_autobalance.classifier import ImbalancedClassifier
from lightning_autobalance.data import MNIST1DLongTail, stratified_split
from lightning_autobalance.last_layer import RetrainingFeatures, extract_features, retrain_last_layer
from lightning_autobalance.llr import MODES
from lightning_autobalance.metrics import balanced_error, worst_class_error
from lightning_autobalance.models import MNIST1DConvNet

NUM_CLASSES = 10
BASELINE = "CE head (no LLR)"


def train_backbone(dataset, indices, epochs: int, seed: int) -> ImbalancedClassifier:
    pl.seed_everything(seed, verbose=False)
    model = ImbalancedClassifier(MNIST1DConvNet(num_classes=NUM_CLASSES), num_classes=NUM_CLASSES)
    loader = DataLoader(Subset(dataset, indices.tolist()), batch_size=64, shuffle=True)
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, loader)
    return model


def subset(data: RetrainingFeatures, fraction: float, seed: int) -> RetrainingFeatures:
    """A stratified subset: ``round(fraction · n_c)`` samples of every class ``c``, at least 2 (bilevel needs 2)."""
    if fraction >= 1.0:
        return data
    gen = torch.Generator().manual_seed(seed)
    keep = []
    for c in range(NUM_CLASSES):
        members = torch.nonzero(data.targets == c).flatten()
        members = members[torch.randperm(members.numel(), generator=gen)]
        keep.append(members[: min(members.numel(), max(2, round(fraction * members.numel())))])
    keep = torch.cat(keep).sort().values
    return RetrainingFeatures(data.features[keep], data.targets[keep])


def test_errors(logits_or_preds: torch.Tensor, targets: torch.Tensor) -> tuple[float, float]:
    return (
        float(worst_class_error(logits_or_preds, targets, num_classes=NUM_CLASSES)),
        float(balanced_error(logits_or_preds, targets, num_classes=NUM_CLASSES)),
    )


def fmt(values: list[float]) -> str:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.3f} ± {std:.3f}"


def t_interval(values: list[float]) -> str:
    """Mean with its two-sided 95% Student-t interval (``mean [low, high]``)."""
    from scipy.stats import t as student_t

    mean = statistics.fmean(values)
    if len(values) < 2:
        return f"{mean:+.3f}"
    half = student_t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return f"{mean:+.3f} [{mean - half:+.3f}, {mean + half:+.3f}]"


def cached_features(args, dataset, targets, test_loader, seed: int):
    """(held-out features, test features, CE-head test logits, train size, train seconds), cached per seed."""
    path = None if args.features_cache is None else args.features_cache / f"seed{seed}_e{args.epochs}.pt"
    if path is not None and path.exists():
        blob = torch.load(path, weights_only=True)
        held = RetrainingFeatures(blob["held_x"], blob["held_y"])
        test = RetrainingFeatures(blob["test_x"], blob["test_y"])
        return held, test, blob["ce_logits"], int(blob["n_train"]), 0.0
    train_idx, held_idx = stratified_split(targets, None, args.heldout_fraction, seed)
    t0 = time.perf_counter()
    model = train_backbone(dataset, train_idx, args.epochs, seed)
    t_train = time.perf_counter() - t0
    held = extract_features(model, DataLoader(Subset(dataset, held_idx.tolist()), batch_size=512), head="net.head")
    test = extract_features(model, test_loader, head="net.head")
    with torch.no_grad():
        ce_logits = model.net.head(test.features)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        blob = {"held_x": held.features, "held_y": held.targets, "test_x": test.features, "test_y": test.targets}
        torch.save({**blob, "ce_logits": ce_logits, "n_train": len(train_idx)}, path)
    return held, test, ce_logits, len(train_idx), t_train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=50, help="epochs of plain-CE backbone training")
    parser.add_argument("--imbalance", type=float, default=100.0, help="imbalance ratio ρ of MNIST-1D-LT")
    parser.add_argument("--n-max", type=int, default=1000, help="training sequences of the largest class")
    parser.add_argument("--heldout-fraction", type=float, default=0.3, help="share of every class held out")
    parser.add_argument(
        "--subsets", type=float, nargs="+", default=[1.0, 0.33], help="retraining-set sizes, fractions of the held out"
    )
    parser.add_argument("--losses", nargs="+", default=["square", "ce"], choices=["square", "ce"])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--ridge", type=float, default=10.0, help="L2 penalty of the refit head (sum of losses)")
    parser.add_argument("--variance", type=float, default=0.99, help="variance fraction defining d_eff (thumb)")
    parser.add_argument("--max-weight", type=float, default=1000.0, help="cap of the thumb weight ratio")
    parser.add_argument("--bilevel-steps", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--paired", default=None, choices=list(MODES), help="paired differences to this mode")
    parser.add_argument("--features-cache", type=Path, default=None, help="store / reuse frozen features here")
    parser.add_argument("--json", type=Path, default=None, help="write the per-seed errors to this file")
    parser.add_argument("--output", type=Path, default=None, help="also write the markdown table to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*no `val_dataloader`.*")
    warnings.filterwarnings("ignore", message=".*max_weight.*")  # thumb caps the tail classes; reported as δ below
    start = time.perf_counter()

    dm = MNIST1DLongTail(imbalance_ratio=args.imbalance, n_max=args.n_max, test_per_class=300)
    dm.prepare_data()
    dm.setup("fit")
    dataset, targets = dm.train_set, dm.train_set.tensors[1]
    test_loader = dm.test_dataloader()

    # results[(subset, loss, mode)] -> list of (worst-class, balanced) over seeds; stats[subset] -> (n, d_eff, δ)
    results: dict[tuple, list[tuple[float, float]]] = defaultdict(list)
    stats: dict[float, list[tuple[int, int, float]]] = defaultdict(list)
    train_sizes = []
    for seed in args.seeds:
        held, test, ce_logits, n_train, t_train = cached_features(args, dataset, targets, test_loader, seed)
        train_sizes.append(n_train)
        feature_dim = held.features.shape[1]
        model = ImbalancedClassifier(MNIST1DConvNet(num_classes=NUM_CLASSES), num_classes=NUM_CLASSES)
        for fraction in args.subsets:
            results[(fraction, "-", BASELINE)].append(test_errors(ce_logits, test.targets))
            retrain = subset(held, fraction, seed)
            for loss in args.losses:
                for mode in args.modes:
                    report = retrain_last_layer(
                        model,
                        retrain,
                        mode,
                        loss=loss,
                        ridge=args.ridge,
                        variance=args.variance,
                        max_weight=args.max_weight,
                        bilevel={"steps": args.bilevel_steps},
                        seed=seed,
                        head="net.head",
                        eval_data=test,
                        write_back=False,
                        log=False,
                    )
                    results[(fraction, loss, mode)].append(
                        (report["llr/eval/worst_class_error"], report["llr/eval/balanced_error"])
                    )
            stats[fraction].append((len(retrain), int(report["llr/effective_dimension"]), report["llr/delta"]))
        print(
            f"seed {seed}: backbone trained on {n_train} samples in {t_train:.0f} s (0: cached); held out {len(held)}; "
            f"elapsed {time.perf_counter() - start:.0f} s",
            flush=True,
        )

    counts = torch.bincount(targets, minlength=NUM_CLASSES).tolist()
    lines = [
        f"MNIST-1D-LT (ρ={args.imbalance:g}, class counts {counts}); backbone: MNIST1DConvNet trained with plain CE "
        f"for {args.epochs} epochs on {statistics.fmean(train_sizes):.0f} samples; held out "
        f"{args.heldout_fraction:g} of every class; head refit on the held-out features (d={feature_dim}) with ridge="
        f"{args.ridge:g}; test set balanced (300 per class). Mean ± std over seeds {args.seeds}.",
        "",
        "| retraining set | loss | mode | worst-class test error | balanced test error |",
        "|---|---|---|---|---|",
    ]
    for fraction in args.subsets:
        n, d_eff, delta = (statistics.fmean(v[i] for v in stats[fraction]) for i in range(3))
        label = f"n={n:.0f}, d_eff={d_eff:.0f}, δ={delta:.2f}"
        rows = [("-", BASELINE)] + [(loss, mode) for loss in args.losses for mode in args.modes]
        for loss, mode in rows:
            values = results[(fraction, loss, mode)]
            lines.append(
                f"| {label} | {loss} | {mode} | {fmt([v[0] for v in values])} | {fmt([v[1] for v in values])} |"
            )
    if args.paired is not None:
        lines += [
            "",
            f"Paired differences to `{args.paired}` (mode − {args.paired}, same seed; negative = lower error), mean "
            f"with 95% t-interval over {len(args.seeds)} seeds:",
            "",
            "| retraining set | loss | mode | Δ worst-class error | Δ balanced error |",
            "|---|---|---|---|---|",
        ]
        for fraction in args.subsets:
            n = statistics.fmean(v[0] for v in stats[fraction])
            for loss in args.losses:
                ref = results[(fraction, loss, args.paired)]
                for mode in args.modes:
                    if mode == args.paired:
                        continue
                    values = results[(fraction, loss, mode)]
                    diffs = [[v[i] - r[i] for v, r in zip(values, ref, strict=True)] for i in range(2)]
                    lines.append(f"| n={n:.0f} | {loss} | {mode} | {t_interval(diffs[0])} | {t_interval(diffs[1])} |")
    lines += ["", f"Total time {time.perf_counter() - start:.0f} s, {args.threads} thread(s)."]
    table = "\n".join(lines)
    if args.json is not None:
        per_seed = {
            f"{fraction}|{loss}|{mode}": {
                "seeds": args.seeds,
                "worst_class": [v[0] for v in values],
                "balanced": [v[1] for v in values],
            }
            for (fraction, loss, mode), values in results.items()
        }
        args.json.write_text(json.dumps(per_seed, indent=1) + "\n", encoding="utf-8")
    print()
    print(table)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=args.output.parent, prefix=f".{args.output.name}")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(table + "\n")
        os.replace(tmp, args.output)


if __name__ == "__main__":
    main()
