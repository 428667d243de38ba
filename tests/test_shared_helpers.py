"""The small shared pieces every other module uses once: atomic writing, batch unpacking, the cell index and the
keyword signatures built from an options dataclass."""

import dataclasses
import inspect
import stat

import pytest
import torch

from lightning_autobalance.batches import unpack_batch
from lightning_autobalance.data.labels import cell_index, group_class_counts
from lightning_autobalance.files import write_atomic
from lightning_autobalance.options import keyword_signature, options_from


def test_write_atomic_leaves_the_old_file_whole_when_the_writer_fails(tmp_path):
    path = tmp_path / "report.yaml"
    path.write_text("old")

    def fail(handle):
        handle.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, fail)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.yaml"]


def test_write_atomic_creates_folders_and_a_world_readable_file(tmp_path):
    path = write_atomic(tmp_path / "a" / "b.bin", lambda handle: handle.write(b"\x00\x01"))
    assert path.read_bytes() == b"\x00\x01"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


@pytest.mark.parametrize(
    ("batch", "kind"),
    [([torch.zeros(1)], "list of length 1"), ((1, 2, 3, 4), "tuple of length 4"), ("xy", "str"), (None, "NoneType")],
)
def test_unpack_batch_names_what_it_got(batch, kind):
    with pytest.raises(ValueError, match=f"the reader expects \\(x, y\\) or \\(x, y, g\\) batches, got a {kind}: fix"):
        unpack_batch(batch, user="the reader", advice="fix")


def test_unpack_batch_reads_two_and_three_items():
    x, y, g = torch.zeros(2), torch.tensor([0, 1]), torch.tensor([1, 0])
    assert unpack_batch([x, y], user="u", advice="a")[2] is None
    assert unpack_batch((x, y, g), user="u", advice="a")[2] is g


def test_cell_index_numbers_cells_group_major_as_the_counts_table():
    generator = torch.Generator().manual_seed(0)
    targets = torch.randint(0, 3, (200,), generator=generator)
    groups = torch.randint(0, 4, (200,), generator=generator)
    cells = cell_index(targets, groups, num_classes=3)
    assert cells.tolist() == [int(g) * 3 + int(y) for y, g in zip(targets, groups, strict=True)]
    counts = group_class_counts(targets, groups, 4, 3)
    for g in range(4):
        for k in range(3):
            assert counts[g, k] == int(((groups == g) & (targets == k)).sum())
    assert torch.equal(cell_index(targets, None, num_classes=3), targets)


@dataclasses.dataclass(frozen=True)
class _Settings:
    lr: float = 0.1
    names: tuple[str, ...] = ()
    hidden: list[int] = dataclasses.field(default_factory=lambda: [8])


def test_keyword_signature_follows_the_dataclass():
    signature = keyword_signature(_Settings, ("self", "model"))
    assert list(signature.parameters) == ["self", "model", "lr", "names", "hidden"]
    assert signature.parameters["lr"].kind is inspect.Parameter.KEYWORD_ONLY
    assert signature.parameters["lr"].default == 0.1
    assert signature.parameters["hidden"].default == [8]
    assert signature.parameters["lr"].annotation is float


def test_options_from_names_an_unknown_keyword_and_the_accepted_ones():
    assert options_from(_Settings, "fit", {"lr": 0.5}) == _Settings(lr=0.5)
    with pytest.raises(TypeError, match=r"fit\(\) got an unexpected keyword argument 'l_r' \(accepted: lr, names"):
        options_from(_Settings, "fit", {"l_r": 0.5})
