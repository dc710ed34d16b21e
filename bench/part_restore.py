"""Issue 4: `restore --restore-all` of the archiver's objects into an empty copy of the table against
`zstd -d < export | psql \\copy audit_logs FROM STDIN` into another empty copy."""
from __future__ import annotations

from typing import Any

import psycopg

from bench import baseline
from bench.context import Context
from bench.env import DB_NAME, PYTHON, implemented, measure
from bench.report import PartResult

#: Issue 19: no slower than `zstd -d | psql \\copy` (was 1.5x, issue 4).
TARGET_RATIO = 1.0
CONTENT = "SELECT count(*), coalesce(sum(hashtext(t::text)::bigint), 0) FROM audit_logs t"


def content(dsn: str, cutoff: str | None = None) -> tuple[Any, ...]:
    """(rows, sum of row-text hashes): equal for two tables holding the same values."""
    query = CONTENT + (" WHERE created_at < %(c)s" if cutoff else "")
    with psycopg.connect(dsn) as conn:
        row = conn.execute(query, {"c": cutoff}).fetchone()
    assert row is not None
    return tuple(row)


def run(ctx: Context, *, repeat: int = 1) -> PartResult:
    """Baseline load then restore, `repeat` times, each into a fresh empty copy of the table; the
    best time of each side counts (as in the archive part), the highest RSS counts."""
    part = PartResult("restore", TARGET_RATIO, rows=ctx.seeded.eligible)
    if not implemented("restore"):
        part.status, part.note = "skipped", "not implemented yet"
        return part
    assert ctx.archived is not None, "the restore part needs the archiver's archives"
    expected = content(ctx.dbs.dsn(ctx.seeded.template), ctx.seeded.cutoff_sql)
    for attempt in range(1, repeat + 1):
        base_dsn = ctx.fresh_copy(f"restore_baseline{attempt}", empty=True)
        baseline.checkpoint(base_dsn)
        seconds = baseline.load(base_dsn, ctx.exported())
        part.baseline_seconds = min(seconds, part.baseline_seconds or seconds)
        part.extra.setdefault("baseline_seconds_each", []).append(seconds)
        if content(base_dsn) != expected:
            part.fail("the baseline load does not match the original rows")
        ctx.dbs.drop(base_dsn)
        if not _restore_once(ctx, part, attempt, expected):
            break
    return part


def _restore_once(ctx: Context, part: PartResult, attempt: int, expected: tuple[Any, ...]) -> bool:
    assert ctx.archived is not None
    dsn = ctx.fresh_copy(f"restore{attempt}", empty=True)
    cfg = ctx.config(f"restore{attempt}", dsn, ctx.archived.bucket)
    baseline.checkpoint(dsn)
    run = measure([PYTHON, "-m", "restore.main", "--config", str(cfg), "--restore-all", "--database", DB_NAME,
                   "--table", "audit_logs", "--conflict-strategy", "skip"], log=ctx.work / f"restore{attempt}")
    part.tool_seconds = min(run.seconds, part.tool_seconds or run.seconds)
    part.peak_rss_mb = max(run.peak_rss_mb, part.peak_rss_mb or 0.0)
    part.extra.setdefault("tool_seconds_each", []).append(run.seconds)
    ok = run.returncode == 0
    if not ok:
        part.fail(f"restore exited {run.returncode}: {run.tail(3)}")
    elif (got := content(dsn)) != expected:
        part.fail(f"restored table differs from the original rows: {got[0]} rows vs {expected[0]}")
        ok = False
    ctx.dbs.drop(dsn)
    return ok
