"""The query tool behind the CLI: plan which objects to read, check the SQL on no rows, then stream
the matching rows into the chosen output, whole days at a time (query.plan.scans) while the next
days download. Objects that cannot be read (GLACIER or
DEEP_ARCHIVE without a completed S3 restore) are reported on stderr and the exit code is 1: the
answer is incomplete and must not look complete."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pyarrow as pa

from common.archive.catalog import ArchiveObject, Catalog, TableRef, parse_range, resolve_table
from common.cli import Environment
from common.config import load_config
from common.errors import UsageError
from common.exit_codes import ExitCode
from common.logging_setup import setup_logging
from common.readahead import in_order
from common.archive_sql import Engine, Query, union_schema
from query.output import make_writer, output_file
from common.archive_plan import Plan, plan, scans

#: Objects downloaded at once (botocore pools 10 connections per client) and whole scans read
#: ahead of the one DuckDB is answering.
DOWNLOADS = 8
READ_AHEAD = 1


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
    # a composite key orders by all its columns (Manifest.key_columns reads either shape)
    keys = tuple(first.key_columns) if first else (ref.primary_key or ())
    return Query(where=opts.where, columns=opts.columns, timestamp_column=ts, key_columns=keys)


def _loaded(engine: Engine, catalog: Catalog, work: Plan) -> Iterator[tuple[int, list[pa.Table]]]:
    """Each scan's tables, in order, with the next scans' downloads already under way (at most
    READ_AHEAD scans held beyond the one being answered: memory stays bounded by scans, not by
    the archive). A --limit reached or an error cancels the downloads not yet started."""
    with ThreadPoolExecutor(max_workers=DOWNLOADS, thread_name_prefix="query-read") as pool:
        def submit(chunk: list[ArchiveObject]) -> _Scan:
            return _Scan([pool.submit(engine.load, catalog, obj) for obj in chunk])

        with closing(in_order(scans(work.groups), submit, ahead=READ_AHEAD)) as loaded:
            for tables in loaded:
                yield len(tables), tables


@dataclass
class _Scan:
    """The downloads of one scan's objects, waited for and cancelled together."""

    futures: list[Future[pa.Table]]

    def result(self) -> list[pa.Table]:
        return [f.result() for f in self.futures]

    def cancel(self) -> bool:
        return all([f.cancel() for f in self.futures])


def _stream(engine: Engine, catalog: Catalog, work: Plan, opts: QueryOptions, out: IO[Any], schema: Any,
            *, progress: IO[str] | None) -> int:
    writer = make_writer(opts.output_format, out, schema)
    rows = objects = 0
    for count, tables in _loaded(engine, catalog, work):
        remaining = None if opts.limit is None else opts.limit - rows
        if remaining is not None and remaining <= 0:
            break
        for batch in engine.scan(tables, limit=remaining):
            writer.write(batch)
            rows += batch.num_rows
        objects += count
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
