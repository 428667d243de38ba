"""Upper-level objectives: values and gradients against hand computations, missing cells, blends, errors, configs."""

import itertools
import math
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from lightning_autobalance.objectives import (
    OBJECTIVES,
    Blend,
    EqualizedOddsGap,
    EqualOpportunityGap,
    WorstGroup,
    balanced_cross_entropy,
    blend,
    cell_mean_losses,
    equal_opportunity_gap_loss,
    equalized_odds_gap_loss,
    get_objective,
    requires_groups,
    worst_group_loss,
)

CONF = Path(__file__).resolve().parents[1] / "conf"

# A binary batch of 7 samples, 2 groups; cells (g, y): (0,0): samples 0, 1 · (0,1): 2 · (1,0): 3 · (1,1): 4, 5, 6
LOGITS = [[2.0, 0.0], [0.5, 1.0], [0.0, 1.5], [1.0, -1.0], [0.0, -0.5], [0.3, 0.2], [-1.0, 2.0]]
TARGETS = [0, 0, 1, 0, 1, 1, 1]
GROUPS = [0, 0, 0, 1, 1, 1, 1]


def _batch(dtype=torch.float64):
    logits = torch.tensor(LOGITS, dtype=dtype, requires_grad=True)
    return logits, torch.tensor(TARGETS), torch.tensor(GROUPS)


def _hand_ce(logits, targets):
    """Binary CE written out: log(e^a + e^b) − z_y, sample by sample."""
    return [torch.log(torch.exp(z[0]) + torch.exp(z[1])) - z[y] for z, y in zip(logits, targets.tolist(), strict=True)]


def _hand_cells(logits, targets):
    ce = _hand_ce(logits, targets)
    return {
        (0, 0): (ce[0] + ce[1]) / 2,
        (0, 1): ce[2],
        (1, 0): ce[3],
        (1, 1): (ce[4] + ce[5] + ce[6]) / 3,
    }


def _grad(value, logits):
    (grad,) = torch.autograd.grad(value, logits, retain_graph=True)
    return grad


def _check_value_and_grad(objective_value, hand_value, logits):
    assert torch.allclose(objective_value, hand_value, atol=1e-12)
    assert torch.allclose(_grad(objective_value, logits), _grad(hand_value, logits), atol=1e-12)


# ---------------------------------------------------------------------------------------------- hand computations


def test_cell_means_match_hand_values():
    logits, y, g = _batch()
    cells = _hand_cells(logits, y)
    means, present = cell_mean_losses(F.cross_entropy(logits, y, reduction="none"), y, g, num_classes=2)
    assert present.all()
    for (gi, yi), value in cells.items():
        assert torch.isclose(means[gi, yi], value)
    # spot check of one CE value against numbers: sample 0, log(e² + 1) − 2
    assert math.isclose(float(_hand_ce(logits.detach(), y)[0]), math.log(math.exp(2) + 1) - 2, rel_tol=1e-12)


def test_balanced_matches_hand_computation():
    logits, y, g = _batch()
    ce = _hand_ce(logits, y)
    hand = ((ce[0] + ce[1] + ce[3]) / 3 + (ce[2] + ce[4] + ce[5] + ce[6]) / 4) / 2
    _check_value_and_grad(balanced_cross_entropy(logits, y, g), hand, logits)


def test_worst_group_hard_matches_hand_max_and_its_gradient():
    logits, y, g = _batch()
    cells = _hand_cells(logits, y)
    worst = max(cells, key=lambda c: cells[c].detach().item())
    for objective in (WorstGroup(hard=True), WorstGroup(temperature=0.0)):
        _check_value_and_grad(objective(logits, y, g), cells[worst], logits)
    # the gradient in closed form: (softmax − one-hot) / n_cell on the worst cell's samples, 0 elsewhere
    members = [i for i in range(7) if (GROUPS[i], TARGETS[i]) == worst]
    expected = torch.zeros(7, 2, dtype=torch.float64)
    probs = torch.softmax(logits.detach(), 1)
    for i in members:
        expected[i] = (probs[i] - F.one_hot(y[i], 2)) / len(members)
    assert torch.allclose(_grad(WorstGroup(hard=True)(logits, y, g), logits), expected)


@pytest.mark.parametrize("temperature", [0.05, 0.5, 3.0])
def test_worst_group_smooth_matches_tau_log_mean_exp(temperature):
    logits, y, g = _batch()
    cells = torch.stack(list(_hand_cells(logits, y).values()))
    hand = temperature * torch.log(torch.exp(cells / temperature).mean())
    _check_value_and_grad(WorstGroup(temperature=temperature)(logits, y, g), hand, logits)


def test_worst_group_over_group_and_class():
    logits, y, g = _batch()
    ce = _hand_ce(logits, y)
    by_group = torch.stack([(ce[0] + ce[1] + ce[2]) / 3, (ce[3] + ce[4] + ce[5] + ce[6]) / 4])
    _check_value_and_grad(WorstGroup(hard=True, over="group")(logits, y, g), by_group.max(), logits)
    by_class = torch.stack([(ce[0] + ce[1] + ce[3]) / 3, (ce[2] + ce[4] + ce[5] + ce[6]) / 4])
    objective = WorstGroup(hard=True, over="class")
    assert not objective.requires_groups
    _check_value_and_grad(objective(logits, y, None), by_class.max(), logits)
    assert torch.equal(objective(logits, y, g), objective(logits, y, None))  # groups are ignored


def test_equal_opportunity_gap_uses_the_positive_class_cells():
    logits, y, g = _batch()
    cells = _hand_cells(logits, y)
    hand = torch.abs(cells[(0, 1)] - cells[(1, 1)])
    _check_value_and_grad(EqualOpportunityGap()(logits, y, g), hand, logits)


def test_equalized_odds_gap_uses_positive_and_negative_cells():
    logits, y, g = _batch()
    cells = _hand_cells(logits, y)
    tpr_like = torch.abs(cells[(0, 1)] - cells[(1, 1)])
    fpr_like = torch.abs(cells[(0, 0)] - cells[(1, 0)])
    hand = torch.maximum(tpr_like, fpr_like)
    _check_value_and_grad(EqualizedOddsGap()(logits, y, g), hand, logits)
    assert not torch.isclose(fpr_like, tpr_like)


def test_smooth_gap_matches_smooth_max_minus_smooth_min():
    logits, y, g = _batch()
    cells = _hand_cells(logits, y)
    t = 0.3
    pair = torch.stack([cells[(0, 1)], cells[(1, 1)]])
    hand = t * torch.log(torch.exp(pair / t).mean()) + t * torch.log(torch.exp(-pair / t).mean())
    _check_value_and_grad(EqualOpportunityGap(temperature=t)(logits, y, g), hand, logits)
    assert hand.detach() < torch.abs(pair[0] - pair[1]).detach()  # smoothing shrinks the gap


def _multiclass_batch():
    torch.manual_seed(0)
    logits = torch.randn(12, 3, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 1])
    g = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2])  # class 2 only in groups 0 and 1; class 0 in 0 and 1
    return logits, y, g


def test_multiclass_gaps_one_vs_rest_by_hand():
    logits, y, g = _multiclass_batch()
    p = torch.softmax(logits, 1)
    pos_gaps, odds_gaps = [], []
    for k in range(3):
        pos = [(-torch.log(p[(y == k) & (g == gi), k])).mean() for gi in range(3) if ((y == k) & (g == gi)).any()]
        neg = [(-torch.log1p(-p[(y != k) & (g == gi), k])).mean() for gi in range(3) if ((y != k) & (g == gi)).any()]
        pos_gap = torch.stack(pos).max() - torch.stack(pos).min()
        neg_gap = torch.stack(neg).max() - torch.stack(neg).min()
        pos_gaps.append(pos_gap)
        odds_gaps.append(torch.maximum(pos_gap, neg_gap))
    for reduction, reduce in (("max", torch.max), ("mean", torch.mean)):
        _check_value_and_grad(EqualOpportunityGap(reduction)(logits, y, g), reduce(torch.stack(pos_gaps)), logits)
        _check_value_and_grad(EqualizedOddsGap(reduction)(logits, y, g), reduce(torch.stack(odds_gaps)), logits)


def test_negative_loss_is_stable_for_confident_logits():
    # p_1 rounds to 1 in float32: −log(1 − p_1) must stay finite (= the log-sum-exp of the other logits)
    logits = torch.tensor([[0.0, 40.0], [0.0, 30.0], [0.0, -5.0], [2.0, 0.0]], requires_grad=True)
    y, g = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 0, 1])
    value = EqualizedOddsGap()(logits, y, g)
    grad = _grad(value, logits)
    assert torch.isfinite(value) and torch.isfinite(grad).all()
    assert math.isclose(value.detach().item(), 10.0, abs_tol=1e-4)  # negative cells: CE 40 and 30


@pytest.mark.parametrize(
    "objective",
    [WorstGroup(temperature=0.5), EqualOpportunityGap(temperature=0.4), EqualizedOddsGap(temperature=0.4)],
    ids=repr,
)
def test_smooth_objectives_pass_gradcheck(objective):
    logits, y, g = _multiclass_batch()
    logits = logits.detach().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: objective(z, y, g), (logits,))


# ---------------------------------------------------------------------------------------------- temperature


def test_worst_group_tends_to_the_hard_max_as_temperature_goes_to_zero():
    logits, y, g = _batch()
    hard = WorstGroup(hard=True)(logits, y, g).detach().item()
    mean = torch.stack(list(_hand_cells(logits, y).values())).mean().detach().item()
    values = [WorstGroup(temperature=t)(logits, y, g).detach().item() for t in (10.0, 1.0, 0.1, 0.01, 0.001)]
    assert all(a <= b + 1e-12 for a, b in itertools.pairwise(values))  # increases as τ decreases
    assert all(mean - 1e-12 <= v <= hard + 1e-12 for v in values)  # between the mean and the max
    assert abs(values[0] - mean) < 0.05 and abs(values[-1] - hard) < 0.002
    for t, v in zip((10.0, 1.0, 0.1, 0.01, 0.001), values, strict=True):
        assert hard - t * math.log(4) <= v + 1e-12  # τ·log mean exp ≥ max − τ·log C


def test_tiny_temperature_is_finite_and_hard_flag_overrides_it():
    logits, y, g = _batch()
    value = WorstGroup(temperature=1e-6)(logits, y, g)
    assert torch.isfinite(_grad(value, logits)).all()
    assert torch.equal(WorstGroup(temperature=5.0, hard=True)(logits, y, g), WorstGroup(hard=True)(logits, y, g))


# ---------------------------------------------------------------------------------------------- blends


def test_blend_with_lambda_zero_and_one_equals_its_parts():
    logits, y, g = _batch()
    a, b = balanced_cross_entropy(logits, y, g), EqualOpportunityGap()(logits, y, g)
    _check_value_and_grad(Blend("balanced", "equal_opportunity_gap", 0.0)(logits, y, g), a, logits)
    _check_value_and_grad(blend("balanced", EqualOpportunityGap(), 1.0)(logits, y, g), b, logits)
    _check_value_and_grad(Blend(lam=0.3)(logits, y, g), 0.7 * a + 0.3 * b, logits)


def test_blend_validates_lambda_and_knows_whether_it_needs_groups():
    with pytest.raises(ValueError, match=r"lam must lie in \[0, 1\]"):
        Blend(lam=1.5)
    assert Blend("balanced", "worst_group").requires_groups
    assert not Blend("balanced", "worst_class").requires_groups
    with pytest.raises(ValueError, match="Unknown objective"):
        Blend("balanced", "equal_oportunity")


# ---------------------------------------------------------------------------------------------- missing cells


def test_missing_cells_are_excluded_not_counted_as_zero():
    logits, y, g = _batch()
    keep = torch.tensor([0, 1, 2, 4, 5, 6])  # drops sample 3, the only one of cell (1, 0)
    sub_logits, sub_y, sub_g = logits[keep], y[keep], g[keep]
    cells = _hand_cells(logits, y)
    present = torch.stack([cells[(0, 0)], cells[(0, 1)], cells[(1, 1)]])
    t = 0.5
    hand = t * torch.log(torch.exp(present / t).mean())  # mean over the 3 cells present, not 4
    _check_value_and_grad(WorstGroup(temperature=t)(sub_logits, sub_y, sub_g), hand, logits)
    # a group index with no sample at all (group 1 absent, group 2 present) changes nothing
    regrouped = torch.where(sub_g == 1, torch.tensor(2), sub_g)
    assert torch.allclose(WorstGroup(temperature=t)(sub_logits, sub_y, regrouped), hand)
    # equalized odds: the negative class now lives in one group only, so only the positive gap is defined
    _check_value_and_grad(
        EqualizedOddsGap()(sub_logits, sub_y, sub_g), torch.abs(cells[(0, 1)] - cells[(1, 1)]), logits
    )


def test_gap_without_two_groups_is_a_connected_zero_with_a_warning():
    logits, y, g = _batch()
    one_group = torch.zeros_like(g)
    with pytest.warns(UserWarning, match="gap is undefined"):
        value = EqualOpportunityGap()(logits, y, one_group)
    assert value.detach().item() == 0.0
    assert torch.equal(_grad(value, logits), torch.zeros_like(logits))


def test_multiclass_classes_in_one_group_are_left_out_of_the_mean():
    logits, y, g = _multiclass_batch()
    keep = ~((y == 2) & (g == 1))  # class 2 then only in group 0: no gap for class 2
    full = EqualOpportunityGap("mean")
    value = full(logits[keep], y[keep], g[keep])
    p = torch.softmax(logits[keep], 1)
    yk, gk = y[keep], g[keep]
    gaps = []
    for k in (0, 1):
        pos = torch.stack(
            [(-torch.log(p[(yk == k) & (gk == gi), k])).mean() for gi in range(3) if ((yk == k) & (gk == gi)).any()]
        )
        gaps.append(pos.max() - pos.min())
    assert torch.allclose(value, torch.stack(gaps).mean())


# ---------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("name", ["worst_group", "equal_opportunity_gap", "equalized_odds_gap"])
def test_group_objective_without_groups_fails_clearly(name):
    logits, y, _ = _batch()
    objective = get_objective(name)
    assert objective.requires_groups
    with pytest.raises(ValueError, match=r"needs group labels: return \(x, y, g\) batches"):
        objective(logits, y, None)


def test_blend_of_a_group_objective_without_groups_fails_clearly():
    logits, y, _ = _batch()
    with pytest.raises(ValueError, match="needs group labels"):
        Blend("balanced", "worst_group", 0.5)(logits, y, None)


def test_invalid_arguments_fail_early():
    with pytest.raises(ValueError, match="temperature"):
        WorstGroup(temperature=-1.0)
    with pytest.raises(ValueError, match="temperature"):
        EqualOpportunityGap(temperature=float("nan"))
    with pytest.raises(ValueError, match="over must be"):
        WorstGroup(over="cell")
    with pytest.raises(ValueError, match="reduction"):
        EqualizedOddsGap(reduction="sum")
    logits, y, g = _batch()
    with pytest.raises(ValueError, match="integer group indices"):
        worst_group_loss(logits, y, g.double())
    with pytest.raises(ValueError, match="one entry per sample"):
        equal_opportunity_gap_loss(logits, y, g[:3])
    with pytest.raises(ValueError, match="≥ 0"):
        equalized_odds_gap_loss(logits, y, g - 1)


def test_registry_and_unknown_names():
    assert set(OBJECTIVES) >= {"balanced", "worst_group", "equal_opportunity_gap", "equalized_odds_gap"}
    assert get_objective("balanced") is balanced_cross_entropy
    assert isinstance(get_objective("worst_group"), WorstGroup)
    custom = lambda logits, targets, groups: logits.sum()  # noqa: E731
    assert get_objective(custom) is custom
    with pytest.raises(ValueError, match="Did you mean 'worst_group'"):
        get_objective("worst-group")


def test_objectives_run_without_warnings_on_a_full_batch():
    logits, y, g = _batch()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for objective in OBJECTIVES.values():
            objective(logits, y, g).backward()


# ---------------------------------------------------------------------------------------------- configs


@pytest.mark.parametrize("name", ["balanced", "worst_group", "equal_opportunity_gap", "equalized_odds_gap", "blend"])
def test_objective_configs_instantiate(name):
    from hydra.utils import instantiate

    objective = instantiate(OmegaConf.load(CONF / "objective" / f"{name}.yaml"))
    logits, y, g = _batch()
    value = objective(logits, y, g)
    assert value.ndim == 0 and torch.isfinite(value)
    assert torch.isfinite(_grad(value, logits)).all()


@pytest.mark.parametrize(
    "objective", [EqualOpportunityGap(temperature=0.3), EqualizedOddsGap(temperature=0.3)], ids=repr
)
def test_absent_class_keeps_gradients_finite_with_smooth_extremes(objective):
    logits, y, g = _multiclass_batch()
    keep = y != 2  # class 2 absent from every group: its column has no cell at all
    value = objective(logits[keep], y[keep], g[keep])
    grad = _grad(value, logits)
    assert torch.isfinite(value) and torch.isfinite(grad).all()
    assert torch.equal(grad[~keep], torch.zeros_like(grad[~keep]))


def test_requires_groups_reads_the_declared_flag_and_defaults_to_no():
    assert requires_groups(WorstGroup()) and requires_groups(EqualizedOddsGap())
    assert not requires_groups(WorstGroup(over="class"))
    assert not requires_groups(balanced_cross_entropy)
    assert not requires_groups(lambda logits, targets, groups=None: logits.sum())  # a user's plain function
    assert requires_groups(Blend("balanced", "worst_group"))
    assert not requires_groups(Blend("balanced", WorstGroup(over="class")))
