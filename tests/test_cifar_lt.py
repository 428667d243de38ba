"""CIFAR10-LT / CIFAR100-LT datamodules on tiny files written in torchvision's exact on-disk layout."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from lightning_autobalance.data import CIFAR10LongTail, CIFAR100LongTail, HeldOutSplit, long_tail_counts
from lightning_autobalance.data.cifar_lt import check_cifar_files
from tests._helpers.data import prepared

CONF = Path(__file__).resolve().parents[1] / "conf"


def _dump(path: Path, obj: dict) -> None:
    with open(path, "wb") as handle:
        pickle.dump(obj, handle, protocol=2)


def _images(labels: list[int], rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, size=(len(labels), 3 * 32 * 32), dtype=np.uint8)


def write_cifar10(root: Path, train_per_class: int = 20, test_per_class: int = 3, seed: int = 0) -> Path:
    """``root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}`` with str-keyed pickles (as the
    originals read with ``encoding="latin1"``); training images of each class spread over the five batches."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    labels = [c for c in range(10) for _ in range(train_per_class)]
    rng.shuffle(labels)
    for b, chunk in enumerate(np.array_split(np.array(labels), 5), start=1):
        chunk = chunk.tolist()
        _dump(
            folder / f"data_batch_{b}",
            {
                "batch_label": f"training batch {b} of 5",
                "labels": chunk,
                "data": _images(chunk, rng),
                "filenames": [f"img_{b}_{i}.png" for i in range(len(chunk))],
            },
        )
    test = [c for c in range(10) for _ in range(test_per_class)]
    _dump(folder / "test_batch", {"batch_label": "testing batch 1 of 1", "labels": test, "data": _images(test, rng)})
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    _dump(folder / "batches.meta", {"label_names": names, "num_cases_per_batch": 10000, "num_vis": 3072})
    return root


def write_cifar100(root: Path, train_per_class: int = 6, test_per_class: int = 1, seed: int = 0) -> Path:
    """``root/cifar-100-python/{train, test, meta}`` (fine and coarse labels)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, per_class in (("train", train_per_class), ("test", test_per_class)):
        fine = [c for c in range(100) for _ in range(per_class)]
        rng.shuffle(fine)
        _dump(
            folder / name,
            {
                "filenames": [f"{name}_{i}.png" for i in range(len(fine))],
                "batch_label": name,
                "fine_labels": fine,
                "coarse_labels": [c // 5 for c in fine],
                "data": _images(fine, rng),
            },
        )
    _dump(
        folder / "meta",
        {"fine_label_names": [f"class{c}" for c in range(100)], "coarse_label_names": [f"super{c}" for c in range(20)]},
    )
    return root


@pytest.fixture
def cifar10_root(tmp_path: Path) -> Path:
    return write_cifar10(tmp_path / "data")


@pytest.fixture
def cifar100_root(tmp_path: Path) -> Path:
    return write_cifar100(tmp_path / "data")


@pytest.mark.parametrize(("profile", "ratio"), [("exponential", 10), ("exponential", 20), ("step", 10)])
def test_cifar10_counts_follow_the_profile(cifar10_root, profile, ratio):
    dm = prepared(
        CIFAR10LongTail(str(cifar10_root), imbalance_ratio=ratio, profile=profile, batch_size=8, verify_md5=False)
    )
    expected = long_tail_counts(20, 10, ratio, profile)  # n_max defaults to the images per class on disk (20)
    assert dm.class_counts.tolist() == expected
    labels = torch.tensor([int(dm.train_set[i][1]) for i in range(len(dm.train_set))])
    assert torch.bincount(labels, minlength=10).tolist() == expected
    assert len(dm.test_set) == 30  # the test set stays balanced and complete
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.long
    xt, _ = next(iter(dm.test_dataloader()))
    assert xt.shape[1:] == (3, 32, 32)


def test_cifar10_n_max_and_seeded_choice(cifar10_root):
    def kept(seed: int) -> list[int]:
        dm = CIFAR10LongTail(str(cifar10_root), n_max=12, imbalance_ratio=4, seed=seed, verify_md5=False)
        dm.setup("fit")
        assert dm.class_counts.tolist() == long_tail_counts(12, 10, 4)
        return list(dm.train_set.indices)

    assert kept(0) == kept(0)
    assert kept(0) != kept(1)


def test_cifar100_counts_follow_the_profile(cifar100_root):
    dm = CIFAR100LongTail(str(cifar100_root), imbalance_ratio=6, batch_size=16, verify_md5=False)
    dm.setup("fit")
    expected = long_tail_counts(6, 100, 6)
    assert dm.num_classes == 100
    assert dm.class_counts.tolist() == expected
    assert expected[0] == 6 and expected[-1] == 1
    assert len(dm.test_set) == 100
    step = CIFAR100LongTail(str(cifar100_root), imbalance_ratio=3, profile="step", verify_md5=False)
    step.setup("fit")
    assert step.class_counts.tolist() == [6] * 50 + [2] * 50


def test_heldout_split_wraps_the_datamodule(cifar10_root):
    dm = CIFAR10LongTail(str(cifar10_root), imbalance_ratio=4, batch_size=4, verify_md5=False)
    split = HeldOutSplit(dm, fraction=0.2, num_classes=10)
    split.setup("fit")
    assert (split.class_counts + split.heldout_class_counts).tolist() == long_tail_counts(20, 10, 4)
    assert (split.heldout_class_counts >= 1).all()


def test_missing_folder_names_root_and_expected_folder(tmp_path):
    dm = CIFAR10LongTail(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py") as err:
        dm.prepare_data()
    assert str(tmp_path / "nowhere") in str(err.value) and "nothing is downloaded" in str(err.value)
    with pytest.raises(FileNotFoundError, match=r"cifar-100-python/ with train, test, meta"):
        CIFAR100LongTail(str(tmp_path)).setup("fit")


def test_missing_files_are_named(cifar10_root):
    (cifar10_root / "cifar-10-batches-py" / "test_batch").unlink()
    (cifar10_root / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="lacks data_batch_3, test_batch"):
        check_cifar_files(CIFAR10LongTail.dataset_class, cifar10_root)


def test_checksum_mismatch_says_how_to_skip_the_check(cifar10_root):
    dm = CIFAR10LongTail(str(cifar10_root))  # verify_md5=True: the generated files are not the originals
    with pytest.raises(RuntimeError, match="verify_md5=False"):
        dm.setup("fit")


def test_profile_larger_than_the_files_fails_early(cifar10_root):
    dm = CIFAR10LongTail(str(cifar10_root), n_max=50, verify_md5=False)
    with pytest.raises(ValueError, match="lower n_max"):
        dm.setup("fit")
    with pytest.raises(ValueError, match="profile"):
        CIFAR10LongTail(str(cifar10_root), profile="linear")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch_size"):
        CIFAR10LongTail(str(cifar10_root), batch_size=0)


def test_augmentation_only_on_training_images(cifar10_root):
    dm = CIFAR10LongTail(str(cifar10_root), imbalance_ratio=2, verify_md5=False)
    dm.setup("fit")
    names = [type(t).__name__ for t in dm.train_set.dataset.transform.transforms]
    assert names[:2] == ["RandomCrop", "RandomHorizontalFlip"]
    assert [type(t).__name__ for t in dm.test_set.transform.transforms] == ["ToTensor", "Normalize"]
    plain = CIFAR10LongTail(str(cifar10_root), imbalance_ratio=2, augment=False, verify_md5=False)
    plain.setup("fit")
    assert [type(t).__name__ for t in plain.train_set.dataset.transform.transforms] == ["ToTensor", "Normalize"]


def test_data_configs_instantiate(tmp_path):
    from hydra.utils import instantiate

    for name, cls in (("cifar10_lt", CIFAR10LongTail), ("cifar100_lt", CIFAR100LongTail)):
        cfg = OmegaConf.load(CONF / "data" / f"{name}.yaml")
        assert OmegaConf.is_missing(cfg, "root")
        dm = instantiate(cfg, root=str(tmp_path))
        assert isinstance(dm, cls) and dm.imbalance_ratio == 100 and dm.profile == "exponential"


def test_docstring_examples():
    import doctest

    import lightning_autobalance.data.cifar_lt as module

    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 3 and result.failed == 0


def test_datasets_pickle_for_loader_workers(cifar10_root, cifar100_root):
    for cls in (CIFAR10LongTail, CIFAR100LongTail):
        dm = cls(str(cifar10_root if cls is CIFAR10LongTail else cifar100_root), imbalance_ratio=2, verify_md5=False)
        dm.setup("fit")
        copy = pickle.loads(pickle.dumps(dm.train_set))  # spawned DataLoader workers unpickle the data set
        assert len(copy) == len(dm.train_set) and int(copy[0][1]) == int(dm.train_set[0][1])
