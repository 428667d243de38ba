"""Effective dimension ``d_eff`` of the retraining features: principal components holding most of the variance."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from lightning_autobalance.llr.checks import check_features

__all__ = [
    "effective_dimension",
]


@contextmanager
def _torch_threads(num: int) -> Iterator[None]:
    before = torch.get_num_threads()
    if num != before:
        torch.set_num_threads(num)
    try:
        yield
    finally:
        if num != before:
            torch.set_num_threads(before)


def _eigenvalues(sym: Tensor) -> Tensor:
    """Ascending eigenvalues of a symmetric matrix.

    Small decompositions run on one thread: with MKL on a busy 2-core machine the multi-threaded symmetric
    eigensolver of a 512×512 matrix took 0.1–10 s erratically, against a steady 0.05 s on one thread.
    """
    with _torch_threads(1 if sym.shape[0] <= 2048 else torch.get_num_threads()):
        return torch.linalg.eigh(sym).eigenvalues


def effective_dimension(features: Tensor, variance: float = 0.99) -> int:
    """Number of principal components of the centered features that hold ``variance`` of the total variance.

    This is the ``d_eff`` of "Thumb on the Scale": with ``δ = d_eff / n`` it replaces ``d / n`` in
    :func:`optimal_weight` for real (approximately low-rank) features.

    Args:
        features: ``(N, d)`` features.
        variance: fraction of the total variance to keep, in ``(0, 1]``.

    Returns:
        The smallest ``k`` such that the top ``k`` eigenvalues of the covariance sum to at least ``variance`` of
        the trace (``0`` if all features are constant).

    Raises:
        ValueError: if ``variance`` is outside ``(0, 1]`` or the features are not finite and 2-D with N >= 2.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(500, 3, generator=g) @ torch.randn(3, 20, generator=g)
        >>> effective_dimension(x + 1e-4 * torch.randn(500, 20, generator=g))
        3
    """
    variance = float(variance)
    if not (0.0 < variance <= 1.0):
        raise ValueError(f"variance must be in (0, 1], got {variance}")
    x = check_features(features).to(torch.float64)
    n, d = x.shape
    if n < 2:
        raise ValueError("effective_dimension needs at least 2 samples")
    x = x - x.mean(dim=0)
    gram = x.T @ x if n >= d else x @ x.T
    eig = _eigenvalues(gram).clamp_min(0.0).flip(0)
    cum = torch.cumsum(eig, dim=0)
    total = cum[-1]
    if float(total) == 0.0:
        return 0
    ratio = cum / total
    k = int(torch.searchsorted(ratio, torch.tensor([variance], dtype=torch.float64))[0]) + 1
    return min(k, int(torch.count_nonzero(eig)))
