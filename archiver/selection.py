"""The archiver's SQL over a table's expired rows (common.expiry): the keyset export and the deletes.
The same predicate serves the export, the dry-run count and the re-check at delete time, so a row
that stopped matching is never deleted unseen. Here it also leaves out rows that a NO ACTION or
RESTRICT foreign key still references (archiver/references.py): their delete would fail."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from psycopg import sql

from archiver.references import Reference
from common.pg.db import qualified
from common.epoch import day_numbers
from common.expiry import ExpiredRows
from common.pgtypes import Column, read_natively

#: A read or delete bound: (timestamp, key) of a row, or (a day's start, None). The key is the
#: value of a one-column key, or a tuple (list, after JSON) of a composite key's values in order.
Bound = tuple[Any, Any]
#: Rows' keys as one list of values per key column (archiver/encoding.py key_lists).
KeyLists = list[list[Any]]
_INTEGERS = ("int2", "int4", "int8")

@dataclass(frozen=True)
class Selection(ExpiredRows):
    """The archiver's statements over a table's expired rows: keyset export, range and key deletes."""

    #: The key columns, in keyset order (archiver/table_check.py resolve_key).
    keys: tuple[str, ...]
    #: Foreign keys (NO ACTION / RESTRICT) whose referenced rows stay in the table.
    references: tuple[Reference, ...] = field(default=())
    #: Read one leaf partition (schema, name) instead of the table: a partition retired whole
    #: (archiver/partitions.py). Objects keep the table's name either way.
    source: tuple[str, str] | None = None

    @property
    def relation(self) -> sql.Composed:
        return qualified(*self.source) if self.source else super().relation

    @property
    def pk(self) -> sql.Composable:
        """The key columns, comma-separated (inside a row value)."""
        return sql.SQL(", ").join(sql.Identifier(k) for k in self.keys)

    @property
    def composite(self) -> bool:
        return len(self.keys) > 1

    def key_values(self, key: Any) -> list[Any]:
        """A bound's key as one value per key column."""
        return list(key) if self.composite else [key]

    def predicate(self, *, literal: bool = False) -> tuple[sql.Composable, dict[str, Any]]:
        """The expiry predicate, and no row a foreign key still references. Every statement over
        it reads the table under its plain name, so the sub-selects name its columns qualified."""
        pred, params = super().predicate(literal=literal)
        if not self.references:
            return pred, params
        free = [sql.SQL("NOT ") + self._referenced(r) for r in self.references]
        return sql.SQL(" AND ").join([pred, *free]), params

    def kept_query(self) -> sql.Composed:
        """How many expired rows stay because a foreign key references them: the expiry predicate
        with the references' part negated (one statement per table run)."""
        pred, _ = super().predicate(literal=True)
        held = sql.SQL(" OR ").join(self._referenced(r) for r in self.references)
        return sql.SQL("SELECT count(*) FROM {rel} WHERE {pred} AND ({held})").format(rel=self.relation, pred=pred, held=held)

    def _referenced(self, ref: Reference) -> sql.Composed:
        """The row is referenced (by a row other than itself, when the table references itself)."""
        own = (ref.schema, ref.table) == (self.table.schema_, self.table.name)
        return ref.exists(self.relation, other_rows=own)

    def export_query(self, *, limit: int, lower: Bound | None, by_key: bool, all_text: bool,
                     upper: Any = None) -> tuple[sql.Composed, set[str]]:
        """SELECT of the next `limit` eligible rows from `lower` on: a day's start (ts, None), or a
        keyset position (ts, pk) to continue after; with `upper` (a day's start), only rows before
        it (archiver/reader.py: a window that ends on a day boundary holds whole days). Ordered by
        the timestamp alone (`by_key` False: the reader takes whole days, whose order inside does
        not matter; an index on the timestamp delivers that order without the sort that
        (timestamp, pk) costs, ~0.45 s of server CPU on the 2M-row bench), or by (timestamp, pk).
        xmin first, so the delete can tell a row updated since export. Values are inlined as
        literals (one self-contained statement for the ADBC reader). Also returns the columns read
        in binary form; the others are read as `::text` (common.pgtypes.read_natively)."""
        pred, _ = self.predicate(literal=True)
        if lower is not None:
            lo_ts, lo_pk = self._literals(lower)
            pred = sql.SQL("{} AND {ts} >= {lo_ts}").format(pred, ts=self.ts, lo_ts=lo_ts)
            if lo_pk is not None:
                pred = sql.SQL("{} AND ({ts}, {pk}) > ({lo_ts}, {lo_pk})").format(pred, ts=self.ts, pk=self.pk, lo_ts=lo_ts, lo_pk=lo_pk)
        if upper is not None:
            pred = sql.SQL("{} AND {ts} < {hi_ts}").format(pred, ts=self.ts, hi_ts=self._literals((upper, None))[0])
        native = set() if all_text else {c.name for c in self.schema.columns if read_natively(c)}
        cols = sql.SQL(", ").join(_read_as(c, native=c.name in native) for c in self.schema.columns)
        ordered = (self.table.timestamp_column, *self.keys) if by_key else (self.table.timestamp_column,)
        order = sql.SQL(", ").join(self._column(c) for c in ordered)
        query = sql.SQL("SELECT xmin, {cols} FROM {rel} WHERE {pred} ORDER BY {order} LIMIT {limit}").format(
            cols=cols, rel=self.relation, pred=pred, order=order, limit=sql.Literal(limit))
        return query, native

    def _column(self, name: str) -> sql.Composed:
        """A column qualified by its relation, for ORDER BY: PostgreSQL resolves a bare name there
        to an output column first, and a key read as `id::text` is output under the name `id`, so
        `ORDER BY id` sorted numeric keys as text ("100" < "2") while the keyset bounds and the
        range delete go by the column's own order (tests/test_key_order.py)."""
        return sql.SQL("{}.{}").format(self.relation, sql.Identifier(name))

    def _literals(self, bound: Bound) -> tuple[sql.Composable, sql.Composable | None]:
        """The bound's timestamp, and its key values comma-separated (None for a day's start)."""
        ts = sql.SQL("{}::{}").format(sql.Literal(bound[0]), sql.SQL(self.bound_type))  # type: ignore[arg-type]
        if bound[1] is None:
            return ts, None
        values = [sql.SQL("{}::{}").format(sql.Literal(v), sql.SQL(self.key_type(k)))  # type: ignore[arg-type]
                  for k, v in zip(self.keys, self.key_values(bound[1]), strict=True)]
        return ts, sql.SQL(", ").join(values)

    def key_type(self, column: str) -> str:
        """format_type() of a key column, from the catalog (not user input)."""
        return self.schema.column(column).pg_type

    def day_start(self, day: date) -> Any:
        """Midnight UTC of a day, as a value of the timestamp column's type."""
        return self._bound(datetime(day.year, day.month, day.day, tzinfo=timezone.utc))

    def day_of(self, value: Any) -> date | None:
        """The UTC day of a bound's timestamp; None for a resumed position (the checkpoint's text)."""
        return None if isinstance(value, str) else utc_day(self.time_of(value))

    def utc_days(self, column: pa.ChunkedArray) -> np.ndarray:
        """Days since the epoch (UTC) of the timestamp column's values (common.epoch.day_numbers)."""
        return day_numbers(column, self.table.timestamp_unit)

    @property
    def ts_type(self) -> str:
        return self.schema.column(self.table.timestamp_column).pg_type

    @property
    def bound_type(self) -> str:
        """The type read and delete bounds on the timestamp are cast to: the column's own, but for
        Unix time bigint or numeric, since the next day's start may lie past a smallint's, an
        integer's (2038) or a numeric(p,0)'s range. PostgreSQL compares integers of any width with
        the column's index, as a numeric does a numeric(p,0)."""
        if self.table.timestamp_unit is None:
            return self.ts_type
        return "numeric" if self.schema.column(self.table.timestamp_column).typname == "numeric" else "bigint"

    @property
    def range_delete_ok(self) -> bool:
        """Whether range_delete_query is exact for this table: its proof needs a predicate that
        depends on the row alone, and an operator's `where` may read other tables or the clock.
        So does the references' NOT EXISTS: a row referenced at export time (so not exported) whose
        reference is gone by the delete would match the range, and with an exported row deleted
        meanwhile the counts could agree over different rows. Key deletes stay exact: they list
        exported rows only, and re-check the references (a reference added since leaves its row
        out, or makes the DELETE fail: archiver/table_job.py)."""
        return self.table.where is None and not self.references

    def range_delete_query(self, lo: Bound, hi: Bound, xmins: pa.Array | pa.ChunkedArray) -> sql.Composed:
        """Delete the rows exported from ONE snapshot between two bounds, without listing their
        keys (a 40,000-key array costs PostgreSQL more than the delete itself: on the 2M-row bench
        2.6 s of server CPU against 0.9 s for ranges). A bound is a (timestamp, pk) key of the first
        or last row, inclusive, or (day start, None) for whole days: from `lo` on, before `hi`.

        The caller requires the deleted count to equal the exported count, and that makes it exact:
        a row deleted here has an xmin among the exported rows', so its transaction committed before
        the snapshot; the row version is still current, so it was visible in the snapshot, inside the
        range and matching the predicate, and therefore exported (the reader exports every such row
        of a range it hands out). Every deleted row was exported, so equal counts mean the same rows;
        a row updated since has a newer xmin and is left alone (the count then differs and the
        caller falls back to delete_query batch by batch)."""
        pred, _ = self.predicate(literal=True)
        (lo_ts, lo_pk), (hi_ts, hi_pk) = self._literals(lo), self._literals(hi)
        # The plain range on the timestamp lets an index on it drive the scan.
        parts: list[sql.Composable] = [sql.SQL("{} >= {}").format(self.ts, lo_ts)]
        if lo_pk is not None:
            parts.append(sql.SQL("({}, {}) >= ({}, {})").format(self.ts, self.pk, lo_ts, lo_pk))
        if hi_pk is None:
            parts.append(sql.SQL("{} < {}").format(self.ts, hi_ts))
        else:
            parts += [sql.SQL("{} <= {}").format(self.ts, hi_ts),
                      sql.SQL("({}, {}) <= ({}, {})").format(self.ts, self.pk, hi_ts, hi_pk)]
        parts += [self._xmin_check(xmins), pred]
        return sql.SQL("DELETE FROM {rel} WHERE {cond}").format(rel=self.relation, cond=sql.SQL(" AND ").join(parts))

    def delete_query(self, keys: KeyLists, xmins: pa.Array | pa.ChunkedArray | None) -> sql.Composed:
        """Delete exactly the exported rows that still match the predicate and, on the normal path,
        are still the row versions that were exported: a row updated after export has a new xmin,
        that of a transaction that committed after the export's snapshot, which therefore cannot
        be among the exported rows' xmins. So the distinct xmins suffice; no (pk, xmin) pairing,
        as long as all the rows come from one snapshot (one read window: archiver/reader.py).

        The keys go in as literals, not parameters: PostgreSQL hashes `= ANY` over a constant array
        (14+), and for integer keys the added range lets it walk one index range (measured on 5,000
        rows: 13-17 ms, vs 22-29 ms for a (pk, xmin) unnest join and 35+ ms for a generic plan).
        A composite key matches its row values against the unnest of one array per column."""
        return sql.SQL("DELETE FROM {rel} WHERE {cond}").format(rel=self.relation, cond=self._exported(keys, xmins))

    def unchanged_query(self, keys: KeyLists, xmins: pa.Array | pa.ChunkedArray) -> sql.Composed:
        """How many rows delete_query would delete, read instead: after a delete removed fewer,
        whether the rows changed since the export or something kept them (archiver/delete_guard.py)."""
        return sql.SQL("SELECT count(*) FROM {rel} WHERE {cond}").format(rel=self.relation, cond=self._exported(keys, xmins))

    def _exported(self, keys: KeyLists, xmins: pa.Array | pa.ChunkedArray | None) -> sql.Composed:
        pred, _ = self.predicate(literal=True)  # no parameters: a '%' in a key must stay a '%'
        parts: list[sql.Composable] = [self._key_match(keys)]
        if self.integer_pk and keys[0]:
            parts.append(sql.SQL("{pk} BETWEEN {lo} AND {hi}").format(pk=self.pk, lo=sql.Literal(min(keys[0])), hi=sql.Literal(max(keys[0]))))
        if xmins is not None:
            parts.append(self._xmin_check(xmins))
        parts.append(pred)
        return sql.SQL(" AND ").join(parts)

    @staticmethod
    def _xmin_check(xmins: pa.Array | pa.ChunkedArray) -> sql.Composable:
        """`xmin` among the exported rows' distinct xmins (uint32 from the reader)."""
        distinct = sorted(pc.unique(xmins).to_pylist())
        return sql.SQL("xmin = ANY({}::text[]::xid[])").format(sql.Literal("{" + ",".join(map(str, distinct)) + "}"))

    def _array(self, column: str, values: list[Any]) -> sql.Composable:
        """One key column's values as a typed array literal."""
        if self.schema.column(column).typname in _INTEGERS:
            # digits only: the array literal is built directly (psycopg's per-element quoting of a
            # 50,000-key list costs more than the DELETE itself)
            keys: sql.Composable = sql.Literal("{" + ",".join(map(str, values)) + "}")
        else:
            keys = sql.Literal(values)
        return sql.SQL("{}::{}[]").format(keys, sql.SQL(self.key_type(column)))  # type: ignore[arg-type]

    def _key_match(self, keys: KeyLists) -> sql.Composable:
        if not self.composite:
            return sql.SQL("{pk} = ANY({keys})").format(pk=self.pk, keys=self._array(self.keys[0], keys[0]))
        arrays = sql.SQL(", ").join(self._array(k, v) for k, v in zip(self.keys, keys, strict=True))
        return sql.SQL("({pk}) IN (SELECT * FROM unnest({arrays}))").format(pk=self.pk, arrays=arrays)

    def present_query(self, keys: KeyLists) -> sql.Composed:
        """How many of these keys are in the table (a resumed batch: archiver/ledger.py)."""
        return sql.SQL("SELECT count(*) FROM {rel} WHERE {keys}").format(rel=self.relation, keys=self._key_match(keys))

    @property
    def integer_pk(self) -> bool:
        """A one-column integer key: deletes add a BETWEEN that walks one index range."""
        return not self.composite and self.schema.column(self.keys[0]).typname in _INTEGERS


def _read_as(col: Column, *, native: bool) -> sql.Composable:
    """A column in the export's SELECT list: itself, a domain as its base type (the driver reads
    the base type's binary form), or its text form."""
    if not native:
        return sql.SQL("{}::text").format(sql.Identifier(col.name))
    if col.typtype == "d" and col.base_type:
        # format_type() of the base type, from the catalog (not user input); the name stays the column's
        return sql.SQL("{}::{} AS {}").format(sql.Identifier(col.name), sql.SQL(col.base_type),  # type: ignore[arg-type]
                                              sql.Identifier(col.name))
    return sql.Identifier(col.name)


def utc_day(value: Any) -> date:
    if isinstance(value, datetime):
        return (value.astimezone(timezone.utc) if value.tzinfo else value).date()
    return value  # type: ignore[no-any-return]
