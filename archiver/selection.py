"""The SQL that picks a table's expired rows. One predicate serves the export, the dry-run count,
and the re-check at delete time, so a row that stopped matching is never deleted unseen."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any

from psycopg import sql

from common.config import TableConfig
from common.db import qualified
from common.pgtypes import TableSchema

#: Rows older than this (or -infinity / BC) have no truthful day partition; they stay in the table
#: and the dry run reports them.
FLOOR = datetime(1, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class Selection:
    table: TableConfig
    schema: TableSchema
    cutoff: datetime  # aware UTC
    pk_type: str

    @property
    def relation(self) -> sql.Composed:
        return qualified(self.table.schema_, self.table.name)

    @property
    def ts(self) -> sql.Identifier:
        return sql.Identifier(self.table.timestamp_column)

    @property
    def pk(self) -> sql.Identifier:
        return sql.Identifier(self.table.primary_key)

    def _bound(self, value: datetime) -> Any:
        kind = self.schema.column(self.table.timestamp_column).typname
        if kind == "timestamptz":
            return value
        if kind == "date":
            return value.date()
        return value.replace(tzinfo=None)  # timestamp without time zone: values are read as UTC

    def predicate(self) -> tuple[sql.Composable, dict[str, Any]]:
        """Rows eligible now: older than the cutoff, not before year 1, and the optional `where`."""
        parts: list[sql.Composable] = [
            sql.SQL("{ts} < %(cutoff)s").format(ts=self.ts),
            sql.SQL("{ts} >= %(floor)s").format(ts=self.ts),
        ]
        if self.table.where:
            # `where` is operator-written SQL from the config file, kept in parentheses.
            parts.append(sql.SQL("(") + sql.SQL(self.table.where) + sql.SQL(")"))  # type: ignore[arg-type]
        return sql.SQL(" AND ").join(parts), {"cutoff": self._bound(self.cutoff), "floor": self._bound(FLOOR)}

    def export_query(self, *, limit: int, after: tuple[Any, Any] | None) -> tuple[sql.Composed, dict[str, Any]]:
        """COPY of the next `limit` eligible rows in (timestamp, pk) order, after a keyset position,
        with xmin first so the delete can tell a row updated since export."""
        pred, params = self.predicate()
        if after is not None:
            pred = sql.SQL("{} AND {ts} >= %(after_ts)s AND ({ts}, {pk}) > (%(after_ts)s, %(after_pk)s::{pkt})").format(
                pred, ts=self.ts, pk=self.pk, pkt=sql.SQL(self.pk_type))  # type: ignore[arg-type]
            params.update(after_ts=after[0], after_pk=after[1])
        cols = sql.SQL(", ").join(sql.Identifier(n) for n in self.schema.names)
        query = sql.SQL(
            "COPY (SELECT xmin, {cols} FROM {rel} WHERE {pred} ORDER BY {ts}, {pk} LIMIT {limit}) TO STDOUT (FORMAT csv)"
        ).format(cols=cols, rel=self.relation, pred=pred, ts=self.ts, pk=self.pk, limit=sql.Literal(limit))
        return query, params

    def delete_query(self, *, check_xmin: bool) -> sql.Composed:
        """Delete exactly the exported rows that still match the predicate and, on the normal path,
        are still the very row versions that were exported (same xmin): a row updated after export
        is not deleted unseen. The (pk, xmin) pairs are joined through unnest, not `= ANY` on both,
        which would compare every row with every xmin (quadratic)."""
        pred, _ = self.predicate()
        if check_xmin:
            return sql.SQL(
                "DELETE FROM {rel} AS t USING unnest(%(pks)s::{pkt}[], %(xmins)s::text[]) AS u(archiver_pk__, archiver_xmin__)"
                " WHERE t.{pk} = u.archiver_pk__ AND t.xmin = u.archiver_xmin__::xid AND {pred}"
            ).format(rel=self.relation, pk=self.pk, pkt=sql.SQL(self.pk_type), pred=pred)  # type: ignore[arg-type]
        return sql.SQL("DELETE FROM {rel} WHERE {pk} = ANY(%(pks)s::{pkt}[]) AND {pred}").format(
            rel=self.relation, pk=self.pk, pkt=sql.SQL(self.pk_type), pred=pred)  # type: ignore[arg-type]

    def count_query(self) -> tuple[sql.Composed, dict[str, Any]]:
        pred, params = self.predicate()
        q = sql.SQL("SELECT count(*), min({ts}), max({ts}) FROM {rel} WHERE {pred}").format(ts=self.ts, rel=self.relation, pred=pred)
        return q, params


def cutoff_for(retention_days: int, now: datetime) -> datetime:
    return now.astimezone(timezone.utc) - timedelta(days=retention_days)


def utc_day(value: Any) -> date:
    if isinstance(value, datetime):
        return (value.astimezone(timezone.utc) if value.tzinfo else value).date()
    return value  # type: ignore[no-any-return]
