"""Runs the archiver over every configured table: drains the fallback directory, archives tables
(databases in parallel up to max_workers), prints the summary and decides the exit code."""
from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

import psycopg

from archiver.controls import RunControls
from archiver.dry_run import plan
from archiver.references import RefusedReferences, kept_message
from archiver.sink import ArchiveSink, FallbackFull
from archiver.table_job import TableBusy, TableJob
from archiver.arrow_source import ArrowSource
from archiver.checkpoint import CheckpointStore
from common.config import Config, DatabaseConfig
from common.db import conninfo, pool, session_settings
from common.errors import ArchiverError, DatabaseError, ServiceUnavailable, UsageError, describe
from archiver.ops.events import NullObserver, Observer, TableResult
from common.exit_codes import ExitCode
from common.s3client import fallback_storage, primary_storage
from common.units import human_bytes

log = logging.getLogger("archiver")


def make_sink(cfg: Config, s3_client: Any | None = None) -> ArchiveSink:
    return ArchiveSink(primary_storage(cfg, s3_client), fallback_storage(cfg),
                       probe_interval=cfg.s3.probe_interval_seconds)


def run_archive(cfg: Config, *, controls: RunControls | None = None, observer: Observer | None = None,
                s3_client: Any | None = None, now: datetime | None = None,
                only: Callable[[str, str, str], bool] | None = None) -> tuple[list[TableResult], ExitCode]:
    controls = controls or RunControls()
    observer = observer or NullObserver()
    for db in cfg.databases:
        conninfo(db)  # an unreadable password_file is a config error (exit 2) before anything starts
    sink = make_sink(cfg, s3_client)
    checkpoints = CheckpointStore(cfg.checkpoint_dir)
    observer.run_started()
    drain = sink.drain()
    results: list[TableResult] = []

    def one_database(db: DatabaseConfig) -> list[TableResult]:
        return _run_database(cfg, db, sink=sink, checkpoints=checkpoints, controls=controls,
                             observer=observer, now=now, only=only)

    workers = max(1, min(cfg.defaults.max_workers, len(cfg.databases) or 1))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="db") as ex:
        for db_results in ex.map(one_database, cfg.databases):
            results.extend(db_results)
    if drain.quarantined:
        # Reported like a failed table so exit code, metrics and notifications all carry it.
        assert sink.fallback is not None
        results.append(TableResult("", "fallback", "drain", status="failed", error_kind="integrity",
                                   error=f"{drain.quarantined} fallback batches failed their checksum and were "
                                         f"quarantined in {sink.fallback.quarantine_root}; their rows are not in S3"))
    code = exit_code(results, controls)
    _summary(results)
    observer.run_finished(results, int(code))
    return results, code


def exit_code(results: list[TableResult], controls: RunControls) -> ExitCode:
    if controls.signal_received == signal.SIGINT:
        return ExitCode.INTERRUPTED
    if any(r.error_kind in ("database_unreachable", "s3_unreachable") for r in results):
        return ExitCode.UNAVAILABLE
    if any(r.status == "failed" for r in results):
        return ExitCode.FAILURE
    return ExitCode.OK


def _run_database(cfg: Config, db: DatabaseConfig, *, sink: ArchiveSink, checkpoints: CheckpointStore,
                  controls: RunControls, observer: Observer, now: datetime | None,
                  only: Callable[[str, str, str], bool] | None) -> list[TableResult]:
    tables = [t for t in db.tables if only is None or only(db.name, t.schema_, t.name)]
    results = [TableResult(db.name, t.schema_, t.name) for t in tables]
    if not tables:
        return results
    defaults = cfg.options(tables[0])
    settings = session_settings(application_name=defaults.application_name,
                                statement_timeout=defaults.statement_timeout, lock_timeout=defaults.lock_timeout)
    info = conninfo(db)
    try:
        size = max(max(cfg.options(t).connection_pool_size for t in tables), 2)  # mover + reader
        with pool(info, settings, size=size) as p:
            for i, t in enumerate(tables):
                if controls.stopping:
                    results[i].status = "stopped"
                    continue
                with p.connection() as conn, ArrowSource(info, settings) as source:
                    job = TableJob(cfg=cfg, db=db, table=t, conn=conn, source=source, sink=sink,
                                   checkpoints=checkpoints, controls=controls, observer=observer, now=now)
                    results[i] = _run_table(job)
                observer.table_done(results[i])
    except ServiceUnavailable as exc:
        log.error("database %s failed: %s", db.name, exc, extra={"database": db.name})
        for r in results:
            if r.status == "pending":
                r.status, r.error, r.error_kind = "failed", str(exc), "database_unreachable"
                observer.table_done(r)
    return results


def _run_table(job: TableJob) -> TableResult:
    r = job.result
    ctx = job.ctx
    try:
        job.run()
        if r.status == "completed":
            log.info("table %s completed: %d rows archived in %d objects, %s, ratio %.1fx, %.1fs",
                     r.name, r.rows, r.objects, human_bytes(r.bytes), r.ratio, r.seconds, extra=ctx)
        else:
            log.info("table %s stopped early after %d rows; the next run resumes", r.name, r.rows, extra=ctx)
    except TableBusy as exc:
        r.status, r.notes = "skipped", [str(exc)]
        log.warning("%s", exc, extra=ctx)
    except BaseException as exc:  # noqa: BLE001 - one table failing must not stop the others
        code, message = describe(exc)
        r.status, r.error = "failed", message
        r.error_kind = _kind(exc, code)
        log.error("table %s failed: %s", r.name, message, extra=ctx, exc_info=log.isEnabledFor(logging.DEBUG))
        if isinstance(exc, KeyboardInterrupt):
            raise
    return r


def _kind(exc: BaseException, code: ExitCode) -> str:
    if isinstance(exc, FallbackFull):
        return "fallback"
    if isinstance(exc, ServiceUnavailable):
        return "s3_unreachable" if "S3" in str(exc) else "database_unreachable"
    if isinstance(exc, (psycopg.OperationalError, DatabaseError)):
        return "database"
    if isinstance(exc, (UsageError, RefusedReferences)):
        return "config"
    if isinstance(exc, ArchiverError):
        return "integrity" if "checksum" in str(exc) else "other"
    return "s3" if code == ExitCode.UNAVAILABLE else "other"


def _summary(results: list[TableResult]) -> None:
    for r in results:
        kept = f", {kept_message(r.kept_referenced, r.referenced_by)}" if r.kept_referenced else ""
        log.info("summary %s.%s: %s, %d rows, %d objects (%d in fallback), %s, compression %.1fx, %.1fs%s%s",
                 r.database, r.name, r.status, r.rows, r.objects, r.fallback_objects, human_bytes(r.bytes), r.ratio,
                 r.seconds, kept, f", error: {r.error}" if r.error else "")


def dry_run(cfg: Config, *, now: datetime | None = None, s3_client: Any | None = None,
            only: Callable[[str, str, str], bool] | None = None) -> tuple[list[str], ExitCode]:
    """Check config, connections, tables and columns; report what a run would do. Writes nothing."""
    return plan(cfg, now=now or datetime.now(timezone.utc), s3_client=s3_client, only=only)
