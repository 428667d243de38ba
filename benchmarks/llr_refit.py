"""Time the closed-form weighted last-layer refit (``fit_last_layer(loss="square")``) at a realistic size.

50,000 × 512 float32 features, 10 classes, per-class weights, 2 torch threads. Prints the median wall time of
several repeats (after one warm-up) and its ratio to a 2-second budget. No assertion.

Usage:  PYTHONPATH=. python benchmarks/llr_refit.py [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from lightning_autobalance.llr import effective_dimension, fit_last_layer, thumb_class_weights

BUDGET_S = 2.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--d", type=int, default=512)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    # Long-tailed labels (imbalance 10) and class-dependent means, so the problem is not trivially balanced.
    probs = torch.logspace(0, -1, args.classes)
    y = torch.multinomial(probs / probs.sum(), args.n, replacement=True, generator=gen)
    means = torch.randn(args.classes, args.d, generator=gen)
    x = (means[y] + torch.randn(args.n, args.d, generator=gen)).float()
    counts = torch.bincount(y, minlength=args.classes)
    weights = thumb_class_weights(counts, delta=args.d / args.n)

    fit_last_layer(x, y, weights=weights)  # warm-up (allocator, BLAS)
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        head = fit_last_layer(x, y, weights=weights)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    acc = float((head.predict(x) == y).float().mean())
    start = time.perf_counter()
    d_eff = effective_dimension(x)
    t_eff = time.perf_counter() - start
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"closed-form weighted refit: N={args.n}, d={args.d}, K={args.classes}, float32 input (float64 solve), "
        f"per-class weights, {torch.get_num_threads()} threads, {args.repeats} repeats"
    )
    print(f"times (s): {', '.join(f'{t:.3f}' for t in times)}")
    print(
        f"median {median:.3f} s vs budget {BUDGET_S:.1f} s -> ratio {median / BUDGET_S:.2f} "
        f"({'within' if median <= BUDGET_S else 'over'} budget)"
    )
    print(
        f"(train accuracy of the head {acc:.3f}; effective_dimension on the same matrix: {d_eff} in {t_eff:.2f} s; "
        f"1-min load average at the end {load:.2f})"
    )


if __name__ == "__main__":
    main()
