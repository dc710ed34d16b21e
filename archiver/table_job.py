"""Archives one table: lock it, finish any interrupted move from the checkpoint, then stream
batches (read + encode in a background thread) through upload, verify and delete."""
from __future__ import annotations

import logging
import queue
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
import threading
import time
from dataclasses import asdict
from datetime import datetime, timezone
from typing import Any

import psycopg
import pyarrow as pa

from archiver import reader, resume
from archiver.budget import RowBudget
from archiver.controls import RunControls
from archiver.encoding import Encoded, encode_batch
from archiver.reader import Batch, batches
from archiver.references import blocking_references, kept_message
from archiver.selection import Selection
from archiver.table_check import inspect_table
from archiver.sink import ArchiveSink, FallbackFull
from archiver.arrow_source import ArrowSource
from archiver.checkpoint import Checkpoint, CheckpointStore
from common.config import Config, DatabaseConfig, ResolvedOptions, TableConfig
from common.db import apply_settings, primary_key_columns, table_oid, table_schema, table_unlock, try_table_lock
from common.expiry import cutoff_for
from common.errors import ArchiverError, ServiceUnavailable, UsageError
from archiver.ops.events import Observer, TableResult
from common.manifest import Manifest
from common.pgtypes import TableSchema

log = logging.getLogger("archiver")
_DONE = object()
#: Stored batches whose rows one DELETE removes together.
GROUP_MAX = 8
#: Encoded batches waiting for or in an upload, per upload thread: while the mover deletes and
#: commits, the uploads keep going (an encoded batch is its compressed bytes and keys: ~0.3 MB).
INFLIGHT_PER_UPLOAD = 4
#: Batches read (and being encoded) ahead of the uploads: 8 kept the 2M-row bench as fast as 16,
#: with ~15 MB less peak RSS.
READ_AHEAD = 8
#: Rows read but not yet encoded, in windows (archiver/budget.py).
UNENCODED_WINDOWS = 2


class TableBusy(ArchiverError):
    pass


class TableJob:
    def __init__(self, *, cfg: Config, db: DatabaseConfig, table: TableConfig, conn: psycopg.Connection[Any],
                 source: ArrowSource, sink: ArchiveSink, checkpoints: CheckpointStore,
                 controls: RunControls, observer: Observer, now: datetime | None = None) -> None:
        self.cfg, self.db, self.t = cfg, db, table
        self.opts: ResolvedOptions = cfg.options(table)
        self.conn, self.source = conn, source
        self.sink, self.checkpoints, self.controls, self.observer = sink, checkpoints, controls, observer
        self.now = now or datetime.now(timezone.utc)
        self.result = TableResult(db.name, table.schema_, table.name)
        self.ctx = {"database": db.name, "table": f"{table.schema_}.{table.name}"}

    # -- entry -------------------------------------------------------------------------------
    def run(self) -> TableResult:
        started = time.monotonic()
        oid, schema, pk_type = inspect_table(self.conn, self.t)
        # Before anything is exported: a CASCADE / SET NULL / SET DEFAULT reference refuses the table.
        refs = blocking_references(self.conn, oid, self.result.name, deletes=self.opts.delete_after_archive)
        self.conn.commit()
        self._apply_table_settings()
        self.sel = Selection(self.t, schema, cutoff_for(self.opts.retention_days, self.now), pk_type, refs)
        self._lock(oid)
        try:
            cp = self._load_checkpoint()
            self._resume(cp)
            self._archive(cp)
            self._count_kept()
        finally:
            self._unlock(oid)
            self.result.seconds = time.monotonic() - started
        return self.result

    def _count_kept(self) -> None:
        """Expired rows that a foreign key still references stayed in the table: one count per
        run, after the moves, when only the rows left behind are still expired."""
        if not self.sel.references:
            return
        row = self.conn.execute(self.sel.kept_query().as_bytes(self.conn), prepare=False).fetchone()
        self.conn.commit()
        r = self.result
        r.kept_referenced, r.referenced_by = (int(row[0]) if row else 0), sorted({ref.name for ref in self.sel.references})
        if r.kept_referenced:
            log.warning("%s", kept_message(r.kept_referenced, r.referenced_by), extra=self.ctx)

    def _apply_table_settings(self) -> None:
        """statement_timeout / lock_timeout may be overridden per table; pooled connections carry
        the previous table's values, so every table sets its own."""
        settings = {name: getattr(self.opts, name) or "0" for name in ("statement_timeout", "lock_timeout")}
        apply_settings(self.conn, settings)
        self.source.apply(settings)

    def _time_is_up(self, started: float) -> bool:
        """A table's own max_runtime_minutes (the defaults' value limits the whole run)."""
        limit = self.t.max_runtime_minutes
        if limit is not None and time.monotonic() - started >= limit * 60:
            log.info("table max_runtime_minutes reached; stopping this table (the next run resumes)", extra=self.ctx)
            return True
        return False

    # -- locking -----------------------------------------------------------------------------
    def _lock(self, oid: int) -> None:
        deadline = time.monotonic() + self.controls.wait_for_lock
        while True:
            got = try_table_lock(self.conn, oid)
            self.conn.commit()
            if got:
                return
            if time.monotonic() >= deadline or self.controls.stopping:
                raise TableBusy(f"{self.result.name} is being archived by another archiver (advisory lock held); skipped")
            time.sleep(0.5)

    def _unlock(self, oid: int) -> None:
        table_unlock(self.conn, oid)

    # -- checkpoint and resume (archiver/resume.py) ------------------------------------------
    def _load_checkpoint(self) -> Checkpoint:
        return resume.load_checkpoint(self)

    def _resume(self, cp: Checkpoint) -> None:
        resume.finish_pending(self, cp)

    # -- main loop ---------------------------------------------------------------------------
    def _archive(self, cp: Checkpoint) -> None:
        """Read + encode in a thread, keep up to s3.max_concurrency uploads in flight, and finish
        moves (delete + commit) in the order the batches were read. Every batch is named in the
        checkpoint's pending list before its upload starts and leaves it only once its rows are gone."""
        start_after = None
        if cp.position and not self.opts.delete_after_archive:
            start_after = (cp.position["ts"], cp.position["pk"])
        stop = threading.Event()
        q: queue.Queue[Any] = queue.Queue(maxsize=READ_AHEAD)
        producer = threading.Thread(target=self._produce, args=(q, stop, start_after), daemon=True,
                                    name=f"reader-{self.t.name}")
        producer.start()
        inflight: deque[tuple[Encoded, Future[str]]] = deque()
        started = time.monotonic()
        uploads = ThreadPoolExecutor(max_workers=self.cfg.s3.max_concurrency, thread_name_prefix=f"upload-{self.t.name}")
        reading = True
        failed: BaseException | None = None
        try:
            while reading or inflight:
                if reading and not self.controls.stopping:
                    reading = self._take(q, cp, inflight, uploads)
                if self.controls.stopping:
                    self._call_off_queued(cp, inflight)
                if inflight:
                    group, error = self._stored(inflight)
                    if error is not None:
                        # Nothing stored for that batch. The batches already in flight may be
                        # stored: finish their moves now so table and archive agree, then fail.
                        failed, reading = failed or error, False
                        self._call_off_queued(cp, inflight)
                    if not group:
                        continue
                    self.controls.hook("after_upload")
                    self._finish_group(cp, group)
                    if reading and (self.controls.should_stop(self.result) or self._time_is_up(started)):
                        self.result.status, reading = "stopped", False
                        self._call_off_queued(cp, inflight)
                    elif reading or inflight:
                        self.controls.pause_between_batches(self.opts, self.conn)
                elif self.controls.stopping:
                    reading = False
            if failed is not None:
                raise failed
        finally:
            stop.set()
            uploads.shutdown(wait=True)  # no upload may outlive the checkpoint written below
            while producer.is_alive():  # unblock a producer waiting on a full queue
                try:
                    q.get(timeout=0.1)
                except queue.Empty:
                    pass
            # pending still names every batch whose move did not finish (upload or delete failed,
            # or a stop came first): the next run must find them, so it is saved as it is.
            self.checkpoints.save(cp)
        if self.controls.stopping:
            self.controls.log_signal_stop()
        if self.result.status == "pending":
            self.result.status = "stopped" if self.controls.stopping else "completed"

    def _take(self, q: queue.Queue[Any], cp: Checkpoint, inflight: deque[tuple[Encoded, Future[str]]],
              uploads: ThreadPoolExecutor) -> bool:
        """Move newly read batches into flight, up to the concurrency limit; one checkpoint write
        covers them all. Returns False once the reader is done."""
        new: list[Encoded] = []
        reading = True
        limit = self.cfg.s3.max_concurrency * INFLIGHT_PER_UPLOAD
        while len(inflight) + len(new) < limit and self.controls.wants_more(sum(e.rows for e, _ in inflight) + sum(e.rows for e in new)):
            item = self._next(q, block=not inflight and not new)
            if item is None:
                break
            if item is _DONE:
                reading = False
                break
            if isinstance(item, BaseException):
                raise item
            new.append(item.result() if isinstance(item, Future) else item)
        if new:
            cp.pending.extend(dict(asdict(e.manifest), position_after=resume.position_after(e.hi)) for e in new)
            self.checkpoints.save(cp)
            self.controls.hook("after_checkpoint")
            for e in new:
                inflight.append((e, uploads.submit(self.sink.put, e.manifest, e.data)))
        elif not inflight and reading and not self.controls.wants_more(0):
            reading = False
        return reading

    def _call_off_queued(self, cp: Checkpoint, inflight: deque[tuple[Encoded, Future[str]]]) -> None:
        """On a stop or a failure, uploads that have not started are called off: nothing of them
        is stored and their rows stay in the table. Only from the end: the uploads run in read order,
        and the checkpoint position must never pass a batch whose move did not finish."""
        while inflight and inflight[-1][1].cancel():
            enc, _ = inflight.pop()
            self._forget(cp, enc.manifest)

    def _upload_result(self, fut: Future[str]) -> str:
        try:
            return fut.result()
        except FallbackFull:
            self.observer.batch_failed(self.result, kind="fallback")
            raise
        except ServiceUnavailable:
            self.observer.batch_failed(self.result, kind="s3")
            raise

    def _next(self, q: queue.Queue[Any], *, block: bool) -> Any:
        """The next item from the reader: an Encoded batch, _DONE, an exception, or None when
        nothing is ready (non-blocking) or a hard stop was asked for."""
        while True:
            try:
                return q.get(timeout=0.5) if block else q.get_nowait()
            except queue.Empty:
                if not block or self.controls.hard_stop:
                    return None

    def _produce(self, q: queue.Queue[Any], stop: threading.Event, start_after: tuple[Any, Any] | None) -> None:
        """The reader thread: read windows into day batches; encoding runs in a small pool so the
        next read is not waiting on zstd (futures keep the batches in order)."""
        encoders = ThreadPoolExecutor(max_workers=2, thread_name_prefix=f"encode-{self.t.name}")
        budget = RowBudget(UNENCODED_WINDOWS * max(self.opts.batch_size, reader.WINDOW_ROWS))
        try:
            for batch in batches(self.source, self.sel, batch_size=self.opts.batch_size,
                                 all_text=self.opts.format == "jsonl", start_after=start_after, stop=stop):
                self.controls.hook("after_read")
                if not budget.take(batch.count, stop):
                    break
                q.put(budget.held_until_done(encoders.submit(self._encode, batch), batch.count))
                if stop.is_set():
                    break
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            q.put(exc)
            return
        finally:
            encoders.shutdown(wait=False)
        q.put(_DONE)

    def _encode(self, batch: Batch) -> Encoded:
        return encode_batch(batch, sel=self.sel, prefix=self.cfg.s3.prefix, database=self.db.name, opts=self.opts)

    def _stored(self, inflight: deque[tuple[Encoded, Future[str]]]) -> tuple[list[tuple[Encoded, str]], BaseException | None]:
        """The oldest batch once stored, with the ones after it already stored too (up to
        GROUP_MAX), in read order; stops at a failed upload and returns its error."""
        group: list[tuple[Encoded, str]] = []
        # sleep_seconds asks for a pause after every batch's delete: no grouping then.
        limit = 1 if self.opts.sleep_seconds else GROUP_MAX
        # One DELETE covers batches of one window only: the delete's checks rely on one snapshot.
        while inflight and len(group) < limit and (not group or (inflight[0][1].done() and inflight[0][0].window == group[0][0].window)):
            enc, fut = inflight.popleft()
            try:
                group.append((enc, self._upload_result(fut)))
            except (FallbackFull, ServiceUnavailable) as exc:
                return group, exc
        return group, None

    def _finish_group(self, cp: Checkpoint, group: list[tuple[Encoded, str]]) -> None:
        """Delete the rows of several stored batches of one read window in one statement and one
        commit (the per-statement cost dominated the mover thread); by key range where that is
        exact (Selection.range_delete_query). Any count mismatch falls back to batch by batch."""
        if not self.opts.delete_after_archive or (len(group) == 1 and not self.sel.range_delete_ok):
            for enc, location in group:
                self._finish(cp, enc, location)
            return
        expected = sum(enc.rows for enc, _ in group)
        deleted = self._delete(self._group_query([enc for enc, _ in group]))
        if deleted != expected:
            self.conn.rollback()
            log.info("rows changed since export (%d to delete, %d found): deleting batch by batch",
                     expected, deleted, extra=self.ctx)
            for enc, location in group:
                self._finish(cp, enc, location)
            return
        self.controls.hook("before_commit")
        self.conn.commit()
        self.controls.hook("after_delete")
        for enc, location in group:
            self._done(cp, enc, location)

    def _group_query(self, group: list[Encoded]) -> Any:
        xmins = pa.chunked_array([enc.xmins for enc in group])
        if self.sel.range_delete_ok:
            return self.sel.range_delete_query(group[0].lo, group[-1].hi, xmins)
        return self.sel.delete_query([k for enc in group for k in enc.pks.to_pylist()], xmins)

    def _finish(self, cp: Checkpoint, enc: Encoded, location: str) -> None:
        """The batch is stored and verified: delete exactly its rows, then drop it from pending."""
        m = enc.manifest
        if self.opts.delete_after_archive:
            deleted = self._delete(self.sel.delete_query(enc.pks.to_pylist(), enc.xmins))
            if deleted != m.rows:
                self.conn.rollback()
                self.sink.withdraw(m.key, location)
                self._forget(cp, m)
                self.result.rolled_back_batches += 1
                self.observer.batch_failed(self.result, kind="conflict")
                log.warning("batch %s rolled back: %d of %d rows changed since export; they will be archived on a later run",
                            m.key, m.rows - deleted, m.rows, extra=self.ctx)
                return
            self.controls.hook("before_commit")
            self.conn.commit()
        self.controls.hook("after_delete")
        self._done(cp, enc, location)

    def _done(self, cp: Checkpoint, enc: Encoded, location: str) -> None:
        m = enc.manifest
        self._forget(cp, m)
        cp.position = resume.position_after(enc.hi)
        self._count(m, location, time.monotonic() - enc.started)

    @staticmethod
    def _forget(cp: Checkpoint, m: Manifest) -> None:
        # Saved with the next batch's checkpoint write (or at the end): if a crash comes first,
        # the rerun finds the move finished and only confirms it.
        cp.pending = [p for p in cp.pending if p["key"] != m.key]

    def _count(self, m: Manifest, location: str, seconds: float) -> None:
        r = self.result
        r.rows += m.rows
        r.objects += 1
        r.bytes += m.size
        r.source_bytes += m.source_bytes
        r.fallback_objects += location == "fallback"
        self.controls.add_rows(m.rows)
        self.controls.progress(r)
        self.observer.batch_done(r, rows=m.rows, nbytes=m.size, seconds=seconds, location=location)

    def _delete(self, statement: Any) -> int:
        """Run a DELETE from Selection; retried when a lock timeout hits (issue 3). Leaves the
        transaction open for the caller to commit."""
        query = statement.as_bytes(self.conn)
        for attempt in range(4):
            try:
                if any(ref.deferrable for ref in self.sel.references):
                    # checked at the end of the DELETE, not at COMMIT: a failure lands below
                    self.conn.execute("SET CONSTRAINTS ALL IMMEDIATE")
                # prepare=False: the keys are literals, so no two statements are alike anyway
                return self.conn.execute(query, prepare=False).rowcount
            except psycopg.errors.ForeignKeyViolation as exc:
                # A reference committed while the DELETE ran: the predicate's NOT EXISTS used the
                # statement's snapshot, the constraint's trigger (NO ACTION / RESTRICT) looks again
                # (one committed before the DELETE leaves its row out and the count short instead).
                # Reported as nothing deleted: the caller takes it like rows changed since export.
                self.conn.rollback()
                log.warning("delete refused: %s (%s); a row was referenced after its export, its batch stays in the table",
                            exc.diag.message_primary, exc.diag.message_detail, extra=self.ctx)
                return 0
            except (psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled) as exc:
                self.conn.rollback()
                if attempt == 3:
                    raise ArchiverError(f"delete kept timing out on locks ({exc.diag.message_primary}); "
                                        "the batch stays archived and its rows will be deleted on the next run") from None
                log.warning("delete hit a lock timeout; retrying in %ds", 2 ** attempt, extra=self.ctx)
                time.sleep(2 ** attempt)
        raise AssertionError("unreachable")
