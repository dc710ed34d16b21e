"""The restore tool behind the CLI: load config, set up logging, then list, request S3 restores, or
restore, and print the result on stdout."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from common.cli import Environment
from common.config import Config, load_config
from common.errors import UsageError
from common.logging_setup import setup_logging
from restore import render
from restore.children import restore_family
from restore.engine import list_archives, parse_range, request_s3_restore, restore


@dataclass(frozen=True, kw_only=True)
class RestoreOptions:
    config_path: Path
    database: str
    table: str
    schema: str | None = None
    restore_all: bool = False
    start_date: str | None = None
    end_date: str | None = None
    s3_key: str | None = None
    conflict_strategy: str = "fail"
    target_table: str | None = None
    dry_run: bool = False
    with_children: bool = False
    output_format: str = "text"
    request_glacier_restore: int | None = None
    allow_drop_columns: bool = False
    verbose: bool = False


def run(opts: RestoreOptions, *, env: Environment | None = None) -> int:
    out = (env or Environment()).stdout
    parse_range(opts.start_date, opts.end_date)  # a bad date is a usage error before anything else
    cfg = load_config(opts.config_path)
    setup_logging(cfg.logging, verbose=opts.verbose)
    if opts.request_glacier_restore is not None:
        keys = request_s3_restore(cfg, database=opts.database, table=opts.table, schema=opts.schema,
                                  days=opts.request_glacier_restore, restore_all=opts.restore_all, s3_key=opts.s3_key,
                                  start_date=opts.start_date, end_date=opts.end_date)
        out.write(f"requested an S3 restore for {opts.request_glacier_restore} days of {len(keys)} objects"
                  + (" (GLACIER: hours; DEEP_ARCHIVE: up to 48 hours); run the restore again once they are available" if keys else "")
                  + "\n")
        for key in keys:
            out.write(f"  {key}\n")
        return 0
    if not opts.restore_all and not opts.s3_key:
        objects = list_archives(cfg, database=opts.database, table=opts.table, schema=opts.schema,
                                start_date=opts.start_date, end_date=opts.end_date)
        table = f"{opts.database}/{opts.table}"
        out.write(render.listing_json(objects) if opts.output_format == "json" else render.listing_text(objects, table=table) + "\n")
        return 0
    if opts.with_children:
        return _with_children(cfg, opts, out)
    report = restore(cfg, database=opts.database, table=opts.table, schema=opts.schema, restore_all=opts.restore_all,
                     start_date=opts.start_date, end_date=opts.end_date, s3_key=opts.s3_key,
                     conflict_strategy=opts.conflict_strategy, target_table=opts.target_table, dry_run=opts.dry_run,
                     allow_drop_columns=opts.allow_drop_columns)
    out.write(render.report_json(report) if opts.output_format == "json" else render.report_text(report) + "\n")
    return 0


def _with_children(cfg: Config, opts: RestoreOptions, out: TextIO) -> int:
    """restore --with-children (restore/children.py): one report per table, parents first."""
    if not opts.restore_all and not opts.s3_key:
        raise UsageError("--with-children restores: say what, --restore-all (optionally with dates) or --s3-key KEY")
    reports = restore_family(cfg, database=opts.database, table=opts.table, schema=opts.schema,
                             restore_all=opts.restore_all, start_date=opts.start_date, end_date=opts.end_date,
                             s3_key=opts.s3_key, conflict_strategy=opts.conflict_strategy,
                             target_table=opts.target_table, dry_run=opts.dry_run,
                             allow_drop_columns=opts.allow_drop_columns)
    if opts.output_format == "json":
        out.write(json.dumps({"tables": [r.to_json() for r in reports]}, indent=1) + "\n")
    else:
        out.write("\n".join(render.report_text(r) for r in reports) + "\n")
    return 0
