"""Issue 15: the same rows in a monthly-partitioned audit_logs (primary key (id, created_at), a
default partition), archived with `expired_partitions: drop`: the wholly expired months are archived
in full, detached and dropped instead of deleted row by row; only the month straddling the cutoff
goes row by row. Timed against the archive part's shell baseline of the same run (target <= 0.6x),
with WAL, dead tuples and server CPU (bench/pgstats.py) next to those of the plain table's row
deletes and of the baseline."""
from __future__ import annotations

import psycopg

from bench.context import Context
from bench.part_archive import keep_least, verify
from bench.report import PartResult

TARGET_RATIO = 0.6
OPTIONS = {"primary_key": ["id", "created_at"], "expired_partitions": "drop"}
_LEAVES = "SELECT count(*) FROM pg_partition_tree('audit_logs') WHERE isleaf"


def leaves(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(_LEAVES).fetchone()
    return int(row[0]) if row else 0


def run(ctx: Context, *, baseline: PartResult, repeat: int) -> PartResult:
    """`repeat` archiver runs on fresh copies of the partitioned template; the best time counts."""
    part = PartResult("archive (drop leaves)", TARGET_RATIO, rows=ctx.seeded.eligible)
    part.baseline_seconds, part.baseline_stages = baseline.baseline_seconds, dict(baseline.baseline_stages)
    if ctx.partitioned is None:
        ctx.partitioned = ctx.dbs.partitioned(ctx.seeded)
        part.extra["partitioned_seed_seconds"] = ctx.partitioned.seconds
    before = leaves(ctx.dbs.dsn(ctx.partitioned.template))
    part.extra["leaves"] = before
    for attempt in range(1, repeat + 1):
        dsn = ctx.fresh_copy(f"partitioned{attempt}", seeded=ctx.partitioned)
        archived = ctx.run_archiver(dsn, bucket=ctx.bucket(f"partitioned{attempt}"), name=f"archiver-partitioned{attempt}",
                                    table_options=OPTIONS, probe=True)
        verify(ctx, archived, part)
        dropped = before - leaves(dsn)
        part.extra["leaves_dropped"] = dropped
        if archived.run.returncode == 0 and dropped < 1:
            part.fail("expired_partitions: drop dropped no partition")
        keep_least(part, "archiver_drop", archived.server)
        part.extra.setdefault("archiver_seconds_each", []).append(archived.run.seconds)
        part.peak_rss_mb = max(part.peak_rss_mb or 0.0, archived.run.peak_rss_mb)
        if part.tool_seconds is None or archived.run.seconds < part.tool_seconds:
            part.tool_seconds = archived.run.seconds
        ctx.dbs.drop(dsn)
    return part
