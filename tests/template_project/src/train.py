"""The project's entry point: ``python src/train.py task=search|retrain|eval [overrides]`` (see configs/train.yaml)."""

import json
import logging
from pathlib import Path

import hydra
import lightning.pytorch as pl
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig

from lightning_autobalance import AutoBalance, HeldOutSplit, load_loss, save_loss

log = logging.getLogger(__name__)


def instantiate_group(group: DictConfig | None) -> list:
    """Every entry of a config group of named objects (``callbacks``, ``logger``) that has a ``_target_``."""
    return [
        instantiate(entry) for entry in (group or {}).values() if isinstance(entry, DictConfig) and "_target_" in entry
    ]


@hydra.main(config_path="../configs", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    pl.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    datamodule = instantiate(cfg.data)
    callbacks = instantiate_group(cfg.get("callbacks"))
    searching = any(isinstance(callback, AutoBalance) for callback in callbacks)
    if cfg.task == "search" and not searching:
        raise ValueError("task=search needs the AutoBalance callback: add callbacks=[default,autobalance].")
    if cfg.task != "search" and searching:
        raise ValueError(f"task={cfg.task} runs without the AutoBalance callback: drop it from callbacks.")
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=instantiate_group(cfg.get("logger")))

    if cfg.task == "search":
        model = instantiate(cfg.model)
        split = HeldOutSplit(datamodule, fraction=cfg.heldout_fraction)
        trainer.fit(model, datamodule=split, ckpt_path=cfg.ckpt_path)
    elif cfg.task == "retrain":
        model = instantiate(cfg.model)
        if cfg.learned_loss is not None:  # without one, the mixin trains with plain cross-entropy
            model.autobalance_loss = load_loss(cfg.learned_loss, num_classes=datamodule.num_classes)
            save_loss(model.autobalance_loss, output_dir / "retrain_loss.yaml", {"source": str(cfg.learned_loss)})
            log.info("Retraining with the learned loss of %s", cfg.learned_loss)
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    elif cfg.task == "eval":
        if cfg.ckpt_path is None:
            raise ValueError("task=eval needs ckpt_path=<a checkpoint of a search or retrain run>.")
        model = get_class(cfg.model._target_).load_from_checkpoint(cfg.ckpt_path)
        metrics = trainer.test(model, datamodule=datamodule, verbose=False)[0]
        (output_dir / "test_metrics.json").write_text(json.dumps(metrics, indent=2))
        log.info("Test metrics: %s", metrics)
    else:
        raise ValueError(f"Unknown task={cfg.task}: use search, retrain or eval.")


if __name__ == "__main__":
    main()
