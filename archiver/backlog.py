"""How far behind archival is (issue 18): the expired rows a table still holds after its run, and
the age of the oldest, for the archiver_backlog_* gauges. Kept cheap, because a gauge must never
cost a scan of a huge table:

- a run that completed with no row kept or rolled back moved every expired row it could see: the
  backlog is 0 with no query at all;
- a completed run that kept referenced rows already counted them (archiver_rows_kept_referenced):
  that count is the backlog, and the oldest is one min() over the expired rows;
- otherwise (stopped early, batches rolled back) the rows are the planner's estimate (EXPLAIN: no
  scan) unless monitoring.backlog_exact_count asks for count(*), and the oldest is one min(): the
  reader exports in timestamp order, so with the index on the timestamp column the archiver
  relies on it is the next row the reader would have read."""
from __future__ import annotations

import json
import logging
from datetime import date, datetime, timezone
from typing import Any

import psycopg
from psycopg import sql

from archiver.ops.events import TableResult
from common.errors import first_line
from common.expiry import ExpiredRows

log = logging.getLogger("archiver")


def measure_backlog(conn: psycopg.Connection[Any], expired: ExpiredRows, result: TableResult, *, now: datetime,
                    exact: bool, log_extra: dict[str, Any] | None = None) -> None:
    """Fill result.backlog_rows / backlog_oldest_seconds (left None if the database refuses: a
    gauge must never fail the table)."""
    if result.status == "completed" and not result.kept_referenced and not result.rolled_back_batches:
        result.backlog_rows, result.backlog_oldest_seconds = 0, 0.0
        return
    # The plain expiry predicate: rows kept because referenced are expired rows still in the table.
    pred, _ = ExpiredRows.predicate(expired, literal=True)
    try:
        if result.status == "completed" and not result.rolled_back_batches:
            rows = result.kept_referenced
        else:
            rows = _count(conn, expired, pred) if exact else _estimate(conn, expired, pred)
        oldest = conn.execute(sql.SQL("SELECT min({ts}) FROM {rel} WHERE {pred}").format(
            ts=expired.ts, rel=expired.relation, pred=pred).as_bytes(conn), prepare=False).fetchone()
        conn.commit()
    except psycopg.Error as exc:
        conn.rollback()
        log.warning("cannot measure the backlog: %s", first_line(exc), extra=log_extra or {})
        return
    result.backlog_rows = rows
    result.backlog_oldest_seconds = _age(expired.time_of(oldest[0]) if oldest else None, now)


def _count(conn: psycopg.Connection[Any], expired: ExpiredRows, pred: sql.Composable) -> int:
    row = conn.execute(sql.SQL("SELECT count(*) FROM {rel} WHERE {pred}").format(
        rel=expired.relation, pred=pred).as_bytes(conn), prepare=False).fetchone()
    return int(row[0]) if row else 0


def _estimate(conn: psycopg.Connection[Any], expired: ExpiredRows, pred: sql.Composable) -> int:
    """The planner's row estimate for the expired rows: statistics only, nothing is read."""
    row = conn.execute(sql.SQL("EXPLAIN (FORMAT JSON) SELECT 1 FROM {rel} WHERE {pred}").format(
        rel=expired.relation, pred=pred).as_bytes(conn), prepare=False).fetchone()
    plan = row[0] if row else [{}]
    plan = json.loads(plan) if isinstance(plan, str) else plan
    return int(plan[0].get("Plan", {}).get("Plan Rows", 0))


def _age(oldest: Any, now: datetime) -> float:
    """Seconds from the oldest expired row's time (ExpiredRows.time_of: Unix time converted) to
    `now` (the database's clock); 0 for none."""
    if oldest is None:
        return 0.0
    if isinstance(oldest, datetime):
        # timestamp without time zone holds UTC (common/expiry.py)
        when = oldest if oldest.tzinfo else oldest.replace(tzinfo=timezone.utc)
    elif isinstance(oldest, date):
        when = datetime(oldest.year, oldest.month, oldest.day, tzinfo=timezone.utc)
    else:
        return 0.0
    return max(0.0, (now - when).total_seconds())
