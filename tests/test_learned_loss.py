"""Tests of the learned-loss export: YAML round trip, file content, errors, safety and atomic writes."""

import math
import os

import pytest
import torch
import yaml

from lightning_autobalance import learned_loss
from lightning_autobalance.learned_loss import LearnedLossError, load_loss, save_loss, write_text_atomic
from lightning_autobalance.losses import ParametricCrossEntropy

KINDS = ("delta", "iota", "omega")
COUNTS = [500, 120, 60, 25, 8]
ALL = ("delta", "iota", "omega")


def _raw(loss, kind):
    return getattr(loss, f"raw_{kind}")


def _perturb(loss, seed):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for kind in KINDS:
            raw = _raw(loss, kind)
            raw.add_(torch.randn(raw.shape, generator=gen) * 0.7)
    return loss


def _save_and_read(loss, path):
    save_loss(loss, path)
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _write_yaml(path, data):
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------- round trip

ROUND_TRIP_CASES = {
    "ce": {"preset": "ce"},
    "weighted": {"preset": "weighted"},
    "la-tau": {"preset": "la", "tau": 0.7},
    "cdt": {"preset": "cdt", "gamma": 0.5},
    "vs-groups": {"preset": "vs", "num_groups": 3},
    "vs-blocks": {"preset": "vs", "block_size": 2},
    "la-groups-blocks": {"preset": "la", "num_groups": 3, "block_size": 2},
    "cdt-exp": {"preset": "cdt", "delta_parameterization": "exp"},
    "vs-exp-groups": {"preset": "vs", "delta_parameterization": "exp", "num_groups": 3},
    "cdt-sigmoid-max": {"preset": "cdt", "delta_max": 1.5},
}


@pytest.mark.parametrize("name", list(ROUND_TRIP_CASES))
@pytest.mark.parametrize("perturbed", [False, True], ids=["init", "perturbed"])
def test_round_trip_is_bit_exact(tmp_path, name, perturbed):
    kwargs = dict(ROUND_TRIP_CASES[name])
    preset = kwargs.pop("preset")
    loss = ParametricCrossEntropy.from_preset(preset, COUNTS, learnable=ALL, **kwargs)
    if perturbed:
        _perturb(loss, seed=len(name))
    path = tmp_path / f"{name}.yaml"
    save_loss(loss, path)
    loaded = load_loss(path)

    assert loaded.num_classes == 5 and loaded.num_groups == kwargs.get("num_groups", 1)
    assert loaded.delta_parameterization == kwargs.get("delta_parameterization", "sigmoid")
    assert loaded.delta_max == kwargs.get("delta_max", 2.0)
    assert torch.equal(loaded.block_index, loss.block_index)
    if kwargs.get("block_size") == 2:
        # blocks by frequency: classes {0, 1}, {2, 3}, {4}
        assert loaded.block_index.tolist() == [0, 0, 1, 1, 2]
        assert loaded.raw_delta.shape == (kwargs.get("num_groups", 1), 3)
    for kind in KINDS:
        assert _raw(loaded, kind).dtype == _raw(loss, kind).dtype
        assert torch.equal(_raw(loaded, kind), _raw(loss, kind).detach()), kind

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(32, 5, generator=gen) * 3
    targets = torch.randint(0, 5, (32,), generator=gen)
    groups = torch.randint(0, loss.num_groups, (32,), generator=gen) if loss.num_groups > 1 else None
    with torch.no_grad():
        assert torch.equal(loaded(logits, targets, groups, reduction="none"), loss(logits, targets, groups, "none"))
        assert torch.equal(loaded(logits, targets, groups), loss(logits, targets, groups))


def test_round_trip_of_extreme_float32_values(tmp_path):
    loss = ParametricCrossEntropy(4, 2, learnable=ALL)
    extremes = torch.tensor(
        [
            [1e-30, -1.2345e20, 3.4028234663852886e38, 1.401298464324817e-45],  # tiny, huge, float32 max, denormal
            [-0.0, 1.0 / 3.0, 2.0**-20, -123456.789],
        ]
    )
    with torch.no_grad():
        loss.raw_iota.copy_(extremes)
        loss.raw_delta.copy_(extremes.flip(1) * 1e-3)
        loss.raw_omega.copy_(torch.full((2, 4), 0.1))
    path = tmp_path / "extreme.yaml"
    save_loss(loss, path)
    loaded = load_loss(path)
    for kind in KINDS:
        # compare bit patterns (torch.equal would accept −0.0 == 0.0)
        assert torch.equal(_raw(loaded, kind).view(torch.int32), _raw(loss, kind).detach().view(torch.int32)), kind


def test_loaded_loss_is_frozen_by_default(tmp_path):
    loss = ParametricCrossEntropy.from_preset("vs", COUNTS, learnable=ALL)
    assert set(loss.hparams()) == {"raw_delta", "raw_iota", "raw_omega"}
    save_loss(loss, tmp_path / "loss.yaml")
    loaded = load_loss(tmp_path / "loss.yaml")
    assert loaded.hparams() == {}
    assert loaded.learnable == ()
    assert list(loaded.parameters()) == []
    assert not any(_raw(loaded, kind).requires_grad for kind in KINDS)


def test_load_can_make_delta_learnable_again(tmp_path):
    loss = _perturb(ParametricCrossEntropy.from_preset("cdt", COUNTS, learnable=("omega",)), seed=1)
    save_loss(loss, tmp_path / "loss.yaml")
    loaded = load_loss(tmp_path / "loss.yaml", learnable=("delta",))
    assert list(loaded.hparams()) == ["raw_delta"]
    assert isinstance(loaded.raw_delta, torch.nn.Parameter) and loaded.raw_delta.requires_grad
    assert not isinstance(loaded.raw_omega, torch.nn.Parameter)
    assert torch.equal(loaded.raw_delta.detach(), loss.raw_delta)
    assert torch.equal(loaded.raw_omega, loss.raw_omega.detach())
    loaded(torch.randn(6, 5), torch.tensor([0, 1, 2, 3, 4, 0])).backward()
    assert loaded.raw_delta.grad is not None and loaded.raw_delta.grad.shape == (1, 5)


def test_save_creates_parent_folders_and_keeps_metadata(tmp_path):
    path = tmp_path / "a" / "b" / "loss.yaml"
    save_loss(ParametricCrossEntropy(3), path, metadata={"epoch": 7, "preset": "la", "lr": [0.1, 0.01]})
    data = yaml.safe_load(path.read_text())
    assert data["metadata"] == {"epoch": 7, "preset": "la", "lr": [0.1, 0.01]}
    assert load_loss(path).num_classes == 3


# ---------------------------------------------------------------------------------------------- file content


def test_file_is_versioned_human_readable_yaml(tmp_path):
    path = tmp_path / "ce.yaml"
    data = _save_and_read(ParametricCrossEntropy.from_preset("ce", [30, 20, 10]), path)
    text = path.read_text()
    assert text.startswith("format: lightning-autobalance/learned-loss\nversion: 3\n")
    assert data["format"] == "lightning-autobalance/learned-loss"
    assert data["version"] == 3
    assert data["prediction_shift"] == [[0.0, 0.0, 0.0]]  # no post-hoc adjustment
    assert data["num_classes"] == 3 and data["num_groups"] == 1
    assert data["delta_parameterization"] == "sigmoid" and data["delta_max"] == 2.0
    assert data["blocks"] == [0, 1, 2]
    assert data["learnable"] == []
    # cross-entropy: Δ = 1 (raw 0 = logit(1/2) with delta_max 2), ι = 0, ω = 1 (raw log 1 = 0)
    # the personalized augmentation is off: σ = m = 0, stored raw as -inf
    assert data["values"] == {
        "delta": [[1.0, 1.0, 1.0]],
        "iota": [[0.0, 0.0, 0.0]],
        "omega": [[1.0, 1.0, 1.0]],
        "noise": [[0.0, 0.0, 0.0]],
        "mix": [[0.0, 0.0, 0.0]],
    }
    off = [[-math.inf] * 3]
    assert data["raw"] == {
        "delta": [[0.0, 0.0, 0.0]],
        "iota": [[0.0, 0.0, 0.0]],
        "omega": [[0.0, 0.0, 0.0]],
        "noise": off,
        "mix": off,
    }
    assert "  noise:\n  - [-.inf, -.inf, -.inf]\n" in text


def test_values_are_the_per_class_preset_values(tmp_path):
    # counts 90, 10: π = 0.9, 0.1
    la = _save_and_read(ParametricCrossEntropy.from_preset("la", [90, 10], learnable=["iota"]), tmp_path / "la.yaml")
    assert la["learnable"] == ["iota"]
    assert la["values"]["iota"][0] == pytest.approx([math.log(0.9), math.log(0.1)], rel=1e-6)
    # weighted: ω ∝ 1/π = (10/9, 10), Σ π ω = 2 → ω = (5/9, 5)
    weighted = _save_and_read(ParametricCrossEntropy.from_preset("weighted", [90, 10]), tmp_path / "w.yaml")
    assert weighted["values"]["omega"][0] == pytest.approx([5 / 9, 5.0], rel=1e-6)
    assert weighted["raw"]["omega"][0] == pytest.approx([math.log(5 / 9), math.log(5.0)], rel=1e-6)
    # CDT with γ = 0.5 on counts 100, 25: Δ = (1, 0.5); two groups repeat the row
    cdt = _save_and_read(
        ParametricCrossEntropy.from_preset("cdt", [100, 25], gamma=0.5, num_groups=2), tmp_path / "cdt.yaml"
    )
    assert cdt["num_groups"] == 2
    assert len(cdt["values"]["delta"]) == 2
    for row in cdt["values"]["delta"]:
        assert row == pytest.approx([1.0, 0.5], rel=1e-6)


# ---------------------------------------------------------------------------------------------- errors


@pytest.fixture
def saved(tmp_path):
    """A valid file of a 3-class loss and its parsed content."""
    path = tmp_path / "loss.yaml"
    loss = _perturb(ParametricCrossEntropy.from_preset("vs", [50, 20, 5], learnable=ALL), seed=3)
    return path, _save_and_read(loss, path)


def test_missing_file(tmp_path):
    with pytest.raises(LearnedLossError, match=r"No learned-loss file at .*nope\.yaml: run the search phase first"):
        load_loss(tmp_path / "nope.yaml")


def test_truncated_file_is_invalid_yaml(saved):
    path, _ = saved
    text = path.read_text()
    half = text[: len(text) // 2]
    with pytest.raises(yaml.YAMLError):  # precondition: the cut leaves invalid YAML (inside a flow list)
        yaml.safe_load(half)
    path.write_text(half)
    with pytest.raises(LearnedLossError, match=r"is not valid YAML \(truncated or corrupted\?\)"):
        load_loss(path)


def test_file_truncated_at_a_line_break_misses_entries(saved):
    path, _ = saved
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:4]))  # format, version, num_classes, num_groups
    with pytest.raises(LearnedLossError, match="has no 'blocks' entry; it may be truncated"):
        load_loss(path)


@pytest.mark.parametrize(
    "content",
    [
        "a: 1\nb: [1, 2]\n",
        "- format\n- lightning-autobalance/learned-loss\n",
        "just a string\n",
        "",
        "format: some-other-tool/loss\nversion: 1\n",
    ],
    ids=["dict", "list", "scalar", "empty", "other-format"],
)
def test_other_format(tmp_path, content):
    path = tmp_path / "other.yaml"
    path.write_text(content)
    with pytest.raises(
        LearnedLossError,
        match="is not a lightning-autobalance learned-loss file \\(expected format: lightning-autobalance/learned-loss",
    ):
        load_loss(path)


@pytest.mark.parametrize("version", [99, 0, "1", None])
def test_other_version(saved, version):
    path, data = saved
    data["version"] = version
    _write_yaml(path, data)
    with pytest.raises(LearnedLossError, match=f"format version {version!r}; .* reads versions 1, 2, 3: re-export"):
        load_loss(path)


def test_raw_parameter_of_wrong_shape(saved):
    path, data = saved
    data["raw"]["delta"] = [[0.0, 0.0]]
    _write_yaml(path, data)
    with pytest.raises(LearnedLossError, match=r"raw delta has shape \(1, 2\), expected \(1, 3\) for 1 group"):
        load_loss(path)


def test_raw_parameter_of_wrong_number_of_groups(saved):
    path, data = saved
    data["num_groups"] = 2  # the raw rows are still those of one group
    _write_yaml(path, data)
    with pytest.raises(LearnedLossError, match=r"raw delta has shape \(1, 3\), expected \(2, 3\) for 2 group"):
        load_loss(path)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_raw_value(saved, bad):
    path, data = saved
    data["raw"]["iota"][0][1] = bad
    _write_yaml(path, data)
    with pytest.raises(LearnedLossError, match="raw iota contains non-finite values"):
        load_loss(path)


@pytest.mark.parametrize("key", ["num_classes", "num_groups", "blocks", "raw", "delta_parameterization", "delta_max"])
def test_missing_top_level_key(saved, key):
    path, data = saved
    del data[key]
    _write_yaml(path, data)
    with pytest.raises(LearnedLossError, match=f"has no '{key}' entry; it may be truncated"):
        load_loss(path)


def test_missing_raw_kind(saved):
    path, data = saved
    del data["raw"]["omega"]
    _write_yaml(path, data)
    with pytest.raises(LearnedLossError, match=r"the learned-loss file has no raw omega; it may be truncated"):
        load_loss(path)


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("num_classes", "three", "entry 'num_classes' should be <class 'int'>, got 'three'"),
        ("num_classes", True, "entry 'num_classes' should be <class 'int'>, got True"),
        ("num_classes", 1, "inconsistent learned-loss file: num_classes must be an integer ≥ 2"),
        ("delta_parameterization", "tanh", "inconsistent learned-loss file: delta_parameterization must be"),
        ("blocks", [0, 0, 2], "inconsistent learned-loss file: blocks must use every index"),
        ("raw", [1, 2], "entry 'raw' should be <class 'dict'>"),
    ],
)
def test_inconsistent_entries(saved, key, value, match):
    path, data = saved
    data[key] = value
    _write_yaml(path, data)
    with pytest.raises(LearnedLossError, match=match):
        load_loss(path)


def test_non_numeric_raw_values(saved):
    path, data = saved
    data["raw"]["omega"] = [["a", "b", "c"]]
    _write_yaml(path, data)
    with pytest.raises(LearnedLossError, match="inconsistent learned-loss file"):
        load_loss(path)


def test_corrupted_non_utf8_file(saved):
    path, _ = saved
    raw = bytearray(path.read_bytes())
    raw[10] ^= 0x80  # a single flipped high bit in an ASCII file
    path.write_bytes(bytes(raw))
    with pytest.raises(LearnedLossError, match="is not valid YAML"):
        load_loss(path)


# ---------------------------------------------------------------------------------------------- safety


def test_python_object_tag_is_rejected_without_running_code(tmp_path):
    marker = tmp_path / "hacked"
    path = tmp_path / "evil.yaml"
    path.write_text(f'!!python/object/apply:os.system ["echo hacked > {marker}"]\n')
    with pytest.raises(LearnedLossError, match="is not valid YAML"):
        load_loss(path)
    assert not marker.exists()


def test_python_object_tag_inside_a_valid_file_is_rejected(saved, tmp_path):
    path, _ = saved
    marker = tmp_path / "hacked"
    text = path.read_text().replace(
        "num_groups: 1\n", f'num_groups: 1\nmetadata: !!python/object/apply:os.system ["echo hacked > {marker}"]\n'
    )
    assert "!!python/object/apply" in text
    path.write_text(text)
    with pytest.raises(LearnedLossError, match="is not valid YAML"):
        load_loss(path)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------- atomic write


def _fail(*args, **kwargs):
    raise OSError("simulated failure")


@pytest.mark.parametrize("where", ["os.replace", "os.fsync", "yaml.safe_dump"])
def test_failed_write_keeps_previous_file_and_leaves_no_temporary(tmp_path, monkeypatch, where):
    folder = tmp_path / "out"
    path = folder / "loss.yaml"
    old = ParametricCrossEntropy.from_preset("la", [90, 10])
    save_loss(old, path)
    before = path.read_bytes()
    module, name = where.split(".")
    monkeypatch.setattr({"os": os, "yaml": yaml}[module], name, _fail)
    new = ParametricCrossEntropy.from_preset("cdt", [90, 10])
    with pytest.raises(OSError, match="simulated failure"):
        save_loss(new, path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in folder.iterdir()] == ["loss.yaml"]  # no ".loss.yaml.*.tmp" left
    assert torch.equal(load_loss(path).raw_iota, old.raw_iota)


def test_failure_while_writing_the_text_leaves_no_temporary(tmp_path):
    path = tmp_path / "notes.txt"
    write_text_atomic(path, "first version\n")

    # a lone surrogate cannot be encoded as UTF-8: the write fails after the temporary file was created
    with pytest.raises(UnicodeEncodeError):
        write_text_atomic(path, "second version \ud800\n")
    assert path.read_text() == "first version\n"
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_successful_save_replaces_the_file(tmp_path):
    path = tmp_path / "loss.yaml"
    save_loss(ParametricCrossEntropy.from_preset("ce", [90, 10]), path)
    save_loss(ParametricCrossEntropy.from_preset("cdt", [100, 25], gamma=0.5), path)
    assert load_loss(path).delta()[0].tolist() == pytest.approx([1.0, 0.5], rel=1e-6)
    assert [p.name for p in tmp_path.iterdir()] == ["loss.yaml"]
    assert learned_loss.FORMAT_VERSION == 3


# ---------------------------------------------------------------------------------------------- extended family

GROUP_COUNTS = [[300, 70, 40, 5, 3], [200, 50, 20, 20, 5]]  # class totals = COUNTS


def _extended_losses():
    yield "class_balanced", ParametricCrossEntropy.from_preset("class_balanced", COUNTS, beta=0.99, learnable=ALL)
    yield "balanced_softmax", ParametricCrossEntropy.from_preset("balanced_softmax", COUNTS, learnable=("iota",))
    yield (
        "vs-group-counts-exp",
        ParametricCrossEntropy.from_preset(
            "vs", group_counts=GROUP_COUNTS, delta_parameterization="exp", learnable=("delta", "omega")
        ),
    )
    yield (
        "weighted-group-counts-blocks",
        ParametricCrossEntropy.from_preset("weighted", COUNTS, group_counts=GROUP_COUNTS, block_size=2, learnable=ALL),
    )
    coarse = _perturb(ParametricCrossEntropy.from_preset("vs", COUNTS, block_size=2, learnable=ALL, num_groups=2), 9)
    yield "expanded-constant", coarse.expanded("constant")
    yield "expanded-linear", coarse.expanded("linear", COUNTS, learnable=("iota",))


@pytest.mark.parametrize("name,loss", list(_extended_losses()), ids=lambda v: v if isinstance(v, str) else "")
def test_round_trip_of_extended_family_is_bit_exact(tmp_path, name, loss):
    path = tmp_path / f"{name}.yaml"
    _perturb(loss, seed=len(name))
    save_loss(loss, path)
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert data["version"] == 3
    assert data["learnable"] == list(loss.learnable)
    assert data["num_groups"] == loss.num_groups and data["blocks"] == loss.block_index.tolist()
    assert data["delta_parameterization"] == loss.delta_parameterization and data["delta_max"] == loss.delta_max
    loaded = load_loss(path, num_classes=5, num_groups=loss.num_groups, learnable=loss.learnable)
    assert loaded.learnable == loss.learnable
    for kind in KINDS:
        assert torch.equal(_raw(loaded, kind).detach(), _raw(loss, kind).detach()), kind
    gen = torch.Generator().manual_seed(1)
    logits, targets = torch.randn(20, 5, generator=gen) * 3, torch.randint(0, 5, (20,), generator=gen)
    groups = torch.randint(0, loss.num_groups, (20,), generator=gen) if loss.num_groups > 1 else None
    with torch.no_grad():
        assert torch.equal(loaded(logits, targets, groups, "none"), loss(logits, targets, groups, "none"))


def test_file_for_five_classes_rejected_where_ten_are_expected(tmp_path):
    path = tmp_path / "k5.yaml"
    save_loss(ParametricCrossEntropy.from_preset("la", COUNTS), path)
    with pytest.raises(
        LearnedLossError,
        match=r"k5\.yaml holds a learned loss of shape \(num_groups, num_classes\) = \(1, 5\), but this model and "
        r"data expect \(1, 10\): load the file learned for this data set",
    ):
        load_loss(path, num_classes=10)
    with pytest.raises(LearnedLossError, match=r"= \(1, 5\), but this model and data expect \(3, 5\)"):
        load_loss(path, num_groups=3)
    with pytest.raises(LearnedLossError, match=r"= \(1, 5\), but this model and data expect \(2, 10\)"):
        load_loss(path, 10, 2)
    assert load_loss(path, num_classes=5, num_groups=1).num_classes == 5
    with pytest.raises(ValueError, match="num_classes must be a positive integer or None, got 0"):
        load_loss(path, num_classes=0)


def test_version_one_files_of_the_original_presets_still_load(tmp_path):
    # a version-1 file as the first release wrote it (no new keys): the format is unchanged
    path = _write_yaml(
        tmp_path / "v1.yaml",
        {
            "format": "lightning-autobalance/learned-loss",
            "version": 1,
            "num_classes": 2,
            "num_groups": 1,
            "delta_parameterization": "sigmoid",
            "delta_max": 2.0,
            "learnable": ["iota"],
            "blocks": [0, 1],
            "raw": {"delta": [[0.0, 0.0]], "iota": [[-0.5, -1.5]], "omega": [[0.0, 0.0]]},
        },
    )
    loaded = load_loss(path, num_classes=2)
    assert loaded.iota().tolist() == [[-0.5, -1.5]]


def test_prediction_shift_round_trips_and_version_2_files_load_without_it(tmp_path):
    loss_fn = ParametricCrossEntropy.from_preset("la", [90, 10])
    loss_fn.set_prediction_shift([0.25, -1.5])
    path = tmp_path / "shift.yaml"
    save_loss(loss_fn, path)
    loaded = load_loss(path)
    assert torch.equal(loaded.prediction_shift, loss_fn.prediction_shift)
    logits = torch.randn(4, 2)
    assert torch.equal(loaded.shift_predictions(logits), logits + torch.tensor([0.25, -1.5]))
    assert torch.equal(loaded.frozen().prediction_shift, loss_fn.prediction_shift)
    data = yaml.safe_load(path.read_text())
    data["version"] = 2
    del data["prediction_shift"]
    _write_yaml(path, data)
    assert torch.equal(load_loss(path).prediction_shift, torch.zeros(1, 2))


@pytest.mark.parametrize("shift", [[[0.0, 1.0, 2.0]], [[0.0, float("nan")]]])
def test_prediction_shift_of_wrong_shape_or_non_finite_is_rejected(tmp_path, shift):
    path = tmp_path / "bad.yaml"
    save_loss(ParametricCrossEntropy.from_preset("la", [90, 10]), path)
    data = yaml.safe_load(path.read_text())
    data["prediction_shift"] = shift
    _write_yaml(path, data)
    with pytest.raises(LearnedLossError, match=r"prediction_shift should be \(1, 2\) finite values"):
        load_loss(path)


def test_prediction_shift_checks_the_width_of_the_logits():
    loss_fn = ParametricCrossEntropy.from_preset("la", [90, 10])
    assert torch.equal(loss_fn.shift_predictions(torch.ones(2, 3)), torch.ones(2, 3))  # no shift: passed through
    loss_fn.set_prediction_shift([0.5, -0.5])
    with pytest.raises(ValueError, match=r"num_classes=2 but the logits have shape \(2, 3\)"):
        loss_fn.shift_predictions(torch.ones(2, 3))
