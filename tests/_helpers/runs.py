"""What a test script run does first and last: read its command line; write this rank's record and leave together."""

import argparse
import json
from pathlib import Path
from typing import Any

import torch.distributed as dist


def run_arguments(batch_size: int, epochs: int) -> argparse.ArgumentParser:
    """A parser of the options every test script takes: ``--out``, ``--devices``, ``--strategy``, ``--batch-size``
    and ``--epochs`` (defaults ``batch_size`` and ``epochs``); a script adds its own."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--strategy", default="auto")
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--epochs", type=int, default=epochs)
    return parser


def write_record_and_leave(out: str | Path, rank: int, record: dict[str, Any]) -> None:
    """Write ``rank{rank}.json`` into ``out``; then barrier and destroy the gloo process group, if any.

    A rank that exits while its peer still holds the connection can abort the peer's gloo thread ("terminate called
    without an active exception"), so the ranks leave together and close the connections before the interpreter exits.
    """
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / f"rank{rank}.json").write_text(json.dumps(record))
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
