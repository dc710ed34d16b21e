"""The expire tool behind the CLI (issue 29): for each table with `archive_retention_days`, delete
the archived objects whose newest row is past it by the database's clock, except those a legal hold
or Object Lock keeps (expire/plan.py), recording each expiry in the table's digest chain
(expire/table.py says in what order, and why a kill -9 at any point is safe)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from common import iceberg
from common.archive import digest
from common.lifecycle import holds as holds_mod
from common.archive.catalog import Catalog, TableRef, resolve_table
from common.cli import Environment, check_configured_tables, table_matches
from common.config import Config, load_config
from common.exit_codes import ExitCode
from common.hooks import Hook, env_hook
from common.jsonout import render_json
from common.logging_setup import setup_logging
from common.archive.s3client import check_object_lock
from common.lifecycle.table_session import table_session
from expire.metrics import write_textfile
from expire.outcome import TableOutcome
from expire.plan import Bucket, Plan, make_plan
from expire.table import expire_table

log = logging.getLogger("expire")


@dataclass(frozen=True, kw_only=True)
class ExpireOptions:
    config_path: Path
    database: str | None = None
    table: str | None = None
    dry_run: bool = False
    output_format: str = "text"
    verbose: bool = False
    textfile: Path | None = None


def run(opts: ExpireOptions, *, env: Environment | None = None, s3_client: Any | None = None,
        hook: Hook | None = None) -> int:
    env = env or Environment()
    cfg = load_config(opts.config_path)
    iceberg.require(cfg)
    setup_logging(cfg.logging, verbose=opts.verbose)
    catalog = Catalog(cfg, s3_client=s3_client)
    key_secret = None if opts.dry_run else digest.secret(cfg)
    if not opts.dry_run:
        check_object_lock(cfg, catalog.primary)  # records and digests are stored under the configured lock
    outcomes = [expire_one(cfg, catalog, ref, dry_run=opts.dry_run, key_secret=key_secret,
                           hook=env_hook() if hook is None else hook) for ref in tables(cfg, opts)]
    if opts.textfile is not None and not opts.dry_run:
        try:
            write_textfile(opts.textfile, outcomes)
        except OSError as exc:  # the expiry is done; a monitoring file must not change the verdict
            log.error("cannot write the metrics textfile %s: %s", opts.textfile, exc.strerror or exc)
    _emit(outcomes, opts, env.stdout)
    return int(ExitCode.FAILURE if any(o.failed for o in outcomes) else ExitCode.OK)


def tables(cfg: Config, opts: ExpireOptions) -> list[TableRef]:
    """The configured tables the options name (all of them by default)."""
    if opts.database is not None:
        cfg.database(opts.database)  # a config error naming the databases when unknown
    if opts.table is not None:
        check_configured_tables(cfg, [opts.table], databases=[opts.database] if opts.database else ())
    return [resolve_table(cfg, db.name, t.name, t.schema_) for db in cfg.databases
            if opts.database in (None, db.name) for t in db.tables
            if opts.table is None or table_matches(opts.table, t.schema_, t.name)]


def expire_one(cfg: Config, catalog: Catalog, ref: TableRef, *, dry_run: bool, key_secret: bytes | None,
               hook: Hook) -> TableOutcome:
    options = cfg.options(cfg.table(ref.database, ref.table, ref.schema))
    days = options.archive_retention_days
    store, prefix = catalog.primary, catalog.prefix
    out = TableOutcome(ref, days)
    ctx = {"database": ref.database, "table": ref.name}
    if days is None:
        out.holds = holds_mod.active(store, prefix, ref.database, ref.schema, ref.table)  # for the gauges
        log.info("no archive_retention_days: the archive is kept forever", extra=ctx)
        return out
    if days <= options.retention_days:
        log.warning("archive_retention_days (%d) is not longer than retention_days (%d): each batch is expired as "
                    "soon as it is archived", days, options.retention_days, extra=ctx)
    with table_session(cfg, ref.database, ref.schema, ref.table, role="expire", lock=not dry_run) as session:
        now = session.now()
        # Read under the table's lock: `hold` takes it too, so no hold placed since can be missed.
        out.holds = holds_mod.active(store, prefix, ref.database, ref.schema, ref.table)
        bucket = Bucket.of(store)
        out.plan = make_plan(catalog, ref, retention_days=days, now=now, holds=out.holds, bucket=bucket)
        _log_plan(out.plan, ctx)
        if not dry_run:
            out.done = expire_table(
                catalog, ref, out.plan, bucket=bucket, key_secret=key_secret, hook=hook,
                before_deletes=lambda: iceberg.after_change(cfg, store, ref.database, ref.schema, ref.table))
    return out


def _log_plan(plan: Plan, ctx: dict[str, str]) -> None:
    log.info("%d of %d archived objects past %d days (newest row before %s, by the database's clock): %d rows",
             len(plan.due), plan.objects, plan.retention_days, f"{plan.cutoff:%Y-%m-%d %H:%M} UTC", plan.rows, extra=ctx)
    for k in plan.kept:
        log.info("kept %s: %s", k.obj.key, k.detail, extra=ctx)


# -- output ----------------------------------------------------------------------------------------
def _emit(outcomes: list[TableOutcome], opts: ExpireOptions, stream: IO[str]) -> None:
    if opts.output_format == "json":
        stream.write(render_json({"dry_run": opts.dry_run, "tables": [_document(o) for o in outcomes]}))
    else:
        stream.write("".join(line + "\n" for o in outcomes for line in _lines(o, opts.dry_run)))
    stream.flush()


def _document(o: TableOutcome) -> dict[str, Any]:
    doc: dict[str, Any] = {"database": o.ref.database, "table": o.ref.name, "archive_retention_days": o.retention_days,
                           "holds": [h.hold_id for h in o.holds]}
    if o.plan is not None:
        doc.update(now=o.plan.now.isoformat(), cutoff=o.plan.cutoff.isoformat(), objects=o.plan.objects,
                   expired=[{"key": x.key, "rows": x.rows, "bytes": x.size, "newest_row": x.end.isoformat() if x.end else None}
                            for x in o.plan.due],
                   rows_expired=o.plan.rows, bytes_expired=o.plan.bytes, kept=[k.to_json() for k in o.plan.kept])
    if o.done is not None:
        doc.update(deleted=o.done.deleted, interrupted_finished=o.done.finished, record=o.done.record_key,
                   digest=o.done.digest_key, manifest_sets_deleted=o.done.sets_deleted,
                   failed=[{"key": k, "error": why} for k, why in o.done.failed])
    return doc


def _lines(o: TableOutcome, dry_run: bool) -> list[str]:
    name = f"{o.ref.database}/{o.ref.name}"
    if o.plan is None:
        return [f"{name}: no archive_retention_days: kept forever"]
    p = o.plan
    verb = "would expire" if dry_run else "expired"
    lines = [f"{verb} {x.key}: {x.rows} rows, newest {x.end:%Y-%m-%d}" for x in p.due if x.end is not None]
    lines += [f"kept {k.obj.key}: {k.detail}" for k in p.kept]
    if o.done is not None:
        lines += [f"failed {k}: {why}" for k, why in o.done.failed]
        if o.done.finished:
            lines.append(f"finished {o.done.finished} objects of an interrupted expiry")
    lines.append(f"summary: {name}: {len(p.due)} of {p.objects} objects {verb} ({p.rows} rows, {p.bytes} bytes) past "
                 f"{p.retention_days} days (newest row before {p.cutoff:%Y-%m-%d %H:%M} UTC); {len(p.kept)} kept"
                 + (f"; {len(o.holds)} legal holds in force" if o.holds else "")
                 + ("; dry run: nothing was changed" if dry_run else ""))
    return lines
