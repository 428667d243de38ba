"""Upper-level objectives: what AutoBalance minimises on the held-out split.

An objective is a callable ``objective(logits, targets, groups) -> scalar`` on the *raw* model logits of held-out
samples (the tuned loss never touches them). Pure PyTorch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["OBJECTIVES", "Objective", "balanced_cross_entropy", "get_objective"]

Objective = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]


def balanced_cross_entropy(logits: Tensor, targets: Tensor, groups: Tensor | None = None) -> Tensor:
    """Mean over the classes present of the per-class mean cross-entropy (PAPERS.md §1, "balanced loss").

    Equal to cross-entropy with inverse-frequency class weights on the given sample: every class present counts
    equally however many samples it has.

    Args:
        logits: raw model outputs (N, K).
        targets: labels (N,).
        groups: ignored (accepted for a uniform signature).

    Example:
        >>> logits = torch.tensor([[2.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
        >>> y = torch.tensor([0, 0, 1])
        >>> per_class = F.cross_entropy(logits, y, reduction="none")
        >>> bool(torch.isclose(balanced_cross_entropy(logits, y), (per_class[0] + per_class[2]) / 2))
        True
    """
    del groups
    per_sample = F.cross_entropy(logits, targets, reduction="none")
    num_classes = logits.shape[1]
    sums = torch.zeros(num_classes, dtype=per_sample.dtype, device=per_sample.device).index_add(0, targets, per_sample)
    counts = torch.bincount(targets, minlength=num_classes).to(per_sample.dtype)
    present = counts > 0
    return (sums[present] / counts[present]).mean()


OBJECTIVES: dict[str, Objective] = {"balanced": balanced_cross_entropy}


def get_objective(objective: str | Objective) -> Objective:
    """Resolve an objective given by name (``"balanced"``) or as a callable."""
    if callable(objective):
        return objective
    if objective not in OBJECTIVES:
        raise ValueError(f"Unknown objective {objective!r}: choose one of {', '.join(OBJECTIVES)} or pass a callable.")
    return OBJECTIVES[objective]
