"""Which rows of a table have expired: one predicate for the archiver's export, its dry run, its
delete-time re-check, and the wizard's count, so they can never disagree."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from psycopg import sql

from common.config import TableConfig
from common.db import qualified
from common.pgtypes import TableSchema

#: Rows older than this (or -infinity / BC) have no truthful day partition; they stay in the table
#: and the dry run reports them.
FLOOR = datetime(1, 1, 1, tzinfo=timezone.utc)


def cutoff_for(retention_days: int, now: datetime) -> datetime:
    return now.astimezone(timezone.utc) - timedelta(days=retention_days)


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
