"""A bound on the rows read but not yet encoded: they are the archiver's largest buffers (a
50k-row window of audit rows is ~16 MB of Arrow), while an encoded batch is its compressed bytes.
A count of batches alone does not bound memory: with days larger than a batch every batch is a
whole window, and a slow compression level lets the reader run far ahead of the encoders."""
from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import TypeVar

T = TypeVar("T")


class RowBudget:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._cond = threading.Condition()

    def take(self, rows: int, stop: threading.Event) -> bool:
        """Wait until `rows` fit (a batch always fits when nothing else is held); False if `stop`
        is set first."""
        with self._cond:
            while self.used and self.used + rows > self.limit:
                if stop.is_set():
                    return False
                self._cond.wait(0.1)
            self.used += rows
            return True

    def give(self, rows: int) -> None:
        with self._cond:
            self.used -= rows
            self._cond.notify_all()

    def held_until_done(self, future: Future[T], rows: int) -> Future[T]:
        """Give `rows` back once `future` (the batch's encoding) is done, however it ends."""
        future.add_done_callback(lambda _: self.give(rows))
        return future
