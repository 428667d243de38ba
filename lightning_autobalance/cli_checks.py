"""Config checks before anything trains: the command-line app's pre-flight validation of its Hydra config.

:func:`check_config` runs at the top of :func:`lightning_autobalance.cli.run`, before the data are generated;
:func:`check_datamodule` runs right after ``datamodule.setup("fit")``, before the first phase trains (what only the
set-up data can tell: no training sample, labels that are not integer class indices, a group objective on data whose
groups are only known after set-up). :func:`check_plugins` runs in the console entry point before Hydra parses the
command line. Every error names the config key, the value given and what to change.

Choices recorded here:

* ``+trainer.max_epochs`` / ``+trainer.callbacks`` / ``+trainer.logger`` / ``+trainer.default_root_dir`` are rejected
  (not merged): the app sets them per phase (``train.max_epochs`` for baseline and retrain, ``search.max_epochs`` for
  the search; the AutoBalance callback; one CSV log per phase under the run directory).
* The ``llr`` phase refits the last layer on ``llr.dataloader`` = ``heldout`` (the split the app makes) or ``val``
  (the datamodule's validation set, which it must have); ``train`` (the backbone's own training data) and ``test``
  (selection on the test set) are refused. ``resample`` changes the baseline phase's training set only, so it needs
  the baseline phase.
* Input kinds: a model or data class may declare ``input_kind = "sequence"`` or ``"image"`` (class attribute); the
  package's own models and datamodules are listed in :data:`INPUT_KINDS`. Unknown classes are not checked.
"""

from __future__ import annotations

import importlib.util
import inspect
from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lightning_autobalance._checks import check_integer, is_finite_number, is_integer
from lightning_autobalance.objectives import requires_groups

__all__ = ["INPUT_KINDS", "check_config", "check_datamodule", "check_plugins"]

PHASES = ("baseline", "search", "retrain", "jtt", "llr")
LLR_LOADERS = ("heldout", "val")  # the llr phase's retraining sets

# `_target_` of the package's models and datamodules → the inputs they take / yield. A class of your own can declare
# a class attribute `input_kind` instead.
INPUT_KINDS: dict[str, str] = {
    "lightning_autobalance.models.MNIST1DConvNet": "sequence",
    "lightning_autobalance.models.ImageResNet": "image",
    "lightning_autobalance.models.CIFARResNet": "image",
    "lightning_autobalance.models.resnet32": "image",
    "lightning_autobalance.models.DigitsConvNet": "image",
    "lightning_autobalance.data.MNIST1DLongTail": "sequence",
    "lightning_autobalance.data.mnist1d_lt.MNIST1DLongTail": "sequence",
    "lightning_autobalance.data.SpuriousMNIST1D": "sequence",
    "lightning_autobalance.data.spurious.SpuriousMNIST1D": "sequence",
    "lightning_autobalance.data.CIFAR10LongTail": "image",
    "lightning_autobalance.data.CIFAR100LongTail": "image",
    "lightning_autobalance.data.cifar_lt.CIFAR10LongTail": "image",
    "lightning_autobalance.data.cifar_lt.CIFAR100LongTail": "image",
    "lightning_autobalance.data.waterbirds.Waterbirds": "image",
    "lightning_autobalance.data.celeba.CelebA": "image",
    "lightning_autobalance.data.SpuriousDigits": "image",
    "lightning_autobalance.data.spurious_digits.SpuriousDigits": "image",
}
_INPUT_SHAPES = {"sequence": "sequences (B, 1, length)", "image": "images (B, 3, H, W)"}
_MODEL_FOR = {"sequence": "model=mnist1d_cnn", "image": "model=resnet18 (or resnet50)"}

# Trainer arguments the app sets itself in every phase, and what to use instead.
_TRAINER_OWNED = {
    "max_epochs": "use train.max_epochs (baseline, retrain, llr, JTT's stage 2), search.max_epochs (search phase) and "
    "jtt.stage1_epochs",
    "callbacks": "drop +trainer.callbacks (the search phase adds the AutoBalance callback itself)",
    "logger": "drop +trainer.logger and choose the logger group: logger=csv (default) or logger=tensorboard",
    "default_root_dir": "drop +trainer.default_root_dir and set the run directory with hydra.run.dir",
}

# Integer fields of the data configs: (minimum, example); checked where the data config has them (null allowed).
_DATA_INTEGERS = {
    "batch_size": (1, 64),
    "test_per_class": (1, 300),
    "test_per_cell": (1, 250),
    "n_max": (1, 1000),
    "n_train": (1, 4000),
    "num_workers": (0, 2),
    "image_size": (1, 224),
    "crop_size": (1, 178),
}

# Command-line choices that need a Hydra plugin: (argument prefix, plugin module, pip package).
_PLUGINS = (
    ("hparams_search=", "hydra_plugins.hydra_optuna_sweeper", "hydra-optuna-sweeper"),
    ("hydra/sweeper=optuna", "hydra_plugins.hydra_optuna_sweeper", "hydra-optuna-sweeper"),
    ("hydra/launcher=slurm", "hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher"),
    ("hydra/launcher=submitit", "hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher"),
)


def _check_int(key: str, value: Any, minimum: int, example: str) -> None:
    check_integer(key, value, minimum, advice=f": e.g. {key}={example}")


def _locate(target: Any) -> Any:
    """The object a ``_target_`` names, or ``None`` when it cannot be imported (instantiation reports that)."""
    from hydra.utils import get_object

    try:
        return get_object(str(target))
    except Exception:  # any import failure: instantiate reports it
        return None


def _input_kind(node: DictConfig) -> str | None:
    target = node.get("_target_")
    if target is None:
        return None
    declared = getattr(_locate(target), "input_kind", None)
    return declared if declared in _INPUT_SHAPES else INPUT_KINDS.get(str(target))


def check_config(cfg: DictConfig) -> None:
    """Validate the app's config before anything is generated or trained; raise naming the key, value and fix.

    Checks ``phases``, ``seed``, ``threads``, ``learned_loss`` with ``phases``, the epoch counts, ``search`` and the
    ``autobalance`` schedule (a search that would run no hyper-step), ``jtt``, ``llr`` and ``resample`` for the
    phases that use them, the integer fields of ``data``, ``trainer`` keys the app sets itself, the input kinds of
    ``model`` and ``data``, and a group objective on data that declares no groups (class attribute ``num_groups``;
    otherwise :func:`check_datamodule` decides after set-up). It also builds the ``objective``, the ``autobalance``
    callback and the ``llr`` callback (cheap, nothing trained) so that their own argument checks fail now rather than
    after the baseline phase.

    Args:
        cfg: the composed config of ``conf/config.yaml``.

    Raises:
        ValueError: a value out of range or a combination the app cannot run.
        TypeError: a value of the wrong type (e.g. ``seed=abc``).

    Example:
        >>> from omegaconf import OmegaConf
        >>> check_config(OmegaConf.create({"phases": ["baseline"], "seed": 0, "threads": 0}))
        Traceback (most recent call last):
        ...
        ValueError: threads must be an integer ≥ 1 (torch.set_num_threads), got 0: e.g. threads=2.
    """
    phases = list(cfg.phases)
    _check_phases(cfg, phases)
    _check_seed_and_threads(cfg)
    _check_phase_groups(cfg, phases)
    if "data" in cfg:
        _check_data(cfg)
    if "trainer" in cfg:
        _check_trainer(cfg.trainer)
    if "model" in cfg and "data" in cfg:
        _check_input_kinds(cfg)


def _check_phases(cfg: DictConfig, phases: list[str]) -> None:
    """Known phase names; a retrain phase has a loss to retrain with (the search's or ``learned_loss``), not both."""
    unknown = [p for p in phases if p not in PHASES]
    if unknown:
        raise ValueError(f"Unknown phases {unknown}: choose from {', '.join(PHASES)}.")
    retrain_from = cfg.get("learned_loss")
    if "retrain" in phases and "search" not in phases and not retrain_from:
        raise ValueError(
            "The retrain phase uses the loss learned by the search phase: add 'search' to phases, or retrain with a "
            "loss learned earlier: learned_loss=path/to/autobalance_loss.yaml."
        )
    if retrain_from and "search" in phases:
        raise ValueError(
            f"learned_loss={retrain_from} retrains with a loss learned earlier, but phases also has 'search', which "
            "learns a new one: use phases=[retrain] (or [baseline,retrain]), or drop learned_loss."
        )


def _check_seed_and_threads(cfg: DictConfig) -> None:
    seed = cfg.get("seed")
    if not is_integer(seed):
        raise TypeError(f"seed must be an integer, got {seed!r} ({type(seed).__name__}): e.g. seed=0.")
    threads = cfg.get("threads")
    if not is_integer(threads) or threads < 1:
        raise ValueError(f"threads must be an integer ≥ 1 (torch.set_num_threads), got {threads!r}: e.g. threads=2.")


def _check_phase_groups(cfg: DictConfig, phases: list[str]) -> None:
    """The config groups of the phases ``phases`` lists: epochs, ``search``, ``jtt``, ``llr`` and ``resample``."""
    if any(p in phases for p in ("baseline", "retrain", "jtt", "llr")):
        _check_int("train.max_epochs", cfg.train.max_epochs, 1, "30")
    if "search" in phases:
        _check_search(cfg)
    if "jtt" in phases:
        _check_int("jtt.stage1_epochs", cfg.jtt.stage1_epochs, 1, "5")
        _check_int("jtt.upweight", cfg.jtt.upweight, 1, "20")
    if "llr" in phases:
        _check_llr(cfg)
    if cfg.get("resample") is not None and "baseline" not in phases:
        raise ValueError(
            f"resample={cfg.resample.get('_target_', '?').rsplit('.', 1)[-1]} changes the baseline phase's training "
            f"set, but phases={phases} has no baseline: add baseline to phases, or drop resample (resample=null)."
        )


def _check_heldout_fraction(cfg: DictConfig) -> None:
    fraction = cfg.search.heldout_fraction
    if not is_finite_number(fraction) or not 0.0 < fraction < 1.0:
        raise ValueError(
            f"search.heldout_fraction must lie strictly between 0 and 1, got {fraction!r}: it is the share of every "
            "class held out for the search's upper level and the llr phase's retraining, e.g. "
            "search.heldout_fraction=0.2."
        )


def _check_llr(cfg: DictConfig) -> None:
    node = cfg.get("llr")
    if node is None:
        raise ValueError(
            "phases has llr, but the llr group is not set (~llr or llr=null): choose how to refit the last layer, "
            "e.g. llr=default (Thumb weights), llr=dfr or llr=afr."
        )
    loader = node.get("dataloader")
    if loader not in LLR_LOADERS:
        reason = {
            "train": "the backbone's own training data, on which it already fits every sample",
            "test": "the test set, which would then select the model",
        }.get(str(loader), "not a loader the app has")
        raise ValueError(
            f"llr.dataloader={loader!r}: {reason}. The llr phase refits the last layer on llr.dataloader=heldout (the "
            "held-out split, search.heldout_fraction of every class) or llr.dataloader=val (the data's validation set)."
        )
    eval_loader = node.get("eval_dataloader")
    if eval_loader not in (None, "val", "heldout"):
        raise ValueError(
            f"llr.eval_dataloader={eval_loader!r}: the llr phase reports on the test set itself; use null (default), "
            "heldout or val."
        )
    if loader == "heldout":
        _check_heldout_fraction(cfg)
    _build("llr", node)


def _check_search(cfg: DictConfig) -> None:
    _check_heldout_fraction(cfg)
    _check_int("search.max_epochs", cfg.search.max_epochs, 1, "30")
    schedule = cfg.autobalance
    for name, minimum, example in (
        ("warmup_epochs", 0, "10"),
        ("every_n_steps", 1, "10"),
        ("train_batches", 1, "2"),
        ("heldout_batches", 1, "2"),
    ):
        if name in schedule:
            _check_int(f"autobalance.{name}", schedule[name], minimum, example)
    warmup, epochs = schedule.get("warmup_epochs", 0), cfg.search.max_epochs
    if epochs <= warmup:
        raise ValueError(
            f"search.max_epochs={epochs} ≤ autobalance.warmup_epochs={warmup}: the loss is frozen during the warm-up, "
            "so the search would run no hyper-step and report the initial loss as learned. Raise search.max_epochs "
            f"above the warm-up (e.g. search.max_epochs={warmup + max(1, warmup)}) or lower autobalance.warmup_epochs "
            f"(e.g. autobalance.warmup_epochs={max(0, epochs // 3)})."
        )
    objective = _build("objective", cfg.objective)
    _build("autobalance", cfg.autobalance, objective=objective)
    if requires_groups(objective) and "data" in cfg:
        # a datamodule class declaring `num_groups` decides now; otherwise check_datamodule does after set-up
        declared = getattr(_locate(cfg.data.get("_target_")), "num_groups", None)
        if is_integer(declared) and declared < 2:
            raise _no_groups_error(cfg, objective)


def _build(group: str, node: DictConfig, **kwargs: Any) -> Any:
    """``instantiate(node)``; an argument error is re-raised naming the config group (nothing is trained)."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(node, **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__ if isinstance(exc.__cause__, (ValueError, TypeError)) else None
        if cause is None:
            raise
        raise type(cause)(
            f"The `{group}` config is invalid: {cause} (set it with {group}.<key>=... on the command line)."
        ) from exc


def _no_groups_error(cfg: DictConfig, objective: Any) -> ValueError:
    return ValueError(
        f"objective={type(objective).__name__} needs group labels, but data ({cfg.data.get('_target_')}) has no "
        "groups: use objective=balanced (or objective=worst_group objective.over=class for the worst class), or data "
        "with groups, e.g. experiment=spurious_mnist1d (data=spurious_mnist1d, waterbirds, celeba)."
    )


def _check_data(cfg: DictConfig) -> None:
    data = cfg.data
    for name, (minimum, example) in _DATA_INTEGERS.items():
        if name in data and not OmegaConf.is_missing(data, name) and data.get(name) is not None:
            _check_int(f"data.{name}", data.get(name), minimum, str(example))


def _check_trainer(trainer: DictConfig) -> None:
    import lightning.pytorch as pl

    for key in trainer:
        if key in _TRAINER_OWNED:
            raise ValueError(
                f"trainer.{key}={trainer.get(key)!r}: the app sets the Trainer's {key} itself in every phase: "
                f"{_TRAINER_OWNED[key]}."
            )
    accepted = set(inspect.signature(pl.Trainer.__init__).parameters) - {"self"}
    extra = sorted(str(k) for k in trainer if k not in accepted)
    if extra:
        raise ValueError(
            f"trainer.{extra[0]} is not an argument of lightning.pytorch.Trainer: remove it or fix its name "
            "(the trainer group's keys are passed to Trainer(...))."
        )


def _check_input_kinds(cfg: DictConfig) -> None:
    model_kind, data_kind = _input_kind(cfg.model), _input_kind(cfg.data)
    if model_kind is None or data_kind is None or model_kind == data_kind:
        return
    arch = cfg.model.get("arch")
    model = f"{cfg.model._target_}" + (f", arch={arch}" if arch else "")
    raise ValueError(
        f"model ({model}) takes {_INPUT_SHAPES[model_kind]}, but data ({cfg.data._target_}) yields "
        f"{_INPUT_SHAPES[data_kind]}: use {_MODEL_FOR[data_kind]} with this data, or data made of "
        f"{model_kind}s for this model."
    )


def check_datamodule(cfg: DictConfig, datamodule: Any) -> None:
    """Validate the set-up training data before any phase trains; raise naming the data and what to change.

    Reads the labels of ``datamodule.train_dataloader().dataset`` with
    :func:`~lightning_autobalance.data.labels.dataset_labels` (fast for data sets with ``targets`` or tensors; a
    ``TypeError`` for float labels), and fails on an empty training set, labels outside ``[0, num_classes)``, a
    group objective (``requires_groups``) on data with ``num_groups`` 1 when the search phase runs, an ``llr`` phase
    that retrains on (or reports on) ``val`` of data without a validation set, and ``resample.over=group`` on data
    without groups.

    Args:
        cfg: the composed config.
        datamodule: the instantiated datamodule, after ``setup("fit")``.

    Raises:
        ValueError: no training sample, labels out of range, a group objective or ``resample.over=group`` without
            groups, or ``llr.dataloader=val`` without a validation set.
        TypeError: labels that are not integer class indices.
    """
    from lightning_autobalance.data.labels import dataset_labels

    name = f"data ({cfg.data.get('_target_', type(datamodule).__name__)})"
    dataset = datamodule.train_dataloader().dataset
    try:
        targets, _ = dataset_labels(dataset)
    except TypeError as exc:
        raise TypeError(f"{name}: {exc}") from exc
    if targets.numel() == 0:
        raise ValueError(
            f"{name} has no training samples after setup('fit'): check its settings (e.g. data.root, data.n_max, "
            "data.n_train) and that the training split is not empty."
        )
    num_classes = int(datamodule.num_classes)
    bad = (targets < 0) | (targets >= num_classes)
    if bad.any():
        raise ValueError(
            f"{name} has training labels {sorted(set(targets[bad].tolist()))[:5]} outside [0, {num_classes}) "
            f"(num_classes={num_classes}): remap the labels to 0..{num_classes - 1} or fix num_classes."
        )
    num_groups = int(getattr(datamodule, "num_groups", 1))
    if "llr" in list(cfg.phases):
        _check_llr_loaders(cfg, datamodule, name)
    resample = cfg.get("resample")
    if resample is not None and resample.get("over") == "group" and num_groups < 2:
        raise ValueError(
            f"resample.over=group balances the groups, but {name} has no groups: use resample.over=class_group "
            "(without group labels: class-balanced subsampling), or data with groups."
        )
    if "search" in list(cfg.phases) and num_groups < 2:
        from hydra.utils import instantiate

        objective = instantiate(cfg.objective)
        if requires_groups(objective):
            raise _no_groups_error(cfg, objective)


def _check_llr_loaders(cfg: DictConfig, datamodule: Any, name: str) -> None:
    """The llr phase's ``val`` loaders need a datamodule that defines ``val_dataloader``."""
    import lightning.pytorch as pl
    from lightning.pytorch.utilities.model_helpers import is_overridden

    for key in ("dataloader", "eval_dataloader"):
        if cfg.llr.get(key) == "val" and not is_overridden("val_dataloader", datamodule, pl.LightningDataModule):
            raise ValueError(
                f"llr.{key}=val, but {name} has no validation set (no val_dataloader): use llr.{key}="
                f"{'heldout' if key == 'dataloader' else 'null'}."
            )


def check_plugins(argv: Sequence[str]) -> None:
    """Exit with the pip command when a command-line choice needs a Hydra plugin that is not installed.

    Runs before Hydra parses ``argv`` (which would fail with ``Could not find 'hydra/sweeper/optuna'``).

    Args:
        argv: the command-line arguments, without the program name.

    Raises:
        SystemExit: naming the missing package, e.g. ``hydra-optuna-sweeper``, and how to install it.

    Example:
        >>> check_plugins(["seed=1", "phases=[baseline]"])  # nothing needs a plugin
    """
    for arg in argv:
        choice = arg.lstrip("+")
        for prefix, module, package in _PLUGINS:
            if not choice.startswith(prefix) or choice in ("hparams_search=null", "hparams_search="):
                continue
            try:
                found = importlib.util.find_spec(module) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                raise SystemExit(
                    f"{arg} needs the Hydra plugin package {package}, which is not installed: "
                    f"pip install {package} (or pip install -e '.[dev]'), or drop {arg}."
                )
