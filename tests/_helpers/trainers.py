"""A quiet CPU trainer: no logger, checkpoints, progress bar or model summary unless a test asks for them."""

import lightning.pytorch as pl

QUIET = {
    "accelerator": "cpu",
    "logger": False,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
}


def quiet_trainer(**options) -> pl.Trainer:
    """``pl.Trainer(**options)`` with :data:`QUIET` as the defaults of the options not given."""
    return pl.Trainer(**{**QUIET, **options})
