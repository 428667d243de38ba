import math

import pytest
import torch
import torch.nn.functional as F

from lightning_autobalance.losses import ParametricCrossEntropy, frequency_blocks, preset_values


def hand_loss(logits, y, delta, iota, omega, groups=None):
    """−ω_y log softmax_y(Δ ⊙ f + ι), written out sample by sample."""
    total = 0.0
    for i in range(logits.shape[0]):
        g = 0 if groups is None else int(groups[i])
        z = [float(delta[g][k]) * float(logits[i, k]) + float(iota[g][k]) for k in range(logits.shape[1])]
        log_norm = math.log(sum(math.exp(v) for v in z))
        total += -float(omega[g][int(y[i])]) * (z[int(y[i])] - log_norm)
    return total / logits.shape[0]


@pytest.mark.parametrize("num_classes,num_groups", [(2, 1), (5, 1), (4, 3)])
@pytest.mark.parametrize("parameterization", ["sigmoid", "exp"])
def test_matches_hand_formula_random_parameters(num_classes, num_groups, parameterization):
    gen = torch.Generator().manual_seed(num_classes * 10 + num_groups)
    delta = torch.rand(num_groups, num_classes, generator=gen) * 1.5 + 0.2
    iota = torch.randn(num_groups, num_classes, generator=gen)
    omega = torch.rand(num_groups, num_classes, generator=gen) + 0.1
    loss_fn = ParametricCrossEntropy(
        num_classes, num_groups, delta=delta, iota=iota, omega=omega, delta_parameterization=parameterization
    )
    logits = torch.randn(17, num_classes, generator=gen)
    y = torch.randint(0, num_classes, (17,), generator=gen)
    groups = torch.randint(0, num_groups, (17,), generator=gen) if num_groups > 1 else None
    expected = hand_loss(logits, y, delta, iota, omega, groups)
    assert float(loss_fn(logits, y, groups)) == pytest.approx(expected, rel=1e-5)
    torch.testing.assert_close(loss_fn.delta(), delta, rtol=1e-5, atol=1e-6)


def test_block_sharing_matches_hand_formula_with_block_means():
    counts = [500, 40, 300, 10, 90, 5]
    blocks = frequency_blocks(counts, block_size=2)
    # sorted by frequency: 0 (500), 2 (300) | 4 (90), 1 (40) | 3 (10), 5 (5)
    assert blocks.tolist() == [0, 1, 0, 2, 1, 2]
    iota = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    loss_fn = ParametricCrossEntropy(6, iota=iota, blocks=blocks, learnable=["iota"])
    shared = torch.tensor([2.0, 3.5, 2.0, 5.0, 3.5, 5.0])  # block means
    torch.testing.assert_close(loss_fn.iota()[0], shared)
    assert loss_fn.raw_iota.shape == (1, 3)
    logits, y = torch.randn(9, 6), torch.randint(0, 6, (9,))
    expected = hand_loss(logits, y, [[1.0] * 6], [shared.tolist()], [[1.0] * 6])
    assert float(loss_fn(logits, y)) == pytest.approx(expected, rel=1e-5)
    # one shared parameter drives both classes of a block
    loss_fn(logits, y).backward()
    assert loss_fn.raw_iota.grad.shape == (1, 3)


def test_presets_equal_published_formulas():
    counts = torch.tensor([1000.0, 300.0, 50.0, 10.0])
    prior = counts / counts.sum()
    logits, y = torch.randn(31, 4), torch.randint(0, 4, (31,))
    tau, gamma = 1.3, 0.4

    def make(name):
        return ParametricCrossEntropy.from_preset(name, counts.tolist(), tau=tau, gamma=gamma)

    torch.testing.assert_close(make("ce")(logits, y), F.cross_entropy(logits, y))
    # logit adjustment (Menon et al.): CE on f + τ log π
    torch.testing.assert_close(make("la")(logits, y), F.cross_entropy(logits + tau * torch.log(prior), y))
    # CDT (Ye et al.): CE on f ⊙ (n/n_max)^γ
    scale = (counts / counts.max()) ** gamma
    torch.testing.assert_close(make("cdt")(logits, y), F.cross_entropy(logits * scale, y))
    # VS (Kini et al.): both
    torch.testing.assert_close(make("vs")(logits, y), F.cross_entropy(logits * scale + tau * torch.log(prior), y))
    # weighted CE: ω ∝ 1/π with E_π[ω] = 1 → plain mean of ω_y ℓ
    per_sample = F.cross_entropy(logits, y, reduction="none")
    omega = (1 / prior) / 4  # Σ π_y (1/π_y) = K
    torch.testing.assert_close(make("weighted")(logits, y), (omega[y] * per_sample).mean())
    # the ratio of weights is the ratio of priors
    values = preset_values("weighted", counts)
    assert float(values["omega"][3] / values["omega"][0]) == pytest.approx(100.0)


def test_default_is_cross_entropy_and_gradients_reach_learnable_only():
    loss_fn = ParametricCrossEntropy(3, learnable=["delta", "omega"])
    assert set(loss_fn.hparams()) == {"raw_delta", "raw_omega"}
    assert not isinstance(loss_fn.raw_iota, torch.nn.Parameter)
    logits, y = torch.randn(8, 3), torch.randint(0, 3, (8,))
    torch.testing.assert_close(loss_fn(logits, y), F.cross_entropy(logits, y))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(preset="nope", class_counts=[3, 4]), "Unknown loss preset 'nope'"),
        (dict(preset="la", class_counts=[3, 0]), r"classes \[1\] have none"),
        (dict(preset="weighted", class_counts=[3, 0, 2]), "need"),
    ],
)
def test_preset_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ParametricCrossEntropy.from_preset(kwargs.pop("preset"), **kwargs)


def test_input_errors_name_the_fix():
    loss_fn = ParametricCrossEntropy(3)
    with pytest.raises(ValueError, match=r"Labels must lie in \[0, 3\), got values in \[0, 3\]"):
        loss_fn(torch.randn(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"Labels must lie in \[0, 3\).*\[-1, 0\]"):
        loss_fn(torch.randn(2, 3), torch.tensor([-1, 0]))
    with pytest.raises(ValueError, match=r"num_classes=3 but the logits have shape \(2, 5\).*num_classes=5"):
        loss_fn(torch.randn(2, 5), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="no groups were passed"):
        ParametricCrossEntropy(3, num_groups=2)(torch.randn(2, 3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="Unknown learnable kinds"):
        ParametricCrossEntropy(3, learnable=["margin"])
    with pytest.raises(ValueError, match="delta_max"):
        ParametricCrossEntropy(3, delta=[1.0, 2.5, 1.0])
