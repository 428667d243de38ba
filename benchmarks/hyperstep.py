"""Hyper-step engines side by side: time, peak memory and accuracy of the hypergradient.

Run ``PYTHONPATH=. python benchmarks/hyperstep.py`` (about 35 minutes on 2 CPU threads, most of it ResNet-32's cosine
part). For each model — ResNet-32 on CIFAR-shaped inputs and the MNIST-1D CNN — and each configuration, a *separate
child process* trains for a reduced epoch and reports its wall time and peak RSS (``getrusage(RUSAGE_SELF).ru_maxrss``):

* ``plain``: weight steps only (batch 128, SGD);
* ``default`` / ``cached`` / ``reference``: the search phase at the reference schedule — a hyper-step every 20 weight
  steps, each on 10 train + 10 held-out batches of 128, α updated by SGD (lr 0.01, momentum 0.9) — with the default
  engine (``AutoBalance(engine="default")``: last layer, exact solve, train features computed on the drawn batches),
  the opt-in ``LastLayer(train_features="cached")`` (train features of the last 10 weight steps: cheaper, not
  resume-exact) or the ``reference`` preset (full-network Hessian, Neumann 5 terms step 1, all graphs held).

Accuracy: starting from the weights after the plain epoch, 10 more weight steps fill the cached variant's cache; then
each engine's hypergradient on fresh draws of the reference schedule's batches (``--cos-batches`` train + held-out
batches of ``--cos-batch``, ``--draws`` draws) is compared (cosine) with a high-accuracy one: the whole network with the
Gauss-Newton curvature (positive semi-definite, so conjugate gradient converges; the damped full Hessian of a network
in training is indefinite and long CG on it is not a well-defined target), damping 0.1, CG run to a relative residual
of 1e-4 (the residual reached is printed), on ``--target-batches`` train batches and the *whole* held-out split — the
bilevel problem as posed, up to the sampled train side. Per-draw values and mean ± sd are printed. ``--subsets`` adds
the whole-network Gauss-Newton CG10 restricted to the head plus the last BatchNorm's affine parameters, and to the head
plus every BatchNorm's: where the part of the hypergradient that the last-layer default misses lives.

Data are random (no download): Gaussian inputs with a weak class-dependent mean (so training makes progress), with
class counts in CIFAR10-LT proportions (n_max = 5000, imbalance 100, 80% train / 20% held-out) for ResNet-32 and
MNIST-1D-LT proportions (n_max = 400, 40×1 inputs) for the CNN. Reduced epochs: ``--steps`` weight steps (default 100,
so 5 hyper-steps) instead of a full pass over the data; the reference search epoch on ResNet-32 is measured with
``--reference-steps`` weight steps (default 20, so 1 hyper-step) and extrapolated to ``--steps`` as
``plain + hyper-steps × measured hyper-step time`` — say so when quoting it.

``PYTHONPATH=. python benchmarks/hyperstep.py --search-seeds 0,1,2`` runs, instead, the end-to-end comparison on
MNIST-1D-LT: the CLI's search + retrain with ``autobalance=default`` and with ``autobalance=reference`` per seed
(balanced test error after retraining, held-out error of the search model, search-phase wall and CPU seconds).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from lightning_autobalance.data import long_tail_counts
from lightning_autobalance.hypergrad import ConjugateGradient, OneStep
from lightning_autobalance.hyperstep import FullNetwork, HyperStepContext, LastLayer, Reference
from lightning_autobalance.losses import ParametricCrossEntropy
from lightning_autobalance.models import MNIST1DConvNet, resnet32
from lightning_autobalance.objectives import balanced_cross_entropy

BATCH, EVERY, HYPER_BATCHES = 128, 20, 10


class Classifier(nn.Module):
    """What ImbalancedClassifier + AutoBalanceMixin give the engines: autobalance_forward and the feature hook."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def autobalance_forward(self, batch):
        x, y = batch
        return self.net(x), y, None

    def autobalance_features(self, x: Tensor) -> Tensor:
        return self.net.autobalance_features(x)

    def autobalance_head(self) -> nn.Linear:
        return self.net.autobalance_head()


def make_data(model: str, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    if model == "resnet32":
        counts, shape = long_tail_counts(5000, 10, 100), (3, 32, 32)
    else:
        counts, shape = long_tail_counts(400, 10, 100), (1, 40)
    y = torch.cat([torch.full((n,), k) for k, n in enumerate(counts)])
    templates = torch.randn(10, *shape, generator=gen)
    x = torch.randn(len(y), *shape, generator=gen) + 0.5 * templates[y]
    order = torch.randperm(len(y), generator=gen)
    x, y = x[order], y[order]
    cut = int(0.8 * len(y))
    return counts, (x[:cut], y[:cut]), (x[cut:], y[cut:])


def make_model(model: str) -> Classifier:
    torch.manual_seed(0)
    return Classifier(resnet32(10) if model == "resnet32" else MNIST1DConvNet(10))


def draw(data, count: int, gen: torch.Generator, batch: int = BATCH) -> list[tuple[Tensor, Tensor]]:
    x, y = data
    order = torch.randperm(len(y), generator=gen)[: count * batch]
    return [(x[idx], y[idx]) for idx in order.split(batch)]


def engine_for(name: str):
    return {"default": LastLayer(), "cached": LastLayer(train_features="cached"), "reference": Reference()}[name]


def context(model, loss, train, heldout) -> HyperStepContext:
    return HyperStepContext(
        module=model,
        loss=loss,
        objective=balanced_cross_entropy,
        train=train,
        heldout=heldout,
        train_weight=1.0 / len(train),
    )


def run_epoch(model_name: str, config: str, steps: int, state: str | None) -> dict[str, float]:
    counts, train, heldout = make_data(model_name)
    model = make_model(model_name).train()
    loss = ParametricCrossEntropy.from_preset("ce", counts, learnable=("delta", "iota"))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    hyper = torch.optim.SGD(list(loss.hparams().values()), lr=0.01, momentum=0.9)
    gen = torch.Generator().manual_seed(1)
    engine = None if config == "plain" else engine_for(config)
    step_times: list[tuple[float, float]] = []  # (wall, CPU) of each weight step
    hyper_times: list[tuple[float, float]] = []  # (wall, CPU) of each hyper-step
    start = time.perf_counter()
    for step in range(1, steps + 1):
        t0, c0 = time.perf_counter(), time.process_time()
        idx = torch.randint(len(train[1]), (BATCH,), generator=gen)
        optimizer.zero_grad(set_to_none=True)
        loss(model(train[0][idx]), train[1][idx]).backward()
        optimizer.step()
        step_times.append((time.perf_counter() - t0, time.process_time() - c0))
        if engine is not None and step % EVERY == 0:
            t0, c0 = time.perf_counter(), time.process_time()
            ctx = context(model, loss, draw(train, HYPER_BATCHES, gen), draw(heldout, HYPER_BATCHES, gen))
            result = engine(ctx)
            for name, param in loss.hparams().items():
                param.grad = result.grads[name].clone()
            hyper.step()
            hyper.zero_grad(set_to_none=True)
            hyper_times.append((time.perf_counter() - t0, time.process_time() - c0))
    elapsed = time.perf_counter() - start
    if config == "plain" and state:
        torch.save(model.state_dict(), state)

    def median(values: list[float]) -> float:
        return float(torch.tensor(values).median()) if values else 0.0

    # Load-robust estimate of the search-epoch ratio from this process alone: one hyper-step per EVERY weight steps,
    # medians of the weight-step and hyper-step times measured side by side (wall and process CPU time).
    ratios = {}
    for key, column in (("wall", 0), ("cpu", 1)):
        step = median([t[column] for t in step_times])
        hyper_step = median([t[column] for t in hyper_times])
        ratios[f"in_process_ratio_{key}"] = 1.0 + hyper_step / (EVERY * step) if step else float("nan")
    return {
        "epoch_time": elapsed,
        "hyper_step_time": sum(t[0] for t in hyper_times) / len(hyper_times) if hyper_times else 0.0,
        "hyper_steps": len(hyper_times),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        **ratios,
    }


def flat(grads: dict[str, Tensor]) -> Tensor:
    return torch.cat([g.reshape(-1) for g in grads.values()])


class ConvergedCG:
    """Conjugate gradient to a relative residual of 1e-4 that records the residual it reached."""

    def __init__(self, iters: int, damping: float = 0.1) -> None:
        self.solver = ConjugateGradient(iters=iters, damping=damping, tol=1e-4)
        self.residual = float("nan")

    def __call__(self, hvp, rhs):
        x = self.solver(hvp, rhs)
        residual = [h + self.solver.damping * xi - v for h, xi, v in zip(hvp(x), x, rhs, strict=True)]
        self.residual = float(flat(dict(enumerate(residual))).norm() / flat(dict(enumerate(rhs))).norm())
        return x


class Restricted:
    """CG 10 (damping 0.1) with θ restricted to the parameters flagged in ``keep`` (the others' components are 0)."""

    def __init__(self, keep: list[bool]) -> None:
        self.keep = keep

    def __call__(self, hvp, rhs):
        def mask(vectors):
            return tuple(v if k else torch.zeros_like(v) for v, k in zip(vectors, self.keep, strict=True))

        return ConjugateGradient(iters=10, damping=0.1)(lambda vectors: mask(hvp(mask(vectors))), mask(rhs))


def subset_engines(model: nn.Module) -> dict[str, FullNetwork]:
    """Whole-network Gauss-Newton CG10 restricted to the head plus the last / every BatchNorm's affine parameters."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    head = {id(p) for p in model.autobalance_head().parameters()}
    last = head | {id(p) for p in norms[-1].parameters()}
    every = head | {id(p) for m in norms for p in m.parameters()}
    params = list(model.parameters())
    return {
        "head+last_bn_cg10": FullNetwork(Restricted([id(p) in last for p in params]), curvature="gauss_newton"),
        "head+every_bn_cg10": FullNetwork(Restricted([id(p) in every for p in params]), curvature="gauss_newton"),
    }


def cosines(model_name: str, state: str, args) -> dict:
    counts, train, heldout = make_data(model_name)
    model = make_model(model_name).train()
    loss = ParametricCrossEntropy.from_preset("ce", counts, learnable=("delta", "iota"))
    model.load_state_dict(torch.load(state))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    gen = torch.Generator().manual_seed(2)
    cached = LastLayer(train_features="cached")
    cached.needs_train_batches(model, loss)  # attach the cache hooks
    for _ in range(cached.cache_size):  # the weight steps before a hyper-step fill the cache
        idx = torch.randint(len(train[1]), (BATCH,), generator=gen)
        optimizer.zero_grad(set_to_none=True)
        loss(model(train[0][idx]), train[1][idx]).backward()
        optimizer.step()
    engines = {
        "default": LastLayer(),
        "default_cached": cached,
        "reference": Reference(),
        "gauss_newton_cg10": FullNetwork(ConjugateGradient(iters=10, damping=0.1), curvature="gauss_newton"),
        "one_step": FullNetwork(OneStep(lr=0.1)),
        **(subset_engines(model) if args.subsets else {}),
    }
    accurate = ConvergedCG(args.accurate_iters)
    target_train = draw(train, min(args.target_batches, len(train[1]) // BATCH), gen)
    whole_heldout = [(heldout[0][i], heldout[1][i]) for i in torch.arange(len(heldout[1])).split(BATCH)]
    high = FullNetwork(accurate, curvature="gauss_newton")(context(model, loss, target_train, whole_heldout))
    target = flat(high.grads)
    values: dict[str, list[float]] = {name: [] for name in engines}
    n, size = args.cos_batches, args.cos_batch
    for _ in range(args.draws):
        ctx = context(model, loss, draw(train, n, gen, size), draw(heldout, n, gen, size))
        for name, engine in engines.items():
            g = flat(engine(ctx).grads)
            values[name].append(float(torch.nn.functional.cosine_similarity(g, target, dim=0)))
    return {
        "cosines": values,
        "residual": accurate.residual,
        "target_train": len(target_train) * BATCH,
        "heldout": len(heldout[1]),
    }


def child(args) -> None:
    torch.set_num_threads(args.threads)
    if args.config == "cosine":
        out = cosines(args.model, args.state, args)
    else:
        out = run_epoch(args.model, args.config, args.steps, args.state)
    print(json.dumps(out))


def launch(args, model: str, config: str, steps: int, **cosine: int) -> dict:
    command = [sys.executable, __file__, "--child", "--model", model, "--config", config, "--steps", str(steps)]
    command += ["--threads", str(args.threads), "--draws", str(args.draws), "--state", args.state]
    command += ["--subsets"] if args.subsets else []
    for key, value in cosine.items():
        command += [f"--{key.replace('_', '-')}", str(value)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def search_compare(seeds: list[int], out: Path, presets: tuple[str, ...] = ("default", "reference")) -> None:
    """Acceptance check on MNIST-1D-LT: the CLI's search + retrain with ``autobalance=default`` and
    ``autobalance=reference`` (same seeds, interleaved so machine load hits both alike); prints the AutoBalance balanced
    test error after retraining, the search model's held-out balanced error and the search phase's wall and CPU time
    (the CLI's ``results.json`` ``seconds``)."""
    from hydra import compose, initialize_config_dir

    from lightning_autobalance import cli

    conf = Path(__file__).resolve().parents[1] / "conf"
    rows = []
    for seed in seeds:
        for preset in presets:
            with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
                overrides = [f"autobalance={preset}", f"seed={seed}", "phases=[search,retrain]"]
                cfg = compose("config", overrides=[*overrides, "trainer.enable_progress_bar=false"])
            run_dir = out / f"{preset}_{seed}"
            results = cli.run(cfg, run_dir)
            search_time = json.loads((run_dir / "results.json").read_text())["seconds"]["search"]
            search = results["AutoBalance (search model)"]
            rows.append(
                (preset, seed, results["AutoBalance"]["balanced_error"], search["heldout_balanced_error"],
                 search_time["wall"], search_time["cpu"])
            )  # fmt: skip
            print(
                f"{preset:<10} seed {seed}: balanced test error {100 * rows[-1][2]:.2f}%, held-out (search model) "
                f"{100 * rows[-1][3]:.2f}%, search phase {rows[-1][4]:.0f} s wall, {rows[-1][5]:.0f} s CPU",
                flush=True,
            )
    for preset in presets:
        errors = torch.tensor([r[2] for r in rows if r[0] == preset]) * 100
        held = torch.tensor([r[3] for r in rows if r[0] == preset]) * 100
        wall = torch.tensor([r[4] for r in rows if r[0] == preset])
        cpu = torch.tensor([r[5] for r in rows if r[0] == preset])
        print(
            f"{preset:<10} balanced test error {errors.mean():.2f} ± {errors.std():.2f}%, held-out {held.mean():.2f} ± "
            f"{held.std():.2f}% (mean ± sd over {len(errors)} seeds); search phase {wall.mean():.0f} ± "
            f"{wall.std():.0f} s wall, {cpu.mean():.0f} ± {cpu.std():.0f} CPU-s"
        )


def section(args: argparse.Namespace, model: str) -> None:
    """Times every configuration of one model in its own process, then prints its table, cosines and ratios."""
    start = time.perf_counter()
    plain = launch(args, model, "plain", args.steps)
    default = launch(args, model, "default", args.steps)
    cached = launch(args, model, "cached", args.steps)
    ref_steps = args.reference_steps if model == "resnet32" else args.steps
    reference = launch(args, model, "reference", ref_steps)
    per_step = plain["epoch_time"] / args.steps
    hypers = args.steps // EVERY
    reference_epoch = per_step * args.steps + hypers * reference["hyper_step_time"]
    note = "" if ref_steps == args.steps else f" (extrapolated from {ref_steps} steps)"
    if ref_steps == args.steps:
        reference_epoch = reference["epoch_time"]
    cos = launch(
        args,
        model,
        "cosine",
        args.steps,
        cos_batch=args.cos_batch,
        cos_batches=args.cos_batches,
        accurate_iters=args.accurate_iters,
        target_batches=args.target_batches,
    )
    print(f"\n## {model}")
    print(
        f"{'config':<12}{'epoch s':>10}{'x plain':>9}{'hyper-step s':>14}{'peak RSS MB':>13}{'x plain':>9}"
        f"{'in-process x plain (wall, CPU)':>32}"
    )
    for name, row, epoch in (
        ("plain", plain, plain["epoch_time"]),
        ("default", default, default["epoch_time"]),
        ("cached", cached, cached["epoch_time"]),
        ("reference", reference, reference_epoch),
    ):
        in_process = f"{row['in_process_ratio_wall']:>22.2f}, {row['in_process_ratio_cpu']:.2f}"
        print(
            f"{name:<12}{epoch:>10.1f}{epoch / plain['epoch_time']:>9.2f}{row['hyper_step_time']:>14.2f}"
            f"{row['peak_rss_mb']:>13.0f}{row['peak_rss_mb'] / plain['peak_rss_mb']:>9.2f}"
            + ("" if name == "plain" else in_process)
            + (note if name == "reference" else "")
        )
    n, size = args.cos_batches, args.cos_batch
    print(
        f"cosine to the high-accuracy hypergradient (whole network, Gauss-Newton, damping 0.1, CG to relative "
        f"residual {cos['residual']:.1e}, on {cos['target_train']} train samples and the whole held-out split of "
        f"{cos['heldout']}); engines on {args.draws} fresh draws of {n}+{n} batches of {size}, mean ± sd "
        "(per draw):"
    )
    means = {}
    for name, values in cos["cosines"].items():
        column = torch.tensor(values, dtype=torch.float64)
        means[name] = float(column.mean())
        spread = float(column.std()) if len(values) > 1 else 0.0
        print(f"  {name:<20}{means[name]:>8.3f} ± {spread:.3f}  ({', '.join(f'{v:.3f}' for v in values)})")
    print(
        f"acceptance: default epoch {default['epoch_time'] / plain['epoch_time']:.2f}x plain (in-process "
        f"{default['in_process_ratio_wall']:.2f} wall, {default['in_process_ratio_cpu']:.2f} CPU; target <= 1.5), "
        f"peak RSS {default['peak_rss_mb'] / plain['peak_rss_mb']:.2f}x plain (target <= 1.3), cosine "
        f"{means['default']:.3f} vs reference {means['reference']:.3f} (target >=)"
    )
    print(
        f"ratios: default/reference epoch {default['epoch_time'] / reference_epoch:.3f}, hyper-step "
        f"{default['hyper_step_time'] / reference['hyper_step_time']:.4f}, peak RSS "
        f"{default['peak_rss_mb'] / reference['peak_rss_mb']:.3f}; section took {time.perf_counter() - start:.0f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", default="resnet32")
    parser.add_argument("--config", default="plain")
    parser.add_argument("--models", default="resnet32,mnist1d")
    parser.add_argument("--steps", type=int, default=100, help="weight steps of the reduced epoch")
    parser.add_argument("--reference-steps", type=int, default=20, help="weight steps of the ResNet reference run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--draws", type=int, default=3, help="hyper-batch draws in the cosine part")
    parser.add_argument("--accurate-iters", type=int, default=50, help="CG iteration cap of the high-accuracy solve")
    parser.add_argument("--target-batches", type=int, default=32, help="train batches of the high-accuracy solve")
    parser.add_argument("--cos-batch", type=int, default=BATCH, help="batch size of the engines' draws")
    parser.add_argument("--cos-batches", type=int, default=HYPER_BATCHES, help="train = held-out batches per draw")
    parser.add_argument("--subsets", action="store_true", help="add the head + BatchNorm-restricted engines (slow)")
    parser.add_argument("--state", default="", help=argparse.SUPPRESS)
    parser.add_argument("--search-seeds", default="", help="e.g. 0,1,2: run the MNIST-1D-LT search comparison instead")
    parser.add_argument("--search-presets", default="default,reference", help="autobalance configs compared")
    args = parser.parse_args()
    if args.search_seeds:
        torch.set_num_threads(args.threads)
        out = Path(tempfile.mkdtemp(prefix="hyperstep_search_"))
        search_compare([int(s) for s in args.search_seeds.split(",")], out, tuple(args.search_presets.split(",")))
        return
    if args.child:
        child(args)
        return
    print(
        f"# {Path(__file__).name}: {args.steps} weight steps per epoch, batch {BATCH}, hyper-step every {EVERY} "
        f"steps on {HYPER_BATCHES}+{HYPER_BATCHES} batches; {args.threads} threads; random data (see docstring)"
    )
    for model in args.models.split(","):
        with tempfile.TemporaryDirectory(prefix="hyperstep_bench_") as scratch:
            args.state = str(Path(scratch) / f"{model}.pt")  # the plain run's weights, for the cosine child
            section(args, model)


if __name__ == "__main__":
    main()
