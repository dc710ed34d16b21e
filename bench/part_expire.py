"""Issue 29: `python -m expire.main` on a copy of the archiver's bucket against a plain boto3
script on another copy: list the table's objects and DeleteObjects (1,000 keys a request) those
whose day partition lies before the cutoff. Both sides delete the same objects (checked), both
start from byte-identical archives (copied untimed from the archive part's last bucket)."""
from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import psycopg

from bench.context import Context
from bench.env import DB_NAME, PYTHON, implemented, list_keys, measure
from bench.report import PartResult
from common.archive import layout

#: The issue sets none: `report.py` prints the ratio without a verdict for it.
TARGET_RATIO = None
#: Past the archive part's 90-day retention and well inside the seeded 400 days: ~80% of the
#: archived day objects are due, the rest stay (so "exactly the not-due objects remain" is checked).
ARCHIVE_RETENTION_DAYS = 150
DELETE_BATCH = 1000  # DeleteObjects' limit
TABLE_PREFIX = layout.table_prefix("", DB_NAME, "public", "audit_logs")

# expire.main as `python -m` runs it, plus the S3 requests the process sent (counted by the
# clients common/archive/s3client.py builds) written to a file at exit: its metrics textfile has
# no request counter. atexit runs after the SystemExit the CLI ends with.
_COUNTED = """
import atexit, json, runpy, sys
from common.archive import s3client
out = sys.argv.pop(1)
atexit.register(lambda: open(out, "w").write(json.dumps(s3client.s3_requests())))
sys.argv[0] = "expire.main"
runpy.run_module("expire.main", run_name="__main__", alter_sys=True)
"""


def cutoff(dsn: str, days: int = ARCHIVE_RETENTION_DAYS) -> datetime:
    """The cutoff expire computes: the database's clock less the archive retention."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT now() - make_interval(days => %s)", (days,)).fetchone()
    assert row is not None
    # UTC: the day partitions are UTC days, whatever the session's TimeZone
    return row[0].astimezone(timezone.utc)  # type: ignore[no-any-return]


def day_of(key: str) -> date | None:
    """The day partition of a data key (year=/month=/day=), None for anything else."""
    parsed = layout.parse_key("", key)
    return parsed.day if parsed is not None else None


def copy_bucket(client: Any, source: str, target: str) -> int:
    """Every object of `source` (data, control records, digests) into a new bucket `target`,
    server-side, 8 at a time; untimed. Returns the number of objects."""
    client.create_bucket(Bucket=target)
    keys = [k for k, _ in list_keys(client, source)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: client.copy_object(Bucket=target, Key=k, CopySource={"Bucket": source, "Key": k}), keys))
    return len(keys)


def copy_timed(part: PartResult, client: Any, source: str, target: str) -> int:
    """copy_bucket, its seconds kept in part.extra["copy_seconds_each"] (the part's overhead)."""
    started = time.monotonic()
    copied = copy_bucket(client, source, target)
    part.extra.setdefault("copy_seconds_each", []).append(round(time.monotonic() - started, 2))
    return copied


def drop_bucket(client: Any, bucket: str) -> None:
    """Empty and delete a bucket: moto keeps every object in memory."""
    keys = [k for k, _ in list_keys(client, bucket)]
    for i in range(0, len(keys), DELETE_BATCH):
        client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[i:i + DELETE_BATCH]],
                                                     "Quiet": True})
    client.delete_bucket(Bucket=bucket)


def baseline_expire(client: Any, bucket: str, before: date) -> tuple[float, list[str], int]:
    """The plain script: list the table's objects, DeleteObjects those of a day before `before`
    in batches of 1,000. (seconds, deleted keys, requests)."""
    started = time.monotonic()
    requests = 0
    due: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=TABLE_PREFIX):
        requests += 1
        due.extend(o["Key"] for o in page.get("Contents", []) if (d := day_of(o["Key"])) is not None and d < before)
    for i in range(0, len(due), DELETE_BATCH):
        done = client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in due[i:i + DELETE_BATCH]],
                                                            "Quiet": True})
        requests += 1
        if done.get("Errors"):
            raise RuntimeError(f"DeleteObjects refused {len(done['Errors'])} keys: {done['Errors'][0]}")
    return time.monotonic() - started, due, requests


def data_keys(client: Any, bucket: str) -> set[str]:
    return {k for k, _ in list_keys(client, bucket, TABLE_PREFIX) if day_of(k) is not None}


def run(ctx: Context, *, repeat: int = 1) -> PartResult:
    """Baseline then expire, `repeat` times, each on a fresh copy of the archive; the best time of
    each side counts, the highest RSS counts."""
    part = PartResult("expire", TARGET_RATIO)
    if not implemented("expire"):
        part.status, part.note = "skipped", "not implemented yet"
        return part
    archived = ctx.archived
    assert archived is not None, "the expire part needs the archiver's archives"
    started = time.monotonic()
    stored = data_keys(ctx.client, archived.bucket)
    part.extra.update(archive_retention_days=ARCHIVE_RETENTION_DAYS, objects_before=len(stored))
    for attempt in range(1, repeat + 1):
        before = cutoff(archived.dsn).date()
        # The objects whose whole day lies before the cutoff day; expire must pick exactly these
        # (its rule is the newest row < cutoff: the cutoff's own day is never due unless the run
        # falls in the last minutes of a UTC day).
        expected = {k for k in stored if (d := day_of(k)) is not None and d < before}
        part.extra.update(due=len(expected), remaining=len(stored) - len(expected))
        if not _baseline_once(ctx, part, attempt, before, expected, len(stored)) or \
                not _expire_once(ctx, part, attempt, expected, len(stored)):
            break
    # Whether the part fits the default run (README): copies, checks and validate included.
    part.extra["part_seconds"] = round(time.monotonic() - started, 1)
    return part


def _baseline_once(ctx: Context, part: PartResult, attempt: int, before: date, expected: set[str],
                   stored: int) -> bool:
    assert ctx.archived is not None
    bucket = f"expire-baseline{attempt}"
    part.extra["copied_objects"] = copy_timed(part, ctx.client, ctx.archived.bucket, bucket)
    seconds, deleted, requests = baseline_expire(ctx.client, bucket, before)
    part.baseline_seconds = min(seconds, part.baseline_seconds or seconds)
    part.extra.setdefault("baseline_seconds_each", []).append(seconds)
    part.extra.update(baseline_requests=requests)
    left = len(data_keys(ctx.client, bucket))
    drop_bucket(ctx.client, bucket)
    if set(deleted) != expected or left != stored - len(expected):
        part.fail(f"the baseline deleted {len(deleted)} objects ({len(set(deleted) ^ expected)} not the due ones), "
                  f"{left} left, expected {stored - len(expected)}")
        return False
    return True


def _expire_once(ctx: Context, part: PartResult, attempt: int, expected: set[str], stored: int) -> bool:
    assert ctx.archived is not None
    bucket = f"expire{attempt}"
    copy_timed(part, ctx.client, ctx.archived.bucket, bucket)
    cfg = ctx.config(f"expire{attempt}", ctx.archived.dsn, bucket,
                     table_options={"archive_retention_days": ARCHIVE_RETENTION_DAYS})
    counted = ctx.work / f"expire{attempt}.requests.json"
    run = measure([PYTHON, "-c", _COUNTED, str(counted), "--config", str(cfg), "--output-format", "json"],
                  log=ctx.work / f"expire{attempt}")
    part.tool_seconds = min(run.seconds, part.tool_seconds or run.seconds)
    part.peak_rss_mb = max(run.peak_rss_mb, part.peak_rss_mb or 0.0)
    part.extra.setdefault("tool_seconds_each", []).append(run.seconds)
    ok = run.returncode == 0 and _check_expired(part, run.stdout, expected, counted)
    if run.returncode != 0:
        part.fail(f"expire exited {run.returncode}: {run.tail(3)}")
    if ok:
        # validate once (the attempts are identical): it costs about as much as the expiry
        ok = _check_after(ctx, part, cfg, bucket, stored - len(expected), validate=attempt == 1)
    drop_bucket(ctx.client, bucket)
    return ok


def _check_expired(part: PartResult, stdout: str, expected: set[str], counted: Path) -> bool:
    """expire's JSON names exactly the expected objects, deleted them all, and failed none."""
    try:
        table = json.loads(stdout)["tables"][0]
    except (json.JSONDecodeError, KeyError, IndexError):
        part.fail("expire --output-format json did not print one table's document")
        return False
    got = {x["key"] for x in table.get("expired", [])}
    part.rows = int(table.get("rows_expired") or 0)
    part.extra.update(rows_expired=part.rows, bytes_expired=table.get("bytes_expired"))
    if counted.exists():
        requests: dict[str, int] = json.loads(counted.read_text())
        part.extra.update(s3_requests=requests, s3_requests_per_object=
                          round(sum(requests.values()) / len(got), 2) if got else None, objects=len(got))
    if got != expected or table.get("deleted") != len(expected) or table.get("failed"):
        part.fail(f"expire expired {len(got)} objects ({len(got ^ expected)} not the due ones), deleted "
                  f"{table.get('deleted')}, failed {table.get('failed')}; expected {len(expected)}")
        return False
    return True


def _check_after(ctx: Context, part: PartResult, cfg: Path, bucket: str, remaining: int, *, validate: bool) -> bool:
    """Exactly the not-due objects remain, and validate finds no problem in what is left."""
    left = len(data_keys(ctx.client, bucket))
    if left != remaining:
        part.fail(f"{left} data objects left after expire, expected {remaining}")
        return False
    if not validate:
        return True
    check = measure([PYTHON, "-m", "validate.main", "--config", str(cfg), "--output-format", "json"],
                    log=ctx.work / f"{cfg.stem}-validate")
    try:
        doc = json.loads(check.stdout)
    except json.JSONDecodeError:
        doc = {}
    if check.returncode != 0 or not doc.get("ok") or doc.get("problems"):
        part.fail(f"validate after expire: exit {check.returncode}, problems {doc.get('problems') or check.tail(3)}")
        return False
    rows = doc.get("summary", {}).get("rows")
    part.extra.update(validate_after_seconds=round(check.seconds, 2), validate_after_rows=rows)
    if rows != ctx.seeded.eligible - part.rows:  # the archived rows less the expired ones
        part.fail(f"validate counts {rows} archived rows after expire, expected {ctx.seeded.eligible - part.rows}")
        return False
    return True
