"""Archives one table: check it, lock it, finish any move a crash interrupted (archiver/ledger.py),
then move its expired rows: the pipeline reads, encodes and stores batches (archiver/pipeline.py),
and this job deletes their rows in read order (archiver/mover.py) and tells the ledger, which
keeps every batch pending in the checkpoint from before its upload until its delete commits."""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import psycopg

from archiver import partitions, reader
from archiver.arrow_source import ArrowSource
from archiver.checkpoint import Checkpoint, CheckpointStore
from archiver.controls import RunControls
from archiver.delete_guard import DeletesRefused, check_deletes, delete_triggers, suppressed
from archiver.digest import RunDigest
from archiver.encoding import Encoded, encode_batch
from archiver.hooks import Hook, no_hook
from archiver.backlog import measure_backlog
from archiver.ledger import MoveLedger
from archiver.mover import RowMover
from archiver.ops.events import Observer, TableResult
from archiver.pipeline import BatchPipeline, Stored
from archiver.reader import Batch, batches
from archiver.references import Reference, blocking_references, kept_message
from archiver.retire import Retirer
from archiver.selection import Selection
from archiver.sink import ArchiveSink, FallbackFull
from archiver.table_check import inspect_table
from common import iceberg
from common.config import Config, DatabaseConfig, ResolvedOptions, TableConfig
from common.pg.db import apply_settings, table_unlock, try_table_lock
from common.archive.digest import secret as digest_secret
from common.errors import ArchiverError, first_line
from common.expiry import count_untimed, cutoff_for, database_now, untimed_message
from common.archive.manifest import Manifest
from common.archive.storage import BytesRefused

log = logging.getLogger("archiver")
#: Stored batches whose rows one DELETE removes together.
GROUP_MAX = 8


class TableBusy(ArchiverError):
    pass


class TableJob:
    def __init__(self, *, cfg: Config, db: DatabaseConfig, table: TableConfig, conn: psycopg.Connection[Any],
                 source: ArrowSource, sink: ArchiveSink, checkpoints: CheckpointStore,
                 controls: RunControls, observer: Observer, hook: Hook = no_hook,
                 now: datetime | None = None) -> None:
        self.cfg, self.db, self.t = cfg, db, table
        self.opts: ResolvedOptions = cfg.options(table)
        self.conn, self.source = conn, source
        self.sink, self.controls, self.observer, self.hook = sink, controls, observer, hook
        #: This host's clock (tests inject one); the cutoff comes from the database's (run()).
        self.host_now = now
        self.now: datetime  # set by run()
        self.result = TableResult(db.name, table.schema_, table.name)
        self.ctx = {"database": db.name, "table": f"{table.schema_}.{table.name}"}
        self.ledger = MoveLedger(checkpoints, database=db.name, schema=table.schema_, table=table.name,
                                 delete_after_archive=self.opts.delete_after_archive, prefix=cfg.s3.prefix)
        self.digest = RunDigest(checkpoints.path(db.name, table.schema_, table.name).with_suffix(".undigested"),
                                prefix=cfg.s3.prefix, database=db.name, schema=table.schema_, table=table.name,
                                key_secret=digest_secret(cfg))

    # -- entry -------------------------------------------------------------------------------
    def run(self) -> TableResult:
        started = time.monotonic()
        oid, schema, keys = inspect_table(self.conn, self.t)
        # Before anything is exported: a CASCADE / SET NULL / SET DEFAULT reference refuses the table.
        refs = self._references(oid)
        if self.opts.delete_after_archive:  # so is a table whose rows the run could not delete
            check_deletes(self.conn, oid, self.result.name, retire=self.opts.expired_partitions != "keep")
        self.now, self.result.clock_skew_seconds = database_now(self.conn, host_now=self.host_now, log=log, extra=self.ctx)
        self.conn.commit()
        self._apply_table_settings()
        self.sel = Selection(self.t, schema, cutoff_for(self.opts.retention_days, self.now), keys, refs)
        self.mover = RowMover(self.conn, self.sel, log_extra=self.ctx)
        with self._locked(oid):
            try:
                self.result.resumed += self.ledger.recover(sink=self.sink, prefix=self.cfg.s3.prefix,
                                                           keys=keys,
                                                           count_present=self.mover.count_present,
                                                           settle=self._settle)
                self._finish_settled()
                self._retire_partitions(oid)
                self._archive()
                self._count_kept()
                if not self.controls.signal_received:  # a signal asks to exit now, not to measure
                    self._count_untimed()
                    measure_backlog(self.conn, self.sel, self.result, now=self.now,
                                    exact=self.cfg.monitoring.backlog_exact_count, log_extra=self.ctx)
            finally:
                self._write_digest()
                self.result.seconds = time.monotonic() - started
            self._register_iceberg()
        return self.result

    def _register_iceberg(self) -> None:
        """The table's Iceberg table (the `iceberg:` section) in line with its archive: this run's
        objects, retired partitions and drained batches, and whatever an interrupted run left
        unregistered. Under the table's lock, so erase does not reconcile it at the same time."""
        if not iceberg.enabled(self.cfg):
            return
        if self.sink.s3_down:
            log.info("S3 is down: the Iceberg table of %s catches up on the next run", self.result.name, extra=self.ctx)
            return
        self.hook("before_iceberg")
        iceberg.after_change(self.cfg, self.sink.primary, self.db.name, self.t.schema_, self.t.name)

    def _references(self, oid: int) -> tuple[Reference, ...]:
        """The references whose referenced rows stay in the table (archiver/family/job.py moves
        the referencing rows along instead)."""
        return blocking_references(self.conn, oid, self.result.name, deletes=self.opts.delete_after_archive)

    # -- whole partitions (archiver/partitions.py, archiver/retire.py) -------------------------
    def _settle(self, cp: Checkpoint) -> None:
        self._settled = partitions.settle(self.conn, self.sel, cp, ctx=self.ctx)

    def _finish_settled(self) -> None:
        """A leaf a crash left detached: its batches are finished now; drop it (or report it)."""
        r, self._settled = getattr(self, "_settled", None), None
        if r is not None:
            partitions.finish_detached(self.conn, self.sel, r, mode=self.opts.expired_partitions, ctx=self.ctx, hook=self.hook)
            self.ledger.save()

    def _retire_partitions(self, oid: int) -> None:
        mode = self.opts.expired_partitions
        if mode == "keep" or not self.opts.delete_after_archive:
            return
        all_leaves = partitions.leaves(self.conn, oid, self.t.timestamp_column)
        if not all_leaves:
            # A warning when the table itself asks for it; from `defaults` (meant for the
            # partitioned tables) it is no mistake, and a warning every run would be noise.
            level = logging.WARNING if self.t.expired_partitions is not None else logging.INFO
            log.log(level, "%s", partitions.ignored(self.sel, mode), extra=self.ctx)
        triggered = delete_triggers(self.conn, [leaf.oid for leaf in all_leaves])
        if triggered:
            log.info("partitions with DELETE triggers (%s) are archived row by row, so that the triggers fire: %d of %d",
                     ", ".join(sorted(set(triggered.values()))), len(triggered), len(all_leaves), extra=self.ctx)
        whole = partitions.retirable(self.conn, self.sel, all_leaves, triggered)
        self.conn.commit()
        retirer = Retirer(conn=self.conn, sel=self.sel, oid=oid, ledger=self.ledger, sink=self.sink, hook=self.hook,
                          mode=mode, ctx=self.ctx, read=self._read, snapshot=self.source.snapshot,
                          encode=self._encode_with, pipeline=self._pipeline,
                          done=self._done, stopping=lambda: self.controls.stopping,
                          # the stop file, --max-rows and max runtime stop retirement too, not only a signal
                          should_stop=lambda: self.controls.should_stop(self.result))
        retired = 0
        if whole and self.controls.should_stop(self.result):
            self.result.status = "stopped"
        elif whole:
            retired = retirer.retire_all(whole)
            if retirer.stopped:
                self.result.status = "stopped"
        # wholly expired leaves still attached after this run (stopped, or left to the row-by-row path)
        self.result.partitions_pending = len(whole) - retired

    def _write_digest(self) -> None:
        """The run's digest (archiver/digest.py). A failure loses nothing: the journal keeps the
        moves, and the next run's digest records them."""
        self.hook("before_digest")
        if self.sink.s3_down:  # the circuit breaker is open: no request to an S3 that is down
            log.info("S3 is down: the digest of %s waits for the next run", self.result.name, extra=self.ctx)
            return
        stores = [s for s in (self.sink.primary, self.sink.fallback) if s is not None]
        try:
            self.digest.write(stores, pending={p["key"] for p in self.ledger.cp.pending})
        except Exception as exc:  # noqa: BLE001 - the moves are done; only their digest waits
            log.warning("digest of %s not written (%s); the next run's digest records these objects",
                        self.result.name, first_line(exc, limit=200), extra=self.ctx)

    def _count_kept(self) -> None:
        """Expired rows that a foreign key still references stayed in the table: one count per
        run, after the moves, when only the rows left behind are still expired."""
        if not self.sel.references:
            return
        r = self.result
        r.kept_referenced, r.referenced_by = self.mover.count_kept(), sorted({ref.name for ref in self.sel.references})
        if r.kept_referenced:
            log.warning("%s", kept_message(r.kept_referenced, r.referenced_by), extra=self.ctx)

    def _count_untimed(self) -> None:
        """Rows with no time (NULL in the timestamp column) never expire: counted once per run, so
        the summary says how many stay in the table."""
        r = self.result
        r.time_column = self.t.timestamp_column
        try:
            r.untimed_rows = count_untimed(self.conn, self.sel)
            self.conn.commit()
        except psycopg.Error as exc:  # the moves are done; a count must not fail the table
            self.conn.rollback()
            log.warning("cannot count the rows with no %s: %s", r.time_column, first_line(exc), extra=self.ctx)
            return
        if r.untimed_rows:
            log.info("%s", untimed_message(r.untimed_rows, r.time_column), extra=self.ctx)

    def _apply_table_settings(self) -> None:
        """statement_timeout / lock_timeout may be overridden per table; pooled connections carry
        the previous table's values, so every table sets its own."""
        settings = {name: getattr(self.opts, name) or "0" for name in ("statement_timeout", "lock_timeout")}
        apply_settings(self.conn, settings)
        self.source.apply(settings)

    @contextmanager
    def _locked(self, oid: int) -> Iterator[None]:
        """The table's advisory lock: one archiver per table at a time."""
        deadline = time.monotonic() + self.controls.wait_for_lock
        while True:
            got = try_table_lock(self.conn, oid)
            self.conn.commit()
            if got:
                break
            if time.monotonic() >= deadline or self.controls.stopping:
                raise TableBusy(f"{self.result.name} is being archived by another archiver (advisory lock held); skipped")
            time.sleep(0.5)
        try:
            yield
        finally:
            table_unlock(self.conn, oid)

    def _time_is_up(self, started: float) -> bool:
        """A table's own max_runtime_minutes (the defaults' value limits the whole run)."""
        limit = self.t.max_runtime_minutes
        if limit is not None and time.monotonic() - started >= limit * 60:
            log.info("table max_runtime_minutes reached; stopping this table (the next run resumes)", extra=self.ctx)
            self.result.stop_reason = "max_runtime"
            return True
        return False

    # -- main loop ---------------------------------------------------------------------------
    def _archive(self) -> None:
        """Finish moves (delete + commit) in the order the batches were read, while the pipeline
        keeps up to s3.max_concurrency uploads going."""
        started = time.monotonic()
        try:
            with self._pipeline() as pipe:
                for group in pipe.stored():
                    self.hook("after_upload")
                    self._finish_group(group)
                    if pipe.reading and (self.controls.should_stop(self.result) or self._time_is_up(started)):
                        self.result.status = "stopped"
                        pipe.stop_reading()
                    elif pipe.busy:
                        self.controls.pause_between_batches(self.opts, self.conn)
        except DeletesRefused:
            # Every delete would fail or keep the rows: the batches stored ahead of this one,
            # pending, are taken back now (their rows are all in the table), not left in the
            # archive until the next run.
            self.ledger.save()
            self.ledger.finish_pending(sink=self.sink, keys=self.sel.keys, count_present=self.mover.count_present,
                                       resuming=False)
            raise
        finally:
            # After the pipeline's exit: no upload is running any more. pending still names every
            # batch whose move did not finish (upload or delete failed, or a stop came first):
            # the next run must find them, so it is saved as it is.
            self.ledger.save()
        if self.controls.stopping:
            self.controls.log_signal_stop()
        if self.result.status == "pending":
            self.result.status = "stopped" if self.controls.stopping else "completed"
        if self.result.status == "stopped" and not self.result.stop_reason:
            self.result.stop_reason = self.controls.stop_reason or ""

    def _read(self, sel: Selection, stop: threading.Event, start_after: Any = None) -> Iterable[Batch]:
        return batches(self.source, sel, batch_size=self.opts.batch_size,
                       all_text=self.opts.format == "jsonl", start_after=start_after, stop=stop)

    def _pipeline(self, *, read: Callable[[threading.Event], Iterable[Batch]] | None = None,
                  encode: Callable[[Batch], Encoded] | None = None,
                  begin: Callable[[Sequence[Encoded]], None] | None = None) -> BatchPipeline:
        start_after = self.ledger.start_after
        return BatchPipeline(
            read=read or (lambda stop: self._read(self.sel, stop, start_after)), encode=encode or self._encode,
            upload=self._upload, begin=begin or self._begin,
            call_off=lambda enc: self.ledger.call_off(enc.manifest), upload_failed=self._upload_failed,
            controls=self.controls, hook=self.hook, uploads=self.cfg.s3.max_concurrency,
            window_rows=max(self.opts.batch_size, reader.WINDOW_ROWS),
            # sleep_seconds asks for a pause after every batch's delete: no grouping then.
            group_max=1 if self.opts.sleep_seconds else GROUP_MAX, name=self.t.name)

    def _encode(self, batch: Batch) -> Encoded:
        return self._encode_with(batch, self.sel)

    def _encode_with(self, batch: Batch, sel: Selection) -> Encoded:
        return encode_batch(batch, sel=sel, prefix=self.cfg.s3.prefix, database=self.db.name, opts=self.opts)

    def _begin(self, new: Sequence[Encoded]) -> None:
        """Before their uploads start: the batches are pending in the checkpoint."""
        self.digest.note(enc.manifest.key for enc in new)
        self.ledger.begin(new)
        self.hook("after_checkpoint")

    def _upload(self, manifest: Manifest, data: bytes) -> str:
        """In an upload thread: store the batch's object (a family's stores its children's too)."""
        return self.sink.put(manifest, data)

    def _upload_failed(self, exc: BaseException) -> None:
        kind = "fallback" if isinstance(exc, FallbackFull) else "integrity" if isinstance(exc, BytesRefused) else "s3"
        self.observer.batch_failed(self.result, kind=kind)

    # -- finishing moves ---------------------------------------------------------------------
    def _finish_group(self, group: list[Stored]) -> None:
        """Delete the rows of several stored batches of one read window in one statement, record
        their manifests in one set, and commit (the per-statement cost dominated the mover thread,
        and a set per batch doubled the requests); by key range where that is exact
        (Selection.range_delete_query). Any count mismatch falls back to batch by batch."""
        if not self.opts.delete_after_archive or (len(group) == 1 and not self.sel.range_delete_ok):
            for enc, location in group:
                self._finish(enc, location)
            return
        expected = sum(enc.rows for enc, _ in group)
        deleted = self.mover.delete_group([enc for enc, _ in group])
        if deleted != expected:
            self.mover.rollback()
            log.info("rows changed since export (%d to delete, %d found): deleting batch by batch",
                     expected, deleted, extra=self.ctx)
            for enc, location in group:
                self._finish(enc, location)
            return
        self._commit(group)

    def _finish(self, enc: Encoded, location: str) -> None:
        """The batch is stored and verified: delete exactly its rows, record its manifest, commit."""
        m = enc.manifest
        if self.opts.delete_after_archive:
            deleted = self.mover.delete_batch(enc)
            if deleted != m.rows:
                self.mover.rollback()
                if self.mover.count_unchanged(enc) == m.rows:
                    raise suppressed(self.result.name, m.key, rows=m.rows, deleted=deleted)
                self.sink.take_back(m, location, recorded=False)
                self.ledger.call_off(m)
                self.result.rolled_back_batches += 1
                self.observer.batch_failed(self.result, kind="conflict")
                log.warning("batch %s rolled back: %d of %d rows changed since export; they will be archived on a later run",
                            m.key, m.rows - deleted, m.rows, extra=self.ctx)
                return
        self._commit([(enc, location)])

    def _commit(self, group: list[Stored]) -> None:
        """The group's rows are deleted in the open transaction (or kept, with
        delete_after_archive: false): its manifests are stored, then the delete commits. A crash
        between the two leaves the batches pending with their rows in the table: the next run
        takes them back (archiver/ledger.py). A set that cannot be stored rolls the delete back."""
        try:
            self.sink.record(self._to_record(group))
        except BaseException:
            self.mover.rollback()
            raise
        self.hook("after_manifest_set")
        if self.opts.delete_after_archive:
            self.hook("before_commit")
            self.mover.commit()
        self.hook("after_delete")
        for enc, location in group:
            self._done(enc, location)

    def _to_record(self, group: list[Stored]) -> list[tuple[Manifest, str]]:
        """The manifests the group's commit records (a family's: its children's too)."""
        return [(enc.manifest, location) for enc, location in group]

    def _done(self, enc: Encoded, location: str) -> None:
        self.ledger.finish(enc)
        self.digest.done(enc.manifest)
        m, r = enc.manifest, self.result
        r.rows += m.rows
        r.objects += 1
        r.bytes += m.size
        r.source_bytes += m.source_bytes
        r.fallback_objects += location == "fallback"
        self.controls.add_rows(m.rows)
        self.controls.progress(r)
        self.observer.batch_done(r, rows=m.rows, nbytes=m.size, seconds=time.monotonic() - enc.started, location=location)
