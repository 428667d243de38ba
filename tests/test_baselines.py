"""Baselines outside the family: LDAM (with DRW) and focal loss, against hand-written reference definitions."""

import math
from pathlib import Path

import hypothesis.strategies as st
import pytest
import torch
import torch.nn.functional as F
import yaml
from hypothesis import given, settings

from lightning_autobalance.baselines import BASELINES, FocalLoss, LDAMLoss, make_baseline

CONF = Path(__file__).resolve().parents[1] / "conf" / "loss"


def _batch(num_classes, n=19, seed=0, scale=2.0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, num_classes, generator=gen) * scale, torch.randint(0, num_classes, (n,), generator=gen)


def hand_ldam(logits, y, counts, max_margin, s, weights=None):
    """Cao et al. 2019 / kaidic LDAM-DRW, one sample at a time: CE(s·(x − m_y on the true class)), weighted mean."""
    inv_root = [n**-0.25 for n in counts]
    margins = [m * max_margin / max(inv_root) for m in inv_root]
    total, total_weight = 0.0, 0.0
    for i in range(logits.shape[0]):
        t = int(y[i])
        z = [s * (float(logits[i, k]) - (margins[k] if k == t else 0.0)) for k in range(logits.shape[1])]
        top = max(z)
        log_norm = top + math.log(sum(math.exp(v - top) for v in z))
        w = 1.0 if weights is None else weights[t]
        total += w * (log_norm - z[t])
        total_weight += w
    return total / total_weight


def hand_focal(logits, y, gamma, alpha=None):
    """Lin et al. 2017: mean of −α_y (1 − p_y)^γ log p_y."""
    total = 0.0
    for i in range(logits.shape[0]):
        t = int(y[i])
        exps = [math.exp(float(v)) for v in logits[i]]
        p = exps[t] / sum(exps)
        a = 1.0 if alpha is None else alpha[t]
        total += -a * (1 - p) ** gamma * math.log(p)
    return total / logits.shape[0]


def cui_weights(counts, beta):
    """Class-balanced weights of Cui et al. as in the LDAM-DRW code: (1 − β)/(1 − β^n), normalised to Σ = K."""
    raw = [(1 - beta) / (1 - beta**n) for n in counts]
    return [w * len(counts) / sum(raw) for w in raw]


# ---------------------------------------------------------------------------------------------- LDAM


@pytest.mark.parametrize("counts", [[400, 20], [500, 120, 60, 25, 8]], ids=["binary", "multiclass"])
@pytest.mark.parametrize("max_margin,s", [(0.5, 30.0), (0.3, 5.0)])
def test_ldam_matches_hand_loop(counts, max_margin, s):
    logits, y = _batch(len(counts), seed=len(counts))
    loss_fn = LDAMLoss(counts, max_margin=max_margin, scale=s)
    assert float(loss_fn(logits, y)) == pytest.approx(hand_ldam(logits, y, counts, max_margin, s), rel=1e-5)
    # groups are accepted and ignored
    assert torch.equal(loss_fn(logits, y, torch.zeros_like(y)), loss_fn(logits, y))


def test_ldam_without_margin_and_scale_is_cross_entropy():
    logits, y = _batch(4)
    torch.testing.assert_close(
        LDAMLoss([90, 9, 40, 3], max_margin=0.0, scale=1.0)(logits, y), F.cross_entropy(logits, y)
    )


def test_ldam_margins_follow_inverse_fourth_root():
    loss_fn = LDAMLoss([10000, 625, 16], max_margin=0.5)
    # n^{-1/4} = 0.1, 0.2, 0.5 → scaled so the max is 0.5
    torch.testing.assert_close(loss_fn.margins, torch.tensor([0.1, 0.2, 0.5]))


def test_ldam_drw_switches_on_class_balanced_weights_at_drw_epoch():
    counts, beta = [500, 120, 60, 8], 0.9999
    logits, y = _batch(4, seed=3)
    loss_fn = LDAMLoss(counts, drw_epoch=2, beta=beta)
    plain = hand_ldam(logits, y, counts, 0.5, 30.0)
    weighted = hand_ldam(logits, y, counts, 0.5, 30.0, cui_weights(counts, beta))
    for epoch, expected in [(0, plain), (1, plain), (2, weighted), (7, weighted)]:
        loss_fn.set_epoch(epoch)
        assert float(loss_fn(logits, y)) == pytest.approx(expected, rel=1e-5), epoch
    # the weighted mean is F.cross_entropy's, as in the reference code
    margins = loss_fn.margins
    reference = F.cross_entropy(
        30.0 * (logits - F.one_hot(y, 4) * margins[y][:, None]), y, weight=torch.tensor(cui_weights(counts, beta))
    )
    torch.testing.assert_close(loss_fn(logits, y), reference)
    per_sample = loss_fn(logits, y, reduction="none")
    assert per_sample.shape == (19,)
    torch.testing.assert_close(loss_fn(logits, y, reduction="sum"), per_sample.sum())


def test_ldam_epoch_is_saved_in_the_state_dict():
    loss_fn = LDAMLoss([50, 5], drw_epoch=3)
    loss_fn.set_epoch(4)
    fresh = LDAMLoss([50, 5], drw_epoch=3)
    assert fresh.class_weights() is None
    fresh.load_state_dict(loss_fn.state_dict())
    assert fresh.epoch == 4 and fresh.class_weights() is not None


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(class_counts=[10, 0, 3]), r"classes \[1\] have none: drop those classes"),
        (dict(max_margin=-0.1), r"max_margin must be a finite number ≥ 0.*got -0\.1"),
        (dict(scale=0.0), r"scale must be a finite positive number.*got 0\.0"),
        (dict(drw_epoch=-1), r"drw_epoch must be an epoch index ≥ 0.*got -1"),
        (dict(beta=1.0), r"beta must lie in \[0, 1\).*got 1\.0"),
        (dict(class_counts=[5]), "at least 2 classes"),
    ],
)
def test_ldam_errors(kwargs, match):
    options = dict(class_counts=[10, 4, 3]) | kwargs
    with pytest.raises(ValueError, match=match):
        LDAMLoss(options.pop("class_counts"), **options)


def test_ldam_input_errors():
    loss_fn = LDAMLoss([10, 4, 3])
    with pytest.raises(ValueError, match=r"num_classes=3 but the logits have shape \(2, 4\)"):
        loss_fn(torch.randn(2, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="epoch must be an integer ≥ 0"):
        loss_fn.set_epoch(-2)
    with pytest.raises(ValueError, match="reduction must be"):
        loss_fn(torch.randn(2, 3), torch.tensor([0, 1]), reduction="max")


# ---------------------------------------------------------------------------------------------- focal


@pytest.mark.parametrize("num_classes", [2, 5])
@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_focal_matches_hand_loop(num_classes, gamma):
    logits, y = _batch(num_classes, seed=num_classes)
    alpha = [0.25 + 0.5 * k for k in range(num_classes)]
    expected = hand_focal(logits, y, gamma)
    assert float(FocalLoss(gamma)(logits, y)) == pytest.approx(expected, rel=1e-5)
    weighted = hand_focal(logits, y, gamma, alpha)
    assert float(FocalLoss(gamma, alpha=alpha)(logits, y)) == pytest.approx(weighted, rel=1e-5)


def test_focal_with_gamma_zero_is_cross_entropy():
    logits, y = _batch(3)
    torch.testing.assert_close(FocalLoss(gamma=0.0)(logits, y), F.cross_entropy(logits, y))
    alpha = torch.tensor([1.0, 2.0, 0.5])
    torch.testing.assert_close(
        FocalLoss(gamma=0.0, alpha=alpha)(logits, y, reduction="sum"),
        F.cross_entropy(logits, y, weight=alpha, reduction="sum"),
    )


def test_focal_factor_is_accurate_for_confident_predictions():
    # p_y = 1 − 6.1e-6: in float32, 1 − exp(log p_y) loses ~1% of 1 − p_y; the factor (1 − p_y)^γ must not
    logits, y = torch.tensor([[12.0, 0.0], [0.0, 12.0]]), torch.tensor([0, 1])
    miss = math.exp(-12.0) / (1 + math.exp(-12.0))
    ratio = FocalLoss(2.0)(logits, y, reduction="none") / FocalLoss(0.0)(logits, y, reduction="none")
    assert ratio.tolist() == pytest.approx([miss**2, miss**2], rel=1e-4)


def test_focal_down_weights_easy_examples():
    logits, y = torch.tensor([[8.0, 0.0], [0.2, 0.0]]), torch.tensor([0, 0])
    ce = F.cross_entropy(logits, y, reduction="none")
    focal = FocalLoss(2.0)(logits, y, reduction="none")
    assert float(focal[0] / ce[0]) < 1e-6 < float(focal[1] / ce[1])


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(gamma=-1.0), r"gamma must be a finite number ≥ 0.*got -1\.0"),
        (dict(alpha=[1.0, -2.0]), "alpha must hold finite positive per-class weights"),
        (dict(alpha=[1.0, 2.0], num_classes=3), "alpha has 2 weights but num_classes=3"),
        (dict(num_classes=1), "num_classes must be an integer ≥ 2"),
    ],
)
def test_focal_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FocalLoss(**kwargs)


def test_focal_checks_the_logit_width_against_alpha():
    with pytest.raises(ValueError, match=r"num_classes=2 but the logits have shape \(3, 4\)"):
        FocalLoss(alpha=[1.0, 3.0])(torch.randn(3, 4), torch.tensor([0, 1, 0]))


# ---------------------------------------------------------------------------------------------- factory and configs


def test_make_baseline_builds_from_class_or_group_counts():
    ldam = make_baseline("ldam", group_counts=[[300, 20], [100, 5]], max_margin=0.4)
    torch.testing.assert_close(ldam.margins, LDAMLoss([400, 25], max_margin=0.4).margins)
    assert make_baseline("focal", class_counts=[5, 6, 7]).num_classes == 3
    with pytest.raises(ValueError, match=r"Unknown baseline loss 'ldma': choose one of ldam, focal"):
        make_baseline("ldma", class_counts=[5, 6])
    with pytest.raises(ValueError, match="differ from the class totals"):
        make_baseline("ldam", class_counts=[5, 6], group_counts=[[1, 2], [3, 3]])
    with pytest.raises(ValueError, match="pass class_counts"):
        make_baseline("ldam")


@pytest.mark.parametrize("name,cls", [("ldam", LDAMLoss), ("ldam_drw", LDAMLoss), ("focal", FocalLoss)])
def test_baseline_hydra_configs(name, cls):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(yaml.safe_load((CONF / f"{name}.yaml").read_text(encoding="utf-8")))
    assert cfg._partial_ is True and cfg.name in BASELINES
    loss_fn = instantiate(cfg)(class_counts=[300, 40, 7], group_counts=None)
    assert isinstance(loss_fn, cls)
    logits, y = _batch(3)
    assert torch.isfinite(loss_fn(logits, y))
    if name == "ldam_drw":
        assert loss_fn.drw_epoch is not None and loss_fn.beta == 0.9999


# ---------------------------------------------------------------------------------------------- properties

PROPERTY = settings(max_examples=25, deadline=None, derandomize=True)
counts_st = st.lists(st.integers(1, 100_000), min_size=2, max_size=6)


def _baseline(kind, counts, beta=0.9999):
    if kind == "ldam":
        return LDAMLoss(counts)
    if kind == "ldam_drw":
        return LDAMLoss(counts, drw_epoch=0, beta=beta)
    if kind == "focal_sqrt":  # γ < 1: (1 − p)^γ has an infinite slope at p = 1
        return FocalLoss(0.5)
    return FocalLoss(2.0, alpha=[1.0 / c for c in counts])


@PROPERTY
@given(counts=counts_st, kind=st.sampled_from(["ldam", "ldam_drw", "focal", "focal_sqrt"]), seed=st.integers(0, 2**16))
def test_baselines_are_finite_for_extreme_logits(counts, kind, seed):
    gen = torch.Generator().manual_seed(seed)
    logits = ((torch.randint(0, 3, (8, len(counts)), generator=gen).float() - 1) * 1e4).requires_grad_()
    y = torch.randint(0, len(counts), (8,), generator=gen)
    loss = _baseline(kind, counts)(logits, y)
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(logits.grad).all()


@PROPERTY
@given(counts=counts_st, kind=st.sampled_from(["ldam", "ldam_drw", "focal"]), data=st.data())
def test_baselines_are_invariant_to_permuting_classes_with_their_counts(counts, kind, data):
    perm = data.draw(st.permutations(range(len(counts))))
    inverse = torch.argsort(torch.tensor(perm))
    logits, y = _batch(len(counts), n=16, seed=len(counts), scale=3.0)
    original = _baseline(kind, counts)(logits, y, reduction="none")
    permuted = _baseline(kind, [counts[k] for k in perm])(logits[:, perm], inverse[y], reduction="none")
    torch.testing.assert_close(permuted, original)


@PROPERTY
@given(counts=counts_st, kind=st.sampled_from(["ldam", "ldam_drw"]), factor=st.floats(0.01, 1000.0))
def test_ldam_is_invariant_to_scaling_counts(counts, kind, factor):
    # the margins depend on ratios only; the DRW weights (effective numbers) with β → β^(1/c)
    logits, y = _batch(len(counts), n=16, seed=1, scale=3.0)
    beta = 0.999
    a = _baseline(kind, counts, beta)(logits, y)
    b = _baseline(kind, [c * factor for c in counts], beta ** (1 / factor))(logits, y)
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
