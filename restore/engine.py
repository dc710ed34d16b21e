"""Restore, callable without the CLI: pick archive objects (all, a UTC date range, or one key), check
them, and load them object by object into the live table or a --target-table (issue 4)."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any

import psycopg

from common.config import Config
from common.pg.db import application_name, connect, conninfo, session_settings
from common.errors import ArchiverError, SessionLost, UsageError, first_line, session_lost
from common.hooks import env_hook
from common.pgtypes import TableSchema
from common.archive.catalog import ArchiveObject, Catalog, TableRef, parse_range, resolve_table
from restore.commits import CommitBatch, Progress
from restore.drift import ColumnPlan, plan_columns
from restore.loader import STRATEGIES, Loader, ObjectResult, prefetched, prepare
from restore.parents import check_parents
from restore.partitions import leaves_of, plan as partition_plan, recreate
from restore.target import LiveTable, create_table, find_table, require_table, table_lock
from restore.writers import check_writers

log = logging.getLogger("restore")
#: Room for one object's temporary table in memory (PostgreSQL's default is 8MB).
_TEMP_BUFFERS = "64MB"


@dataclass
class RestoreReport:
    database: str
    source: str  # schema.table whose archives are restored
    target: str  # schema.table the rows went (or would go) into
    strategy: str
    dry_run: bool
    selected: list[ArchiveObject] = field(default_factory=list)
    objects: list[ObjectResult] = field(default_factory=list)
    created_target: bool = False
    dropped_columns: list[str] = field(default_factory=list)
    defaulted_columns: list[str] = field(default_factory=list)
    #: Leaf partitions created again from their manifests' bounds ("schema.name FOR VALUES ...").
    recreated_partitions: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rows(self) -> int:
        return sum(o.rows for o in self.objects) if not self.dry_run else sum(o.rows or 0 for o in self.selected)

    def total(self, what: str) -> int:
        return sum(getattr(o, what) for o in self.objects)

    def span(self) -> tuple[datetime | None, datetime | None]:
        starts = [o.start for o in self.selected if o.start]
        ends = [o.end for o in self.selected if o.end]
        return (min(starts) if starts else None, max(ends) if ends else None)

    def to_json(self) -> dict[str, Any]:
        first, last = self.span()
        return {
            "database": self.database, "source": self.source, "target": self.target, "strategy": self.strategy,
            "dry_run": self.dry_run, "created_target": self.created_target,
            "start": first.isoformat() if first else None, "end": last.isoformat() if last else None,
            "rows": self.rows, "inserted": self.total("inserted"), "skipped": self.total("skipped"),
            "overwritten": self.total("overwritten"), "seconds": round(self.seconds, 3),
            "dropped_columns": self.dropped_columns, "defaulted_columns": self.defaulted_columns,
            "recreated_partitions": self.recreated_partitions,
            "objects": [o.to_json() for o in self.objects] if not self.dry_run else [o.to_json() for o in self.selected],
            "notes": self.notes,
        }


def list_archives(cfg: Config, *, database: str, table: str, schema: str | None = None,
                  start_date: date | str | None = None, end_date: date | str | None = None,
                  s3_client: Any | None = None) -> list[ArchiveObject]:
    """The table's archived objects (S3 or local_dir, plus the fallback directory), oldest first;
    dates are UTC days of the timestamp column, inclusive at both ends."""
    first, last = parse_range(start_date, end_date)
    ref = resolve_table(cfg, database, table, schema)
    return Catalog(cfg, s3_client=s3_client).list_objects(ref, start=first, end=last)


def select_objects(catalog: Catalog, ref: TableRef, *, restore_all: bool, s3_key: str | None,
                   start: date | None, end: date | None) -> list[ArchiveObject]:
    if s3_key and restore_all:
        raise UsageError("--s3-key and --restore-all exclude each other")
    if s3_key and (start or end):
        raise UsageError("--start-date/--end-date select objects for --restore-all; not with --s3-key")
    if not s3_key and not restore_all:
        raise UsageError("say what to restore: --restore-all (optionally with dates) or --s3-key KEY")
    return [catalog.find(ref, s3_key)] if s3_key else catalog.list_objects(ref, start=start, end=end)


def request_s3_restore(cfg: Config, *, database: str, table: str, days: int, schema: str | None = None,
                       restore_all: bool = False, s3_key: str | None = None, start_date: date | str | None = None,
                       end_date: date | str | None = None, s3_client: Any | None = None) -> list[str]:
    """Issue S3 restore requests for the selected objects in GLACIER/DEEP_ARCHIVE; returns their keys."""
    first, last = parse_range(start_date, end_date)
    ref = resolve_table(cfg, database, table, schema)
    catalog = Catalog(cfg, s3_client=s3_client)
    if s3_key or restore_all:
        objects = select_objects(catalog, ref, restore_all=restore_all, s3_key=s3_key, start=first, end=last)
    else:
        objects = catalog.list_objects(ref, start=first, end=last)
    return catalog.request_restore(objects, days=days)


def restore(cfg: Config, *, database: str, table: str, schema: str | None = None, restore_all: bool = False,
            start_date: date | str | None = None, end_date: date | str | None = None, s3_key: str | None = None,
            conflict_strategy: str = "fail", target_table: str | None = None, dry_run: bool = False,
            allow_drop_columns: bool = False, s3_client: Any | None = None) -> RestoreReport:
    """Restore archived rows exactly as they were archived. Raises an ArchiverError (with its exit
    code) naming the object when something is wrong; returns what was (or would be) restored."""
    started = time.monotonic()
    if conflict_strategy not in STRATEGIES:
        raise UsageError(f"--conflict-strategy {conflict_strategy!r}: expected one of {', '.join(STRATEGIES)}")
    first, last = parse_range(start_date, end_date)
    ref = resolve_table(cfg, database, table, schema)
    catalog = Catalog(cfg, s3_client=s3_client)
    objects = select_objects(catalog, ref, restore_all=restore_all, s3_key=s3_key, start=first, end=last)
    return restore_objects(cfg, catalog, ref, objects, conflict_strategy=conflict_strategy, target_table=target_table,
                           dry_run=dry_run, allow_drop_columns=allow_drop_columns, started=started)


def restore_objects(cfg: Config, catalog: Catalog, ref: TableRef, objects: list[ArchiveObject], *,
                    conflict_strategy: str = "fail", target_table: str | None = None, dry_run: bool = False,
                    allow_drop_columns: bool = False, started: float | None = None,
                    check_parents_first: bool = True) -> RestoreReport:
    """Restore these objects of the table (restore(), restore/children.py). A child's objects
    (issue 28) go back only where their parent rows are (restore/parents.py), checked before
    anything is written, unless `check_parents_first` is off (a dry run of a whole family, whose
    parents are not restored yet)."""
    started = time.monotonic() if started is None else started
    database = ref.database
    tschema, tname = _target_name(ref, target_table)
    report = RestoreReport(database, ref.name, f"{tschema}.{tname}", conflict_strategy, dry_run, selected=objects)
    _check_readable(objects, report)
    if not objects:
        report.notes.append("no archived objects match; nothing to restore")
    with connect(conninfo(cfg.database(database)), _settings(cfg, ref)) as conn:
        if check_parents_first and target_table is None and objects:
            check_parents(conn, catalog, objects, child=ref.name)
        if dry_run:
            conn.read_only = True
            _dry_run(conn, report, ref, objects, (tschema, tname), allow_drop_columns, creatable=target_table is not None)
        elif objects:
            job = _Job(conn, catalog, ref, objects, report, allow_drop_columns)
            job.run(tschema, tname, creatable=target_table is not None)
    _retention_note(report, ref, objects, same_table=report.target == ref.name)
    report.seconds = time.monotonic() - started
    return report


def _target_name(ref: TableRef, target_table: str | None) -> tuple[str, str]:
    if not target_table:
        return ref.schema, ref.table
    if "." in target_table:
        schema, _, name = target_table.partition(".")
        return schema, name
    return ref.schema, target_table


def _settings(cfg: Config, ref: TableRef) -> dict[str, str]:
    opts = cfg.options(cfg.table(ref.database, ref.table, ref.schema)) if not ref.unconfigured else cfg.defaults
    settings = session_settings(application_name=application_name(opts.application_name, role="restore"),
                                statement_timeout=opts.statement_timeout, lock_timeout=opts.lock_timeout)
    settings["temp_buffers"] = _TEMP_BUFFERS
    return settings


def _check_readable(objects: list[ArchiveObject], report: RestoreReport) -> None:
    frozen = [o for o in objects if o.needs_s3_restore]
    if not frozen:
        return
    classes = "/".join(sorted({o.storage_class for o in frozen}))
    message = (f"{len(frozen)} of the selected objects are in {classes} and need an S3 restore request first "
               f"(e.g. {frozen[0].key}); run again with --request-glacier-restore DAYS, then restore once they are available")
    if not report.dry_run:
        raise ArchiverError(message)
    report.notes.append(message)


def _planner(live: LiveTable, allow_drop: bool) -> tuple[Any, dict[str, ColumnPlan]]:
    plans: dict[str, ColumnPlan] = {}

    def plan_for(archived: TableSchema, key: str) -> ColumnPlan:
        fp = archived.fingerprint()
        if fp not in plans:
            plans[fp] = plan_columns(archived, live.columns, primary_key=live.primary_key,
                                     allow_drop=allow_drop, key=key, target=live.name)
        return plans[fp]

    return plan_for, plans


def _precheck(objects: list[ArchiveObject], plan_for: Any) -> None:
    """Check drift with the manifests' schemas before loading anything, so a drifted archive stops
    the run at its start rather than half way."""
    for obj in objects:
        archived = obj.archived_schema
        if archived is not None:
            plan_for(archived, obj.key)


def _record_plans(report: RestoreReport, plans: dict[str, ColumnPlan]) -> None:
    report.dropped_columns = sorted({c for p in plans.values() for c in p.dropped})
    report.defaulted_columns = sorted({c for p in plans.values() for c in p.defaulted})
    if report.dropped_columns:
        report.notes.append(f"not restored (dropped or retyped in {report.target}): {', '.join(report.dropped_columns)}")
    if report.defaulted_columns:
        report.notes.append(f"columns not in the archive took their defaults: {', '.join(report.defaulted_columns)}")


def _dry_run(conn: psycopg.Connection[Any], report: RestoreReport, ref: TableRef, objects: list[ArchiveObject],
             target: tuple[str, str], allow_drop: bool, *, creatable: bool) -> None:
    live = find_table(conn, *target)
    if live is None:
        if not creatable:
            require_table(conn, *target)  # raises the usual message
        report.notes.append(f"{report.target} does not exist: it would be created from the archived schema")
    else:
        live = require_table(conn, *target)
        check_writers(conn, live, strategy=report.strategy)
        plan_for, plans = _planner(live, allow_drop)
        _precheck(objects, plan_for)
        _record_plans(report, plans)
        parts = partition_plan(conn, live.oid, live.name, leaves_of(objects))
        report.notes += [f"would recreate partition {leaf.describe()} (unless an existing partition overlaps it)"
                         for leaf in parts.create] + parts.notes
    conn.rollback()
    report.notes.append("dry run: nothing was changed")


def _retention_note(report: RestoreReport, ref: TableRef, objects: list[ArchiveObject], *, same_table: bool) -> None:
    if not same_table or ref.retention_days is None or not report.rows:
        return
    cutoff = datetime.now(timezone.utc) - timedelta(days=ref.retention_days)
    if any(o.start and o.start < cutoff for o in objects):
        report.notes.append(f"restored rows older than retention_days ({ref.retention_days}) will be archived again "
                            "by the next archiver run unless retention is raised first")


class _Job:
    """One restore run on one connection: target, lock, then every object in order."""

    def __init__(self, conn: psycopg.Connection[Any], catalog: Catalog, ref: TableRef, objects: list[ArchiveObject],
                 report: RestoreReport, allow_drop: bool) -> None:
        self.conn, self.catalog, self.ref, self.objects = conn, catalog, ref, objects
        self.report, self.allow_drop = report, allow_drop
        self.single_tx = report.strategy == "fail"

    def run(self, schema: str, table: str, *, creatable: bool) -> None:
        try:
            live = self._open_target(schema, table, creatable=creatable)
            check_writers(self.conn, live, strategy=self.report.strategy)
            with table_lock(self.conn, live):
                plan_for, plans = _planner(live, self.allow_drop)
                _precheck(self.objects, plan_for)  # a drifted archive stops the run before any DDL
                self._recreate_partitions(live)
                self._load(live, plan_for)
                _record_plans(self.report, plans)
        except BaseException as exc:
            try:
                self.conn.rollback()
            except psycopg.Error:
                pass  # a broken connection rolls back on its own; keep the original error
            explained = self._explain(exc)
            if explained is exc:
                raise
            raise explained from exc

    def _open_target(self, schema: str, table: str, *, creatable: bool) -> LiveTable:
        live = find_table(self.conn, schema, table)
        if live is not None or not creatable:
            return require_table(self.conn, schema, table)
        newest = self.objects[-1]
        archived = newest.archived_schema
        if archived is None or newest.manifest is None:
            raise ArchiverError(f"{newest.key}: its manifest carries no schema to create {schema}.{table} from")
        live = create_table(self.conn, schema, table, archived, newest.manifest.key_columns)
        self.report.created_target = True
        log.info("created %s.%s from the archived schema of %s", schema, table, newest.key)
        if not self.single_tx:
            self.conn.commit()
        return live

    def _recreate_partitions(self, live: LiveTable) -> None:
        """Create again the dropped leaves the objects' rows belong in, committed before any row is
        loaded, whatever the strategy: CREATE TABLE ... PARTITION OF locks the parent against
        writes, and a `fail` run holding that lock until its end would stop the live table's
        writers for the whole restore. A failed run leaves them behind, empty, as they were
        before the archiver retired them."""
        parts = partition_plan(self.conn, live.oid, live.name, leaves_of(self.objects))
        for note in parts.notes:
            log.info("%s", note)
        self.report.notes += parts.notes
        for leaf in parts.create:
            refused = recreate(self.conn, leaf)
            if refused is None:
                log.info("recreated partition %s", leaf.describe())
                self.report.recreated_partitions.append(leaf.describe())
            else:
                note = (f"partition {leaf.qualified_name} not recreated ({refused}); its rows go where "
                        f"PostgreSQL routes them in {live.name}")
                log.warning("%s", note)
                self.report.notes.append(note)
        if parts.create:
            self.conn.commit()

    def _load(self, live: LiveTable, plan_for: Any) -> None:
        loader = Loader(self.conn, live, self.report.strategy)
        # fail: nothing is committed before the end, so the log must not say "restored" yet.
        progress = Progress(len(self.objects), sum(o.rows or 0 for o in self.objects),
                             verb="loaded (commit at the end)" if self.single_tx else "restored")
        batch = CommitBatch(self.conn, self.report.objects, progress, single_tx=self.single_tx, hook=env_hook())
        with prefetched(self.objects, lambda o: prepare(self.catalog, o, self.ref, plan_for)) as items:
            it = iter(items)
            while True:
                try:
                    item = next(it)
                except StopIteration:
                    break
                except BaseException:
                    batch.keep_loaded()  # the next object is unreadable: the ones loaded stay restored
                    raise
                batch.load(loader, item)
        batch.commit()

    def _explain(self, exc: BaseException) -> BaseException:
        """Say what state the run left behind, on top of what went wrong. A session lost mid-run
        (common.errors.session_lost) says it too: the objects committed before it stay restored."""
        if session_lost(exc):
            again = "" if self.single_tx else "; once it is back, --conflict-strategy skip restores the rest"
            return SessionLost(f"database unreachable: {first_line(exc)}; {self._left_behind()}{again}")
        if not isinstance(exc, ArchiverError) or isinstance(exc, UsageError):
            return exc
        return type(exc)(f"{exc}; {self._left_behind()}")

    def _left_behind(self) -> str:
        done = self.report.objects
        if self.single_tx:
            tail = "the run was rolled back: nothing was restored"
        elif done:
            tail = (f"the {len(done)} object(s) committed before it ({sum(o.rows for o in done)} rows) stay "
                    "restored, nothing after them")
        else:
            tail = "nothing was restored"
        if self.report.recreated_partitions:
            tail += f"; the {len(self.report.recreated_partitions)} recreated partition(s) stay"
        return tail
