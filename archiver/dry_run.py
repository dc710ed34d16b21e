"""--dry-run (issue 2): validate config, connect, check each table, column and primary key, and
print per table the key, cutoff, eligible rows and estimated objects, and each foreign key that
references the table with what the run would do about it (refuse the table, or keep the rows it
references). Writes nothing, deletes nothing, never prints a password."""
from __future__ import annotations

import logging
from dataclasses import replace
from datetime import datetime
from collections.abc import Callable
from typing import Any

from psycopg import sql

from archiver import partitions
from archiver.delete_guard import DeletesRefused, check_deletes
from archiver.family.dry_run import family_dry_run
from archiver.references import Reference, kept_message, read_references, refusal
from archiver.selection import Selection
from archiver.table_check import inspect_table
from common import iceberg
from common.config import Config
from common.pg.db import application_name, connect, conninfo, describe_target, session_settings
from common.archive.digest import secret as digest_secret
from common.epoch import day_sql
from common.expiry import count_untimed, cutoff_for, database_now, untimed_message
from common.errors import ServiceUnavailable, first_line
from common.exit_codes import ExitCode
from common.archive.s3client import check_object_lock, primary_storage

log = logging.getLogger("archiver")


def plan(cfg: Config, *, now: datetime, s3_client: Any | None = None,
         only: Callable[[str, str, str], bool] | None = None) -> tuple[list[str], ExitCode]:
    key_secret = digest_secret(cfg)  # an unset s3.digest_key_env variable: exit 2, as a run would
    lines = [f"config {cfg.source}: valid", _storage_line(cfg, s3_client),
             f"digests: {'signed (HMAC-SHA256, key from $' + str(cfg.s3.digest_key_env) + ')' if key_secret else 'unsigned'}"]
    code = ExitCode.OK
    iceberg.require(cfg)  # an iceberg: section without pyiceberg: exit 2, as a run would
    if (line := iceberg.catalog_line(cfg)) is not None:
        lines.append(line)
    for db in cfg.databases:
        tables = [t for t in db.tables if only is None or only(db.name, t.schema_, t.name)]
        if not tables:
            continue
        opts = cfg.options(db.tables[0]) if db.tables else cfg.defaults
        info = conninfo(db)
        try:
            conn = connect(info, session_settings(application_name=application_name(opts.application_name, role="dry-run"),
                                                  statement_timeout=opts.statement_timeout, lock_timeout=opts.lock_timeout))
        except ServiceUnavailable as exc:
            lines.append(f"database {db.name}: {exc}")
            code = ExitCode.UNAVAILABLE
            continue
        lines.append(f"database {db.name} ({describe_target(info)}): connected")
        with conn:
            conn.read_only = True
            for t in tables:
                try:
                    table_lines, refused = _table_lines(conn, cfg, t, now)
                    lines += table_lines
                    if cfg.iceberg is not None:
                        lines += iceberg.dry_run_lines(cfg, primary_storage(cfg, s3_client), db.name, t.schema_, t.name)
                    if refused:
                        code = max(code, ExitCode.FAILURE)
                except Exception as exc:  # noqa: BLE001 - report every table
                    conn.rollback()
                    lines.append(f"  {t.schema_}.{t.name}: error: {first_line(exc)}")
                    code = max(code, ExitCode.FAILURE)
    lines.append("dry run: nothing was written or deleted")
    return lines, code


def _table_lines(conn: Any, cfg: Config, t: Any, now: datetime) -> tuple[list[str], bool]:
    """The table's line and one per referencing foreign key; True when the run would refuse it.
    `now` is this host's clock: the cutoff follows the database's, as the run's does."""
    opts = cfg.options(t)
    db_now, _skew = database_now(conn, host_now=now, log=log)
    oid, schema, keys = inspect_table(conn, t)
    if t.children == "archive":  # issue 28: the family moves together
        return family_dry_run(conn, cfg, t, oid, schema, keys, db_now, table_line=_table_line, key_words=key_words)
    refs = read_references(conn, oid)
    deletes = opts.delete_after_archive
    if deletes and any(r.changes_rows for r in refs):
        conn.rollback()
        return [f"  {t.schema_}.{t.name}: key {key_words(keys)}, refused: {refusal(refs)}",
                *(f"    {r.describe()}: {'refused' if r.changes_rows else 'the rows it references would be kept'}" for r in refs)], True
    if deletes:
        try:
            check_deletes(conn, oid, f"{t.schema_}.{t.name}", retire=opts.expired_partitions != "keep")
        except DeletesRefused as exc:
            return [f"  {t.schema_}.{t.name}: key {key_words(keys)}, {exc}"], True
    sel = Selection(t, schema, cutoff_for(opts.retention_days, db_now), keys, tuple(refs) if deletes else ())
    lines = [_table_line(conn, sel, opts)]
    # a partitioned table: which leaves a run would retire whole (expired_partitions), which go row by row
    lines += partitions.describe(conn, sel, oid, mode=opts.expired_partitions if deletes else "keep")
    for r in refs:
        lines.append(f"    {r.describe()}: {_kept(conn, replace(sel, references=(r,))) if deletes else 'no effect, no row is deleted'}")
    if deletes and refs and (kept := _count(conn, sel.kept_query())):
        lines.append(f"    {kept_message(kept, (r.name for r in refs))}")
    conn.rollback()
    return lines, False


def _kept(conn: Any, one: Selection) -> str:
    return f"{_count(conn, one.kept_query())} expired rows kept while referenced"


def _count(conn: Any, query: sql.Composed) -> int:
    return int(conn.execute(query).fetchone()[0])


def _table_line(conn: Any, sel: Selection, opts: Any) -> str:
    t = sel.table
    pred, params = sel.predicate()
    unit = t.timestamp_unit
    day = day_sql(sel.ts, unit) if unit else sql.SQL("date_trunc('day', {}::timestamptz AT TIME ZONE 'UTC')").format(sel.ts)
    query = sql.SQL(
        "SELECT coalesce(sum(n), 0), coalesce(sum(ceil(n::numeric / %(bs)s)), 0), min(d), max(d)"
        " FROM (SELECT {day} AS d, count(*) AS n FROM {rel} WHERE {pred} GROUP BY 1) per_day"
    ).format(day=day, rel=sel.relation, pred=pred)
    rows, objects, first, last = conn.execute(query, dict(params, bs=opts.batch_size)).fetchone()
    skipped = conn.execute(
        sql.SQL("SELECT count(*) FROM {rel} WHERE {ts} < %(floor)s").format(rel=sel.relation, ts=sel.ts),
        {"floor": params["floor"]},
    ).fetchone()[0]
    span = f", days {first:%Y-%m-%d}..{last:%Y-%m-%d}" if first else ""
    note = f"; {skipped} rows before year 1 or -infinity stay in the table" if skipped else ""
    if untimed := count_untimed(conn, sel):
        note += f"; {untimed_message(untimed, t.timestamp_column)}"
    if unit:  # the cutoff as the column holds it, to check against the table's own values
        note += f"; expired: {t.timestamp_column} < {params['cutoff']} (Unix time in {unit})"
    return (f"  {t.schema_}.{t.name}: cutoff {sel.cutoff:%Y-%m-%dT%H:%M:%SZ} (retention {opts.retention_days} days),"
            f" eligible rows {rows}, estimated objects {objects}{span}, key {key_words(sel.keys)}, format {opts.format},"
            f" delete after archive {'yes' if opts.delete_after_archive else 'no'}{note}")


def key_words(keys: tuple[str, ...]) -> str:
    """The key as used: one column by name, a composite one in keyset order."""
    return keys[0] if len(keys) == 1 else f"({', '.join(keys)})"


def _storage_line(cfg: Config, s3_client: Any | None) -> str:
    if cfg.storage == "local":
        return f"storage: local directory {cfg.local_dir}"
    store = primary_storage(cfg, s3_client)
    target = f"s3://{cfg.s3.bucket}/{cfg.s3.prefix}"
    try:
        store.probe()  # type: ignore[attr-defined]
        status = "reachable"
    except Exception as exc:  # noqa: BLE001
        status = f"NOT reachable ({first_line(exc, limit=120)})"
    else:
        check_object_lock(cfg, store)  # a run would refuse the bucket: so does the dry run (exit 2)
    lock = cfg.s3.object_lock
    if lock is not None:
        status += f", Object Lock {lock.mode} {lock.retain_days} days{' with legal hold' if lock.legal_hold else ''}"
    fb = f", fallback {cfg.s3.local_fallback_dir}" if cfg.s3.local_fallback_dir else ", no fallback directory"
    return f"storage: {target} ({status}), class {cfg.s3.storage_class}{fb}"
