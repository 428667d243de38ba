"""The weighted linear head fit on frozen features: square loss in closed form or cross-entropy by L-BFGS.

The square-loss fit is one Cholesky solve of the ``(d+1)×(d+1)`` weighted normal equations in float64; the
cross-entropy fit is full-batch L-BFGS from zeros. Weights are per-sample ``(N,)``, per-class ``(K,)`` or
per-(group, class) ``(G, K)``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_autobalance._checks import check_integer
from lightning_autobalance.llr.checks import check_features, check_groups, check_ridge, check_targets
from lightning_autobalance.llr.optim import minimise_lbfgs

__all__ = [
    "LinearHead",
    "fit_last_layer",
    "penalty_diag",
    "singular_message",
]


@dataclass(frozen=True)
class LinearHead:
    """A fitted linear head ``scores = x @ weight.T + bias`` (same layout as :class:`torch.nn.Linear`).

    Attributes:
        weight: ``(K, d)`` weight matrix.
        bias: ``(K,)`` bias (zeros when fitted without intercept).

    Example:
        >>> head = LinearHead(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.zeros(2))
        >>> head.predict(torch.tensor([[2.0, 1.0], [0.0, 3.0]])).tolist()
        [0, 1]
    """

    weight: Tensor
    bias: Tensor

    @property
    def num_classes(self) -> int:
        """Number of outputs ``K``."""
        return self.weight.shape[0]

    @property
    def in_features(self) -> int:
        """Feature dimension ``d``."""
        return self.weight.shape[1]

    def __call__(self, features: Tensor) -> Tensor:
        """Scores ``(N, K)`` of ``features`` ``(N, d)``, in the head's dtype."""
        features = torch.as_tensor(features)
        return features.to(self.weight.dtype) @ self.weight.T + self.bias

    def predict(self, features: Tensor) -> Tensor:
        """Predicted classes ``(N,)``: the arg-max of the scores."""
        return self(features).argmax(dim=-1)

    def to_linear(self) -> nn.Linear:
        """A :class:`torch.nn.Linear` holding copies of ``weight`` and ``bias``."""
        layer = nn.Linear(self.in_features, self.num_classes, dtype=self.weight.dtype)
        with torch.no_grad():
            layer.weight.copy_(self.weight)
            layer.bias.copy_(self.bias)
        return layer


def _check_nonneg_weights(weights: Tensor, name: str = "weights") -> Tensor:
    if not bool(torch.isfinite(weights).all()):
        raise ValueError(f"{name} contains NaN or infinite values; pass finite non-negative weights")
    if bool((weights < 0).any()):
        raise ValueError(f"{name} contains negative values; loss weights must be >= 0")
    return weights


def _sample_weights(weights: Tensor | None, targets: Tensor, groups: Tensor | None, k: int) -> Tensor:
    """Expand per-sample ``(N,)``, per-class ``(K,)`` or per-(group, class) ``(G, K)`` weights to ``(N,)``."""
    n = targets.shape[0]
    if weights is None:
        return torch.ones(n, dtype=torch.float64)
    weights = _check_nonneg_weights(torch.as_tensor(weights).to(torch.float64))
    if weights.ndim == 1 and weights.shape[0] == n:
        out = weights
    elif weights.ndim == 1 and weights.shape[0] == k:
        out = weights[targets]
    elif weights.ndim == 2 and weights.shape[1] == k:
        if groups is None:
            raise ValueError("per-(group, class) weights of shape (G, K) need group labels; pass groups=")
        groups = check_groups(groups, n, num_groups=weights.shape[0])
        out = weights[groups, targets]
    else:
        raise ValueError(
            f"weights of shape {tuple(weights.shape)} match neither per-sample ({n},), per-class "
            f"({k},) nor per-(group, class) (G, {k}); fix the shape or num_classes"
        )
    if not bool((out > 0).any()):
        raise ValueError("all sample weights are zero; give at least two classes positive weight")
    return out


def penalty_diag(d: int, ridge: float, fit_intercept: bool) -> Tensor:
    """Diagonal of the L2 penalty on the (augmented) coefficients; the intercept is not penalised."""
    diag = torch.full((d + int(fit_intercept),), ridge, dtype=torch.float64)
    if fit_intercept:
        diag[-1] = 0.0  # the intercept is not penalised
    return diag


def singular_message(m: int, d: int) -> str:
    """Error message for singular weighted normal equations (``m`` weighted samples, ``d`` features)."""
    return (
        f"the weighted normal equations are singular (n={m} samples with positive weight, d={d} features): "
        f"the closed-form square-loss head needs n > d and non-collinear features; pass ridge>0 or fewer "
        f"features"
    )


def _fit_square(x: Tensor, targets: Tensor, w: Tensor, k: int, ridge: float, fit_intercept: bool) -> Tensor:
    """Closed-form weighted least squares on centered float64 features; returns ``(p, K)`` coefficients."""
    d = x.shape[1]
    m = int((w > 0).sum())
    p = d + int(fit_intercept)
    if ridge == 0.0 and m < p:
        raise ValueError(
            f"n <= d: {m} samples with positive weight for d={d} features"
            f"{' plus an intercept' if fit_intercept else ''}; the closed-form square-loss head is "
            f"not unique; pass ridge>0 or fewer features"
        )
    # Blocks of the augmented system [[XᵀDX, XᵀDw], [wᵀX, Σw]] θ = [XᵀDY; wᵀY] without forming [X, 1] or DX.
    wy = torch.zeros(x.shape[0], k, dtype=torch.float64)
    wy[torch.arange(x.shape[0]), targets] = w  # D·Y for one-hot Y
    cross = torch.empty(p, k, dtype=torch.float64)
    cross[:d] = x.T @ wy
    gram = torch.empty(p, p, dtype=torch.float64)
    if fit_intercept:
        cross[d] = wy.sum(dim=0)
        colsum = w @ x
        gram[:d, d] = colsum
        gram[d, :d] = colsum
        gram[d, d] = w.sum()
    xs = x.mul_(w.sqrt()[:, None])  # x is a private float64 copy
    gram[:d, :d] = xs.T @ xs
    gram.diagonal().add_(penalty_diag(d, ridge, fit_intercept))
    chol, info = torch.linalg.cholesky_ex(gram)
    # L_ii² / A_ii is the fraction of column i's (weighted) energy not explained by the previous columns; a tiny
    # value means collinear features, which rounding can let through the factorisation.
    residual = chol.diagonal().pow(2) / gram.diagonal().clamp_min(torch.finfo(torch.float64).tiny)
    if int(info) != 0 or bool((residual < 1e-12).any()):
        raise ValueError(singular_message(m, d))
    return torch.cholesky_solve(cross, chol)


def _fit_ce(
    x: Tensor, targets: Tensor, w: Tensor, k: int, ridge: float, fit_intercept: bool, max_iter: int, tol: float
) -> Tensor:
    """Full-batch L-BFGS from zeros on the weighted multinomial cross-entropy; returns ``(p, K)``."""
    d = x.shape[1]
    weight = torch.zeros(k, d, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(k, dtype=torch.float64, requires_grad=fit_intercept)
    scale = 1.0 / float(w.sum())  # same minimiser, better-scaled tolerances
    params = [weight, bias] if fit_intercept else [weight]

    def objective() -> Tensor:
        logits = x @ weight.T + bias
        ce = F.cross_entropy(logits, targets, reduction="none")
        return scale * ((w * ce).sum() + 0.5 * ridge * weight.pow(2).sum())

    gmax = minimise_lbfgs(objective, params, max_iter, tol)
    if gmax > max(1e3 * tol, 1e-6):
        warnings.warn(
            f"cross-entropy head did not converge in max_iter={max_iter} L-BFGS iterations (max |grad| "
            f"= {gmax:.2e}); increase max_iter or ridge (with ridge=0 separable data has no finite "
            f"minimiser)",
            UserWarning,
            stacklevel=3,
        )
    with torch.no_grad():
        # Softmax is invariant to a shift shared by all classes: return the zero-mean representative (with
        # ridge > 0 the weight rows already sum to zero at the optimum; the unpenalised bias does not).
        coef = weight - weight.mean(dim=0)
        b = bias - bias.mean()
    return torch.cat([coef.T, b[None, :]], dim=0) if fit_intercept else coef.T.contiguous()


def fit_last_layer(
    features: Tensor,
    targets: Tensor,
    groups: Tensor | None = None,
    weights: Tensor | None = None,
    loss: Literal["square", "ce"] = "square",
    ridge: float = 0.0,
    num_classes: int | None = None,
    fit_intercept: bool = True,
    *,
    max_iter: int = 1000,
    tol: float = 1e-10,
) -> LinearHead:
    """Fit a weighted linear head on frozen features (last-layer retraining).

    Minimises ``Σ_i w_i ℓ_i + (ridge/2)·‖W‖²_F`` over ``W (K, d)`` and ``b (K,)``, ``b`` unpenalised, where

    * ``loss="square"``: ``ℓ_i = ½‖W x_i + b − e_{y_i}‖²`` with one-hot targets on ``K`` outputs (two outputs for
      binary; see the :mod:`lightning_autobalance.llr` docstring for the ``±1`` equivalence) — equivalently
      ``Σ_i w_i‖W x_i + b − e_{y_i}‖² + ridge·‖W‖²``. Solved in closed form by one Cholesky factorisation of the
      ``(d+1)×(d+1)`` weighted normal equations in float64 (features are first centered by their unweighted
      mean, an exact reparametrisation of the intercept that improves conditioning).
    * ``loss="ce"``: ``ℓ_i`` = softmax cross-entropy; full-batch L-BFGS (strong-Wolfe line search) from zeros in
      float64, at most ``max_iter`` iterations, stopping when the max gradient entry of the objective divided by
      ``Σ w`` is below ``tol``. Matches scikit-learn's multinomial ``LogisticRegression(C=1/ridge,
      fit_intercept=...)`` with ``sample_weight=w`` (for ``K ≥ 3``; sklearn's binary model is a different
      parametrisation). The result is the representative with zero-mean bias (and weight columns) over classes.

    Args:
        features: ``(N, d)`` features (any float dtype; the head is returned in this dtype).
        targets: ``(N,)`` class indices in ``[0, K)``.
        groups: ``(N,)`` group indices, needed only for ``(G, K)`` weights.
        weights: ``None`` (all ones), per-sample ``(N,)``, per-class ``(K,)`` or per-(group, class) ``(G, K)``
            non-negative weights. A 1-D tensor of length ``N`` is always per-sample.
        loss: ``"square"`` (closed form) or ``"ce"``.
        ridge: L2 penalty strength ``≥ 0`` on ``W`` (see above for the exact scaling).
        num_classes: ``K`` (default ``max(targets) + 1``).
        fit_intercept: fit the bias ``b`` (else ``b = 0``).
        max_iter: L-BFGS iterations for ``loss="ce"``.
        tol: gradient tolerance for ``loss="ce"``.

    Returns:
        The fitted :class:`LinearHead`.

    Raises:
        ValueError: non-finite features, shape mismatches, negative/non-finite weights, fewer than two classes
            with positive weight, or (square loss, ``ridge=0``) ``n ≤ d`` / singular normal equations.

    Example:
        >>> x = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
        >>> head = fit_last_layer(x, torch.tensor([0, 0, 1, 1]))
        >>> head.predict(x).tolist()
        [0, 0, 1, 1]
        >>> [round(v, 6) for v in head.weight[:, 0].tolist()]
        [-0.4, 0.4]
    """
    if loss not in ("square", "ce"):
        raise ValueError(f"loss must be 'square' or 'ce', got {loss!r}")
    if loss == "ce":
        check_integer("max_iter", max_iter, 1)
    x = check_features(features)
    out_dtype = x.dtype
    n, d = x.shape
    y, k = check_targets(targets, n, num_classes)
    if groups is not None:
        groups = check_groups(groups, n)
    ridge = check_ridge(ridge)
    w = _sample_weights(weights, y, groups, k)
    present = torch.nonzero(torch.bincount(y, weights=w, minlength=k) > 0).flatten()
    if present.numel() < 2:
        raise ValueError(
            f"only one class ({present.tolist()}) present with positive weight; the retraining set "
            f"needs samples of at least two classes"
        )
    x64 = x.to(torch.float64, copy=True)
    # With an intercept, centering is an exact reparametrisation (b ← b + W·mean) that improves conditioning.
    mean = x64.mean(dim=0) if fit_intercept else torch.zeros(d, dtype=torch.float64)
    if fit_intercept:
        x64.sub_(mean)
    if loss == "square":
        coef = _fit_square(x64, y, w, k, ridge, fit_intercept)
    else:
        coef = _fit_ce(x64, y, w, k, ridge, fit_intercept, int(max_iter), float(tol))
    weight = coef[:d].T.contiguous()
    bias = coef[d] - weight @ mean if fit_intercept else torch.zeros(k, dtype=torch.float64)
    return LinearHead(weight.to(out_dtype), bias.to(out_dtype))
