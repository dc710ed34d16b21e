"""Issue 16: the query tool on the archiver's bucket against a plain `pyarrow.dataset` scan of all
objects (hive partitioning, S3 through pyarrow's own S3 filesystem), for two auditor questions:
every row of one day, and every action of one user across a year. Both sides are processes started
here, so both pay an interpreter's start-up; both must return the same number of rows."""
from __future__ import annotations

from datetime import date, timedelta

from bench.context import Context
from bench.env import AWS_ENV, DB_NAME, PYTHON, measure
from bench.report import PartResult

#: Not a target of the issue ("report both"): a yardstick the table prints beside the ratio.
TARGET_RATIO = 1.0
USER = 42

_SCAN = """
import sys
from datetime import datetime, timezone
import pyarrow as pa
import pyarrow.dataset as ds
from pyarrow import fs
endpoint, bucket, start, end, user = sys.argv[1:6]
s3 = fs.S3FileSystem(access_key="{key}", secret_key="{secret}", region="us-east-1",
                     endpoint_override=endpoint.split("://", 1)[1], scheme="http")
data = ds.dataset(f"{{bucket}}/{db}/public.audit_logs/", filesystem=s3, format="parquet", partitioning="hive")
ts, utc = ds.field("created_at"), pa.timestamp("us", tz="UTC")
day = lambda text: pa.scalar(datetime.fromisoformat(text).replace(tzinfo=timezone.utc), utc)
cond = (ts >= day(start)) & (ts < day(end))
if user != "-":
    cond = cond & (ds.field("user_id") == int(user))
print(data.to_table(filter=cond).num_rows)
""".format(key=AWS_ENV["AWS_ACCESS_KEY_ID"], secret=AWS_ENV["AWS_SECRET_ACCESS_KEY"], db=DB_NAME)


def _questions(ctx: Context) -> list[tuple[str, date, date, int | None]]:
    """(name, first day, last day, user or None): days on the seeded table's archived range."""
    last = date.fromisoformat(ctx.seeded.cutoff_sql[:10]) - timedelta(days=1)
    return [("one day", last - timedelta(days=30), last - timedelta(days=30), None),
            ("one user, a year", last - timedelta(days=364), last, USER)]


def run(ctx: Context) -> list[PartResult]:
    archived = ctx.archived
    assert archived is not None, "the query part needs the archiver's archives"
    parts: list[PartResult] = []
    for name, first, last, user in _questions(ctx):
        part = PartResult(f"query: {name}", TARGET_RATIO)
        scan = measure([PYTHON, "-c", _SCAN, ctx.endpoint, archived.bucket, first.isoformat(),
                        (last + timedelta(days=1)).isoformat(), str(user) if user is not None else "-"],
                       log=ctx.work / f"query-baseline-{len(parts)}")
        out = ctx.work / f"query-{len(parts)}.csv"
        tool = measure([PYTHON, "-m", "query.main", "--config", str(archived.config), "--database", DB_NAME,
                        "--table", "audit_logs", "--start-date", first.isoformat(), "--end-date", last.isoformat(),
                        *(["--where", f"user_id = {user}"] if user is not None else []),
                        "--output-format", "csv", "--output", str(out)], log=ctx.work / f"query-{len(parts)}")
        part.baseline_seconds, part.tool_seconds, part.peak_rss_mb = scan.seconds, tool.seconds, tool.peak_rss_mb
        if scan.returncode != 0 or tool.returncode != 0:
            part.fail(f"baseline exit {scan.returncode}: {scan.tail(2)}; query exit {tool.returncode}: {tool.tail(2)}")
        else:
            expected = int(scan.stdout.strip())
            got = sum(1 for _ in out.open(encoding="utf-8")) - 1  # less the header; no value spans lines here
            part.rows = got
            part.extra.update(baseline_rows=expected, baseline_peak_rss_mb=scan.peak_rss_mb)
            if got != expected:
                part.fail(f"query returned {got} rows, the plain scan {expected}")
        parts.append(part)
    return parts
