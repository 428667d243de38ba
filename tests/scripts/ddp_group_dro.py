"""A small Group DRO fit, launched by tests/test_group_dro.py on 1 process (batch 32) or 2 DDP processes (2 × 16).

The training data is in a fixed (pre-shuffled) order and the loader does not shuffle; under DDP rank r takes the
samples r, r + 2, ..., so every global batch of 32 holds the same samples in both runs.
One (group, class) cell is rare (8 of 256 samples), so it is absent from many batches and, under DDP, often present
on one rank only. Every process writes ``rank{r}.json`` into ``--out``: ``q`` and the loss value after every step,
the final ``q`` and the final weights.
Run it with the repository root on ``PYTHONPATH``, as ``tests.conftest.subprocess_env`` sets it: it imports
``tests._helpers``.
"""

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from lightning_autobalance import GroupDRO
from tests._helpers.models import TanhNet
from tests._helpers.runs import run_arguments, write_record_and_leave
from tests._helpers.trainers import quiet_trainer

CELLS = {(0, 0): 112, (0, 1): 24, (1, 0): 8, (1, 1): 112}  # (group, class): samples; 256 = 8 global batches of 32


class Data(pl.LightningDataModule):
    def __init__(self, batch_size):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        g = torch.cat([torch.full((n,), group) for (group, _), n in CELLS.items()])
        y = torch.cat([torch.full((n,), label) for (_, label), n in CELLS.items()])
        x = torch.randn(len(y), 6, generator=gen) + 0.8 * torch.stack([y, g, y - g, y, g, 1 - y], 1).float()
        order = torch.randperm(len(y), generator=gen)
        self.train = TensorDataset(x[order], y[order], g[order])
        self.batch_size = batch_size

    def train_dataloader(self):
        # rank r of W takes samples r, r + W, ... (Lightning's own distributed sampler would shuffle them)
        distributed = dist.is_available() and dist.is_initialized()
        sampler = DistributedSampler(self.train, shuffle=False) if distributed else None
        return DataLoader(self.train, batch_size=self.batch_size, sampler=sampler, drop_last=True)


class Model(TanhNet):
    def __init__(self):
        super().__init__(num_classes=2, lr=0.2)

    def training_step(self, batch, batch_idx):
        loss = self.autobalance_step_loss(batch)
        self.losses.append(float(loss.detach()))
        return loss


class History(Callback):
    def __init__(self, group_dro):
        self.group_dro, self.steps = group_dro, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.steps.append(self.group_dro.loss.q.tolist())


def main():
    parser = run_arguments(batch_size=32, epochs=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    pl.seed_everything(0, verbose=False)
    group_dro = GroupDRO(step_size=0.5, adjustment=1.0)
    history = History(group_dro)
    trainer = quiet_trainer(
        devices=args.devices,
        strategy=args.strategy,
        max_epochs=args.epochs,
        callbacks=[group_dro, history],
        default_root_dir=args.out,
        use_distributed_sampler=False,  # the datamodule shards the data itself, in order
    )
    model = Model()
    model.losses = []
    trainer.fit(model, datamodule=Data(args.batch_size))
    record = {
        "world_size": trainer.world_size,
        "rank": trainer.global_rank,
        "updates": int(group_dro.loss.num_updates),
        "history": history.steps,
        "losses": model.losses,
        "q": group_dro.loss.q.tolist(),
        "weights": [float(v) for p in model.parameters() for v in p.detach().flatten()],
    }
    write_record_and_leave(args.out, trainer.global_rank, record)


if __name__ == "__main__":
    main()
