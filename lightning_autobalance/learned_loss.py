"""Export and import of a learned loss as a small, versioned YAML file.

The file stores the raw parameters (exact float32 values, so a round trip reproduces the loss bit for bit) and, for
people reading it, the per-class Δ, ι, ω and the personalized-augmentation strengths σ (noise) and m (mix) they
produce (a raw value of ``-.inf`` is an augmentation that is off). Format version 2 added σ and m; version 3 the
``prediction_shift`` added to the logits at prediction time (the post-hoc logit adjustment fitted on the held-out
split, see :meth:`ParametricCrossEntropy.shift_predictions`). Files of versions 1 (Δ, ι, ω only) and 2 still load,
with the augmentation off (version 1) and no prediction shift. It is written atomically (temporary file + rename) and
read with :func:`yaml.safe_load`, so loading never executes code.

Example:
    >>> import tempfile, pathlib
    >>> from lightning_autobalance.losses import ParametricCrossEntropy
    >>> loss_fn = ParametricCrossEntropy.from_preset("la", [90, 10], learnable=["iota"])
    >>> folder = tempfile.TemporaryDirectory()
    >>> path = pathlib.Path(folder.name) / "loss.yaml"
    >>> save_loss(loss_fn, path)
    >>> torch.equal(load_loss(path).iota(), loss_fn.iota())
    True
    >>> folder.cleanup()
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml

from lightning_autobalance._checks import is_integer
from lightning_autobalance.files import write_atomic
from lightning_autobalance.losses import AUGMENTATION_KINDS, HPARAM_KINDS, ParametricCrossEntropy

__all__ = [
    "CHECKPOINT_KEY",
    "FORMAT",
    "FORMAT_VERSION",
    "LearnedLossError",
    "load_loss",
    "loss_from_dict",
    "loss_to_dict",
    "save_loss",
    "write_text_atomic",
]

FORMAT = "lightning-autobalance/learned-loss"
FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)  # 1: Δ, ι, ω only; 2: + personalized augmentation; 3: + prediction shift
CHECKPOINT_KEY = "autobalance_loss"  # where AutoBalanceMixin keeps its loss's description in a module checkpoint


class LearnedLossError(ValueError):
    """A learned-loss file that is missing, truncated, of another format or version, or inconsistent."""


def loss_to_dict(loss: ParametricCrossEntropy, metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Describe ``loss`` as plain Python data (the content of the YAML file)."""
    data: dict[str, Any] = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "num_classes": loss.num_classes,
        "num_groups": loss.num_groups,
        "delta_parameterization": loss.delta_parameterization,
        "delta_max": loss.delta_max,
        "learnable": list(loss.learnable),
        "blocks": loss.block_index.tolist(),
        "raw": {kind: getattr(loss, f"raw_{kind}").detach().cpu().tolist() for kind in HPARAM_KINDS},
        "values": {kind: getattr(loss, kind)().detach().cpu().tolist() for kind in HPARAM_KINDS},
        "prediction_shift": loss.prediction_shift.detach().cpu().tolist(),
    }
    if metadata:
        data["metadata"] = dict(metadata)
    return data


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder and an atomic rename."""
    return write_atomic(path, lambda handle: handle.write(text.encode("utf-8")))


def save_loss(
    loss: ParametricCrossEntropy, path: str | os.PathLike[str], metadata: Mapping[str, Any] | None = None
) -> None:
    """Write ``loss`` to ``path`` as YAML, atomically.

    Args:
        loss: the loss to export.
        path: destination file; parent folders are created.
        metadata: optional extra information (plain scalars, lists, dicts) stored under ``metadata``.
    """
    text = yaml.safe_dump(loss_to_dict(loss, metadata), sort_keys=False, default_flow_style=None, width=120)
    write_text_atomic(path, text)


def _require(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...], path: Path) -> Any:
    if key not in data:
        raise LearnedLossError(f"{path}: the learned-loss file has no {key!r} entry; it may be truncated.")
    value = data[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise LearnedLossError(f"{path}: entry {key!r} should be {kind}, got {value!r}.")
    return value


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LearnedLossError(f"No learned-loss file at {path}: run the search phase first or fix the path.") from None
    except yaml.constructor.ConstructorError as error:  # e.g. a !!python/object tag: refused, never constructed
        raise LearnedLossError(
            f"{path} is not valid YAML for a learned loss: it holds a tag that safe loading refuses ({error.problem}); "
            "a learned-loss file is plain data, so it was not loaded: re-export it with save_loss, or remove the tag."
        ) from None
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise LearnedLossError(f"{path} is not valid YAML (truncated or corrupted?): {error}") from None


def _read_checkpoint(path: Path, weights_only: bool) -> dict[str, Any]:
    """The learned-loss description that :class:`AutoBalanceMixin` stores in every checkpoint of its module."""
    if not path.exists():
        raise LearnedLossError(f"No checkpoint at {path}: fix the path.")
    try:  # weights_only: plain tensors and containers, never arbitrary objects
        checkpoint = torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as error:
        advice = (
            " If the checkpoint holds pickled objects (e.g. save_hyperparameters of a network or an optimizer "
            "partial) and you trust the file, load it with load_loss(path, weights_only=False), as Lightning's "
            "load_from_checkpoint(..., weights_only=False)."
            if weights_only
            else ""
        )
        raise LearnedLossError(f"{path} could not be read as a Lightning checkpoint: {error}{advice}") from None
    data = checkpoint.get(CHECKPOINT_KEY)
    callback_state = checkpoint.get("callbacks", {}).get("AutoBalance", {})
    if not isinstance(data, dict) and isinstance(callback_state, dict) and "loss" in callback_state:
        raise LearnedLossError(
            f"{path} holds no AutoBalance state with a learned loss readable here: it was written by an earlier "
            "version, which kept α only in the AutoBalance callback's state, without the loss's description. Resume "
            "the search from it (Trainer.fit(..., ckpt_path=...) with the AutoBalance callback), or retrain with the "
            "autobalance_loss.yaml that run exported."
        )
    if not isinstance(data, dict):
        raise LearnedLossError(
            f"{path} holds no AutoBalance state with a learned loss: pass a checkpoint of an AutoBalanceMixin module "
            "trained with a ParametricCrossEntropy loss (a search, or a retrain with a learned loss), or the exported "
            "autobalance_loss.yaml."
        )
    return data


def load_loss(
    path: str | os.PathLike[str],
    num_classes: int | None = None,
    num_groups: int | None = None,
    *,
    learnable: tuple[str, ...] = (),
    weights_only: bool = True,
) -> ParametricCrossEntropy:
    """Read a learned loss written by :func:`save_loss`, or the one held by a checkpoint of an AutoBalance search.

    A Lightning checkpoint (``.ckpt``: any of them, e.g. ModelCheckpoint's best, not only the last) carries the α of
    its step (AutoBalanceMixin saves its loss in every checkpoint of the module), described as in the YAML file.

    The file records everything that defines the loss: the raw parameters of Δ, ι, ω, σ and m (shape (G, blocks)), the
    block of every class, the number of groups and classes, the Δ parameterisation and ``delta_max``, and which kinds
    were learnable (informative: the loaded loss is frozen unless ``learnable`` says otherwise).

    Args:
        path: the YAML file, or a Lightning checkpoint (suffix ``.ckpt``) saved during an AutoBalance search.
        num_classes: the number of classes K of the model the loss is for; a file for another K is rejected.
        num_groups: the number of groups G of the data the loss is for; a file for another G is rejected.
        learnable: kinds to make learnable again; by default the loss is frozen (for the retrain phase).
        weights_only: read a checkpoint with ``torch.load(weights_only=True)`` (default: plain tensors and containers
            only). Pass False for a trusted checkpoint that pickles objects in its hyperparameters.

    Returns:
        The loss, equal bit for bit to the one saved.

    Raises:
        LearnedLossError: the file is missing, is not valid YAML, is of another format or version, its entries
            do not fit together, or its shape differs from ``num_classes`` / ``num_groups``.
    """
    path = Path(path)
    data = _read_checkpoint(path, weights_only) if path.suffix == ".ckpt" else _read_yaml(path)
    return loss_from_dict(data, path, num_classes, num_groups, learnable=learnable)


def loss_from_dict(
    data: Any,
    source: str | os.PathLike[str] = "learned loss",
    num_classes: int | None = None,
    num_groups: int | None = None,
    *,
    learnable: tuple[str, ...] = (),
) -> ParametricCrossEntropy:
    """Build the loss that :func:`loss_to_dict` described (``source`` names the data in error messages).

    Example:
        >>> loss_fn = ParametricCrossEntropy.from_preset("la", [90, 10])
        >>> torch.equal(loss_from_dict(loss_to_dict(loss_fn)).iota(), loss_fn.iota())
        True
    """
    for name, value in (("num_classes", num_classes), ("num_groups", num_groups)):
        if value is not None and not (is_integer(value) and value >= 1):
            raise ValueError(f"{name} must be a positive integer or None, got {value!r}.")
    path = source
    version, file_groups, file_classes = _read_header(data, path, num_classes, num_groups)
    blocks = _require(data, "blocks", list, path)
    raw = _require(data, "raw", dict, path)
    try:
        loss = ParametricCrossEntropy(
            file_classes,
            file_groups,
            learnable=learnable,
            blocks=blocks,
            delta_parameterization=_require(data, "delta_parameterization", str, path),
            delta_max=float(_require(data, "delta_max", (int, float), path)),
        )
        with torch.no_grad():
            for kind in HPARAM_KINDS:
                if version == 1 and kind in AUGMENTATION_KINDS:
                    continue  # not in version 1: the augmentation stays off
                _copy_raw(loss, kind, raw, path)
        if version >= 3:
            _set_prediction_shift(loss, data, path)
    except LearnedLossError:
        raise
    except (KeyError, TypeError, ValueError) as error:
        raise LearnedLossError(f"{path}: inconsistent learned-loss file: {error}") from None
    return loss


def _read_header(
    data: Any, path: str | os.PathLike[str], num_classes: int | None, num_groups: int | None
) -> tuple[int, int, int]:
    """Format, version and shape of a learned-loss description: ``(version, num_groups, num_classes)``."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise LearnedLossError(f"{path} is not a lightning-autobalance learned-loss file (expected format: {FORMAT}).")
    version = data.get("version")
    if version not in READABLE_VERSIONS:
        raise LearnedLossError(
            f"{path} has learned-loss format version {version!r}; this lightning-autobalance reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}: re-export it with a matching version of the package."
        )
    file_classes = _require(data, "num_classes", int, path)
    file_groups = _require(data, "num_groups", int, path)
    expected = (file_groups if num_groups is None else num_groups, file_classes if num_classes is None else num_classes)
    if expected != (file_groups, file_classes):
        raise LearnedLossError(
            f"{path} holds a learned loss of shape (num_groups, num_classes) = ({file_groups}, {file_classes}), but "
            f"this model and data expect {expected}: load the file learned for this data set and model, or re-run "
            "the search phase on it."
        )
    return version, file_groups, file_classes


def _copy_raw(loss: ParametricCrossEntropy, kind: str, raw: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Check the file's raw values of ``kind`` and copy them into ``loss`` (under ``torch.no_grad``)."""
    target = getattr(loss, f"raw_{kind}")
    if kind not in raw:
        raise LearnedLossError(f"{path}: the learned-loss file has no raw {kind}; it may be truncated.")
    values = torch.tensor(raw[kind], dtype=target.dtype)
    if values.shape != target.shape:
        raise LearnedLossError(
            f"{path}: raw {kind} has shape {tuple(values.shape)}, expected {tuple(target.shape)} for "
            f"{loss.num_groups} group(s) and {loss.num_blocks} block(s)."
        )
    off = values == -math.inf if kind in AUGMENTATION_KINDS else torch.zeros_like(values, dtype=torch.bool)
    if not torch.isfinite(values[~off]).all():
        raise LearnedLossError(f"{path}: raw {kind} contains non-finite values.")
    if kind in loss.learnable and off.any():
        raise LearnedLossError(
            f"{path}: {kind} is off (0) in this file, so it cannot be made learnable: drop {kind!r} "
            "from learnable or start from a loss with a positive initial value."
        )
    target.copy_(values)


def _set_prediction_shift(loss: ParametricCrossEntropy, data: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    shift = torch.tensor(_require(data, "prediction_shift", list, path), dtype=torch.float64)
    if shift.shape != loss.prediction_shift.shape or not bool(torch.isfinite(shift).all()):
        raise LearnedLossError(
            f"{path}: prediction_shift should be {tuple(loss.prediction_shift.shape)} finite values, got "
            f"{shift.tolist()}."
        )
    loss.set_prediction_shift(shift)
