import math
from pathlib import Path

import hypothesis.strategies as st
import pytest
import torch
import torch.nn.functional as F
import yaml
from hypothesis import given, settings

from lightning_autobalance.losses import PRESETS, ParametricCrossEntropy, frequency_blocks, make_loss, preset_values


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
    assert float(loss_fn(logits, y).detach()) == pytest.approx(expected, rel=1e-5)
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


# ---------------------------------------------------------------------------------------------- presets, by hand

TAU, GAMMA, BETA = 0.8, 0.45, 0.99


def hand_preset(preset, cells, tau=TAU, gamma=GAMMA, beta=BETA):
    """(Δ, ι, ω) as nested lists from the published formulas, each (group, class) cell treated like a class."""
    flat = [c for row in cells for c in row]
    n, n_max = sum(flat), max(flat)
    prior = [[c / n for c in row] for row in cells]
    delta = [[1.0 for _ in row] for row in cells]
    iota = [[0.0 for _ in row] for row in cells]
    omega = [[1.0 for _ in row] for row in cells]
    if preset == "weighted":  # Σ π ω = 1 with ω ∝ 1/π  →  ω = 1 / (#cells · π)
        omega = [[1.0 / (len(flat) * p) for p in row] for row in prior]
    if preset == "class_balanced":  # Cui et al.: ω ∝ (1 − β) / (1 − β^n), then Σ π ω = 1
        raw = [[(1 - beta) / (1 - beta**c) for c in row] for row in cells]
        norm = sum(p * w for prow, wrow in zip(prior, raw, strict=True) for p, w in zip(prow, wrow, strict=True))
        omega = [[w / norm for w in row] for row in raw]
    if preset in ("la", "vs"):  # Menon et al. / Kini et al.: ι = τ log π
        iota = [[tau * math.log(p) for p in row] for row in prior]
    if preset == "balanced_softmax":  # Ren et al.: softmax over f + log n (log π differs by a constant)
        iota = [[math.log(c) for c in row] for row in cells]
    if preset in ("cdt", "vs"):  # Ye et al. / Kini et al.: Δ = (n / n_max)^γ
        delta = [[(c / n_max) ** gamma for c in row] for row in cells]
    return delta, iota, omega


CASES = {
    "binary": [[700.0, 30.0]],
    "multiclass": [[900.0, 410.0, 120.0, 33.0, 7.0]],
    "groups": [[300.0, 20.0, 11.0, 4.0], [50.0, 90.0, 3.0, 60.0], [8.0, 8.0, 100.0, 2.0]],
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_matches_its_published_formula(preset, case):
    cells = CASES[case]
    num_groups, num_classes = len(cells), len(cells[0])
    gen = torch.Generator().manual_seed(len(preset) * 7 + num_classes)
    logits = torch.randn(23, num_classes, generator=gen) * 3
    y = torch.randint(0, num_classes, (23,), generator=gen)
    groups = torch.randint(0, num_groups, (23,), generator=gen) if num_groups > 1 else None
    kwargs = dict(tau=TAU, gamma=GAMMA, beta=BETA)
    if num_groups > 1:
        loss_fn = ParametricCrossEntropy.from_preset(preset, group_counts=cells, **kwargs)
    else:
        loss_fn = ParametricCrossEntropy.from_preset(preset, cells[0], **kwargs)
    assert loss_fn.num_groups == num_groups
    expected = hand_loss(logits, y, *hand_preset(preset, cells), groups)
    assert float(loss_fn(logits, y, groups)) == pytest.approx(expected, rel=1e-5)


def test_balanced_softmax_is_rens_formula_and_la_at_tau_one():
    counts = [500.0, 60.0, 9.0]
    logits, y = torch.randn(12, 3, dtype=torch.float64), torch.randint(0, 3, (12,))
    expected = 0.0
    for i in range(12):  # −log( n_y e^{f_y} / Σ_j n_j e^{f_j} )
        numerator = counts[int(y[i])] * math.exp(float(logits[i, int(y[i])]))
        expected -= math.log(numerator / sum(n * math.exp(float(f)) for n, f in zip(counts, logits[i], strict=True)))
    expected /= 12
    balanced = ParametricCrossEntropy.from_preset("balanced_softmax", counts, tau=0.3)  # tau is ignored
    assert float(balanced(logits.float(), y)) == pytest.approx(expected, rel=1e-5)
    la = ParametricCrossEntropy.from_preset("la", counts, tau=1.0)
    torch.testing.assert_close(balanced(logits.float(), y), la(logits.float(), y))


def test_class_balanced_limits_and_cui_normalisation():
    counts = [1000.0, 100.0, 10.0]
    # β = 0: every effective number is 1 → plain cross-entropy weights
    torch.testing.assert_close(preset_values("class_balanced", counts, beta=0.0)["omega"], torch.ones(3).double())
    # the ratio of weights is the ratio of inverse effective numbers (Cui et al. normalise Σ ω = K: same ratios)
    omega = preset_values("class_balanced", counts, beta=0.999)["omega"]
    effective = [(1 - 0.999**n) / (1 - 0.999) for n in counts]
    assert float(omega[2] / omega[0]) == pytest.approx(effective[0] / effective[2], rel=1e-9)
    # β → 1 approaches the ratio of priors of 'weighted'
    near_one = preset_values("class_balanced", counts, beta=1 - 1e-9)["omega"]
    torch.testing.assert_close(near_one, preset_values("weighted", counts)["omega"], rtol=1e-5, atol=0)


def test_group_counts_with_one_group_is_the_class_preset():
    counts = [400.0, 35.0, 12.0, 90.0]
    for preset in PRESETS:
        a = ParametricCrossEntropy.from_preset(preset, counts, tau=TAU, gamma=GAMMA, block_size=2)
        b = ParametricCrossEntropy.from_preset(preset, group_counts=[counts], tau=TAU, gamma=GAMMA, block_size=2)
        for kind in ("delta", "iota", "omega"):
            assert torch.equal(getattr(a, f"raw_{kind}"), getattr(b, f"raw_{kind}")), (preset, kind)


def test_group_la_joint_and_conditional_priors_give_the_same_loss():
    cells = torch.tensor([[300.0, 20.0, 5.0], [10.0, 40.0, 40.0]])
    loss_fn = ParametricCrossEntropy.from_preset("la", group_counts=cells)
    conditional = torch.log(cells / cells.sum(1, keepdim=True))  # ι_{g,y} = log π_{y|g}
    logits, y, g = torch.randn(10, 3), torch.randint(0, 3, (10,)), torch.randint(0, 2, (10,))
    expected = F.cross_entropy(logits + conditional[g], y)
    torch.testing.assert_close(loss_fn(logits, y, g), expected)


def test_group_counts_blocks_follow_class_totals():
    cells = [[100.0, 1.0, 30.0, 2.0], [100.0, 1.0, 40.0, 3.0]]  # totals 200, 2, 70, 5
    loss_fn = ParametricCrossEntropy.from_preset("la", group_counts=cells, block_size=2, learnable="iota")
    assert loss_fn.block_index.tolist() == [0, 1, 0, 1]
    assert loss_fn.raw_iota.shape == (2, 2)
    assert loss_fn.learnable == ("iota",)
    with pytest.raises(ValueError, match="num_groups=2 but no groups were passed: return"):
        loss_fn(torch.randn(3, 4), torch.tensor([0, 1, 2]))


# ---------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(beta=1.0), r"beta must lie in \[0, 1\).*got 1\.0"),
        (dict(beta=-0.1), r"beta must lie in \[0, 1\).*got -0\.1"),
        (dict(beta=float("nan")), r"beta must lie in \[0, 1\)"),
        (dict(tau=-1.0), r"tau must be a finite number ≥ 0.*got -1\.0"),
        (dict(gamma=float("inf")), r"gamma must be a finite number .*got inf"),
        (dict(gamma=-1.0), r"needs Δ up to 2.5 but delta_max=2.0: raise delta_max"),
        (dict(block_size=0), r"block_size must be a positive number of classes, got 0"),
        (dict(learnable=["delta", "margin"]), r"Unknown learnable kinds \['margin'\].*delta, iota, omega"),
        (dict(delta_parameterization="softplus"), r"delta_parameterization must be 'sigmoid'.*'softplus'"),
        (dict(delta_max=0.5), r"needs Δ up to 1 but delta_max=0.5: raise delta_max"),
        (
            dict(num_groups=2, class_counts=None, group_counts=[[1, 2, 3]] * 3),
            r"num_groups=2 but group_counts has 3 rows",
        ),
        (dict(group_counts=[[1, 2, 3], [1, 2, 4]]), r"class_counts \[.*\] differ from the class totals"),
        (dict(class_counts=None), "needs the training counts: pass class_counts"),
        (dict(class_counts=[[1, 2]]), "class_counts must be a 1-D sequence"),
        (dict(class_counts=None, group_counts=[1, 2, 3]), r"group_counts must be a \(num_groups, num_classes\)"),
    ],
)
def test_invalid_configurations_name_the_value_and_the_fix(kwargs, match):
    options = dict(class_counts=[20, 30, 50], preset="cdt") | kwargs
    with pytest.raises(ValueError, match=match):
        ParametricCrossEntropy.from_preset(options.pop("preset"), **options)


@pytest.mark.parametrize("preset", [p for p in PRESETS if p != "ce"])
def test_empty_group_cells_are_named(preset):
    cells = [[10, 0, 5], [3, 4, 0]]
    with pytest.raises(ValueError, match=r"cells \[\(0, 1\), \(1, 2\)\] are empty: merge or drop.*group_counts=None"):
        ParametricCrossEntropy.from_preset(preset, group_counts=cells)
    # cross-entropy uses no counts: empty cells are fine
    assert ParametricCrossEntropy.from_preset("ce", group_counts=cells).num_groups == 2


def test_unknown_preset_lists_the_choices():
    with pytest.raises(ValueError, match=r"Unknown loss preset 'focal'.*balanced_softmax"):
        make_loss("focal", class_counts=[3, 4])


def test_single_learnable_name_is_one_kind():
    assert ParametricCrossEntropy(3, learnable="delta").learnable == ("delta",)


# ---------------------------------------------------------------------------------------------- expansion

COUNTS6 = [500.0, 40.0, 300.0, 10.0, 90.0, 5.0]  # frequency order: 0, 2, 4, 1, 3, 5


def _coarse(num_groups=1):
    blocks = frequency_blocks(COUNTS6, block_size=2)  # [0, 1, 0, 2, 1, 2]
    loss = ParametricCrossEntropy(6, num_groups, blocks=blocks, learnable=("delta", "iota", "omega"))
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for raw in loss.hparams().values():
            raw.copy_(torch.randn(raw.shape, generator=gen))
    return loss


@pytest.mark.parametrize("num_groups", [1, 2])
def test_constant_expansion_gives_the_same_forward_bit_for_bit(num_groups):
    coarse = _coarse(num_groups)
    fine = coarse.expanded("constant")
    assert fine.block_index.tolist() == list(range(6)) and fine.raw_delta.shape == (num_groups, 6)
    assert fine.learnable == coarse.learnable and isinstance(fine.raw_iota, torch.nn.Parameter)
    logits, y = torch.randn(40, 6) * 5, torch.randint(0, 6, (40,))
    groups = torch.randint(0, num_groups, (40,)) if num_groups > 1 else None
    with torch.no_grad():
        assert torch.equal(fine(logits, y, groups, "none"), coarse(logits, y, groups, "none"))
    assert fine.expanded("constant", learnable=()).hparams() == {}


def test_linear_expansion_interpolates_block_values_across_frequency_ranks():
    coarse = _coarse(num_groups=2)
    fine = coarse.expanded("linear", COUNTS6)
    # ranks: class 0→0, 2→1, 4→2, 1→3, 3→4, 5→5; block anchors (mean ranks) 0.5, 2.5, 4.5
    rank = {0: 0, 2: 1, 4: 2, 1: 3, 3: 4, 5: 5}
    for kind in ("delta", "iota", "omega"):
        block = getattr(coarse, kind)().detach()[:, [0, 4, 3]]  # one class of each block 0, 1, 2
        got = getattr(fine, kind)().detach()
        for g in range(2):
            b0, b1, b2 = (float(v) for v in block[g])
            for k, r in rank.items():
                if r <= 0.5:
                    want = b0
                elif r <= 2.5:
                    want = b0 + (b1 - b0) * (r - 0.5) / 2
                elif r <= 4.5:
                    want = b1 + (b2 - b1) * (r - 2.5) / 2
                else:
                    want = b2
                assert float(got[g, k]) == pytest.approx(want, rel=1e-5, abs=1e-6), (kind, g, k)


def test_linear_expansion_without_counts_uses_block_order_and_rejects_interleaved_blocks():
    loss = ParametricCrossEntropy(4, iota=[0.0, 0.0, 4.0, 4.0], blocks=[0, 0, 1, 1])
    assert loss.expanded("linear").iota()[0].tolist() == pytest.approx([0.0, 1.0, 3.0, 4.0])
    with pytest.raises(ValueError, match=r"consecutive classes in frequency order.*mode='constant'"):
        loss.expanded("linear", class_counts=[10, 1, 9, 2])  # order 0, 2, 3, 1: blocks interleave
    with pytest.raises(ValueError, match="Unknown expansion mode 'cubic'"):
        loss.expanded("cubic")


# ---------------------------------------------------------------------------------------------- Hydra configs

CONF = Path(__file__).resolve().parents[1] / "conf" / "loss"


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_has_a_hydra_config(preset):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(yaml.safe_load((CONF / f"{preset}.yaml").read_text(encoding="utf-8")))
    assert cfg._partial_ is True and cfg.preset == preset
    counts = [300, 40, 7]
    loss_fn = instantiate(cfg)(class_counts=counts, group_counts=None)
    direct = ParametricCrossEntropy.from_preset(preset, counts)
    for kind in ("delta", "iota", "omega"):
        assert torch.equal(getattr(loss_fn, f"raw_{kind}"), getattr(direct, f"raw_{kind}"))
    grouped = instantiate(cfg)(class_counts=None, group_counts=[[200, 30, 3], [100, 10, 4]])
    assert grouped.num_groups == 2


# ---------------------------------------------------------------------------------------------- properties

counts_st = st.lists(st.integers(1, 100_000), min_size=2, max_size=6)
PROPERTY = settings(max_examples=25, deadline=None, derandomize=True)


@PROPERTY
@given(counts=counts_st, preset=st.sampled_from(PRESETS), seed=st.integers(0, 2**16), data=st.data())
def test_loss_is_finite_for_extreme_logits(counts, preset, seed, data):
    num_groups = data.draw(st.integers(1, 3))
    group_counts = [[c + g for c in counts] for g in range(num_groups)]
    loss_fn = ParametricCrossEntropy.from_preset(
        preset, group_counts=group_counts, learnable=("delta", "iota", "omega")
    )
    gen = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 3, (8, len(counts)), generator=gen).float() - 1  # −1, 0, +1
    logits = (signs * 1e4).requires_grad_()
    y = torch.randint(0, len(counts), (8,), generator=gen)
    g = torch.randint(0, num_groups, (8,), generator=gen)
    loss = loss_fn(logits, y, g)
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in loss_fn.hparams().values())


@PROPERTY
@given(counts=counts_st, preset=st.sampled_from(PRESETS), data=st.data())
def test_permuting_classes_with_their_counts_leaves_every_preset_unchanged(counts, preset, data):
    num_classes = len(counts)
    perm = data.draw(st.permutations(range(num_classes)))
    inverse = [0] * num_classes
    for j, k in enumerate(perm):
        inverse[k] = j
    gen = torch.Generator().manual_seed(num_classes)
    logits, y = torch.randn(16, num_classes, generator=gen) * 4, torch.randint(0, num_classes, (16,), generator=gen)
    original = ParametricCrossEntropy.from_preset(preset, counts, beta=0.999)
    permuted = ParametricCrossEntropy.from_preset(preset, [counts[k] for k in perm], beta=0.999)
    torch.testing.assert_close(
        permuted(logits[:, perm], torch.tensor(inverse)[y], reduction="none"), original(logits, y, reduction="none")
    )


@PROPERTY
@given(num_classes=st.integers(2, 6), num_groups=st.integers(1, 3), data=st.data())
def test_permuting_labels_with_per_class_parameters_leaves_the_loss_unchanged(num_classes, num_groups, data):
    perm = data.draw(st.permutations(range(num_classes)))
    inverse = torch.argsort(torch.tensor(perm))
    gen = torch.Generator().manual_seed(num_classes * 10 + num_groups)
    delta = torch.rand(num_groups, num_classes, generator=gen) * 1.8 + 0.1
    iota = torch.randn(num_groups, num_classes, generator=gen)
    omega = torch.rand(num_groups, num_classes, generator=gen) + 0.2
    logits = torch.randn(16, num_classes, generator=gen) * 4
    y = torch.randint(0, num_classes, (16,), generator=gen)
    g = torch.randint(0, num_groups, (16,), generator=gen)
    a = ParametricCrossEntropy(num_classes, num_groups, delta=delta, iota=iota, omega=omega)
    b = ParametricCrossEntropy(num_classes, num_groups, delta=delta[:, perm], iota=iota[:, perm], omega=omega[:, perm])
    torch.testing.assert_close(b(logits[:, perm], inverse[y], g, "none"), a(logits, y, g, "none"))


@PROPERTY
@given(
    counts=counts_st,
    preset=st.sampled_from(PRESETS),
    factor=st.floats(0.01, 1000.0),
    grouped=st.booleans(),
)
def test_scaling_all_counts_leaves_every_preset_unchanged(counts, preset, factor, grouped):
    # class_balanced depends on absolute counts by design (effective number): invariant with β → β^(1/c)
    beta = 0.999
    scaled_beta = beta ** (1 / factor) if preset == "class_balanced" else beta
    cells = [counts, counts[::-1]] if grouped else [counts]
    a = ParametricCrossEntropy.from_preset(preset, group_counts=cells, beta=beta)
    b = ParametricCrossEntropy.from_preset(
        preset, group_counts=[[c * factor for c in row] for row in cells], beta=scaled_beta
    )
    for kind in ("delta", "iota", "omega"):
        torch.testing.assert_close(getattr(b, kind)(), getattr(a, kind)(), rtol=2e-5, atol=2e-5)


def test_class_balanced_depends_on_absolute_counts():
    a = preset_values("class_balanced", [1000, 10], beta=0.999)["omega"]
    b = preset_values("class_balanced", [10000, 100], beta=0.999)["omega"]
    assert float(a[1] / a[0]) != pytest.approx(float(b[1] / b[0]), rel=1e-3)
