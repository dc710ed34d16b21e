"""Runs the archiver over every configured table: drains the fallback directory, archives tables
(databases in parallel up to max_workers), prints the summary and decides the exit code."""
from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

from archiver.controls import RunControls
from archiver.dry_run import plan
from archiver.hooks import Hook, env_hook, no_hook
from archiver.references import kept_message
from archiver.sink import ArchiveSink
from archiver.family.job import FamilyJob
from archiver.table_job import TableBusy, TableJob
from archiver.arrow_source import ArrowSource
from archiver.checkpoint import CheckpointStore
from common import iceberg
from common.config import Config, DatabaseConfig
from common.archive.digest import secret as digest_secret
from common.pg.db import conninfo, pool, session_settings
from common.errors import UNREACHABLE, ConfigError, DatabaseSilent, ErrorKind, ServiceUnavailable, classify, is_silence
from common.expiry import untimed_message
from archiver.ops.events import NullObserver, Observer, TableResult, run_stop_reason
from common.exit_codes import ExitCode
from common.archive.s3client import check_object_lock, fallback_storage, primary_storage
from common.units import human_bytes

log = logging.getLogger("archiver")


def make_sink(cfg: Config, s3_client: Any | None = None, *, hook: Hook = no_hook) -> ArchiveSink:
    return ArchiveSink(primary_storage(cfg, s3_client), fallback_storage(cfg),
                       prefix=cfg.s3.prefix, probe_interval=cfg.s3.probe_interval_seconds, hook=hook)


def run_archive(cfg: Config, *, controls: RunControls | None = None, observer: Observer | None = None,
                s3_client: Any | None = None, now: datetime | None = None,
                only: Callable[[str, str, str], bool] | None = None,
                hook: Hook | None = None) -> tuple[list[TableResult], ExitCode]:
    """`hook` is called at each point of a move (archiver/hooks.py); by default the one
    ARCHIVER_TEST_KILL_AT asks for, a no-op in production."""
    controls = controls or RunControls()
    hook = env_hook() if hook is None else hook
    observer = observer or NullObserver()
    for db in cfg.databases:
        conninfo(db)  # an unreadable password_file is a config error (exit 2) before anything starts
        check_session_budget(cfg, db)
    iceberg.require(cfg)  # an iceberg: section without pyiceberg: exit 2 before anything
    sink = make_sink(cfg, s3_client, hook=hook)
    check_object_lock(cfg, sink.primary)  # s3.object_lock on a bucket without it: exit 2 before anything
    digest_secret(cfg)  # s3.digest_key_env naming an unset variable: exit 2, not unsigned digests
    checkpoints = CheckpointStore(cfg.checkpoint_dir)
    observer.run_started()
    drain = sink.drain()
    results: list[TableResult] = []

    def one_database(db: DatabaseConfig) -> list[TableResult]:
        return _run_database(cfg, db, sink=sink, checkpoints=checkpoints, controls=controls,
                             observer=observer, now=now, only=only, hook=hook)

    workers = max(1, min(cfg.defaults.max_workers, len(cfg.databases) or 1))
    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="db") as ex:
            for db_results in ex.map(one_database, cfg.databases):
                results.extend(db_results)
    finally:
        sink.close()  # the fallback directory's lock (an overlapping run must not drain under us)
    results += register_drained(cfg, sink, drain.tables, results)
    if drain.quarantined:
        # Reported like a failed table so exit code, metrics and notifications all carry it.
        assert sink.fallback is not None
        results.append(TableResult("", "fallback", "drain", status="failed", error_kind=ErrorKind.INTEGRITY,
                                   error=f"{drain.quarantined} fallback batches failed their checksum and were "
                                         f"quarantined in {sink.fallback.quarantine_root}; their rows are not in S3"))
    code = exit_code(results, controls)
    _summary(results)
    log.info("summary run: stop reason %s", run_stop_reason(results))
    observer.run_finished(results, int(code))
    return results, code


def register_drained(cfg: Config, sink: ArchiveSink, tables: set[tuple[str, str, str]],
                     results: list[TableResult]) -> list[TableResult]:
    """The Iceberg tables of drained batches whose table this run did not archive (another
    --table, or no longer configured): each table job registers its own. A failure is reported
    like a failed table."""
    done = {(r.database, r.schema, r.table) for r in results if r.status in ("completed", "stopped")}
    failed = []
    for database, schema, table in sorted(tables - done) if iceberg.enabled(cfg) else []:
        try:
            iceberg.after_change(cfg, sink.primary, database, schema, table)
        except Exception as exc:  # noqa: BLE001 - the batches are in S3; only their registration waits
            _code, kind, message = classify(exc)
            log.error("%s", message)
            failed.append(TableResult(database, schema, table, status="failed", error_kind=kind, error=message))
    return failed


#: Sessions the archiver holds per database while it archives: one writer (advisory lock, deletes,
#: commits), reused from table to table through the pool, and one read-only ADBC reader per table.
SESSIONS_PER_DATABASE = 2


def check_session_budget(cfg: Config, db: DatabaseConfig) -> None:
    """connection_pool_size caps the sessions a tool holds per database; the archiver needs two
    (tables of one database are archived one after another), so a smaller cap is refused before
    anything starts instead of being exceeded silently."""
    for t in db.tables:
        size = cfg.options(t).connection_pool_size
        if size < SESSIONS_PER_DATABASE:
            raise ConfigError(f"databases[{db.name}] table {t.schema_}.{t.name}: connection_pool_size {size} is too small: "
                              f"the archiver holds {SESSIONS_PER_DATABASE} sessions per database (a writer and a reader)")


def exit_code(results: list[TableResult], controls: RunControls) -> ExitCode:
    if controls.signal_received == signal.SIGINT:
        return ExitCode.INTERRUPTED
    if any(r.error_kind in UNREACHABLE or r.silent for r in results):
        return ExitCode.UNAVAILABLE
    if any(r.status == "failed" for r in results):
        return ExitCode.FAILURE
    return ExitCode.OK


def _run_database(cfg: Config, db: DatabaseConfig, *, sink: ArchiveSink, checkpoints: CheckpointStore,
                  controls: RunControls, observer: Observer, now: datetime | None,
                  only: Callable[[str, str, str], bool] | None, hook: Hook) -> list[TableResult]:
    tables = [t for t in db.tables if only is None or only(db.name, t.schema_, t.name)]
    results = [TableResult(db.name, t.schema_, t.name) for t in tables]
    if not tables:
        return results
    defaults = cfg.options(tables[0])
    settings = session_settings(application_name=defaults.application_name,
                                statement_timeout=defaults.statement_timeout, lock_timeout=defaults.lock_timeout)
    info = conninfo(db)
    try:
        # The pool lends the writer only; the reader is the table's ArrowSource (ADBC, no pool).
        with pool(info, settings, size=SESSIONS_PER_DATABASE - 1) as p:
            for i, t in enumerate(tables):
                if controls.stopping:
                    results[i].status, results[i].stop_reason = "stopped", controls.stop_reason or ""
                    continue
                with p.connection() as conn, ArrowSource(info, settings) as source:
                    job_type = FamilyJob if t.children == "archive" else TableJob  # issue 28
                    job = job_type(cfg=cfg, db=db, table=t, conn=conn, source=source, sink=sink,
                                   checkpoints=checkpoints, controls=controls, observer=observer, hook=hook, now=now)
                    results[i] = _run_table(job)
                observer.table_done(results[i])
                if results[i].silent and i + 1 < len(tables):  # its other tables fail now, not each after a wait
                    raise DatabaseSilent(results[i].error or "database stopped answering")
    except (ServiceUnavailable, DatabaseSilent) as exc:
        _code, kind, message = classify(exc)
        log.error("database %s failed: %s", db.name, message, extra={"database": db.name})
        for r in results:
            if r.status == "pending":
                r.status, r.error, r.error_kind, r.silent = "failed", message, kind, is_silence(exc)
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
        _code, r.error_kind, message = classify(exc)
        r.status, r.error, r.silent = "failed", message, is_silence(exc)
        log.error("table %s failed: %s", r.name, message, extra=ctx, exc_info=log.isEnabledFor(logging.DEBUG))
        if isinstance(exc, KeyboardInterrupt):
            raise
    return r


def _summary(results: list[TableResult]) -> None:
    for r in results:
        kept = f", {kept_message(r.kept_referenced, r.referenced_by)}" if r.kept_referenced else ""
        kept += f", {untimed_message(r.untimed_rows, r.time_column)}" if r.untimed_rows else ""
        status = f"{r.status} ({r.stop_reason})" if r.stop_reason else r.status
        log.info("summary %s.%s: %s, %d rows, %d objects (%d in fallback), %s, compression %.1fx, %.1fs%s%s%s",
                 r.database, r.name, status, r.rows, r.objects, r.fallback_objects, human_bytes(r.bytes), r.ratio,
                 r.seconds, kept, _backlog(r), f", kind {r.error_kind}, error: {r.error}" if r.error else "")


def _backlog(r: TableResult) -> str:
    if not r.backlog_rows:
        return ""
    return f", backlog {r.backlog_rows} expired rows (oldest {r.backlog_oldest_seconds or 0:.0f}s old)"


def dry_run(cfg: Config, *, now: datetime | None = None, s3_client: Any | None = None,
            only: Callable[[str, str, str], bool] | None = None) -> tuple[list[str], ExitCode]:
    """Check config, connections, tables and columns; report what a run would do. Writes nothing."""
    return plan(cfg, now=now or datetime.now(timezone.utc), s3_client=s3_client, only=only)
