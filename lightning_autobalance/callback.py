"""``AutoBalance``: the callback that tunes the training loss by hypergradient steps during ``trainer.fit``."""

from __future__ import annotations

import copy
import math
import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor
from torch._dynamo import OptimizedModule  # what torch.compile(module) returns (Lightning imports it so too)
from torch.optim import Optimizer

from lightning_autobalance.data.split import HeldOutSplit, check_seed, resolve_seed
from lightning_autobalance.hypergrad import LinearSolver
from lightning_autobalance.hyperstep import HyperStepContext, HyperStepEngine, LastLayer, make_engine
from lightning_autobalance.learned_loss import load_loss, save_loss
from lightning_autobalance.losses import HPARAM_KINDS, PRESETS, ParametricCrossEntropy
from lightning_autobalance.mixin import AutoBalanceMixin
from lightning_autobalance.objectives import Objective, balanced_cross_entropy, get_objective
from lightning_autobalance.posthoc import adjust_logits, fit_logit_adjustment

__all__ = ["AutoBalance"]

STATE_VERSION = 1
HyperOptimizerFactory = Callable[[Iterable[Tensor]], Optimizer]


class AutoBalance(Callback):
    r"""Tune the loss hyperparameters α = (Δ, ι, ω) of an :class:`AutoBalanceMixin` module during ``trainer.fit``.

    The search phase of AutoBalance (docs/references.md §1): ordinary weight steps on the train split, and every
    ``every_n_steps`` weight steps after ``warmup_epochs`` a *hyper-step*: the implicit-function-theorem
    hypergradient of the held-out ``objective`` with respect to α, averaged over ``train_batches`` fresh train batches
    (inner loss) and ``heldout_batches`` held-out batches (objective), is averaged across processes and applied by the
    hyper-optimizer. At the end of fit the learned loss is written to a YAML file (:func:`load_loss` reads it back).

    The datamodule must be a :class:`~lightning_autobalance.data.HeldOutSplit`. The state (α, hyper-optimizer,
    counters) is saved in checkpoints, so a resumed run continues exactly. Under DDP every process holds the same α
    (checked after each hyper-step when ``check_sync``). With ``strategy="ddp_spawn"`` the search runs in spawned
    processes, so the calling process learns α only through the exported file: read it with :func:`load_loss`.

    Args:
        preset: initial loss, one of ``ce``, ``weighted``, ``la``, ``cdt``, ``vs`` (ignored if ``loss`` is given),
            computed from the training split's counts; with groups, each group's row from its (group, class) counts
            (see :meth:`ParametricCrossEntropy.from_preset`).
        learn: which kinds to tune: any of ``"delta"``, ``"iota"``, ``"omega"`` and the personalized augmentation
            strengths ``"noise"``, ``"mix"`` (see :class:`ParametricCrossEntropy`).
        tau: τ of the ``la`` / ``vs`` presets.
        gamma: γ of the ``cdt`` / ``vs`` presets.
        block_size: classes (sorted by frequency) that share one parameter.
        delta_parameterization: ``"sigmoid"`` (bounded, default) or ``"exp"``.
        loss: a ready :class:`ParametricCrossEntropy` to tune instead of a preset.
        objective: ``"balanced"`` or a callable ``(logits, targets, groups) -> scalar`` on held-out batches.
        warmup_epochs: epochs with α frozen before the first hyper-step (the Trainer's ``max_epochs`` must exceed
            it).
        every_n_steps: weight steps between hyper-steps.
        train_batches: train batches averaged in the inner loss of a hyper-step.
        heldout_batches: held-out batches averaged in the objective (capped by the size of the held-out split).
        batch_size: batch size of the hyper-step batches (None: the training loader's).
        hyper_optimizer: factory ``params -> Optimizer`` (default Adam with ``hyper_lr``).
        hyper_lr: learning rate of the default hyper-optimizer.

            The defaults of the schedule and the hyper-optimizer (warm-up 10 epochs, a hyper-step every 10 weight
            steps on 2 + 2 batches of 256, Adam with learning rate 0.01) are those of the command-line app's
            ``conf/autobalance/default.yaml``, the configuration behind every number in the README.
        engine: how a hyper-step computes the hypergradient (:mod:`lightning_autobalance.hyperstep`):
            ``"default"`` (= ``"last_layer"``: the inverse restricted to the last layer, an exact small solve over
            features of the drawn hyper-batches computed without a graph through the body — about one no-grad forward
            pass per hyper-batch; DDP-exact and resume-exact like ``"full"``; needs ``autobalance_features(x)`` /
            ``autobalance_head()`` on the module and falls back to ``"full"`` with a one-time warning),
            ``"full"`` (all weights, streamed batches, JVP mixed term, Hessian curvature), ``"gauss_newton"`` (the
            same with the Gauss-Newton product), ``"reference"`` (the reference procedure: full Hessian, Neumann 5
            terms step 1, all graphs held), or an engine object (e.g. ``LastLayer(train_features="cached")``, cheaper
            but not resume-exact).
        solver: how H⁻¹ is applied inside the engine (default: the engine's own — ``Exact(damping=0.1)`` on the
            head, ``ConjugateGradient(iters=10, damping=0.1)`` for ``full``, ``Neumann(terms=5, alpha=1.0)`` for
            ``reference``).
        export_path: where to write the learned loss (default ``<log_dir>/autobalance_loss.yaml``).
        seed: seed of the hyper-step batch draws and of the augmentation draws (None: the seed given to
            ``seed_everything``, or 0 without one).
        check_sync: under DDP, verify after every hyper-step that α is identical on all processes (two tiny
            all-reduces).
        max_hypergrad_norm: clip the Euclidean norm of the (flattened) hypergradient to this value before the
            hyper-optimizer step (default None: no clipping). ``autobalance/hypergrad_norm`` logs the norm before
            clipping and ``autobalance/clipped_steps`` counts the clipped steps.
        bounds: box constraints on the learned values, ``{kind: (low, high)}`` in the units of Δ, ι, ω, σ, m (what
            ``autobalance/<kind>/c<k>`` logs), e.g. ``{"iota": (-5.0, 5.0), "omega": (0.1, 10.0)}``; after every
            hyper-step the values are projected into the box. Each kind must be learned; Δ, ω, σ, m are positive, so
            their ``low`` must be ≥ 0. Default None: unbounded (Δ stays below ``delta_max`` by its parameterisation).
        posthoc: at the end of fit, also fit a post-hoc logit adjustment on the whole held-out split: the τ that
            minimises the balanced cross-entropy of the search model's ``logits − τ·log π`` (π the train split's
            prior; :func:`~lightning_autobalance.posthoc.fit_logit_adjustment`). The loss then carries the shift
            ``−τ·log π`` in ``prediction_shift``: the mixin's metrics predict with it, the learned-loss file stores
            it and a retrained model loading the file predicts with it (the training loss is unchanged). For the
            ``balanced`` objective without groups only.

    A hyper-step is skipped with a warning (and counted in ``autobalance/skipped_steps``) when the hypergradient is
    not finite, or when the hyper-optimizer step makes α non-finite: α and the hyper-optimizer state are then restored
    to their values before the step.

    Example:
        >>> callback = AutoBalance(preset="la", learn=("delta", "iota"), warmup_epochs=2, every_n_steps=20)
        >>> callback.every_n_steps
        20
    """

    load_loss = staticmethod(load_loss)

    def __init__(
        self,
        *,
        preset: str = "ce",
        learn: Sequence[str] = ("delta", "iota"),
        tau: float = 1.0,
        gamma: float = 0.3,
        block_size: int = 1,
        delta_parameterization: str = "sigmoid",
        loss: ParametricCrossEntropy | None = None,
        objective: str | Objective = "balanced",
        warmup_epochs: int = 10,
        every_n_steps: int = 10,
        train_batches: int = 2,
        heldout_batches: int = 2,
        batch_size: int | None = 256,
        hyper_optimizer: HyperOptimizerFactory | None = None,
        hyper_lr: float = 0.01,
        engine: str | HyperStepEngine = "default",
        solver: LinearSolver | None = None,
        export_path: str | os.PathLike[str] | None = None,
        seed: int | None = None,
        check_sync: bool = True,
        max_hypergrad_norm: float | None = None,
        bounds: Mapping[str, Sequence[float]] | None = None,
        posthoc: bool = False,
    ) -> None:
        super().__init__()
        if loss is None and preset not in PRESETS:
            raise ValueError(f"Unknown loss preset {preset!r}: choose one of {', '.join(PRESETS)}.")
        learn = (learn,) if isinstance(learn, str) else tuple(learn)  # a single name is accepted
        if loss is None and (not learn or set(learn) - set(HPARAM_KINDS)):
            raise ValueError(f"learn must name at least one of {', '.join(HPARAM_KINDS)}, got {list(learn)}.")
        if loss is not None and not loss.learnable:
            raise ValueError(
                "The loss passed to AutoBalance has nothing learnable (learnable=()): build it with learnable=[...], "
                "e.g. ParametricCrossEntropy(num_classes, learnable=['delta', 'iota'])."
            )
        for name, value, minimum in (
            ("warmup_epochs", warmup_epochs, 0),
            ("every_n_steps", every_n_steps, 1),
            ("train_batches", train_batches, 1),
            ("heldout_batches", heldout_batches, 1),
            ("block_size", block_size, 1),
        ):
            if not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an integer ≥ {minimum}, got {value!r}.")
        if batch_size is not None and (
            isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
        ):
            raise ValueError(
                f"batch_size must be an integer ≥ 1, or None for the training loader's, got {batch_size!r}."
            )
        if isinstance(hyper_lr, bool) or not isinstance(hyper_lr, (int, float)) or not 0 < hyper_lr < math.inf:
            raise ValueError(f"hyper_lr must be a positive number, got {hyper_lr!r}: e.g. hyper_lr=0.01.")
        if max_hypergrad_norm is not None and (
            isinstance(max_hypergrad_norm, bool)
            or not isinstance(max_hypergrad_norm, (int, float))
            or not 0 < max_hypergrad_norm < math.inf
        ):
            raise ValueError(
                f"max_hypergrad_norm must be a finite positive number (e.g. 1.0) or None for no clipping, got "
                f"{max_hypergrad_norm!r}."
            )
        learned = loss.learnable if loss is not None else learn
        if bounds is not None and not isinstance(bounds, Mapping):
            raise TypeError(f"bounds must be a dict {{kind: (low, high)}} such as {{'iota': (-5, 5)}}, got {bounds!r}.")
        for kind, pair in (bounds or {}).items():
            if kind not in learned:
                raise ValueError(
                    f"bounds names {kind!r}, which this AutoBalance does not learn (learn={list(learned)}): use one of "
                    f"{', '.join(map(repr, learned))} or add {kind!r} to learn."
                )
            if (
                not isinstance(pair, Sequence)
                or isinstance(pair, str)
                or len(pair) != 2
                or any(isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v) for v in pair)
                or not pair[0] < pair[1]
            ):
                raise ValueError(
                    f"bounds[{kind!r}] must be a pair (low, high) of numbers with low < high (±inf allowed), got "
                    f"{pair!r}: e.g. bounds={{{kind!r}: (-5.0, 5.0)}}."
                )
            if kind != "iota" and pair[0] < 0:
                raise ValueError(
                    f"bounds[{kind!r}] = {tuple(pair)!r} has a negative low, but {kind} is positive: use a low ≥ 0 "
                    f"(0 for no lower bound), e.g. (0, {pair[1]})."
                )
        self.preset, self.learn, self.tau, self.gamma = preset, learn, tau, gamma
        self.block_size, self.delta_parameterization, self.initial_loss = block_size, delta_parameterization, loss
        self.objective = get_objective(objective)
        self.warmup_epochs, self.every_n_steps = warmup_epochs, every_n_steps
        self.train_batches, self.heldout_batches, self.batch_size = train_batches, heldout_batches, batch_size
        self.hyper_optimizer_factory = hyper_optimizer or partial(torch.optim.Adam, lr=hyper_lr)
        self.solver = solver
        self.engine: HyperStepEngine = make_engine(engine, solver, cache_size=train_batches)
        self.export_path = None if export_path is None else Path(export_path)
        check_seed("AutoBalance", seed)
        self.seed = seed  # None: resolved at setup from seed_everything's seed (or 0)
        self.check_sync = check_sync
        self.max_hypergrad_norm = None if max_hypergrad_norm is None else float(max_hypergrad_norm)
        self.bounds = {k: (float(lo), float(hi)) for k, (lo, hi) in (bounds or {}).items()}
        if not isinstance(posthoc, bool):
            raise TypeError(f"posthoc must be True or False, got {posthoc!r}.")
        if posthoc and self.objective is not balanced_cross_entropy:
            raise ValueError(
                f"posthoc=True fits a logit adjustment for the balanced error, but the objective is {objective!r}: "
                "use objective='balanced' or posthoc=False."
            )
        self.posthoc = posthoc
        self.posthoc_tau: float | None = None

        self.loss: ParametricCrossEntropy | None = None
        self.hyper_optimizer: Optimizer | None = None
        self.hyper_steps = 0
        self.skipped_steps = 0
        self.last_skip_cause = ""
        self.clipped_steps = 0
        self.run_seed = 0 if seed is None else seed
        self.exported_path: Path | None = None
        self._pending_state: dict[str, Any] | None = None
        self._last_step = -1

    # ------------------------------------------------------------------ set-up
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Check the module and data, install the tunable loss and create the hyper-optimizer."""
        if stage != "fit":
            return
        if not isinstance(pl_module, AutoBalanceMixin):
            raise TypeError(
                f"AutoBalance needs a LightningModule with AutoBalanceMixin, got {type(pl_module).__name__}: declare "
                f"`class {type(pl_module).__name__}(AutoBalanceMixin, LightningModule)` and compute the training "
                "loss with `self.autobalance_loss(logits, y)`."
            )
        _check_strategy(trainer)
        datamodule = trainer.datamodule
        if not isinstance(datamodule, HeldOutSplit):
            raise TypeError(
                "AutoBalance tunes the loss on a held-out split of the training data: pass the datamodule wrapped as "
                "`trainer.fit(model, datamodule=HeldOutSplit(datamodule, fraction=0.2))`"
                f" (got {type(datamodule).__name__})."
            )
        if getattr(self.objective, "requires_groups", False) and datamodule.num_groups == 1:
            raise ValueError(
                f"The objective {type(self.objective).__name__} needs group labels, but the training data has none: "
                "return (x, y, g) batches (or a data set with a `groups` attribute), or use objective='balanced'."
            )
        if getattr(self.objective, "requires_groups", False):
            missing = torch.nonzero(datamodule.heldout_group_class_counts.sum(1) == 0).flatten().tolist()
            if missing:
                raise ValueError(
                    f"Groups {missing} have no held-out sample, so {type(self.objective).__name__} cannot see them: "
                    f"group labels must be 0..{datamodule.num_groups - 1} with every group present (renumber them), "
                    "or add samples of these groups."
                )
        if self.posthoc and datamodule.num_groups > 1:
            raise ValueError(
                f"posthoc=True fits one logit adjustment for the balanced error, but the data has "
                f"{datamodule.num_groups} groups: use posthoc=False with group objectives."
            )
        absent = torch.nonzero(datamodule.heldout_class_counts == 0).flatten().tolist()
        if absent:
            raise ValueError(
                f"Classes {absent} have no held-out sample, so the held-out objective cannot see them: add samples "
                "of these classes, raise the HeldOutSplit fraction, or set num_classes to the classes present."
            )
        self._check_schedule(trainer)
        self.run_seed = resolve_seed(self.seed)
        if self.loss is None:
            self.loss = self._build_loss(datamodule)
            if hasattr(self.loss, "augmentation_seed"):
                self.loss.augmentation_seed = self.run_seed  # training-time augmentation draws follow the run's seed
        self._warn_if_replacing(pl_module)
        pl_module.autobalance_loss = self.loss
        self.loss = pl_module.autobalance_loss  # moved to the module's device
        self.hyper_optimizer = self.hyper_optimizer_factory(list(self.loss.hparams().values()))
        self._datamodule = datamodule
        if self._pending_state is not None:
            self._apply_state(self._pending_state)
            self._pending_state = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Decide the engine for this module once its own ``setup`` ran (where projects compile their networks).

        The last-layer engine without the feature hook warns here, before training, that it falls back to all
        weights; an engine over all weights refuses a ``torch.compile``-d submodule (its hyper-steps call the
        network with substituted weights, which a compiled module does not support).
        """
        all_weights = not isinstance(self.engine, LastLayer) or self.engine.uses_fallback(pl_module)
        compiled = [name for name, module in pl_module.named_modules() if isinstance(module, OptimizedModule)]
        if all_weights and compiled:
            raise ValueError(
                f"AutoBalance: {type(pl_module).__name__} has torch.compile-d submodules ({', '.join(compiled)}), but "
                f"the hyper-step engine {type(self.engine).__name__} differentiates the whole network with substituted "
                "weights, which compiled modules do not support. Define `autobalance_features(x)` and "
                "`autobalance_head()` on the module so the default last-layer engine runs (it works with compiled "
                "networks), or do not compile during the search (e.g. model.compile=false) and compile for retraining."
            )

    def _check_schedule(self, trainer: pl.Trainer) -> None:
        """Refuse a fit that ends before the first hyper-step (the 'learned' loss would be the initial one)."""
        max_epochs = trainer.max_epochs
        if max_epochs is not None and max_epochs >= 0 and max_epochs <= self.warmup_epochs:
            raise ValueError(
                f"AutoBalance(warmup_epochs={self.warmup_epochs}) keeps α frozen for the first {self.warmup_epochs} "
                f"epochs, but the Trainer stops after max_epochs={max_epochs}: no hyper-step would run and the "
                f"exported loss would be the initial one. Lower warmup_epochs (e.g. AutoBalance(warmup_epochs="
                f"{max(0, max_epochs // 3)})) or raise the Trainer's max_epochs above {self.warmup_epochs}."
            )

    def _warn_if_replacing(self, pl_module: AutoBalanceMixin) -> None:
        """Warn when installing the search's loss replaces a loss that is not plain cross-entropy."""
        if not pl_module.has_autobalance_loss:
            return
        current = pl_module.autobalance_loss
        if current is self.loss or (isinstance(current, ParametricCrossEntropy) and current.is_plain_cross_entropy):
            return
        rank_zero_warn(
            f"AutoBalance replaces the loss already on {type(pl_module).__name__} ({type(current).__name__}, not plain "
            "cross-entropy) with the search's starting loss "
            f"({'the loss= given' if self.initial_loss is not None else f'preset {self.preset!r}'}). To search from "
            "your loss, pass a learnable copy: AutoBalance(loss=ParametricCrossEntropy(K, delta=old.delta(), "
            "iota=old.iota(), learnable=['delta', 'iota'])); to retrain with a learned loss, do not add the callback.",
            category=UserWarning,
        )

    def _build_loss(self, datamodule: HeldOutSplit) -> ParametricCrossEntropy:
        if self.initial_loss is not None:
            if self.initial_loss.num_classes != datamodule.num_classes:
                raise ValueError(
                    f"The loss given to AutoBalance has num_classes={self.initial_loss.num_classes} but the data has "
                    f"{datamodule.num_classes} classes."
                )
            return self.initial_loss
        # The training split's (group, class) counts: each group's row starts at the preset of its own cells (with
        # one group this is the class preset).
        cells = datamodule.group_class_counts
        empty = torch.nonzero(cells == 0).tolist()
        if self.preset != "ce" and empty:
            raise ValueError(
                f"Preset {self.preset!r} starts each (group, class) cell from its training count, but the cells "
                f"(group, class) {empty} have no training sample: use preset='ce', merge the empty groups, or pass "
                f"loss=ParametricCrossEntropy.from_preset({self.preset!r}, class_counts, "
                f"num_groups={datamodule.num_groups}) to start every group from the class preset."
            )
        return ParametricCrossEntropy.from_preset(
            self.preset,
            group_counts=cells.tolist(),
            tau=self.tau,
            gamma=self.gamma,
            learnable=self.learn,
            block_size=self.block_size,
            delta_parameterization=self.delta_parameterization,  # type: ignore[arg-type]
        )

    # ------------------------------------------------------------------ schedule
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Run a hyper-step every ``every_n_steps`` weight steps once the warm-up is over."""
        step = trainer.global_step
        if trainer.current_epoch < self.warmup_epochs or step == 0 or step % self.every_n_steps:
            return
        if self._last_step == step:  # gradient accumulation: one hyper-step per optimizer step
            return
        self._last_step = step
        self.hyper_step(trainer, pl_module)

    def _draw_batches(
        self, dataset: Any, count: int, generator: torch.Generator, trainer: pl.Trainer
    ) -> tuple[list[Any], int]:
        """This process's share of ``count`` global batches drawn with ``generator`` (the same on every process).

        Global batch ``b`` goes whole to process ``b mod world_size``, so the union over processes is exactly the draw
        of a single process and no sample enters the objective twice.
        """
        template = self._datamodule._template
        batch_size = self.batch_size or template.batch_size or 1
        total = min(len(dataset), count * batch_size)
        order = torch.randperm(len(dataset), generator=generator)[:total]
        world, rank = trainer.world_size, trainer.global_rank
        # nearly equal batches, so a remainder never makes a tiny batch (BatchNorm rejects a batch of one)
        chunks = torch.tensor_split(order, max(world, math.ceil(total / batch_size)))
        return [
            trainer.strategy.batch_to_device(template.collate_fn([dataset[i] for i in chunk.tolist()]))
            for chunk in chunks[rank::world]
        ], len(chunks)

    def hyper_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> bool:
        """One hyper-step; returns whether α was updated.

        Under DDP every process computes on its share of the global hyper-batches; held-out logits are gathered
        (with autograd) so the objective is the one of the union, and ∇_θ objective, every Hessian-vector product and
        the hypergradient are averaged across processes. The result equals a single process on the same global batches.

        The step is skipped (False; warned about and counted in ``skipped_steps``) when the hypergradient is not
        finite, or when the hyper-optimizer step makes α non-finite (α and the optimizer state are then restored). The
        hypergradient and α are identical on every process, so every process takes the same decision. Otherwise the
        hypergradient is clipped to ``max_hypergrad_norm`` and α projected into ``bounds`` (when configured).
        """
        assert self.loss is not None and self.hyper_optimizer is not None
        generator = torch.Generator().manual_seed(self.run_seed * 1_000_003 + self.hyper_steps)
        needs_train = getattr(self.engine, "needs_train_batches", None)
        if needs_train is None or needs_train(pl_module, self.loss):
            train, num_train = self._draw_batches(
                self._datamodule.train_dataset, self.train_batches, generator, trainer
            )
        else:  # the engine reuses the batches of recent weight steps
            train, num_train = [], trainer.world_size
        heldout, _ = self._draw_batches(self._datamodule.heldout_dataset, self.heldout_batches, generator, trainer)
        world = trainer.world_size

        loss_module = self.loss

        def average(tensor: Tensor) -> Tensor:
            return trainer.strategy.reduce(tensor, reduce_op="mean")

        context = HyperStepContext(
            module=pl_module,
            loss=loss_module,
            objective=self.objective,
            train=train,
            heldout=heldout,
            train_weight=world / num_train,  # averaged over processes: the mean over all global batches
            reduce=average,
            gather=gather_across_processes if world > 1 else None,
        )
        # the personalized augmentation draws the same noise / partners every time the engine evaluates a batch
        loss_module.train(pl_module.training)  # the inner loss is the training loss (augmentation on)
        fixed = getattr(loss_module, "fixed_augmentation", None)
        draws = nullcontext() if fixed is None else fixed(seed=self.run_seed * 1_000_003 + self.hyper_steps)
        with torch.inference_mode(False), torch.enable_grad(), draws:
            result = self.engine(context)
        names = list(result.grads)
        flat = torch.cat([result.grads[n].reshape(-1) for n in names])
        outer_value = result.outer
        if not torch.isfinite(flat).all():
            self.skipped_steps += 1
            if not torch.isfinite(torch.as_tensor(outer_value)).all():
                cause = "the held-out objective itself is not finite: check the held-out inputs and labels for NaN/inf"
            else:
                cause = "lower the hyper-learning rate or raise the solver's damping if this repeats"
            self.last_skip_cause = cause
            rank_zero_warn(
                f"AutoBalance: non-finite hypergradient at step {trainer.global_step}; hyper-step skipped "
                f"({self.skipped_steps} so far): {cause}."
            )
            self._log(trainer, {"autobalance/skipped_steps": float(self.skipped_steps)})
            return False
        grad_norm = flat.norm()  # logged before clipping
        if self.max_hypergrad_norm is not None and grad_norm > self.max_hypergrad_norm:
            flat = flat * (self.max_hypergrad_norm / grad_norm)
            self.clipped_steps += 1
        hparams = loss_module.hparams()
        offset = 0
        for name in names:
            param = hparams[name]
            param.grad = flat[offset : offset + param.numel()].view_as(param).clone()
            offset += param.numel()
        # α and the optimizer state before the step, to undo a step that makes α non-finite (α is small)
        previous = {name: param.detach().clone() for name, param in hparams.items()}
        previous_state = copy.deepcopy(self.hyper_optimizer.state_dict())
        self.hyper_optimizer.step()
        self.hyper_optimizer.zero_grad(set_to_none=True)
        # finite before, non-finite after (a raw -inf is an augmentation that is off, not a fault)
        broken = [n for n, p in hparams.items() if (torch.isfinite(previous[n]) & ~torch.isfinite(p.detach())).any()]
        if broken:
            with torch.no_grad():
                for name, param in hparams.items():
                    param.copy_(previous[name])
            self.hyper_optimizer.load_state_dict(previous_state)
            self.skipped_steps += 1
            rank_zero_warn(
                f"AutoBalance: the hyper-optimizer step made {', '.join(broken)} non-finite at step "
                f"{trainer.global_step}; α and the hyper-optimizer state were restored and the hyper-step skipped "
                f"({self.skipped_steps} so far). Lower the hyper-optimizer's lr, or set max_hypergrad_norm / bounds."
            )
            self._log(trainer, {"autobalance/skipped_steps": float(self.skipped_steps)})
            return False
        if self.bounds:
            loss_module.project_(self.bounds)  # the box in raw units, within the parameterisation's range
        self.hyper_steps += 1
        if self.check_sync and world > 1:
            self._check_identical_across_processes(trainer)
        metrics = {
            "autobalance/objective": float(outer_value),
            "autobalance/hypergrad_norm": float(grad_norm),
            "autobalance/hyper_steps": float(self.hyper_steps),
            "autobalance/skipped_steps": float(self.skipped_steps),
        }
        if self.max_hypergrad_norm is not None:
            metrics["autobalance/clipped_steps"] = float(self.clipped_steps)
        metrics.update(self.current_values())
        self._log(trainer, metrics)
        return True

    def _check_identical_across_processes(self, trainer: pl.Trainer) -> None:
        """Fail loudly if α differs between processes (one small all-reduce of min and max)."""
        assert self.loss is not None
        flat = torch.cat([p.detach().reshape(-1) for p in self.loss.hparams().values()])
        low = trainer.strategy.reduce(-flat.clone(), reduce_op="max")
        high = trainer.strategy.reduce(flat.clone(), reduce_op="max")
        if not torch.equal(-low, high):
            raise RuntimeError(
                f"AutoBalance: the loss hyperparameters differ across processes after hyper-step {self.hyper_steps} "
                f"(largest gap {float((high + low).max()):.3g}). Every process must run every hyper-step; do not "
                "change α on one rank only."
            )

    @staticmethod
    def _log(trainer: pl.Trainer, metrics: dict[str, float]) -> None:
        """Send the metrics of one hyper-step straight to the loggers (as LearningRateMonitor does)."""
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)

    def current_values(self) -> dict[str, float]:
        """Learned Δ, ι, ω by stable names: ``autobalance/delta/c{k}`` (``g{g}_c{k}`` with several groups)."""
        assert self.loss is not None
        values: dict[str, float] = {}
        for kind in self.loss.learnable:
            table = getattr(self.loss, kind)().detach().cpu()
            for g in range(table.shape[0]):
                for k in range(table.shape[1]):
                    key = f"c{k}" if table.shape[0] == 1 else f"g{g}_c{k}"
                    values[f"autobalance/{kind}/{key}"] = float(table[g, k])
        return values

    # ------------------------------------------------------------------ export
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Write the learned loss to YAML (rank zero only)."""
        if self.loss is None:
            return
        path = self.export_path or Path(trainer.log_dir or trainer.default_root_dir) / "autobalance_loss.yaml"
        if self.posthoc:
            self.fit_posthoc(trainer, pl_module)
        reason = self.unlearned_reason(trainer)
        if reason is not None:
            rank_zero_warn(
                f"AutoBalance: NO hyper-step was taken, so the exported loss is the initial one, not a learned one: "
                f"{reason}",
                category=UserWarning,
            )
        if trainer.is_global_zero:
            metadata = {
                "hyper_steps": self.hyper_steps,
                "skipped_steps": self.skipped_steps,
                "global_step": trainer.global_step,
                "epoch": trainer.current_epoch,
                "learned": reason is None,
            }
            if reason is not None:
                metadata["not_learned_because"] = reason
            if self.posthoc_tau is not None:
                metadata["posthoc_tau"] = self.posthoc_tau
            save_loss(self.loss, path, metadata)
            rank_zero_info(f"AutoBalance: learned loss written to {path}")
        self.exported_path = Path(path)

    def unlearned_reason(self, trainer: pl.Trainer) -> str | None:
        """Why α never moved (no hyper-step taken), or None when at least one hyper-step was applied."""
        if self.hyper_steps > 0:
            return None
        if self.skipped_steps > 0:
            return (
                f"all {self.skipped_steps} hyper-steps were skipped because the hypergradient was not finite "
                f"({self.last_skip_cause})."
            )
        return (
            f"the fit ended at epoch {trainer.current_epoch} (global step {trainer.global_step}) before the first "
            f"hyper-step (warmup_epochs={self.warmup_epochs}, then one every every_n_steps={self.every_n_steps} "
            "weight steps): train for more epochs or lower warmup_epochs."
        )

    @torch.no_grad()
    def fit_posthoc(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> float:
        """Fit the post-hoc τ on the whole held-out split and install ``−τ·log π`` as the loss's prediction shift.

        Every process evaluates the whole held-out split with the same weights, so τ is identical on every rank.
        """
        assert self.loss is not None
        was_training = pl_module.training
        pl_module.eval()
        logits, targets = [], []
        try:
            for batch in self._datamodule.heldout_dataloader():
                out, y, _ = pl_module.autobalance_forward(trainer.strategy.batch_to_device(batch))
                logits.append(out.detach().float().cpu())
                targets.append(y.detach().cpu())
        finally:
            pl_module.train(was_training)
        counts = self._datamodule.class_counts
        tau = fit_logit_adjustment(torch.cat(logits), torch.cat(targets), counts)
        self.loss.set_prediction_shift(adjust_logits(torch.zeros(1, counts.numel()), counts, tau)[0])
        self.posthoc_tau = tau
        rank_zero_info(f"AutoBalance: post-hoc logit adjustment τ = {tau:.3f} fitted on the held-out split")
        self._log(trainer, {"autobalance/posthoc_tau": tau})
        return tau

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """α, the hyper-optimizer state and the counters (saved in Lightning checkpoints)."""
        if self.loss is None or self.hyper_optimizer is None:
            return self._pending_state or {}
        return {
            "version": STATE_VERSION,
            "loss": {k: v.detach().cpu().clone() for k, v in self.loss.state_dict().items()},
            "hyper_optimizer": self.hyper_optimizer.state_dict(),
            "hyper_steps": self.hyper_steps,
            "skipped_steps": self.skipped_steps,
            "clipped_steps": self.clipped_steps,
            "last_step": self._last_step,
            "seed": self.run_seed,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved (applied at ``setup`` if the loss does not exist yet)."""
        if not state_dict:
            return
        if state_dict.get("version") != STATE_VERSION:
            raise ValueError(
                f"This checkpoint holds AutoBalance state version {state_dict.get('version')!r}, this version reads "
                f"{STATE_VERSION}: resume with the lightning-autobalance version that wrote it."
            )
        if self.loss is None or self.hyper_optimizer is None:
            self._pending_state = state_dict
        else:
            self._apply_state(state_dict)

    def _apply_state(self, state: dict[str, Any]) -> None:
        assert self.loss is not None and self.hyper_optimizer is not None
        expected = {k: tuple(v.shape) for k, v in self.loss.state_dict().items()}
        saved = {k: tuple(v.shape) for k, v in state["loss"].items()}
        if expected != saved:
            raise ValueError(
                f"The checkpoint's AutoBalance loss has parameters {saved} but this run builds {expected}: resume "
                "with the same number of classes, groups, block size and learnable kinds."
            )
        self.loss.load_state_dict(state["loss"])
        self.hyper_optimizer.load_state_dict(state["hyper_optimizer"])
        self.hyper_steps = int(state["hyper_steps"])
        self.skipped_steps = int(state["skipped_steps"])
        self.clipped_steps = int(state.get("clipped_steps", 0))  # absent in checkpoints of earlier versions
        self._last_step = int(state.get("last_step", -1))
        # the seed the run started with (it may have come from seed_everything): a resumed run draws the same batches
        self.run_seed = int(state.get("seed", self.run_seed))
        if hasattr(self.loss, "augmentation_seed"):
            self.loss.augmentation_seed = self.run_seed


def _check_strategy(trainer: pl.Trainer) -> None:
    strategy = trainer.strategy
    supported = (
        isinstance(strategy, (SingleDeviceStrategy, DDPStrategy)) and "deepspeed" not in type(strategy).__name__.lower()
    )
    if not supported:
        raise ValueError(
            f"AutoBalance supports single-device training and the DDP strategies (ddp, ddp_spawn, "
            f"ddp_find_unused_parameters_*), not {type(strategy).__name__}: use `Trainer(strategy='ddp')`."
        )


def gather_across_processes(
    logits: Tensor, targets: Tensor, groups: Tensor | None
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Concatenate every process's held-out logits (differentiably), targets and groups, in rank order.

    Shards may differ in length: they are padded to the longest for the collective and cut back afterwards. The
    backward pass of the autograd all-gather sums the gradients of all processes, so each process's gradient is
    ``world_size`` times its share; averaging across processes (as :func:`hypergradient` does) gives the exact total.
    """
    import torch.distributed as dist
    import torch.distributed.nn.functional as dist_fn

    world = dist.get_world_size()
    sizes = [torch.zeros(1, dtype=torch.long, device=logits.device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([logits.shape[0]], device=logits.device))
    lengths = [int(n) for n in sizes]
    longest = max(lengths)

    def pad(x: Tensor) -> Tensor:
        return torch.cat([x, x.new_zeros((longest - x.shape[0], *x.shape[1:]))])

    def gather_labels(x: Tensor) -> Tensor:
        parts = [torch.empty_like(pad(x)) for _ in range(world)]
        dist.all_gather(parts, pad(x))
        return torch.cat([p[:n] for p, n in zip(parts, lengths, strict=True)])

    with warnings.catch_warnings():  # the autograd all-gather is deprecated in favour of a private API
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", UserWarning)
        gathered = dist_fn.all_gather(pad(logits))
    all_logits = torch.cat([p[:n] for p, n in zip(gathered, lengths, strict=True)])
    return all_logits, gather_labels(targets), None if groups is None else gather_labels(groups)
