"""Which rows of a table have expired: one predicate for the archiver's export, its dry run, its
delete-time re-check, and the wizard's count, so they can never disagree."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, NamedTuple

from psycopg import sql

from common.config import TableConfig
from common.db import qualified
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
        kind = self.schema.column(self.table.timestamp_column).typname
        if kind == "timestamptz":
            return value
        if kind == "date":
            return value.date()
        return value.replace(tzinfo=None)  # timestamp without time zone: values are read as UTC

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
