"""A restore's commits (issue 4): objects loaded and not yet committed, and the progress lines
the restore logs as they are committed."""
from __future__ import annotations

import logging
import time
from typing import Any

import psycopg

from common.errors import session_lost
from common.hooks import Hook, no_hook
from restore.loader import Loader, ObjectResult, Prepared

log = logging.getLogger("restore")


class CommitBatch:
    """Objects loaded and not yet committed. Each object is loaded whole inside one transaction (a
    savepoint around it), and several objects share one commit: a commit per object waited for
    its WAL flush 311 times on the 2M-row bench (~1.5 s of a ~11 s restore). An object that fails
    is rolled back to its savepoint and the objects loaded before it are committed, so they stay
    restored, as the error message says. `committed` (the report's objects) lists an object once it
    is committed."""

    #: Commit once this many rows, or this many seconds, have been loaded since the last commit.
    ROWS = 100_000
    SECONDS = 2.0
    _SAVEPOINT = "pg_archiver_restore_object"

    def __init__(self, conn: psycopg.Connection[Any], committed: list[ObjectResult], progress: Progress, *,
                 single_tx: bool, hook: Hook = no_hook) -> None:
        self.conn, self.committed, self.progress, self.single_tx = conn, committed, progress, single_tx
        #: Test points (common/hooks.py, ARCHIVER_TEST_KILL_AT): restore_loaded after an object's
        #: rows are in (not yet committed), restore_committed after a commit.
        self.hook = hook
        self.loaded: list[ObjectResult] = []
        self.since = time.monotonic()

    def load(self, loader: Loader, item: Prepared) -> None:
        if self.single_tx:  # fail: one transaction for the run, which rolls back whole on any error
            self._done(loader.load(item))
            return
        self.conn.execute(f"SAVEPOINT {self._SAVEPOINT}")
        try:
            result = loader.load(item)
        except BaseException as exc:
            if session_lost(exc):
                raise  # the connection is gone, and with it everything not committed
            try:
                self.conn.execute(f"ROLLBACK TO SAVEPOINT {self._SAVEPOINT}")
                self.keep_loaded()
            except psycopg.Error:
                pass  # keep the original error; the objects not committed are rolled back with it
            raise
        self.conn.execute(f"RELEASE SAVEPOINT {self._SAVEPOINT}")
        self.loaded.append(result)
        self.hook("restore_loaded")
        if sum(r.rows for r in self.loaded) >= self.ROWS or time.monotonic() - self.since >= self.SECONDS:
            self.commit()

    def keep_loaded(self) -> None:
        """Before an error is raised: commit the objects already loaded (not in a fail run)."""
        if not self.single_tx and self.loaded:
            self.commit()

    def commit(self) -> None:
        self.conn.commit()
        self.hook("restore_committed")
        for result in self.loaded:
            self._done(result)
        self.loaded, self.since = [], time.monotonic()

    def _done(self, result: ObjectResult) -> None:
        self.committed.append(result)
        self.progress.done(result)


class Progress:
    def __init__(self, objects: int, rows: int, *, verb: str) -> None:
        self.objects, self.rows, self.verb = objects, rows, verb
        self.done_objects = self.done_rows = 0
        self.started = time.monotonic()

    def done(self, r: ObjectResult) -> None:
        self.done_objects += 1
        self.done_rows += r.rows
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = self.done_rows / elapsed
        eta = (self.rows - self.done_rows) / rate if rate and self.rows > self.done_rows else 0.0
        log.info("%s %d/%d %s: %d rows, %d inserted, %d skipped, %d overwritten (%.0f rows/s, ETA %.0fs)",
                 self.verb, self.done_objects, self.objects, r.key, r.rows, r.inserted, r.skipped, r.overwritten, rate, eta)
