"""Writing a file so that it is never half-written: a temporary file in the same folder, then an atomic rename."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["write_atomic"]


def write_atomic(path: str | os.PathLike[str], write: Callable[[BinaryIO], None]) -> Path:
    """Create or replace ``path`` with what ``write`` writes to a binary handle, all at once or not at all.

    The bytes go to a temporary file next to ``path`` (so the rename stays on one file system), are flushed to disk
    and renamed over ``path``: a reader sees the old file or the new one, never a part. If ``write`` raises, the
    temporary file is removed and ``path`` is untouched. The parent folder is created when missing.

    Args:
        path: the file to write.
        write: called once with the open binary handle (e.g. ``lambda f: numpy.savez(f, **arrays)``).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> write_atomic(folder / "a.txt", lambda f: f.write(b"done")).read_text()
        'done'
        >>> sorted(p.name for p in folder.iterdir())  # no temporary file is left behind
        ['a.txt']
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a written file should read like any other
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
