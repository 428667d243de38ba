"""Personalized augmentation of training logits: per (group, class) Gaussian logit noise σ and mixing strength m.

For a training sample ``i`` of class ``y_i`` in group ``g_i`` (docs/references.md §1)::

    f̃_i = (1 − m[g_i, y_i]) · f(x_i) + m[g_i, y_i] · f(x_π(i)) + σ[g_i, y_i] · ε_i,   ε_i ~ N(0, I_K)

with π a random permutation of the batch. The draws come from a generator seeded either by a running counter
(:func:`step_seed`, training) or by a fixed seed and the batch's labels (:func:`batch_seed`, hyper-steps), so that
repeated evaluations and resumed runs see the same draws.

Example:
    >>> logits, y = torch.zeros(2, 3), torch.tensor([0, 1])
    >>> generator = seeded_generator(batch_seed(7, y, None), y.device)
    >>> augment_logits(logits, y, None, noise=torch.zeros(1, 3), mix=None, generator=generator).tolist()
    [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["augment_logits", "batch_seed", "seeded_generator", "step_seed"]


def batch_seed(seed: int, targets: Tensor, groups: Tensor | None) -> int:
    """Seed of the draws for a batch inside ``fixed_augmentation(seed)``: a function of the seed and the labels.

    A global batch gets the same draws on whichever process holds it (nothing depends on the rank).
    """
    weights = torch.arange(1, targets.numel() + 1, device=targets.device) % 9973 + 1
    key = int((targets.long() * weights).sum()) * 7919 + targets.numel()
    if groups is not None:
        key = key * 31 + int((groups.long() * weights).sum())
    return hash((seed, key))


def step_seed(augmentation_seed: int, calls: int) -> int:
    """Seed of the draws of training call number ``calls``: a function of the run's seed, the call and the rank."""
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    return hash((augmentation_seed, calls, rank))


def seeded_generator(seed: int, device: torch.device) -> torch.Generator:
    """A generator on ``device`` seeded with ``seed`` (reduced to the non-negative 63-bit range)."""
    generator = torch.Generator(device=device)
    generator.manual_seed(seed & 0x7FFF_FFFF_FFFF_FFFF)
    return generator


def augment_logits(
    logits: Tensor,
    targets: Tensor,
    groups: Tensor | None,
    *,
    noise: Tensor,
    mix: Tensor | None,
    generator: torch.Generator,
) -> Tensor:
    """``(1 − m) ⊙ logits + m ⊙ logits[π] + σ ⊙ ε`` row by row.

    Args:
        logits: (N, K) logits of a training batch.
        targets: (N,) labels; they select each sample's σ and m (and stay the sample's labels).
        groups: (N,) group labels, or None.
        noise: σ per (group, class), shape (G, K).
        mix: m per (group, class), shape (G, K), or ``None`` for no mixing (no partner drawn).
        generator: the source of the partners π and the noise ε (partners are drawn first).
    """
    rows = 0 if groups is None else groups
    if mix is not None:
        strength = mix[rows, targets].to(logits.dtype)[:, None]
        partner = torch.randperm(logits.shape[0], generator=generator, device=logits.device)
        logits = (1 - strength) * logits + strength * logits[partner]
    epsilon = torch.randn(logits.shape, generator=generator, device=logits.device, dtype=logits.dtype)
    return logits + noise[rows, targets].to(logits.dtype)[:, None] * epsilon
