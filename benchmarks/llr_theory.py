"""Gaussian-mixture check of "Thumb on the Scale" (docs/references.md §2) with lightning_autobalance.llr.

Data: x = y·µ + z, z ~ N(0, I_d), y ∈ {±1}, minority y = +1 with prior π₊ (exact class counts round(π₊ n)).
Head: weighted square loss with intercept, fit in closed form by ``fit_last_layer`` (two one-hot outputs; the
score difference is the ±1 regression). Errors are exact per-class risks of sign(θᵀx + b) computed from (θ, b)
with ``gaussian_mixture_class_errors`` — no test sampling.

(a) Per-class error vs the weight ratio ρ = ω₊/ω₋ in the paper's Fig. 2 setting (‖µ‖ = 2, d = 200, n = 1000,
    δ = 0.2, π₊ = 0.2); the theory puts the crossing at ρ̃ = 7, not at the ratio of priors 4.
(b) Worst-class error of the weight modes none / priors / thumb (true δ = d/n) / thumb (δ = d_eff/n) /
    downsample / bilevel across δ (several n at fixed d), ‖µ‖ = 1 and 2, plus the best ratio on a fine grid
    ("oracle", chosen with the exact test risk: a reference for class weighting, not a method).

Usage:  PYTHONPATH=. python benchmarks/llr_theory.py [--quick] [--out benchmarks/results/]
"""

from __future__ import annotations

import argparse
import math
import time
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from lightning_autobalance.llr import (
    bilevel_weights,
    class_weights_for_mode,
    effective_dimension,
    fit_last_layer,
    gaussian_mixture_class_errors,
    optimal_weight,
)

MODES = ["none", "priors", "thumb (d/n)", "thumb (d_eff/n)", "downsample", "bilevel"]


def sample(n: int, d: int, prior: float, mu_norm: float, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Features (n, d) float64, targets (class 1 = y=+1 minority, class 0 = y=−1), and µ."""
    n_pos = round(prior * n)
    y = torch.zeros(n, dtype=torch.long)
    y[:n_pos] = 1
    mu = torch.zeros(d, dtype=torch.float64)
    mu[0] = mu_norm
    signs = 2.0 * y.double() - 1.0
    x = signs[:, None] * mu + torch.randn(n, d, generator=gen, dtype=torch.float64)
    return x, y, mu


def class_errors(head, mu: torch.Tensor) -> tuple[float, float]:
    """(error of the minority y=+1, error of the majority y=−1) of the fitted two-output head."""
    theta = head.weight[1] - head.weight[0]
    b = head.bias[1] - head.bias[0]
    return gaussian_mixture_class_errors(theta, b, mu)


def errors_for_ratios(x, y, mu, ratios) -> np.ndarray:
    """(len(ratios), 2) per-class errors for class weights (1, ρ)."""
    out = np.empty((len(ratios), 2))
    for i, rho in enumerate(ratios):
        head = fit_last_layer(x, y, weights=torch.tensor([1.0, float(rho)], dtype=torch.float64))
        out[i] = class_errors(head, mu)
    return out


def crossing(ratios: np.ndarray, err_pos: np.ndarray, err_neg: np.ndarray) -> float:
    """Ratio where err₊ − err₋ changes sign, linearly interpolated in log ρ (nan if it does not)."""
    diff = err_pos - err_neg
    for i in range(len(ratios) - 1):
        if diff[i] > 0 >= diff[i + 1]:
            lo, hi = math.log(ratios[i]), math.log(ratios[i + 1])
            t = diff[i] / (diff[i] - diff[i + 1])
            return math.exp(lo + t * (hi - lo))
    return float("nan")


def part_a(args, gen) -> dict:
    d, n, prior, mu_norm = 200, 1000, 0.2, 2.0
    ratios = np.unique(np.concatenate([np.geomspace(1.0, 40.0, 33 if args.quick else 49), [4.0, 7.0]]))
    errs = np.stack([errors_for_ratios(*sample(n, d, prior, mu_norm, gen), ratios) for _ in range(args.reps_a)])
    mean = errs.mean(axis=0)
    per_rep = np.array([crossing(ratios, e[:, 0], e[:, 1]) for e in errs])
    cross = crossing(ratios, mean[:, 0], mean[:, 1])
    boot_rng = np.random.default_rng(args.seed)
    boot = []
    for _ in range(1000):  # bootstrap over repetitions of the crossing of the mean curves
        m = errs[boot_rng.integers(0, len(errs), len(errs))].mean(axis=0)
        boot.append(crossing(ratios, m[:, 0], m[:, 1]))
    lo, hi = np.nanpercentile(boot, [2.5, 97.5])
    theory = optimal_weight(prior, d / n)
    print(
        f"## (a) Per-class error vs weight ratio (d={d}, n={n}, delta={d / n}, pi+={prior}, ||mu||={mu_norm}, "
        f"{args.reps_a} repetitions)\n"
    )
    print("| rho | err minority (+1) | err majority (-1) |\n|---:|---:|---:|")
    for rho in (1.0, 2.0, 4.0, 5.0, 6.0, 7.0, 8.0, 10.0, 15.0, 20.0, 40.0):
        j = int(np.argmin(np.abs(ratios - rho)))
        print(f"| {ratios[j]:.2f} | {mean[j, 0]:.4f} | {mean[j, 1]:.4f} |")
    print(
        f"\nCrossing of the mean error curves (interpolated in log rho): rho = {cross:.3f} "
        f"(95% bootstrap interval over repetitions: {lo:.2f} to {hi:.2f})"
    )
    print(
        f"Crossing per repetition: median {np.nanmedian(per_rep):.3f}, mean {np.nanmean(per_rep):.3f}, "
        f"sd {np.nanstd(per_rep):.3f} (min {np.nanmin(per_rep):.2f}, max {np.nanmax(per_rep):.2f})"
    )
    print(f"Theory (2*pi- - delta)/(2*pi+ - delta) = {theory:.3f}; ratio of priors = {(1 - prior) / prior:.3f}\n")
    return {"ratios": ratios, "mean": mean, "cross": cross, "theory": theory, "priors": (1 - prior) / prior}


def oracle_worst_error(x, y, mu, ratios) -> float:
    """min over the grid of the worst-class error, via batched ±1 least squares (independent of fit_last_layer).

    Class weights (1, ρ): (G₋ + ρ G₊) θ = s₋ + ρ s₊ with G = X̃ᵀX̃ and s = X̃ᵀ(±1) per class, X̃ = [X, 1].
    """
    xa = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], dim=1)
    pos, neg = xa[y == 1], xa[y == 0]
    g_pos, g_neg = pos.T @ pos, neg.T @ neg
    s_pos, s_neg = pos.sum(0), -neg.sum(0)
    rho = torch.as_tensor(ratios, dtype=x.dtype)
    coef = torch.linalg.solve(g_neg + rho[:, None, None] * g_pos, (s_neg + rho[:, None] * s_pos)[..., None])[..., 0]
    worst = [max(gaussian_mixture_class_errors(c[:-1], c[-1], mu)) for c in coef]
    return float(min(worst))


def worst_errors_one_rep(x, y, mu, n, d, grid, bilevel_opts) -> dict[str, float]:
    """Worst-class error of each mode on one sample (and the grid oracle)."""
    prior = float(y.double().mean())
    out: dict[str, float] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # capped thumb weights at delta >= 2 pi+ are expected
        weights = {
            "none": class_weights_for_mode("none", y),
            "priors": class_weights_for_mode("priors", y),
            "thumb (d/n)": class_weights_for_mode("thumb", y, delta=d / n),
            "thumb (d_eff/n)": class_weights_for_mode("thumb", y, x),
            "downsample": class_weights_for_mode("downsample", y, seed=0),
        }
        weights["bilevel"] = bilevel_weights(x, y, **bilevel_opts).weights
    for mode in MODES:
        out[mode] = max(class_errors(fit_last_layer(x, y, weights=weights[mode]), mu))
    out["oracle (grid)"] = oracle_worst_error(x, y, mu, grid)
    out["_deff"] = effective_dimension(x)
    out["_prior"] = prior
    return out


def part_b(args, gen) -> dict:
    d, prior = 200, 0.2
    ns = [600, 1000, 2500] if args.quick else [600, 800, 1000, 1500, 2500, 5000]
    grid = np.geomspace(1.0, 100.0, 201)
    bilevel_opts = dict(
        objective=args.bilevel_objective,
        val_loss=args.bilevel_loss,
        steps=args.bilevel_steps,
        lr=0.1,
        val_fraction=0.3,
        temperature=0.05,
    )
    cols = [*MODES, "oracle (grid)"]
    results: dict[tuple[float, int], dict[str, tuple[float, float]]] = {}
    deffs: dict[tuple[float, int], float] = {}
    for mu_norm in (1.0, 2.0):
        for n in ns:
            reps = [
                worst_errors_one_rep(*sample(n, d, prior, mu_norm, gen), n, d, grid, bilevel_opts)
                for _ in range(args.reps_b)
            ]
            results[(mu_norm, n)] = {c: np.array([r[c] for r in reps]) for c in cols}
            deffs[(mu_norm, n)] = float(np.mean([r["_deff"] for r in reps]))
    print(
        f"## (b) Worst-class error (mean over {args.reps_b} repetitions; d={d}, pi+={prior}; square loss with "
        f"intercept; exact risks)\n"
    )
    print(
        "thumb (d/n) uses the true delta = d/n; thumb (d_eff/n) uses d_eff = effective_dimension(x, 0.99) of "
        "the retraining features (mean shown). bilevel: per-class weights, 70/30 stratified split, "
        f"objective={args.bilevel_objective}, val_loss={args.bilevel_loss}, {args.bilevel_steps} Adam steps, "
        "then refit on all n. oracle (grid): best ratio on a 201-point grid in [1, 100] chosen with the exact "
        "test risk (reference only). The bilevel options (objective, CE validation loss, 30% validation split) were "
        "chosen on a 3-repetition pilot with another seed; with the square validation loss the tuned ratios "
        "stayed near 1.\n"
    )
    print("| ‖µ‖ | n | δ=d/n | ρ̃(δ) | d_eff | " + " | ".join(cols) + " |")
    print("|---:|---:|---:|---:|---:|" + "---:|" * len(cols))
    for (mu_norm, n), row in results.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            rho = optimal_weight(prior, d / n)
        cells = " | ".join(f"{row[c].mean():.4f}" for c in cols)
        print(f"| {mu_norm:g} | {n} | {d / n:.3f} | {rho:.2f} | {deffs[(mu_norm, n)]:.0f} | {cells} |")
    best = {k: min(MODES, key=lambda m: v[m].mean()) for k, v in results.items()}
    print("\nBest non-oracle mode per row: " + ", ".join(f"(‖µ‖={k[0]:g}, n={k[1]}): {m}" for k, m in best.items()))
    pairs = [
        ("thumb (d/n)", "priors"),
        ("thumb (d_eff/n)", "priors"),
        ("thumb (d/n)", "downsample"),
        ("bilevel", "thumb (d/n)"),
        ("thumb (d/n)", "oracle (grid)"),
    ]
    print(
        f"\nPaired differences of worst-class error, same samples (mean ± standard error over {args.reps_b} "
        f"repetitions; negative = first is better):\n"
    )
    print("| ‖µ‖ | n | " + " | ".join(f"{a} − {b}" for a, b in pairs) + " |")
    print("|---:|---:|" + "---:|" * len(pairs))
    for (mu_norm, n), row in results.items():
        cells = []
        for a, b in pairs:
            diff = row[a] - row[b]
            cells.append(f"{diff.mean():+.4f} ± {diff.std(ddof=1) / math.sqrt(len(diff)):.4f}")
        print(f"| {mu_norm:g} | {n} | " + " | ".join(cells) + " |")
    print()
    return {"results": results, "ns": ns, "d": d, "cols": cols}


def plot(a: dict, b: dict, path: Path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    ax = axes[0]
    ax.plot(a["ratios"], a["mean"][:, 0], label="minority (+1)")
    ax.plot(a["ratios"], a["mean"][:, 1], label="majority (−1)")
    ax.axvline(a["priors"], ls=":", c="gray", label=f"ratio of priors {a['priors']:.0f}")
    ax.axvline(a["theory"], ls="--", c="k", label=f"theory ρ̃ = {a['theory']:.0f}")
    ax.axvline(a["cross"], ls="-.", c="r", label=f"measured crossing {a['cross']:.2f}")
    ax.set_xscale("log")
    ax.set_xlabel("weight ratio ω₊/ω₋")
    ax.set_ylabel("class error")
    ax.set_title("(a) d=200, n=1000, π₊=0.2, ‖µ‖=2")
    ax.legend(fontsize=8)
    for ax, mu_norm in zip(axes[1:], (1.0, 2.0), strict=True):
        deltas = [b["d"] / n for n in b["ns"]]
        for col in b["cols"]:
            vals = [b["results"][(mu_norm, n)][col].mean() for n in b["ns"]]
            ax.plot(deltas, vals, marker="o", ls=":" if col.startswith("oracle") else "-", label=col)
        ax.set_xlabel("δ = d/n")
        ax.set_ylabel("worst-class error")
        ax.set_title(f"(b) ‖µ‖={mu_norm:g}, d=200, π₊=0.2")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/"), help="output directory")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and sizes (about a minute)")
    parser.add_argument("--reps-a", type=int, default=None, help="repetitions for (a) (default 100, quick 20)")
    parser.add_argument("--reps-b", type=int, default=None, help="repetitions for (b) (default 20, quick 3)")
    parser.add_argument("--bilevel-objective", default="worst_group", choices=["balanced", "worst_group"])
    parser.add_argument("--bilevel-loss", default="ce", choices=["square", "ce"])
    parser.add_argument("--bilevel-steps", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (small solves: 1 is fastest)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.reps_a = args.reps_a or (20 if args.quick else 100)
    args.reps_b = args.reps_b or (3 if args.quick else 20)
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    a = part_a(args, gen)
    b = part_b(args, gen)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "llr_theory.png"
    plot(a, b, path)
    print(f"Saved {path} ({time.perf_counter() - start:.0f} s, seed {args.seed}, threads {args.threads})")


if __name__ == "__main__":
    main()
