"""A small AutoBalance search run that can be killed on purpose, launched by tests/test_faults.py.

``--kill-at-step N`` sends SIGKILL to the whole process group (the run and, under DDP, its other ranks) when the
global step reaches ``N``, as a cluster scheduler would. ``--kill-mode mid-save`` instead kills the group while
the first checkpoint write at or after step ``N`` is half done (half of the bytes written to the open file), so the
test sees whether a torn write can ever be the ``last.ckpt`` a resumed run loads. Without a kill the run ends
normally and rank ``r`` writes ``rank{r}.json`` (the final raw α, bit-exact, and the counters) into ``--out``.
Run it with the repository root on ``PYTHONPATH``, as ``tests.conftest.subprocess_env`` sets it: it imports
``tests._helpers``.
"""

import json
import os
import signal
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from lightning_autobalance import ConjugateGradient, HeldOutSplit
from tests._helpers.data import Blobs
from tests._helpers.models import TanhNet
from tests._helpers.runs import run_arguments
from tests._helpers.searches import tiny_search
from tests._helpers.trainers import quiet_trainer


class Data(Blobs):
    def __init__(self, batch_size=16):
        super().__init__((120, 48, 16), batch_size)


Model = TanhNet  # the run's classifier, also fitted in-process by tests/test_faults.py


def make_autobalance(export_path=None, **overrides):
    options = dict(
        every_n_steps=2,
        train_batches=2,
        heldout_batches=2,
        batch_size=8,
        engine="full",
        solver=ConjugateGradient(iters=3, damping=1.0),
        export_path=export_path,
    )
    return tiny_search(**{**options, **overrides})


def kill_group():
    """SIGKILL this process group: the run and, under DDP, the other ranks it launched."""
    os.killpg(os.getpgid(0), signal.SIGKILL)


class KillAtStep(Callback):
    """Kill the run once ``global_step`` reaches ``step`` (after AutoBalance's hyper-step of that step)."""

    def __init__(self, step, checkpoint):
        self.step, self.checkpoint = step, Path(checkpoint)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step >= self.step and trainer.is_global_zero:
            if not self.checkpoint.exists():
                raise RuntimeError(f"no checkpoint at {self.checkpoint} before the kill at step {trainer.global_step}")
            kill_group()


def kill_during_checkpoint_write(trainer_ref, step):
    """Make the first checkpoint write at or after ``step`` die half-way through writing its bytes."""
    from fsspec.implementations.local import LocalFileOpener

    original = LocalFileOpener.write

    def write(self, data, *args, **kwargs):
        trainer = trainer_ref()
        if trainer is not None and trainer.global_step >= step and "w" in self.mode:
            original(self, data[: len(data) // 2])
            self.flush()
            os.fsync(self.fileno())
            kill_group()
        return original(self, data, *args, **kwargs)

    LocalFileOpener.write = write


def alpha_record(autobalance, trainer):
    return {
        "alpha": {k: v.detach().flatten().tolist() for k, v in autobalance.loss.hparams().items()},
        "hyper_steps": autobalance.hyper_steps,
        "skipped_steps": autobalance.skipped_steps,
        "global_step": trainer.global_step,
        "world_size": trainer.world_size,
        "rank": trainer.global_rank,
    }


def main():
    parser = run_arguments(batch_size=16, epochs=4)
    parser.add_argument("--checkpoint-dir", required=True)
    parser.add_argument("--every-n-train-steps", type=int, default=3)
    parser.add_argument("--kill-at-step", type=int, default=None)
    parser.add_argument("--kill-mode", choices=("step", "mid-save"), default="step")
    parser.add_argument("--resume", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    pl.seed_everything(0, verbose=False)
    out = Path(args.out)
    autobalance = make_autobalance(export_path=out / "loss.yaml")
    checkpoint = ModelCheckpoint(
        dirpath=args.checkpoint_dir, save_last=True, save_top_k=0, every_n_train_steps=args.every_n_train_steps
    )
    callbacks = [autobalance, checkpoint]
    if args.kill_at_step is not None and args.kill_mode == "step":
        callbacks.append(KillAtStep(args.kill_at_step, Path(args.checkpoint_dir) / "last.ckpt"))
    trainer = quiet_trainer(
        devices=args.devices,
        strategy=args.strategy,
        max_epochs=args.epochs,
        callbacks=callbacks,
        enable_checkpointing=True,
        default_root_dir=out,
    )
    if args.kill_at_step is not None and args.kill_mode == "mid-save":
        import weakref

        kill_during_checkpoint_write(weakref.ref(trainer), args.kill_at_step)
    trainer.fit(Model(), datamodule=HeldOutSplit(Data(args.batch_size), fraction=0.25), ckpt_path=args.resume)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(alpha_record(autobalance, trainer)))


if __name__ == "__main__":
    main()
