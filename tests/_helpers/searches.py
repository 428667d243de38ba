"""The AutoBalance search of the tiny test runs."""

from functools import partial

import torch

from lightning_autobalance import AutoBalance

TINY_SEARCH = {
    "preset": "ce",
    "learn": ("delta", "iota"),
    "warmup_epochs": 1,
    "hyper_optimizer": partial(torch.optim.SGD, lr=0.5, momentum=0.9),
}


def tiny_search(**options) -> AutoBalance:
    """``AutoBalance(**options)`` with :data:`TINY_SEARCH` (CE start; Δ and ι learned by SGD after one epoch)."""
    return AutoBalance(**{**TINY_SEARCH, **options})
