"""A bound on the rows read but not yet encoded, in rows and in their Arrow bytes: they are the
archiver's largest buffers (a 50k-row window of audit rows is ~16 MB of Arrow), while an encoded
batch is its compressed bytes. A count of batches alone does not bound memory: with days larger
than a batch every batch is a whole window, and a slow compression level lets the reader run far
ahead of the encoders. Rows alone do not either: a table of ~200 kB documents holds ~10 GB in
50,000 rows."""
from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import TypeVar

T = TypeVar("T")


class RowBudget:
    def __init__(self, limit: int, *, max_bytes: int | None = None) -> None:
        self.limit, self.max_bytes = limit, max_bytes
        self.used = self.used_bytes = 0
        self._cond = threading.Condition()

    def take(self, rows: int, stop: threading.Event, *, nbytes: int = 0) -> bool:
        """Wait until `rows` (of `nbytes`) fit (a batch always fits when nothing else is held);
        False if `stop` is set first."""
        with self._cond:
            while self.used and (self.used + rows > self.limit or not self._bytes_fit(nbytes)):
                if stop.is_set():
                    return False
                self._cond.wait(0.1)
            self.used += rows
            self.used_bytes += nbytes
            return True

    def _bytes_fit(self, nbytes: int) -> bool:
        return self.max_bytes is None or self.used_bytes + nbytes <= self.max_bytes

    def give(self, rows: int, nbytes: int = 0) -> None:
        with self._cond:
            self.used -= rows
            self.used_bytes -= nbytes
            self._cond.notify_all()

    def held_until_done(self, future: Future[T], rows: int, nbytes: int = 0) -> Future[T]:
        """Give `rows` (and `nbytes`) back once `future` (the batch's encoding) is done, however it ends."""
        future.add_done_callback(lambda _: self.give(rows, nbytes))
        return future
