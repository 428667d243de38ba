"""Long-tailed class profiles (docs/references.md §1, "Long-tailed benchmark construction")."""

from __future__ import annotations

from typing import Literal

from lightning_autobalance._checks import check_integer

__all__ = ["PROFILES", "Profile", "long_tail_counts"]

Profile = Literal["exponential", "step"]
PROFILES: tuple[str, ...] = ("exponential", "step")


def long_tail_counts(
    n_max: int, num_classes: int, imbalance_ratio: float, profile: Profile = "exponential"
) -> list[int]:
    """Per-class sample counts of a long-tailed data set.

    * ``exponential``: ``n_i = ⌊n_max · μ^i⌋`` with ``μ = ρ^(−1/(K−1))``, so ``n_0 / n_{K−1} = ρ``;
    * ``step``: the first ``⌊K/2⌋`` classes keep ``n_max``, the others ``⌊n_max / ρ⌋``.

    Every class keeps at least one sample.

    Args:
        n_max: samples of the most frequent class (class 0).
        num_classes: number of classes K ≥ 2.
        imbalance_ratio: ρ = n_0 / n_{K−1} ≥ 1.
        profile: ``"exponential"`` or ``"step"``.

    Returns:
        K counts, non-increasing.

    Example:
        >>> long_tail_counts(1000, 3, 100)
        [1000, 100, 10]
        >>> long_tail_counts(1000, 4, 10, "step")
        [1000, 1000, 100, 100]
    """
    check_integer("num_classes", num_classes, 2)
    check_integer("n_max", n_max, 1)
    if not imbalance_ratio >= 1:
        raise ValueError(f"imbalance_ratio ρ = n_max / n_min must be ≥ 1, got {imbalance_ratio}.")
    if profile == "exponential":
        mu = imbalance_ratio ** (-1.0 / (num_classes - 1))
        counts = [int(n_max * mu**i + 1e-9) for i in range(num_classes)]
    elif profile == "step":
        counts = [n_max if i < num_classes // 2 else int(n_max / imbalance_ratio + 1e-9) for i in range(num_classes)]
    else:
        raise ValueError(f"Unknown long-tail profile {profile!r}: choose one of {', '.join(PROFILES)}.")
    return [max(1, c) for c in counts]
