"""Issue 4: `restore --restore-all` of the archiver's objects into an empty copy of the table against
`zstd -d < export | psql \\copy audit_logs FROM STDIN` into another empty copy."""
from __future__ import annotations

from typing import Any

import psycopg

from bench import baseline
from bench.context import Context
from bench.env import DB_NAME, PYTHON, implemented, measure
from bench.report import PartResult

TARGET_RATIO = 1.5
CONTENT = "SELECT count(*), coalesce(sum(hashtext(t::text)::bigint), 0) FROM audit_logs t"


def content(dsn: str, cutoff: str | None = None) -> tuple[Any, ...]:
    """(rows, sum of row-text hashes): equal for two tables holding the same values."""
    query = CONTENT + (" WHERE created_at < %(c)s" if cutoff else "")
    with psycopg.connect(dsn) as conn:
        row = conn.execute(query, {"c": cutoff}).fetchone()
    assert row is not None
    return tuple(row)


def run(ctx: Context) -> PartResult:
    part = PartResult("restore", TARGET_RATIO, rows=ctx.seeded.eligible)
    if not implemented("restore"):
        part.status, part.note = "skipped", "not implemented yet"
        return part
    assert ctx.archived is not None, "the restore part needs the archiver's archives"
    expected = content(ctx.dbs.dsn(ctx.seeded.template), ctx.seeded.cutoff_sql)

    base_dsn = ctx.fresh_copy("restore_baseline", empty=True)
    export = ctx.exported()
    baseline.checkpoint(base_dsn)
    part.baseline_seconds = baseline.load(base_dsn, export)
    if content(base_dsn) != expected:
        part.fail("the baseline load does not match the original rows")
    ctx.dbs.drop(base_dsn)

    dsn = ctx.fresh_copy("restore", empty=True)
    cfg = ctx.config("restore", dsn, ctx.archived.bucket)
    baseline.checkpoint(dsn)
    run = measure([PYTHON, "-m", "restore.main", "--config", str(cfg), "--restore-all", "--database", DB_NAME,
                   "--table", "audit_logs", "--conflict-strategy", "skip"], log=ctx.work / "restore")
    part.tool_seconds, part.peak_rss_mb = run.seconds, run.peak_rss_mb
    if run.returncode != 0:
        part.fail(f"restore exited {run.returncode}: {run.tail(3)}")
    elif (got := content(dsn)) != expected:
        part.fail(f"restored table differs from the original rows: {got[0]} rows vs {expected[0]}")
    ctx.dbs.drop(dsn)
    return part
