"""The local fallback directory (issue 3): batches the archiver could not put on S3 wait here under
the archive's key layout until a later run drains them; batches that fail their checksum while
draining are set aside under `.quarantine/`. Its rules live here once, for the archiver (sink,
health, metrics) and validate."""
from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

from common.files import replace_durable
from common.archive.layout import is_control_key, is_manifest
from common.archive.storage import LocalStorage, key_path

#: Set aside inside the fallback directory; LocalStorage.list skips dot-directories, so a
#: quarantined batch is never drained or counted as pending.
QUARANTINE = ".quarantine"
#: The lock archivers sharing the directory take (a dot-directory, so never listed as a batch).
RUN_LOCK = ".locks/run"


class FallbackDir(LocalStorage):
    """A LocalStorage at `s3.local_fallback_dir`, with what waits in it and what was set aside."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        super().__init__(root, location="fallback")
        self._lock: IO[bytes] | None = None

    def claim(self) -> bool:
        """Take the directory for this run: True when no other archiver uses it (this one may drain
        it), False when another does (an overlapping run: draining then could upload a batch that
        one is withdrawing, or quarantine one it just drained). Either way a shared lock is held
        until release(), so no later run drains under this one's feet; it waits only while another
        run drains. True without a lock where none can be made (as before locks existed)."""
        try:
            path = self.root / RUN_LOCK
            path.parent.mkdir(parents=True, exist_ok=True)
            self._lock = self._lock or path.open("ab")
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                fcntl.flock(self._lock, fcntl.LOCK_SH)
                return False
        except OSError:
            return True

    def share(self) -> None:
        """After draining: let other runs share the directory (they will not drain it)."""
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_SH)

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing drops the flock
            self._lock = None

    @property
    def quarantine_root(self) -> Path:
        return self.root / QUARANTINE

    def quarantined(self) -> LocalStorage | None:
        """The quarantined batches as a store of their own (None when there are none)."""
        return LocalStorage(self.quarantine_root, location="fallback") if self.quarantine_root.is_dir() else None

    def pending(self) -> tuple[int, int]:
        """(batches, bytes) waiting to be drained, for health and metrics: the data objects here
        (a batch whose set has not been stored yet too: its rows are in no other archive)."""
        if not self.root.exists():
            return 0, 0
        files = list(self.list(""))
        return (sum(1 for o in files if not is_manifest(o.key) and not is_control_key(o.key)),
                sum(o.size for o in files))

    def quarantine(self, *keys: str) -> None:
        """Move these keys (a batch's object and manifest) under `.quarantine/`, same relative path."""
        for key in keys:
            src = key_path(self.root, key)
            if src.exists():
                replace_durable(src, key_path(self.quarantine_root, key))
