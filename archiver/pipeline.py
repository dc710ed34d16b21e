"""The threads of a table's archiving: a reader thread reads batches and hands them to a small
encoder pool (bounded by a RowBudget), and an upload pool stores them, up to
max_concurrency * INFLIGHT_PER_UPLOAD in flight; the caller gets the stored batches back in read
order. No SQL and no checkpoint here: the caller hands in what to do before uploads start
(`begin`: the table job makes the batches pending in the checkpoint) and when a queued upload is
called off.

    with BatchPipeline(...) as pipe:
        for group in pipe.stored():
            ...  # delete the group's rows, commit, forget the batches
"""
from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Any

from archiver.budget import RowBudget
from archiver.controls import RunControls
from archiver.encoding import Encoded
from archiver.hooks import Hook
from archiver.reader import WINDOW_BYTES, Batch
from archiver.sink import FallbackFull
from common.errors import ServiceUnavailable
from common.archive.storage import BytesRefused
from common.archive.manifest import Manifest

_DONE = object()
#: Encoded batches waiting for or in an upload, per upload thread: while the mover deletes and
#: commits, the uploads keep going (an encoded batch is its compressed bytes and keys: ~0.3 MB).
INFLIGHT_PER_UPLOAD = 4
#: Batches read (and being encoded) ahead of the uploads: 8 kept the 2M-row bench as fast as 16,
#: with ~15 MB less peak RSS.
READ_AHEAD = 8
#: Rows read but not yet encoded, in windows (archiver/budget.py): their rows, and their bytes.
UNENCODED_WINDOWS = 2
#: Upload failures that store nothing of their batch: the batches already in flight may be stored
#: and are still handed out (so table and archive agree), then the failure is raised. S3 refusing
#: a batch's bytes is one: it was raised at once, and the batches stored meanwhile kept their rows
#: in the table until the next run.
UPLOAD_FAILURES = (FallbackFull, ServiceUnavailable, BytesRefused)

#: A stored batch and where it went ('s3', 'local', 'fallback').
Stored = tuple[Encoded, str]


class BatchPipeline:
    def __init__(self, *, read: Callable[[threading.Event], Iterable[Batch]], encode: Callable[[Batch], Encoded],
                 upload: Callable[[Manifest, bytes], str], begin: Callable[[Sequence[Encoded]], None],
                 call_off: Callable[[Encoded], None], upload_failed: Callable[[BaseException], None],
                 controls: RunControls, hook: Hook, uploads: int, window_rows: int, group_max: int,
                 name: str) -> None:
        """`read(stop)` yields batches until done or `stop` is set; `encode` runs in the encoder
        pool and `upload` in the upload pool; `begin(batches)` runs before their uploads start,
        `call_off(batch)` when a queued upload is cancelled, `upload_failed(error)` when an upload
        fails with one of UPLOAD_FAILURES. `window_rows` is one read window's rows (the budget is
        UNENCODED_WINDOWS of them); `group_max` bounds a group of stored(); `name` names threads."""
        self._read, self._encode, self._upload = read, encode, upload
        self._begin, self._call_off, self._upload_failed = begin, call_off, upload_failed
        self.controls, self._hook = controls, hook
        self._upload_workers, self._group_max, self._name = uploads, group_max, name
        self._budget = RowBudget(UNENCODED_WINDOWS * window_rows, max_bytes=UNENCODED_WINDOWS * WINDOW_BYTES)
        self._q: queue.Queue[Any] = queue.Queue(maxsize=READ_AHEAD)
        self._stop = threading.Event()
        self._inflight: deque[tuple[Encoded, Future[str]]] = deque()
        self._reading = True
        self._failed: BaseException | None = None

    # -- lifetime ----------------------------------------------------------------------------
    def __enter__(self) -> BatchPipeline:
        self._encoders = ThreadPoolExecutor(max_workers=2, thread_name_prefix=f"encode-{self._name}")
        self._uploads = ThreadPoolExecutor(max_workers=self._upload_workers, thread_name_prefix=f"upload-{self._name}")
        self._producer = threading.Thread(target=self._produce, daemon=True, name=f"reader-{self._name}")
        self._producer.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        """Whatever raised: stop the reader, wait for every upload (none may outlive the caller's
        final checkpoint write), then drain the queue so a reader blocked on it can finish."""
        self._stop.set()
        self._uploads.shutdown(wait=True)
        while self._producer.is_alive():
            try:
                self._q.get(timeout=0.1)
            except queue.Empty:
                pass
        self._producer.join()
        # Nobody takes an encoded batch any more: queued encodes are cancelled, running ones end.
        self._encoders.shutdown(wait=True, cancel_futures=True)

    # -- the caller's side -------------------------------------------------------------------
    @property
    def reading(self) -> bool:
        """Whether more batches may still be read and started."""
        return self._reading

    @property
    def busy(self) -> bool:
        """Whether stored() has more to hand out (batches to read, or uploads in flight)."""
        return self._reading or bool(self._inflight)

    def stored(self) -> Iterator[list[Stored]]:
        """Stored batches in read order, in groups: the oldest batch once stored, with the ones
        after it already stored too, of the same read window (one DELETE relies on one snapshot),
        up to `group_max`. Keeps reading and starting uploads meanwhile. On a stop, queued uploads
        are called off; on an upload failure too, and once the batches already uploading are
        handed out, the failure is raised."""
        while self._reading or self._inflight:
            if self._reading and not self.controls.stopping:
                self._reading = self._take()
            if self.controls.stopping:
                self._call_off_queued()
            if not self._inflight:
                if self.controls.stopping:
                    self._reading = False
                continue
            group, error = self._next_group()
            if error is not None:
                self._failed, self._reading = self._failed or error, False
                self._call_off_queued()
            if group:
                yield group
        if self._failed is not None:
            raise self._failed

    def stop_reading(self) -> None:
        """Start no more batches (a limit was reached): queued uploads are called off, the ones
        running are still handed out by stored()."""
        self._reading = False
        self._call_off_queued()

    # -- the mover thread's side -------------------------------------------------------------
    def _take(self) -> bool:
        """Move newly read batches into flight, up to the concurrency limit; one `begin` covers
        them all. Returns False once the reader is done."""
        new: list[Encoded] = []
        reading = True
        limit = self._upload_workers * INFLIGHT_PER_UPLOAD
        while len(self._inflight) + len(new) < limit and self.controls.wants_more(
                sum(e.rows for e, _ in self._inflight) + sum(e.rows for e in new)):
            item = self._next(block=not self._inflight and not new)
            if item is None:
                break
            if item is _DONE:
                reading = False
                break
            if isinstance(item, BaseException):
                raise item
            new.append(item.result())
        if new:
            self._begin(new)
            for e in new:
                self._inflight.append((e, self._uploads.submit(self._upload, e.manifest, e.data)))
        elif not self._inflight and reading and not self.controls.wants_more(0):
            reading = False
        return reading

    def _next(self, *, block: bool) -> Any:
        """The next item from the reader: a Future of an Encoded batch, _DONE, an exception, or
        None when nothing is ready (non-blocking) or a hard stop was asked for."""
        while True:
            try:
                return self._q.get(timeout=0.5) if block else self._q.get_nowait()
            except queue.Empty:
                if not block or self.controls.hard_stop:
                    return None

    def _next_group(self) -> tuple[list[Stored], BaseException | None]:
        """The next group for stored(); stops at a failed upload and returns its error."""
        group: list[Stored] = []
        inflight = self._inflight
        while inflight and len(group) < self._group_max and (
                not group or (inflight[0][1].done() and inflight[0][0].window == group[0][0].window)):
            enc, fut = inflight.popleft()
            try:
                group.append((enc, fut.result()))
            except UPLOAD_FAILURES as exc:
                self._upload_failed(exc)
                return group, exc
        return group, None

    def _call_off_queued(self) -> None:
        """Uploads that have not started are called off: nothing of them is stored and their rows
        stay in the table. Only from the end: the uploads run in read order, and the checkpoint
        position must never pass a batch whose move did not finish."""
        while self._inflight and self._inflight[-1][1].cancel():
            enc, _ = self._inflight.pop()
            self._call_off(enc)

    # -- the reader thread -------------------------------------------------------------------
    def _produce(self) -> None:
        """Read batches and submit their encoding (futures keep them in order, and the next read
        is not waiting on zstd); the budget bounds the rows read but not yet encoded."""
        try:
            for batch in self._read(self._stop):
                self._hook("after_read")
                if not self._budget.take(batch.count, self._stop, nbytes=batch.source_bytes):
                    break
                self._q.put(self._budget.held_until_done(self._encoders.submit(self._encode, batch), batch.count,
                                                         batch.source_bytes))
                if self._stop.is_set():
                    break
        except BaseException as exc:  # noqa: BLE001 - handed to the mover thread
            self._q.put(exc)
            return
        self._q.put(_DONE)
