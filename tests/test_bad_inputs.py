"""A catalogue of bad inputs across the public API: each fails early, and its message names the offending value and
says what to change (checked with ``match=``).

Each case is ``(call, exception, pattern)``; the pattern contains both the bad value and the fix.
"""

import re
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy

from lightning_autobalance import (
    AutoBalance,
    Blend,
    FocalLoss,
    HeldOutSplit,
    LearnedLossError,
    MNIST1DLongTail,
    ParametricCrossEntropy,
    load_loss,
    long_tail_counts,
    make_baseline,
    make_loss,
    save_loss,
)
from lightning_autobalance.classifier import ImbalancedClassifier
from lightning_autobalance.data.split import stratified_split
from lightning_autobalance.metrics import BalancedError, WorstClassError, balanced_error
from lightning_autobalance.objectives import WorstGroup, get_objective
from tests.scripts.fault_run import Data, Model

K = 3
LOGITS = torch.zeros(4, K)
LABELS = torch.tensor([0, 1, 2, 1])


def autobalance_setup(strategy):
    """AutoBalance.setup on a trainer whose strategy is ``strategy`` (FSDP cannot even be built on this CPU)."""
    AutoBalance().setup(SimpleNamespace(strategy=strategy), Model(), "fit")


def resume_with_other_classes():
    """Resume from a checkpoint whose AutoBalance state was written for 4 classes into a 3-class run."""
    saved = AutoBalance()
    saved.loss = ParametricCrossEntropy(4, learnable=["delta", "iota"])
    saved.hyper_optimizer = torch.optim.SGD(list(saved.loss.hparams().values()), lr=0.1)
    state = saved.state_dict()
    run = AutoBalance()
    run.loss = ParametricCrossEntropy(K, learnable=["delta", "iota"])
    run.hyper_optimizer = torch.optim.SGD(list(run.loss.hparams().values()), lr=0.1)
    run.load_state_dict(state)


def load_state_of_another_version():
    AutoBalance().load_state_dict({"version": 99, "loss": {}})


def split_with(**kwargs):
    split = HeldOutSplit(Data(), fraction=0.25, **kwargs)
    split.setup("fit")
    return split


def loss_file_for(tmp_path, num_classes):
    path = tmp_path / "loss.yaml"
    save_loss(ParametricCrossEntropy(num_classes), path)
    return path


def hydra_instantiate_autobalance(*overrides):
    """Compose the package's Hydra config with ``overrides`` and instantiate the ``autobalance`` group, as the CLI."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from tests.conftest import ROOT

    with initialize_config_dir(str(ROOT / "lightning_autobalance" / "conf"), version_base=None):
        cfg = compose("config", overrides=list(overrides))
    return instantiate(cfg.autobalance)


CASES = [
    # ------------------------------------------------------------------ AutoBalance arguments
    ("autobalance-every-n-steps", lambda: AutoBalance(every_n_steps=0), ValueError,
     r"every_n_steps must be an integer ≥ 1, got 0"),
    ("autobalance-warmup-float", lambda: AutoBalance(warmup_epochs=1.5), ValueError,
     r"warmup_epochs must be an integer ≥ 0, got 1\.5"),
    ("autobalance-preset", lambda: AutoBalance(preset="focal-ish"), ValueError,
     r"Unknown loss preset 'focal-ish': choose one of ce, .*la"),
    ("autobalance-learn", lambda: AutoBalance(learn=("deltas",)), ValueError,
     r"learn must name at least one of delta, iota, .*got \['deltas'\]"),
    ("autobalance-hyper-lr", lambda: AutoBalance(hyper_lr=-0.1), ValueError,
     r"hyper_lr must be a positive number, got -0\.1: e\.g\. hyper_lr=0\.01"),
    ("autobalance-batch-size", lambda: AutoBalance(batch_size=0), ValueError,
     r"batch_size must be an integer ≥ 1, or None for the training loader's, got 0"),
    ("autobalance-engine", lambda: AutoBalance(engine="fastest"), ValueError,
     r"Unknown hyper-step engine 'fastest': choose one of default, last_layer, full"),
    ("autobalance-objective", lambda: AutoBalance(objective="worst"), ValueError,
     r"Unknown objective 'worst': choose one of .*balanced"),
    ("autobalance-frozen-loss", lambda: AutoBalance(loss=ParametricCrossEntropy(K)), ValueError,
     r"has nothing learnable \(learnable=\(\)\): build it with learnable="),
    ("autobalance-max-hypergrad-norm", lambda: AutoBalance(max_hypergrad_norm=-1), ValueError,
     r"max_hypergrad_norm must be a finite positive number \(e\.g\. 1\.0\) or None for no clipping, got -1"),
    ("autobalance-bounds-kind", lambda: AutoBalance(bounds={"omega": (0.5, 2.0)}), ValueError,
     r"bounds names 'omega', which this AutoBalance does not learn .*add 'omega' to learn"),
    ("autobalance-bounds-order", lambda: AutoBalance(bounds={"iota": (3.0, -3.0)}), ValueError,
     r"bounds\['iota'\] must be a pair \(low, high\) of numbers with low < high .*got \(3\.0, -3\.0\): e\.g\."),
    ("autobalance-bounds-negative", lambda: AutoBalance(learn=["omega"], bounds={"omega": (-1, 2)}), ValueError,
     r"bounds\['omega'\] = \(-1, 2\) has a negative low, but omega is positive: use a low ≥ 0"),
    ("autobalance-bounds-type", lambda: AutoBalance(bounds=[("iota", -1, 1)]), TypeError,
     r"bounds must be a dict \{kind: \(low, high\)\} such as .*got \[\('iota', -1, 1\)\]"),
    # ------------------------------------------------------------------ strategies and checkpoints
    ("strategy-fsdp", lambda: autobalance_setup(FSDPStrategy()), ValueError,
     r"not FSDPStrategy: use `Trainer\(strategy='ddp'\)`"),
    ("strategy-model-parallel", lambda: autobalance_setup(ModelParallelStrategy()), ValueError,
     r"not ModelParallelStrategy: use `Trainer\(strategy='ddp'\)`"),
    ("checkpoint-other-classes", resume_with_other_classes, ValueError,
     r"has parameters \{'raw_delta': \(1, 4\).* but this run builds \{'raw_delta': \(1, 3\).*resume with the same "
     r"number of classes"),
    ("checkpoint-other-version", load_state_of_another_version, ValueError,
     r"AutoBalance state version 99, this version reads 1: resume with the lightning-autobalance version"),
    # ------------------------------------------------------------------ the loss family
    ("loss-num-classes", lambda: ParametricCrossEntropy(1), ValueError,
     r"num_classes must be an integer ≥ 2, got 1"),
    ("loss-parameterization", lambda: ParametricCrossEntropy(K, delta_parameterization="softplus"), ValueError,
     r"delta_parameterization must be 'sigmoid' .* or 'exp' .*got 'softplus'"),
    ("loss-labels-range", lambda: ParametricCrossEntropy(K)(LOGITS, torch.tensor([0, 1, 2, 5])), ValueError,
     r"Labels must lie in \[0, 3\), got values in \[0, 5\]: remap the labels or set num_classes"),
    ("loss-logits-width", lambda: ParametricCrossEntropy(4)(LOGITS, LABELS), ValueError,
     r"built for num_classes=4 but the logits have shape \(4, 3\): make the model output \(batch, 4\) logits or "
     r"build the loss with num_classes=3"),
    ("loss-float-labels", lambda: ParametricCrossEntropy(K)(LOGITS, LABELS.float()), ValueError,
     r"targets must be integer class labels of shape \(4,\), got dtype torch\.float32"),
    ("loss-missing-groups", lambda: ParametricCrossEntropy(K, num_groups=2)(LOGITS, LABELS), ValueError,
     r"num_groups=2 but no groups were passed: return \(x, y, g\) batches"),
    ("loss-groups-range",
     lambda: ParametricCrossEntropy(K, num_groups=2)(LOGITS, LABELS, torch.tensor([0, 1, 3, 0])), ValueError,
     r"Group labels must lie in \[0, 2\), got values in \[0, 3\]: build the loss with num_groups=4"),
    ("preset-empty-class", lambda: make_loss("la", class_counts=[10, 0, 5]), ValueError,
     r"Preset 'la' needs every class to have training samples, but classes \[1\] have none"),
    ("preset-negative-counts", lambda: make_loss("la", class_counts=[10, -3, 5]), ValueError,
     r"class_counts must be finite and non-negative, got \[10\.0, -3\.0, 5\.0\]"),
    ("baseline-ldam-empty", lambda: make_baseline("ldam", class_counts=[10, 0, 5]), ValueError,
     r"classes \[1\] have none: drop those classes or pass counts"),
    ("baseline-focal-gamma", lambda: FocalLoss(gamma=-1.0), ValueError,
     r"gamma must be a finite number ≥ 0 \(the focusing parameter; 2 in the paper.*got -1\.0"),
    ("baseline-name", lambda: make_baseline("lsoftmax"), ValueError,
     r"Unknown baseline loss 'lsoftmax': choose one of"),
    ("classifier-num-classes", lambda: ImbalancedClassifier(torch.nn.Identity(), num_classes=1), ValueError,
     r"num_classes must be an integer ≥ 2, got 1"),
    # ------------------------------------------------------------------ learned-loss files
    ("load-loss-missing", lambda tmp_path: load_loss(tmp_path / "nope.yaml"), LearnedLossError,
     r"No learned-loss file at .*nope\.yaml: run the search phase first or fix the path"),
    ("load-loss-classes", lambda tmp_path: load_loss(loss_file_for(tmp_path, 4), num_classes=K), LearnedLossError,
     r"= \(1, 4\), but this model and data expect \(1, 3\): load the file learned for this data set"),
    ("load-loss-num-classes-arg", lambda tmp_path: load_loss(loss_file_for(tmp_path, K), num_classes=0), ValueError,
     r"num_classes must be a positive integer or None, got 0"),
    # ------------------------------------------------------------------ metrics
    ("metric-num-classes", lambda: BalancedError(num_classes=1), ValueError,
     r"num_classes=1 is invalid: pass an integer num_classes >= 2"),
    ("metric-preds-width", lambda: BalancedError(num_classes=4).update(LOGITS, LABELS), ValueError,
     r"num_classes=4 but preds have 3 columns: pass num_classes=3"),
    ("metric-target-range", lambda: WorstClassError(num_classes=K).update(LOGITS, torch.tensor([0, 1, 7, 1])),
     ValueError, r"target contains the label 7, outside \[0, num_classes=3\): pass num_classes=8"),
    ("metric-float-target", lambda: balanced_error(LOGITS, LABELS.float(), num_classes=K), ValueError,
     r"target must hold integer indices, got dtype torch\.float32: pass target\.long\(\)"),
    # ------------------------------------------------------------------ objectives
    ("objective-name", lambda: get_objective("worst-case"), ValueError,
     r"Unknown objective 'worst-case': choose one of"),
    ("objective-needs-groups", lambda: WorstGroup()(LOGITS, LABELS, None), ValueError,
     r"needs group labels: return \(x, y, g\) batches"),
    ("objective-negative-groups", lambda: WorstGroup()(LOGITS, LABELS, torch.tensor([0, -1, 0, 1])), ValueError,
     r"group indices must be ≥ 0, found -1: remap the groups to 0\.\.G-1"),
    ("objective-blend", lambda: Blend("balanced", "worst_group", lam=1.5), ValueError,
     r"The blend weight lam must lie in \[0, 1\], got 1\.5"),
    # ------------------------------------------------------------------ data
    ("split-fraction", lambda: HeldOutSplit(Data(), fraction=1.5), ValueError,
     r"strictly between 0 and 1, got 1\.5: e\.g\. 0\.2"),
    ("split-labels-range", lambda: split_with(num_classes=2), ValueError,
     r"Training labels must lie in \[0, 2\), found \[2\]: remap the labels or pass the right num_classes"),
    ("split-single-sample", lambda: stratified_split(torch.tensor([0, 0, 0, 1, 1, 2]), None, 0.5), ValueError,
     r"class 2 has a single training sample.*add samples of it, merge it with another class"),
    ("profile-name", lambda: long_tail_counts(100, 10, 10.0, profile="zipf"), ValueError,
     r"Unknown long-tail profile 'zipf': choose one of exponential"),
    ("profile-ratio", lambda: MNIST1DLongTail(imbalance_ratio=0.5), ValueError,
     r"imbalance_ratio ρ = n_max / n_min must be ≥ 1, got 0\.5"),
    # ------------------------------------------------------------------ Hydra overrides of the wrong type
    ("hydra-every-n-steps", lambda: hydra_instantiate_autobalance("autobalance.every_n_steps=abc"), Exception,
     r"every_n_steps must be an integer ≥ 1, got 'abc'"),
    ("hydra-warmup-float", lambda: hydra_instantiate_autobalance("autobalance.warmup_epochs=0.5"), Exception,
     r"warmup_epochs must be an integer ≥ 0, got 0\.5"),
    ("hydra-learn", lambda: hydra_instantiate_autobalance("autobalance.learn=[delta,iotas]"), Exception,
     r"learn must name at least one of delta, iota.*got \['delta', 'iotas'\]"),
    ("hydra-hyper-lr", lambda: hydra_instantiate_autobalance("autobalance.hyper_optimizer=null",
                                                             "+autobalance.hyper_lr=fast"), Exception,
     r"hyper_lr must be a positive number, got 'fast': e\.g\. hyper_lr=0\.01"),
    ("hydra-max-norm", lambda: hydra_instantiate_autobalance("+autobalance.max_hypergrad_norm=big"), Exception,
     r"max_hypergrad_norm must be a finite positive number \(e\.g\. 1\.0\) or None for no clipping, got 'big'"),
    ("hydra-bounds", lambda: hydra_instantiate_autobalance("+autobalance.bounds={iota:[5,-5]}"), Exception,
     r"bounds\['iota'\] must be a pair \(low, high\) of numbers with low < high"),
]  # fmt: skip


@pytest.mark.parametrize(("call", "error", "pattern"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_fails_early_naming_the_value_and_the_fix(call, error, pattern, tmp_path):
    with pytest.raises(error, match=pattern):
        call(tmp_path) if call.__code__.co_argcount else call()


def test_catalogue_size():
    assert len(CASES) >= 20
    assert len({c[0] for c in CASES}) == len(CASES)
    for _, _, _, pattern in CASES:
        re.compile(pattern)


def test_good_inputs_next_to_the_bad_ones_are_accepted():
    assert AutoBalance(learn="iota").learn == ("iota",)  # a single kind, as in ParametricCrossEntropy
    callback = hydra_instantiate_autobalance("+autobalance.bounds={iota:[-5,5]}", "+autobalance.max_hypergrad_norm=1")
    assert callback.bounds == {"iota": (-5.0, 5.0)} and callback.max_hypergrad_norm == 1.0
    assert AutoBalance(learn=["omega"], bounds={"omega": (0, float("inf"))}).bounds == {"omega": (0.0, float("inf"))}
