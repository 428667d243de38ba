"""What every DDP test script does last: write this rank's record, then leave the process group together."""

import json
from pathlib import Path
from typing import Any

import torch.distributed as dist


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
