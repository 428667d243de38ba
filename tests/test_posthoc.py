"""Post-hoc logit adjustment: τ against a brute-force grid, the population closed form, and bad inputs."""

import math

import pytest
import torch
import torch.nn.functional as F

from lightning_autobalance.posthoc import adjust_logits, fit_logit_adjustment


def balanced_ce_by_hand(logits, targets, num_classes):
    per_class = [F.cross_entropy(logits[targets == k], targets[targets == k]) for k in range(num_classes)]
    return sum(per_class) / num_classes


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tau_is_the_minimiser_on_a_fine_grid(seed):
    generator = torch.Generator().manual_seed(seed)
    counts = torch.tensor([500.0, 120.0, 40.0, 8.0])
    logits = torch.randn(200, 4, generator=generator, dtype=torch.float64) * 2
    targets = torch.randint(0, 4, (200,), generator=generator)
    logits[torch.arange(200), targets] += 1.5  # informative logits
    logits += torch.log(counts / counts.sum())  # and biased toward the frequent classes
    tau = fit_logit_adjustment(logits, targets, counts)
    grid = torch.linspace(-2, 4, 1201, dtype=torch.float64)
    log_prior = torch.log(counts / counts.sum())
    values = torch.stack([balanced_ce_by_hand(logits - t * log_prior, targets, 4) for t in grid])
    best = float(grid[values.argmin()])
    assert abs(tau - best) <= 5e-3
    assert 0.3 < tau < 1.7  # the bias added above is undone by a τ near 1


def test_calibrated_scores_of_the_training_prior_give_tau_one():
    # logits = log p_train(y | x) on a large sample drawn from the *balanced* distribution: the balanced cross-entropy
    # is minimised by removing exactly log π (τ = 1), the population statement of logit adjustment.
    generator = torch.Generator().manual_seed(0)
    prior = torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64)
    means = torch.tensor([[0.0, 0.0], [1.5, 0.0], [0.0, 1.5]], dtype=torch.float64)
    targets = torch.arange(3).repeat_interleave(20000)
    x = means[targets] + torch.randn(60000, 2, generator=generator, dtype=torch.float64)
    log_likelihood = -0.5 * ((x[:, None, :] - means[None]) ** 2).sum(-1)
    logits = log_likelihood + torch.log(prior)  # Bayes posterior under the training prior (up to a constant)
    tau = fit_logit_adjustment(logits, targets, prior * 1000)
    assert math.isclose(tau, 1.0, abs_tol=0.03)


def test_adjust_logits_subtracts_tau_log_prior():
    counts = torch.tensor([3.0, 1.0])
    adjusted = adjust_logits(torch.zeros(1, 2), counts, 2.0)
    assert torch.allclose(adjusted, -2.0 * torch.log(torch.tensor([[0.75, 0.25]])))


@pytest.mark.parametrize(
    "logits,targets,counts,match",
    [
        (torch.zeros(4, 3), torch.zeros(4, dtype=torch.long), [1.0, 2.0], r"class_counts has 2 entries but .* 3"),
        (torch.zeros(4, 2), torch.zeros(4, dtype=torch.long), [1.0, 0.0], r"positive finite training counts.*0\.0"),
        (torch.zeros(4, 2), torch.full((4,), 2), [1.0, 1.0], r"targets must lie in \[0, 2\), got values 2\.\.2"),
        (torch.full((4, 2), math.nan), torch.zeros(4, dtype=torch.long), [1.0, 1.0], "NaN or inf"),
        (torch.zeros(4, 2), torch.zeros(3, dtype=torch.long), [1.0, 1.0], r"got \(4, 2\) and \(3,\)"),
    ],
)
def test_bad_inputs_name_the_value(logits, targets, counts, match):
    with pytest.raises(ValueError, match=match):
        fit_logit_adjustment(logits, targets, counts)
