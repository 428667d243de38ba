"""``AutoBalance``: the callback that tunes the training loss by hypergradient steps during ``trainer.fit``."""

from __future__ import annotations

import warnings
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor
from torch.optim import Optimizer

from lightning_autobalance.autobalance_checks import (
    check_compiled,
    check_module,
    check_schedule,
    check_search_data,
)
from lightning_autobalance.autobalance_checks import check_strategy as _check_strategy
from lightning_autobalance.autobalance_options import AutoBalanceOptions, HyperOptimizerFactory
from lightning_autobalance.data.split import resolve_seed
from lightning_autobalance.hyperstep import HyperStepContext, HyperStepEngine, LastLayer, make_engine
from lightning_autobalance.learned_loss import load_loss, save_loss
from lightning_autobalance.losses import ParametricCrossEntropy
from lightning_autobalance.mixin import AutoBalanceMixin
from lightning_autobalance.objectives import get_objective
from lightning_autobalance.options import keyword_signature, options_from
from lightning_autobalance.posthoc import adjust_logits, fit_logit_adjustment
from lightning_autobalance.protocols import SeededAugmentation, TrainBatchPolicy
from lightning_autobalance.update import UpdateResult, apply_hypergradient

__all__ = ["AutoBalance", "AutoBalanceOptions", "HyperOptimizerFactory"]

STATE_VERSION = 1


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
    __signature__ = keyword_signature(AutoBalanceOptions)  # the flat keywords, for help() and inspect.signature

    def __init__(self, **options: Any) -> None:
        super().__init__()
        self.options: AutoBalanceOptions = options_from(AutoBalanceOptions, "AutoBalance", options)
        o = self.options
        self.preset, self.learn, self.tau, self.gamma = o.preset, o.learn, o.tau, o.gamma
        self.block_size, self.delta_parameterization, self.initial_loss = o.block_size, o.delta_parameterization, o.loss
        self.objective = get_objective(o.objective)
        self.warmup_epochs, self.every_n_steps = o.warmup_epochs, o.every_n_steps
        self.train_batches, self.heldout_batches, self.batch_size = o.train_batches, o.heldout_batches, o.batch_size
        self.hyper_optimizer_factory: HyperOptimizerFactory = o.hyper_optimizer or partial(
            torch.optim.Adam, lr=o.hyper_lr
        )
        self.solver = o.solver
        self.engine: HyperStepEngine = make_engine(o.engine, o.solver, cache_size=o.train_batches)
        self.export_path = None if o.export_path is None else Path(o.export_path)
        self.seed = o.seed  # None: resolved at setup from seed_everything's seed (or 0)
        self.check_sync = o.check_sync
        self.max_hypergrad_norm = None if o.max_hypergrad_norm is None else float(o.max_hypergrad_norm)
        self.bounds = {k: (float(lo), float(hi)) for k, (lo, hi) in (o.bounds or {}).items()}
        self.posthoc = o.posthoc
        self.posthoc_tau: float | None = None

        self.loss: ParametricCrossEntropy | None = None
        self.hyper_optimizer: Optimizer | None = None
        self.hyper_steps = 0
        self.skipped_steps = 0
        self.last_skip_cause = ""
        self.clipped_steps = 0
        self.run_seed = 0 if o.seed is None else o.seed
        self.exported_path: Path | None = None
        self._pending_state: dict[str, Any] | None = None
        self._last_step = -1

    __init__.__signature__ = keyword_signature(AutoBalanceOptions, ("self",))  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ set-up
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Check the module and data, install the tunable loss and create the hyper-optimizer."""
        if stage != "fit":
            return
        check_module(pl_module)
        _check_strategy(trainer)
        datamodule = check_search_data(trainer.datamodule, self.objective, self.posthoc)
        check_schedule(trainer.max_epochs, self.warmup_epochs)
        self.run_seed = resolve_seed(self.seed)
        if self.loss is None:
            self.loss = self.options.starting_loss(datamodule)
            if isinstance(self.loss, SeededAugmentation):
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
        check_compiled(pl_module, self.engine, all_weights)

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

    def hyper_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> bool:
        """One hyper-step; returns whether α was updated.

        Under DDP every process computes on its share of the global hyper-batches; held-out logits are gathered
        (with autograd) so the objective is the one of the union, and ∇_θ objective, every Hessian-vector product and
        the hypergradient are averaged across processes. The result equals a single process on the same global batches.

        The step is skipped (False; warned about and counted in ``skipped_steps``) when the hypergradient is not
        finite, or when the hyper-optimizer step makes α non-finite (α and the optimizer state are then restored). The
        hypergradient and α are identical on every process, so every process takes the same decision. Otherwise the
        hypergradient is clipped to ``max_hypergrad_norm`` and α projected into ``bounds`` (when configured); see
        :func:`~lightning_autobalance.update.apply_hypergradient`.
        """
        assert self.loss is not None and self.hyper_optimizer is not None
        seed = self.run_seed * 1_000_003 + self.hyper_steps
        context = self._context(trainer, pl_module, torch.Generator().manual_seed(seed))
        # the personalized augmentation draws the same noise / partners every time the engine evaluates a batch
        self.loss.train(pl_module.training)  # the inner loss is the training loss (augmentation on)
        seeded = isinstance(self.loss, SeededAugmentation)
        draws = self.loss.fixed_augmentation(seed=seed) if seeded else nullcontext()
        with torch.inference_mode(False), torch.enable_grad(), draws:
            result = self.engine(context)
        update = apply_hypergradient(
            self.loss,
            self.hyper_optimizer,
            result.grads,
            outer=result.outer,
            max_norm=self.max_hypergrad_norm,
            bounds=self.bounds,
        )
        self.clipped_steps += int(update.clipped)
        if not update.applied:
            self._report_skip(trainer, update)
            return False
        self.hyper_steps += 1
        if self.check_sync and trainer.world_size > 1:
            self._check_identical_across_processes(trainer)
        metrics = {
            "autobalance/objective": float(result.outer),
            "autobalance/hypergrad_norm": update.grad_norm,
            "autobalance/hyper_steps": float(self.hyper_steps),
            "autobalance/skipped_steps": float(self.skipped_steps),
        }
        if self.max_hypergrad_norm is not None:
            metrics["autobalance/clipped_steps"] = float(self.clipped_steps)
        metrics.update(self.current_values())
        self._log(trainer, metrics)
        return True

    def _context(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, generator: torch.Generator
    ) -> HyperStepContext:
        """The hyper-batches of this step (drawn with ``generator``) and how to average across processes."""
        assert self.loss is not None
        draw = partial(  # this process's share of the global batches (HeldOutSplit.sample_batches), on its device
            self._datamodule.sample_batches,
            generator=generator,
            batch_size=self.batch_size,
            world_size=trainer.world_size,
            rank=trainer.global_rank,
            to_device=trainer.strategy.batch_to_device,
        )
        reuses_batches = isinstance(self.engine, TrainBatchPolicy) and not self.engine.needs_train_batches(
            pl_module, self.loss
        )
        if not reuses_batches:
            train, num_train = draw(self._datamodule.train_dataset, self.train_batches)
        else:  # the engine reuses the batches of recent weight steps
            train, num_train = [], trainer.world_size
        heldout, _ = draw(self._datamodule.heldout_dataset, self.heldout_batches)
        world = trainer.world_size

        def average(tensor: Tensor) -> Tensor:
            return trainer.strategy.reduce(tensor, reduce_op="mean")

        return HyperStepContext(
            module=pl_module,
            loss=self.loss,
            objective=self.objective,
            train=train,
            heldout=heldout,
            train_weight=world / num_train,  # averaged over processes: the mean over all global batches
            reduce=average,
            gather=gather_across_processes if world > 1 else None,
        )

    def _report_skip(self, trainer: pl.Trainer, update: UpdateResult) -> None:
        """Count a refused hyper-step, warn why and log the count."""
        self.skipped_steps += 1
        if update.broken:
            rank_zero_warn(
                f"AutoBalance: the hyper-optimizer step made {', '.join(update.broken)} non-finite at step "
                f"{trainer.global_step}; α and the hyper-optimizer state were restored and the hyper-step skipped "
                f"({self.skipped_steps} so far). Lower the hyper-optimizer's lr, or set max_hypergrad_norm / bounds."
            )
        else:
            self.last_skip_cause = update.cause
            rank_zero_warn(
                f"AutoBalance: non-finite hypergradient at step {trainer.global_step}; hyper-step skipped "
                f"({self.skipped_steps} so far): {update.cause}."
            )
        self._log(trainer, {"autobalance/skipped_steps": float(self.skipped_steps)})

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
        if isinstance(self.loss, SeededAugmentation):
            self.loss.augmentation_seed = self.run_seed


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
