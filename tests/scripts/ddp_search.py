"""A small AutoBalance search run, launched by tests/test_ddp.py on 1 process, 2 DDP processes or 2 torchrun nodes.

``--engine default`` (the callback's default: last layer, Exact solve) or ``--engine full`` (all weights, conjugate
gradient). Every process writes ``rank{r}.json`` into ``--out``: α after every hyper-step, the final α, the engine's
class name and validation metrics. ``--llr MODE`` adds :class:`LastLayerRetraining` (held-out split, at the end of
the fit); the record then holds the refit head, the head before it and the retraining report.
"""

import argparse
import json
import os
import warnings
from functools import partial
from pathlib import Path

import lightning.pytorch as pl
import torch
from ddp_record import write_record_and_leave  # tests/scripts, next to this script
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_autobalance import AutoBalance, AutoBalanceMixin, ConjugateGradient, HeldOutSplit, LastLayerRetraining

K = 3


class Data(pl.LightningDataModule):
    def __init__(self, batch_size):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        y = torch.cat([torch.full((n,), k) for k, n in enumerate((160, 60, 20))])
        centers = torch.randn(K, 6, generator=gen) * 1.2
        self.train = TensorDataset(centers[y] + torch.randn(len(y), 6, generator=gen), y)
        yv = torch.arange(K).repeat(20)
        self.val = TensorDataset(centers[yv] + torch.randn(len(yv), 6, generator=gen), yv)
        self.batch_size = batch_size

    def train_dataloader(self):
        return DataLoader(self.train, batch_size=self.batch_size, shuffle=True, drop_last=True)

    def val_dataloader(self):
        return DataLoader(self.val, batch_size=20)


class Model(AutoBalanceMixin, pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, K))

    def forward(self, x):
        return self.net(x)

    def autobalance_features(self, x):  # the feature hook of the last-layer (default) engine
        return self.net[:2](x)

    def autobalance_head(self):
        return self.net[2]

    def training_step(self, batch, batch_idx):
        return self.autobalance_step_loss(batch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def flat(tensors):
    """The values of ``tensors``, flattened and concatenated, as a list of floats (for the JSON record)."""
    return [float(v) for v in torch.cat([t.detach().flatten() for t in tensors])]


class History(Callback):
    def __init__(self, autobalance):
        self.autobalance, self.steps = autobalance, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.autobalance.hyper_steps > len(self.steps):
            self.steps.append(flat(self.hparams()))

    def hparams(self):
        return self.autobalance.loss.hparams().values()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--num-nodes", type=int, default=1)
    parser.add_argument("--strategy", default="auto")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--checkpoint-dir", default=None)
    parser.add_argument("--resume", default=None)
    parser.add_argument("--engine", default="default", choices=["default", "full"])
    parser.add_argument("--llr", default=None, help="a LastLayerRetraining mode to run at the end of the fit")
    args = parser.parse_args()
    warnings.filterwarnings("error", message=".*no feature hook.*")  # the engine asked for must really run
    torch.set_num_threads(1)
    pl.seed_everything(0, verbose=False)
    autobalance = AutoBalance(
        preset="ce",
        learn=("delta", "iota"),
        warmup_epochs=1,
        every_n_steps=2,
        train_batches=4,
        heldout_batches=4,
        batch_size=8,
        hyper_optimizer=partial(torch.optim.SGD, lr=0.5, momentum=0.9),
        engine=args.engine,
        solver=ConjugateGradient(iters=4, damping=1.0) if args.engine == "full" else None,  # default: its own Exact
        export_path=Path(args.out) / "loss.yaml",
    )
    history = History(autobalance)
    callbacks = [autobalance, history]
    llr = LastLayerRetraining("heldout", "val", mode=args.llr, ridge=0.1) if args.llr else None
    if llr:
        callbacks.append(llr)
    if args.checkpoint_dir:
        callbacks.append(ModelCheckpoint(dirpath=args.checkpoint_dir, save_last=True, save_top_k=0))
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=args.devices,
        num_nodes=args.num_nodes,
        strategy=args.strategy,
        max_epochs=args.epochs,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=bool(args.checkpoint_dir),
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=args.out,
    )
    model = Model()
    trainer.fit(model, datamodule=HeldOutSplit(Data(args.batch_size), fraction=0.25), ckpt_path=args.resume)
    if args.strategy == "ddp_spawn":  # the search ran in spawned processes: this one only has the exported loss
        Path(args.out, "spawn.json").write_text(json.dumps({"has_loss": autobalance.loss is not None}))
        return
    metrics = trainer.validate(model, datamodule=Data(args.batch_size), verbose=False)[0]
    record = {
        "world_size": trainer.world_size,
        "rank": trainer.global_rank,
        "hyper_steps": autobalance.hyper_steps,
        "engine": type(autobalance.engine).__name__,
        "history": history.steps,
        "alpha": flat(history.hparams()),
        "metrics": {k: float(v) for k, v in metrics.items()},
        "node_rank": int(os.environ.get("NODE_RANK", os.environ.get("GROUP_RANK", "0"))),
    }
    if llr:
        head, before = model.autobalance_head(), llr.report.previous_head
        record["head"], record["head_before"] = flat([head.weight, head.bias]), flat([before.weight, before.bias])
        record["llr"] = dict(llr.report.metrics)
    write_record_and_leave(args.out, trainer.global_rank, record)


if __name__ == "__main__":
    main()
