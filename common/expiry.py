"""Which rows of a table have expired: one predicate for the archiver's export, its dry run, its
delete-time re-check, and the wizard's count, so they can never disagree."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, NamedTuple

from psycopg import sql

from common.config import TableConfig
from common.pg.db import qualified
from common.epoch import from_epoch, to_epoch
from common.pgtypes import TableSchema

#: Rows older than this (or -infinity / BC) have no truthful day partition; they stay in the table
#: and the dry run reports them.
FLOOR = datetime(1, 1, 1, tzinfo=timezone.utc)


#: A host clock further than this from the database's is logged (NTP keeps them within milliseconds).
SKEW_WARN_SECONDS = 5.0


def cutoff_for(retention_days: int, now: datetime) -> datetime:
    return now.astimezone(timezone.utc) - timedelta(days=retention_days)


class ClockReading(NamedTuple):
    now: datetime  #: the database's clock, aware UTC
    skew_seconds: float  #: this host's clock minus the database's (positive: the host runs fast)


def database_now(conn: Any, *, host_now: datetime | None = None, log: logging.Logger | None = None,
                 extra: dict[str, Any] | None = None) -> ClockReading:
    """The instant cutoffs are taken from: the database's clock, not this host's (a host running a
    day fast would otherwise archive rows a day early). `host_now` is this host's clock (tests
    inject one); a skew over SKEW_WARN_SECONDS is logged. clock_timestamp(), not now(): now() is
    the start of a transaction the caller may have opened long ago. The caller ends the transaction."""
    row = conn.execute("SELECT clock_timestamp()").fetchone()
    db_now = row[0].astimezone(timezone.utc)
    host = (host_now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    skew = (host - db_now).total_seconds()
    if abs(skew) > SKEW_WARN_SECONDS:
        (log or logging.getLogger("archiver")).warning(
            "clock skew: this host's clock is %.1fs %s the database's; cutoffs follow the database's clock",
            abs(skew), "ahead of" if skew > 0 else "behind", extra=extra or {})
    return ClockReading(db_now, skew)


@dataclass(frozen=True)
class ExpiredRows:
    table: TableConfig
    schema: TableSchema
    cutoff: datetime  # aware UTC

    @property
    def relation(self) -> sql.Composed:
        return qualified(self.table.schema_, self.table.name)

    @property
    def ts(self) -> sql.Identifier:
        return sql.Identifier(self.table.timestamp_column)

    def _bound(self, value: datetime) -> Any:
        """An instant as a value of the timestamp column's type, to compare the column with as it
        is (never the column converted: its index would go unused). An integer column of Unix time
        gets the first whole unit at or after the instant (common.epoch.to_epoch), so `ts < bound`
        holds exactly for the rows before it."""
        if self.table.timestamp_unit is not None:
            return to_epoch(value, self.table.timestamp_unit)
        kind = self.schema.column(self.table.timestamp_column).typname
        if kind == "timestamptz":
            return value
        if kind == "date":
            return value.date()
        return value.replace(tzinfo=None)  # timestamp without time zone: values are read as UTC

    def time_of(self, value: Any) -> Any:
        """A value of the timestamp column as the time it stands for: an integer column's as an
        aware UTC datetime, a timestamp's or a date's as it is (None stays None)."""
        unit = self.table.timestamp_unit
        return value if unit is None or value is None else from_epoch(value, unit)

    def predicate(self, *, literal: bool = False) -> tuple[sql.Composable, dict[str, Any]]:
        """Rows eligible now: older than the cutoff, not before year 1, and the optional `where`.
        With literal, the bounds are inlined (for statements that carry no parameters)."""
        bounds = {"cutoff": self._bound(self.cutoff), "floor": self._bound(FLOOR)}
        cutoff: sql.Composable = sql.Literal(bounds["cutoff"]) if literal else sql.Placeholder("cutoff")
        floor: sql.Composable = sql.Literal(bounds["floor"]) if literal else sql.Placeholder("floor")
        parts: list[sql.Composable] = [
            sql.SQL("{ts} < {cutoff}").format(ts=self.ts, cutoff=cutoff),
            sql.SQL("{ts} >= {floor}").format(ts=self.ts, floor=floor),
        ]
        if self.table.where:
            # `where` is operator-written SQL from the config file, kept in parentheses.
            # In a statement with parameters a literal '%' (e.g. LIKE '%@example.com') must be doubled.
            where = self.table.where if literal else self.table.where.replace("%", "%%")
            parts.append(sql.SQL("(") + sql.SQL(where) + sql.SQL(")"))  # type: ignore[arg-type]
        return sql.SQL(" AND ").join(parts), ({} if literal else bounds)

    def count_query(self) -> tuple[sql.Composed, dict[str, Any]]:
        """count, min and max timestamp of the expired rows (dry run, wizard)."""
        pred, params = self.predicate()
        q = sql.SQL("SELECT count(*), min({ts}), max({ts}) FROM {rel} WHERE {pred}").format(ts=self.ts, rel=self.relation, pred=pred)
        return q, params


def count_untimed(conn: Any, rows: ExpiredRows) -> int:
    """Rows whose timestamp column is NULL: they have no time, so they never expire and stay in the
    table (the dry run and the run's summary say how many: untimed_message). No count at all for a
    NOT NULL column; otherwise `IS NULL`, which the column's index answers."""
    ts = rows.table.timestamp_column
    row = conn.execute("SELECT NOT attnotnull FROM pg_attribute WHERE attrelid = %s::regclass AND attname = %s",
                       (rows.relation.as_string(conn), ts)).fetchone()
    if not (row and row[0]):
        return 0
    found = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE {} IS NULL").format(rows.relation, rows.ts)).fetchone()
    return int(found[0]) if found else 0


def untimed_message(count: int, column: str) -> str:
    if count == 1:
        return f"1 row has no {column} and stays in the table"
    return f"{count} rows have no {column} and stay in the table"
