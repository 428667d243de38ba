"""``HeldOutSplit.sample_batches``: the hyper-step batches, drawn identically on every process and split by rank."""

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_autobalance import HeldOutSplit


class Data(pl.LightningDataModule):
    def __init__(self, n=50, batch_size=4, collate_fn=None):
        super().__init__()
        self.n, self.batch_size, self.collate_fn = n, batch_size, collate_fn

    def train_dataloader(self):
        x = torch.arange(float(self.n)).unsqueeze(1)
        kwargs = {} if self.collate_fn is None else {"collate_fn": self.collate_fn}
        return DataLoader(TensorDataset(x, torch.arange(self.n) % 2), batch_size=self.batch_size, **kwargs)


def split_of(**kwargs):
    split = HeldOutSplit(Data(**kwargs), fraction=0.2, seed=0)
    split.setup("fit")
    return split


def ids(batches):
    return [batch[0].flatten().long().tolist() for batch in batches]


def test_the_union_over_processes_is_the_single_process_draw():
    split = split_of()
    single, total = split.sample_batches(split.train_dataset, 5, torch.Generator().manual_seed(3), batch_size=3)
    assert total == 5 and [len(b) for b in ids(single)] == [3] * 5
    drawn = [i for batch in ids(single) for i in batch]
    assert len(set(drawn)) == 15  # without replacement
    for world in (2, 3):
        shares = [
            split.sample_batches(
                split.train_dataset, 5, torch.Generator().manual_seed(3), batch_size=3, world_size=world, rank=rank
            )
            for rank in range(world)
        ]
        assert all(count == 5 for _, count in shares)
        by_rank = [ids(batches) for batches, _ in shares]
        assert [by_rank[b % world][b // world] for b in range(5)] == ids(single)  # batch b goes to rank b mod world


def test_batch_size_defaults_to_the_training_loaders_and_a_small_data_set_gives_fewer_batches():
    split = split_of(batch_size=4)
    batches, total = split.sample_batches(split.heldout_dataset, 2, torch.Generator().manual_seed(0))
    assert total == 2 and [len(b) for b in ids(batches)] == [4, 4]
    # 10 held-out samples, asked for 3 batches of 4: nearly equal batches, never a batch of one
    batches, total = split.sample_batches(split.heldout_dataset, 3, torch.Generator().manual_seed(0), batch_size=4)
    assert total == 3 and sorted(len(b) for b in ids(batches)) == [3, 3, 4]
    assert sorted(i for b in ids(batches) for i in b) == sorted(split.heldout_dataset.indices)


def test_batches_are_collated_with_the_template_collate_fn_and_moved_with_to_device():
    def collate(items):
        x, y = zip(*items, strict=True)
        return torch.stack(x), torch.stack(y), torch.zeros(len(items), dtype=torch.long)

    split = split_of(collate_fn=collate)
    moved = []
    batches, _ = split.sample_batches(
        split.train_dataset, 2, torch.Generator().manual_seed(0), to_device=lambda b: moved.append(b) or b
    )
    assert [len(batch) for batch in batches] == [3, 3] and moved == batches


def test_sampling_before_setup_fails():
    split = HeldOutSplit(Data())
    with pytest.raises(RuntimeError, match=r"setup\('fit'\) must run"):
        split.sample_batches(TensorDataset(torch.zeros(4, 1)), 1, torch.Generator())
