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
    make_dirs(target.parent)
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


def append_durable(path: str | os.PathLike[str], data: bytes) -> None:
    """Append `data` to `path` (a journal) and make it survive a crash once this returns: the file
    is fsynced, and its directory too when this append created it (else the file may vanish)."""
    target = Path(path)
    make_dirs(target.parent)
    created = not target.exists()
    with open(target, "ab") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    if created:
        fsync_dir(target.parent)


def replace_durable(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Move `src` to `dst` (same file system) so the move survives a crash: both directories are
    fsynced (the new name is in one, the removal of the old one in the other)."""
    source, target = Path(src), Path(dst)
    make_dirs(target.parent)
    os.replace(source, target)
    fsync_dir(target.parent)
    if source.parent != target.parent:
        fsync_dir(source.parent)


def make_dirs(path: Path) -> None:
    """mkdir -p, durably: a directory created here is only there after a crash once its parent is
    fsynced, and a file renamed into it would vanish with it."""
    missing: list[Path] = []
    for d in (path, *path.parents):
        if d.is_dir():
            break
        missing.append(d)
    if not missing:
        return
    path.mkdir(parents=True, exist_ok=True)
    for d in reversed(missing):
        fsync_dir(d.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
