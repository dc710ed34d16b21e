"""Durable file replacement: the one way the tools write a file that someone may read at any moment
(archive objects in a local directory or the fallback directory, checkpoints, the metrics textfile,
the notification state, the wizard's config)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

#: Temp files start with this: LocalStorage.list skips them, and no reader takes them for a final file.
TEMP_PREFIX = ".tmp-"


def atomic_write(path: str | os.PathLike[str], data: bytes, *, mode: int | None = None) -> None:
    """Replace `path` with `data` so a reader sees the old file or the new one, never a part, and
    the new one survives a crash once this returns: temp file in the same directory (a rename
    across file systems is not atomic), write, fsync, rename, fsync of the directory (the rename
    itself is only durable then). The temp file is removed on any failure. `mode` (e.g. 0o600 for
    a file naming secrets' variables, 0o644 for one another user reads) is set before the file
    gets its name; without it the file keeps mkstemp's 0600."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f"{TEMP_PREFIX}{target.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as fh:
            if mode is not None:
                os.fchmod(fh.fileno(), mode)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
