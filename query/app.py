"""The query tool behind the CLI: plan which objects to read, check the SQL on no rows, then stream
the matching rows day by day into the chosen output. Objects that cannot be read (GLACIER or
DEEP_ARCHIVE without a completed S3 restore) are reported on stderr and the exit code is 1: the
answer is incomplete and must not look complete."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from common.catalog import Catalog, TableRef, parse_range, resolve_table
from common.cli import Environment
from common.config import load_config
from common.errors import UsageError
from common.exit_codes import ExitCode
from common.logging_setup import setup_logging
from common.archive_sql import Engine, Query, union_schema
from query.output import make_writer, output_file
from common.archive_plan import Plan, plan


@dataclass(frozen=True, kw_only=True)
class QueryOptions:
    config_path: Path
    database: str
    table: str
    start_date: str | None = None
    end_date: str | None = None
    where: str | None = None
    columns: tuple[str, ...] = ()
    limit: int | None = None
    output_format: str = "table"
    output: Path | None = None
    verbose: bool = False


def parse_columns(text: str | None) -> tuple[str, ...]:
    names = tuple(c.strip() for c in (text or "").split(",") if c.strip())
    if text is not None and not names:
        raise UsageError("--columns: name at least one column (a,b,c)")
    return names


def run(opts: QueryOptions, *, env: Environment | None = None, s3_client: Any | None = None) -> int:
    env = env or Environment()
    stdout, stderr = env.stdout, env.stderr
    start, end = parse_range(opts.start_date, opts.end_date)
    if opts.output_format == "parquet" and opts.output is None:
        raise UsageError("--output-format parquet writes a file: give --output FILE")
    cfg = load_config(opts.config_path)
    setup_logging(None, verbose=opts.verbose)  # logs to stderr only: stdout carries the rows
    catalog = Catalog(cfg, s3_client=s3_client)
    ref = resolve_table(cfg, opts.database, opts.table)
    work = plan(catalog, ref, start=start, end=end)
    # Unreadable objects' manifests (kept in STANDARD) still say what columns they hold.
    described = [o for g in work.groups for o in g.objects] + [o for o in work.unreadable if o.manifest]
    if not described:
        stderr.write(f"query: no archived objects of {ref.database}/{ref.name}"
                     f"{' in those dates' if start or end else ''}: nothing to search\n")
        return int(ExitCode.OK)
    with Engine(_query(opts, ref, work), union_schema(described)) as engine:
        schema = engine.check()
        if opts.output is None:
            rows = _stream(engine, catalog, work, opts, stdout, schema, progress=stderr if env.stderr_isatty else None)
        else:
            with output_file(opts.output, binary=opts.output_format == "parquet") as fh:
                rows = _stream(engine, catalog, work, opts, fh, schema, progress=stderr if env.stderr_isatty else None)
    return _report(work, rows, stderr)


def _query(opts: QueryOptions, ref: TableRef, work: Plan) -> Query:
    first = next((o.manifest for o in [*(o for g in work.groups for o in g.objects), *work.unreadable] if o.manifest), None)
    ts = first.timestamp_column if first else (ref.timestamp_column or "")
    key = first.primary_key if first else (ref.primary_key or "")
    return Query(where=opts.where, columns=opts.columns, timestamp_column=ts, key_columns=(key,) if key else ())


def _stream(engine: Engine, catalog: Catalog, work: Plan, opts: QueryOptions, out: IO[Any], schema: Any,
            *, progress: IO[str] | None) -> int:
    writer = make_writer(opts.output_format, out, schema)
    rows = objects = 0
    for group in work.groups:
        remaining = None if opts.limit is None else opts.limit - rows
        if remaining is not None and remaining <= 0:
            break
        for batch in engine.day(catalog, group.objects, limit=remaining):
            writer.write(batch)
            rows += batch.num_rows
        objects += len(group.objects)
        if progress is not None:
            progress.write(f"\rquery: {objects}/{work.objects} objects read, {rows:,} rows   ")
            progress.flush()
    writer.close()
    if progress is not None:
        progress.write("\n")
    return rows


def _report(work: Plan, rows: int, stderr: IO[str]) -> int:
    if not work.unreadable:
        return int(ExitCode.OK)
    held = sum(o.rows or 0 for o in work.unreadable)
    stderr.write(f"query: {len(work.unreadable)} objects ({held:,} rows) of {work.ref.database}/{work.ref.name} are in "
                 f"GLACIER/DEEP_ARCHIVE and were not read, so the {rows:,} rows shown may be incomplete; make them "
                 f"readable with: python -m restore.main --config CONFIG --database {work.ref.database} --table "
                 f"{work.ref.name} --restore-all --request-glacier-restore 7\n")
    for obj in work.unreadable:
        stderr.write(f"  {obj.key} ({obj.storage_class})\n")
    return int(ExitCode.FAILURE)
