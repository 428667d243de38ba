"""A small AutoBalance search run, launched by tests/test_ddp.py on 1 process, 2 DDP processes or 2 torchrun nodes.

``--engine default`` (the callback's default: last layer, Exact solve) or ``--engine full`` (all weights, conjugate
gradient). Every process writes ``rank{r}.json`` into ``--out``: α after every hyper-step, the final α, the engine's
class name and validation metrics. ``--llr MODE`` adds :class:`LastLayerRetraining` (held-out split, at the end of
the fit); the record then holds the refit head, the head before it and the retraining report.
Run it with the repository root on ``PYTHONPATH``, as ``tests.conftest.subprocess_env`` sets it: it imports
``tests._helpers``.
"""

import json
import os
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch.utils.data import DataLoader

from lightning_autobalance import ConjugateGradient, HeldOutSplit, LastLayerRetraining
from tests._helpers.data import Blobs
from tests._helpers.models import TanhNetWithHead
from tests._helpers.runs import run_arguments, write_record_and_leave
from tests._helpers.searches import tiny_search
from tests._helpers.trainers import quiet_trainer


class Data(Blobs):
    def __init__(self, batch_size):
        super().__init__((160, 60, 20), batch_size, val_per_class=20)

    def val_dataloader(self):
        return DataLoader(self.val, batch_size=20)


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
    parser = run_arguments(batch_size=16, epochs=4)
    parser.add_argument("--num-nodes", type=int, default=1)
    parser.add_argument("--checkpoint-dir", default=None)
    parser.add_argument("--resume", default=None)
    parser.add_argument("--engine", default="default", choices=["default", "full"])
    parser.add_argument("--llr", default=None, help="a LastLayerRetraining mode to run at the end of the fit")
    args = parser.parse_args()
    warnings.filterwarnings("error", message=".*no feature hook.*")  # the engine asked for must really run
    torch.set_num_threads(1)
    pl.seed_everything(0, verbose=False)
    autobalance = tiny_search(
        every_n_steps=2,
        train_batches=4,
        heldout_batches=4,
        batch_size=8,
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
    trainer = quiet_trainer(
        devices=args.devices,
        num_nodes=args.num_nodes,
        strategy=args.strategy,
        max_epochs=args.epochs,
        callbacks=callbacks,
        enable_checkpointing=bool(args.checkpoint_dir),
        default_root_dir=args.out,
    )
    model = TanhNetWithHead()
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
