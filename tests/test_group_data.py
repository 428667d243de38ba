"""Group data sets: spurious MNIST-1D, Waterbirds and CelebA loaders on tiny files in the exact on-disk layouts."""

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from torch.utils.data import Subset

from lightning_autobalance.data.celeba import CELEBA_ATTRIBUTES, CelebA, check_attribute
from lightning_autobalance.data.labels import dataset_labels
from lightning_autobalance.data.mnist1d_lt import generate_mnist1d
from lightning_autobalance.data.split import HeldOutSplit
from lightning_autobalance.data.spurious import GroupTensorDataset, SpuriousMNIST1D
from lightning_autobalance.data.waterbirds import IMAGENET_MEAN, IMAGENET_STD, Waterbirds, WaterbirdsDataset
from tests._helpers.data import prepared

CONF = Path(__file__).resolve().parents[1] / "conf"
SMALL = {"n_train": 200, "test_per_cell": 10, "strength": 0.5}


def _no_item_access(monkeypatch, cls):
    def fail(self, index):
        raise AssertionError("labels must be read from the targets / groups attributes, not by loading items")

    monkeypatch.setattr(cls, "__getitem__", fail)


# ---------------------------------------------------------------------------------------------- spurious MNIST-1D


@pytest.fixture(scope="module")
def spurious(tmp_path_factory):
    return prepared(SpuriousMNIST1D(root=str(tmp_path_factory.mktemp("mnist1d")), **SMALL))


def test_spurious_counts_and_batches(spurious):
    dm = spurious
    assert (dm.num_classes, dm.num_groups) == (2, 2)
    assert dm.group_class_counts.tolist() == [[95, 5], [5, 95]]  # rows group, columns class
    assert torch.equal(dm.group_class_counts, dm.expected_group_class_counts())
    assert dm.class_counts.tolist() == [100, 100]
    test_cells = torch.bincount(dm.test_set.groups * 2 + dm.test_set.targets, minlength=4)
    assert test_cells.tolist() == [10, 10, 10, 10]  # group-balanced test set
    x, y, g = next(iter(dm.train_dataloader()))
    assert x.shape == (64, 1, 40) and x.dtype == torch.float32
    assert y.dtype == torch.long and g.dtype == torch.long
    assert set(y.tolist()) <= {0, 1} and set(g.tolist()) <= {0, 1}
    xt, _, _ = next(iter(dm.test_dataloader()))
    assert xt.shape == (40, 1, 40)


def test_spurious_inputs_are_digits_plus_the_group_offset(spurious):
    dm = spurious
    pool = generate_mnist1d(dm._per_digit(), dm.seed, dm.root)
    raw, digits = torch.from_numpy(pool["x"]), torch.from_numpy(pool["y"])
    rows = []
    for dataset in (dm.train_set, dm.test_set):
        clean = dataset.inputs[:, 0] - 0.5 * (2.0 * dataset.groups.float() - 1.0).unsqueeze(1)
        # every clean sequence is a distinct row of the generated pool, with label = (digit ≥ 5)
        match = torch.cdist(clean.double(), raw.double()).argmin(1)
        assert torch.allclose(raw[match], clean, atol=1e-6)
        assert match.unique().numel() == len(dataset)
        assert torch.equal(dataset.targets, (digits[match] >= 5).long())
        rows.append(set(match.tolist()))
    assert not rows[0] & rows[1]  # train and test are disjoint
    assert {int(d) for d in digits[list(rows[0])]} == set(range(10))  # every digit is used


def test_spurious_is_deterministic(spurious):
    again = SpuriousMNIST1D(root=spurious.root, **SMALL)
    again.setup("fit")
    assert torch.equal(again.train_set.inputs, spurious.train_set.inputs)
    assert torch.equal(again.train_set.groups, spurious.train_set.groups)


def test_spurious_labels_fast_path(spurious, monkeypatch):
    _no_item_access(monkeypatch, GroupTensorDataset)
    targets, groups = dataset_labels(Subset(spurious.train_set, [0, 5, 7]))
    assert torch.equal(targets, spurious.train_set.targets[[0, 5, 7]])
    assert torch.equal(groups, spurious.train_set.groups[[0, 5, 7]])


def test_heldout_split_of_spurious_data_covers_every_cell(spurious, monkeypatch):
    split = HeldOutSplit(spurious, fraction=0.2, seed=3)
    _no_item_access(monkeypatch, GroupTensorDataset)
    split.setup("fit")
    assert split.num_groups == 2 and split.num_classes == 2
    held_y, held_g = dataset_labels(split.heldout_dataset)
    train_y, train_g = dataset_labels(split.train_dataset)
    held_cells = torch.bincount(held_g * 2 + held_y, minlength=4).view(2, 2)
    assert (held_cells >= 1).all()  # the 5-sample minority cells still have a held-out sample
    assert held_cells.tolist() == [[19, 1], [1, 19]]  # round(0.2 · 95) and max(1, round(0.2 · 5))
    assert torch.equal(split.group_class_counts + held_cells, spurious.group_class_counts)
    assert torch.equal(split.heldout_group_class_counts, held_cells)
    assert torch.equal(torch.bincount(train_g * 2 + train_y, minlength=4).view(2, 2), split.group_class_counts)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"majority_fraction": 1.0}, "majority_fraction"),
        ({"n_train": 201}, "even"),
        ({"n_train": 20, "majority_fraction": 0.95}, "minority cell has 0"),
        ({"test_per_cell": 0}, "test_per_cell"),
        ({"n_train": 400.0}, "n_train must be an even integer ≥ 8"),
        ({"test_per_cell": 1.5}, "test_per_cell must be an integer ≥ 1, got 1.5"),
        ({"seed": -2}, "seed must be an integer ≥ 0, got -2"),
    ],
)
def test_spurious_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SpuriousMNIST1D(**kwargs)


# ---------------------------------------------------------------------------------------------- Waterbirds

# (relative path, y, place, split); WILDS / group-DRO extra columns img_id and place_filename are written too
WATERBIRDS = [
    ("001.Black_footed_Albatross/a.png", 1, 1, 0),
    ("001.Black_footed_Albatross/b.jpg", 1, 1, 0),
    ("001.Black_footed_Albatross/c.png", 1, 0, 0),
    ("002.Laysan_Albatross/d.jpg", 0, 0, 0),
    ("002.Laysan_Albatross/e.png", 0, 0, 0),
    ("002.Laysan_Albatross/f.png", 0, 1, 0),
    ("003.Sooty_Albatross/g.png", 0, 1, 1),
    ("003.Sooty_Albatross/h.png", 1, 0, 1),
    ("004.Groove_billed_Ani/i.png", 0, 0, 2),
    ("004.Groove_billed_Ani/j.jpg", 1, 1, 2),
    ("004.Groove_billed_Ani/k.png", 1, 0, 2),
]
COLOURS = {0: (255, 0, 128), 1: (10, 200, 40)}  # by place


def _write_waterbirds(root: Path, columns=("img_id", "img_filename", "y", "split", "place", "place_filename")):
    for name, _, place, _ in WATERBIRDS:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 30), COLOURS[place]).save(path)
    with open(root / "metadata.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for i, (name, y, place, split) in enumerate(WATERBIRDS):
            row = {"img_id": i + 1, "img_filename": name, "y": y, "split": split, "place": place}
            row["place_filename"] = f"/b/bamboo_forest/{i:08d}.jpg"
            writer.writerow([row[c] for c in columns])
    return root


@pytest.fixture
def waterbirds_root(tmp_path):
    return _write_waterbirds(tmp_path / "waterbird_complete95_forest2water2")


def test_waterbirds_end_to_end(waterbirds_root, monkeypatch):
    dm = Waterbirds(root=str(waterbirds_root), batch_size=4, image_size=16)
    dm.setup("fit")
    for dataset, code in ((dm.train_set, 0), (dm.val_set, 1), (dm.test_set, 2)):
        rows = [r for r in WATERBIRDS if r[3] == code]
        assert dataset.filenames == [r[0] for r in rows]
        assert dataset.targets.tolist() == [r[1] for r in rows]
        assert dataset.groups.tolist() == [r[2] for r in rows]
    assert dm.group_class_counts.tolist() == [[2, 1], [1, 2]]  # (place, y) cells of the training split
    x, y, g = next(iter(dm.val_dataloader()))
    assert x.shape == (2, 3, 16, 16) and y.tolist() == [0, 1] and g.tolist() == [1, 0]
    # a flat PNG of the place colour, normalised with the ImageNet statistics
    expected = [(c / 255 - m) / s for c, m, s in zip(COLOURS[1], IMAGENET_MEAN, IMAGENET_STD, strict=True)]
    assert torch.allclose(x[0].mean((1, 2)), torch.tensor(expected), atol=1e-5)
    batches = list(dm.train_dataloader())
    assert sum(b[0].shape[0] for b in batches) == 6
    assert sorted(torch.cat([b[1] for b in batches]).tolist()) == [0, 0, 0, 1, 1, 1]
    xt, yt, gt = next(iter(dm.test_dataloader()))
    assert xt.shape == (3, 3, 16, 16) and yt.tolist() == [0, 1, 1] and gt.tolist() == [0, 1, 0]
    _no_item_access(monkeypatch, WaterbirdsDataset)
    assert torch.equal(dataset_labels(dm.train_set)[1], dm.train_set.groups)


def test_waterbirds_default_transform_is_group_dro(waterbirds_root):
    dataset = WaterbirdsDataset(waterbirds_root, "test")
    x, y, g = dataset[1]  # a JPEG
    assert x.shape == (3, 224, 224) and (int(y), int(g)) == (1, 1)
    augmented = Waterbirds(root=str(waterbirds_root), augment=True, image_size=32)
    augmented.setup("fit")
    assert augmented.train_set[0][0].shape == (3, 32, 32)
    assert augmented.val_set.transform.transforms[0].size == (36, 36)  # 32 · 256/224


def test_waterbirds_missing_metadata_says_where_and_what(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"metadata\.csv") as info:
        Waterbirds(root=str(tmp_path)).setup("fit")
    assert str(tmp_path / "metadata.csv") in str(info.value)
    assert "img_filename, y, place, split" in str(info.value)


def test_waterbirds_missing_columns_are_named(tmp_path):
    _write_waterbirds(tmp_path, columns=("img_id", "img_filename", "y", "split"))
    with pytest.raises(ValueError, match=r"lacks the column\(s\) place"):
        WaterbirdsDataset(tmp_path, "train")
    other = tmp_path / "other"
    other.mkdir()
    _write_waterbirds(other, columns=("img_filename", "split"))
    with pytest.raises(ValueError, match=r"lacks the column\(s\) y, place"):
        WaterbirdsDataset(other, "train")


def test_waterbirds_missing_images_and_bad_values(waterbirds_root):
    (waterbirds_root / WATERBIRDS[7][0]).unlink()
    WaterbirdsDataset(waterbirds_root, "train")  # the train split is complete
    with pytest.raises(FileNotFoundError, match=r"1 image\(s\) of the Waterbirds val split.*h\.png"):
        WaterbirdsDataset(waterbirds_root, "val")
    with pytest.raises(ValueError, match="Unknown Waterbirds split"):
        WaterbirdsDataset(waterbirds_root, "validation")
    text = (waterbirds_root / "metadata.csv").read_text().replace("d.jpg,0,0", "d.jpg,3,0")
    (waterbirds_root / "metadata.csv").write_text(text)
    with pytest.raises(ValueError, match="line 5: column y must be one of"):
        WaterbirdsDataset(waterbirds_root, "train")


# ---------------------------------------------------------------------------------------------- CelebA

CELEBA_N = 12
PARTITION = [0, 0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
CELEBA_SIZE = (178, 218)  # width, height of the aligned images


def _attr_matrix():
    rng = np.random.default_rng(0)
    attr = rng.integers(0, 2, size=(CELEBA_N, len(CELEBA_ATTRIBUTES)))
    blond, male = CELEBA_ATTRIBUTES.index("Blond_Hair"), CELEBA_ATTRIBUTES.index("Male")
    attr[:, blond] = [1, 0, 1, 0, 0, 1, 1, 0, 1, 0, 1, 0]
    attr[:, male] = [0, 0, 1, 1, 0, 1, 0, 1, 1, 1, 0, 0]
    return attr


def _write_celeba(root: Path, skip: str | None = None) -> Path:
    """The files torchvision's CelebA reads, in the format of the originals (space-aligned, count + header lines)."""
    folder = root / "celeba"
    images = folder / "img_align_celeba"
    images.mkdir(parents=True)
    names = [f"{i + 1:06d}.jpg" for i in range(CELEBA_N)]
    attr = _attr_matrix()
    for i, name in enumerate(names):
        Image.new("RGB", CELEBA_SIZE, (20 * i, 100, 255 - 20 * i)).save(images / name, quality=95)
    files = {
        # the original header line ends with a space; values are right-aligned ±1 separated by spaces
        "list_attr_celeba.txt": [str(CELEBA_N), " ".join(CELEBA_ATTRIBUTES) + " "]
        + [f"{n} " + " ".join(f"{2 * v - 1:2d}" for v in row) for n, row in zip(names, attr, strict=True)],
        "list_eval_partition.txt": [f"{n} {p}" for n, p in zip(names, PARTITION, strict=True)],
        "identity_CelebA.txt": [f"{n} {100 + i % 4}" for i, n in enumerate(names)],
        "list_bbox_celeba.txt": [str(CELEBA_N), "image_id x_1 y_1 width height"]
        + [f"{n}    95  71 226 313" for n in names],
        "list_landmarks_align_celeba.txt": [
            str(CELEBA_N),
            "lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y rightmouth_x rightmouth_y",
        ]
        + [f"{n}  69  109  106  113   77  142   73  152  108  154" for n in names],
    }
    for filename, lines in files.items():
        if filename != skip:
            (folder / filename).write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def celeba_root(tmp_path_factory):
    return _write_celeba(tmp_path_factory.mktemp("celeba_root"))


def test_celeba_end_to_end(celeba_root, monkeypatch):
    dm = CelebA(root=str(celeba_root), batch_size=4, image_size=8, crop_size=16, verify_md5=False)
    dm.setup("fit")
    attr = torch.from_numpy(_attr_matrix())
    blond, male = CELEBA_ATTRIBUTES.index("Blond_Hair"), CELEBA_ATTRIBUTES.index("Male")
    partition = torch.tensor(PARTITION)
    for dataset, code in ((dm.train_set, 0), (dm.val_set, 1), (dm.test_set, 2)):
        assert torch.equal(dataset.targets, attr[partition == code, blond])
        assert torch.equal(dataset.groups, attr[partition == code, male])
        assert [dataset.base.filename[i] for i in dataset.indices] == [
            f"{i + 1:06d}.jpg" for i in torch.nonzero(partition == code).flatten().tolist()
        ]
    expected_counts = torch.zeros(2, 2, dtype=torch.long)
    for yi, gi in zip(attr[:6, blond].tolist(), attr[:6, male].tolist(), strict=True):
        expected_counts[gi, yi] += 1
    assert torch.equal(dm.group_class_counts, expected_counts)
    x, y, g = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 8, 8) and x.dtype == torch.float32
    assert y.dtype == torch.long and g.dtype == torch.long
    xt, yt, gt = next(iter(dm.test_dataloader()))
    assert yt.tolist() == attr[9:, blond].tolist() and gt.tolist() == attr[9:, male].tolist()
    # image content: the test image 000010.jpg is a flat colour (180, 100, 75)
    expected = [(c / 255 - m) / s for c, m, s in zip((180, 100, 75), IMAGENET_MEAN, IMAGENET_STD, strict=True)]
    assert torch.allclose(xt[0].mean((1, 2)), torch.tensor(expected), atol=0.05)
    # other attributes, chosen by name
    smiling = CelebA(root=str(celeba_root), target="Smiling", sensitive="Young", image_size=8, verify_md5=False)
    smiling.setup("fit")
    assert torch.equal(smiling.val_set.groups, attr[6:9, CELEBA_ATTRIBUTES.index("Young")])
    monkeypatch.setattr(type(dm.train_set), "__getitem__", lambda self, i: pytest.fail("items were loaded"))
    targets, groups = dataset_labels(dm.train_set)
    assert torch.equal(targets, dm.train_set.targets) and torch.equal(groups, dm.train_set.groups)


def test_celeba_default_transform_is_group_dro(celeba_root):
    dm = CelebA(root=str(celeba_root), verify_md5=False)
    dm.setup("test")
    x, _, _ = dm.test_set[0]
    assert x.shape == (3, 224, 224)


def test_celeba_md5_check_of_torchvision_is_explained(celeba_root):
    # the tiny annotation files cannot match torchvision's MD5 checksums of the real ones
    with pytest.raises(RuntimeError, match="verify_md5=False"):
        CelebA(root=str(celeba_root)).setup("fit")


def test_celeba_unknown_attributes_fail_early_with_close_matches():
    with pytest.raises(ValueError, match=r"Unknown CelebA target attribute 'Blond_Hiar'\. Did you mean 'Blond_Hair'"):
        CelebA(root="/nonexistent", target="Blond_Hiar")
    with pytest.raises(ValueError, match=r"sensitive attribute 'male'\. Did you mean 'Male'\?"):
        CelebA(root="/nonexistent", sensitive="male")
    with pytest.raises(ValueError, match="The attributes are: 5_o_Clock_Shadow"):
        check_attribute("Hat", "target")
    with pytest.raises(ValueError, match="both 'Male'"):
        CelebA(root="/nonexistent", target="Male", sensitive="Male")


def test_celeba_missing_files_are_named(tmp_path):
    _write_celeba(tmp_path, skip="list_bbox_celeba.txt")
    with pytest.raises(FileNotFoundError, match=r"missing list_bbox_celeba\.txt\. Expected torchvision's layout"):
        CelebA(root=str(tmp_path), verify_md5=False).setup("fit")
    with pytest.raises(FileNotFoundError, match=r"missing list_attr_celeba\.txt, .*img_align_celeba/"):
        CelebA(root=str(tmp_path / "empty"), verify_md5=False).setup("fit")


# ---------------------------------------------------------------------------------------------- configs


def test_data_configs_instantiate(tmp_path, waterbirds_root, celeba_root):
    from hydra.utils import instantiate

    spurious = OmegaConf.load(CONF / "data" / "spurious_mnist1d.yaml")
    dm = instantiate(spurious, root=str(tmp_path))
    assert isinstance(dm, SpuriousMNIST1D) and dm.expected_group_class_counts().tolist() == [[1900, 100], [100, 1900]]
    for name, root, cls in (("waterbirds", waterbirds_root, Waterbirds), ("celeba", celeba_root, CelebA)):
        cfg = OmegaConf.load(CONF / "data" / f"{name}.yaml")
        assert OmegaConf.is_missing(cfg, "root")
        assert isinstance(instantiate(cfg, root=str(root)), cls)
