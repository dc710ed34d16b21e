"""The SQL over a child's rows (archiver/family/members.py): the export of the rows that reference a batch's
parent rows, the row locks taken before a family's deletes, the deletes themselves (exactly the
exported rows, unchanged since the export, and none that a row of the next generation still
references), and the counts recovery and the dry run need. Values go in as typed literals (one
self-contained statement, as for the ADBC reader: archiver/selection.py)."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from psycopg import sql

from archiver.family.members import Child, Family
from archiver.references import Reference
from archiver.selection import _read_as
from common.pg.db import qualified
from common.pgtypes import TableSchema, read_natively

_INTEGERS = ("int2", "int4", "int8")
#: One list of values per column.
Values = list[list[Any]]


def text_of(value: Any) -> Any:
    """A value as PostgreSQL reads it back from its text: ISO times, hex bytea, the rest as str."""
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "\\x" + bytes(value).hex()
    return value if isinstance(value, (int, str)) or value is None else str(value)


def typed_array(schema: TableSchema, column: str, values: list[Any]) -> sql.Composable:
    """A column's values as an array literal of its type (format_type() from the catalog)."""
    col = schema.column(column)
    if col.typname in _INTEGERS:
        body: sql.Composable = sql.Literal("{" + ",".join(str(int(v)) for v in values) + "}")
    else:
        body = sql.Literal([text_of(v) for v in values])
    return sql.SQL("{}::{}[]").format(body, sql.SQL(col.pg_type))  # type: ignore[arg-type]


def match(columns: tuple[str, ...], schema: TableSchema, values: Values, *, alias: sql.Composable | None = None) -> sql.Composable:
    """The row's `columns` are one of the value tuples (typed by `schema`, the table they come from)."""
    cols = [sql.Identifier(c) if alias is None else sql.SQL("{}.{}").format(alias, sql.Identifier(c)) for c in columns]
    if len(columns) == 1:
        return sql.SQL("{} = ANY({})").format(cols[0], typed_array(schema, columns[0], values[0]))
    arrays = sql.SQL(", ").join(typed_array(schema, c, v) for c, v in zip(columns, values, strict=True))
    return sql.SQL("({}) IN (SELECT * FROM unnest({}))").format(sql.SQL(", ").join(cols), arrays)


def xmin_check(xmins: pa.Array | pa.ChunkedArray) -> sql.Composable:
    distinct = sorted(pc.unique(xmins).to_pylist())
    return sql.SQL("xmin = ANY({}::text[]::xid[])").format(sql.Literal("{" + ",".join(map(str, distinct)) + "}"))


def present_values(values: Values) -> Values:
    """Value tuples without a NULL (MATCH SIMPLE: a row with a NULL references nothing), distinct."""
    rows = sorted({tuple(r) for r in zip(*values) if None not in r}, key=repr) if values else []
    return [list(col) for col in zip(*rows)] if rows else [[] for _ in values]


@dataclass(frozen=True)
class ChildRelation:
    child: Child
    parent_schema: TableSchema  # the columns of the parent, for the referenced values' types

    @property
    def rel(self) -> sql.Composed:
        return qualified(self.child.schema, self.child.table)

    def export_query(self, parent_values: Values, *, all_text: bool) -> tuple[sql.Composed, set[str]]:
        """Every row referencing one of the parent rows (their referenced columns' values), xmin
        first, in key order."""
        schema = self.child.columns
        native = set() if all_text else {c.name for c in schema.columns if read_natively(c)}
        cols = sql.SQL(", ").join(_read_as(c, native=c.name in native) for c in schema.columns)
        cond = self._references(parent_values)
        order = sql.SQL(", ").join(sql.SQL("{}.{}").format(self.rel, sql.Identifier(k)) for k in self.child.keys)
        return sql.SQL("SELECT xmin, {cols} FROM {rel} WHERE {cond} ORDER BY {order}").format(
            cols=cols, rel=self.rel, cond=cond, order=order), native

    def _references(self, parent_values: Values) -> sql.Composable:
        ref = self.child.ref
        # The parent's types: every referenced value fits them (the child's column may be narrower
        # than the key it references only where the values fit it too).
        cols = ref.columns
        arrays = [typed_array(self.parent_schema, r, v) for r, v in zip(ref.referenced, parent_values, strict=True)]
        if len(cols) == 1:
            return sql.SQL("{} = ANY({})").format(sql.Identifier(cols[0]), arrays[0])
        return sql.SQL("({}) IN (SELECT * FROM unnest({}))").format(
            sql.SQL(", ").join(sql.Identifier(c) for c in cols), sql.SQL(", ").join(arrays))

    def key_match(self, keys: Values) -> sql.Composable:
        return match(self.child.keys, self.child.columns, keys)

    def lock_query(self, keys: Values) -> sql.Composed:
        """Lock the exported rows: from here on no row of the next generation can come to reference
        them (its foreign key check waits for the lock, and fails once they are deleted)."""
        return sql.SQL("SELECT 1 FROM {} WHERE {} FOR UPDATE").format(self.rel, self.key_match(keys))

    def delete_query(self, keys: Values, xmins: pa.Array | pa.ChunkedArray, guards: tuple[Reference, ...]) -> sql.Composed:
        """Delete exactly the exported rows still as exported, and none a row of the next
        generation references (it was not exported: deleting its parent would cascade to it, or
        fail): the counts then differ and the family's move is taken back."""
        parts: list[sql.Composable] = [self.key_match(keys), xmin_check(xmins)]
        parts += [sql.SQL("NOT ") + g.exists(self.rel) for g in guards]
        return sql.SQL("DELETE FROM {} WHERE {}").format(self.rel, sql.SQL(" AND ").join(parts))

    def present_query(self, keys: Values) -> sql.Composed:
        return sql.SQL("SELECT count(*) FROM {} WHERE {}").format(self.rel, self.key_match(keys))


def moving_query(family: Family, child: Child, root: sql.Composable, expired: sql.Composable) -> sql.Composed:
    """How many rows of the child reference (through its ancestors) an expired row of the archived
    table: the dry run's count. `root` is the archived table's relation, `expired` its rows'
    predicate (unqualified columns: it is evaluated in the innermost sub-select, FROM the table)."""
    chain: list[Child] = [child]
    while chain[-1].parent != (family.schema, family.table):
        chain.append(next(c for c in family.children if (c.schema, c.table) == chain[-1].parent))
    cond: sql.Composable = expired
    inner_rel: sql.Composable = root
    for i in range(len(chain) - 1, -1, -1):
        c = chain[i]
        outer = sql.Identifier(f"g{i}")
        link = sql.SQL(" AND ").join(sql.SQL("{}.{} = {}.{}").format(inner_rel if i == len(chain) - 1 else sql.Identifier(f"g{i + 1}"),
                                                                     sql.Identifier(r), outer, sql.Identifier(col))
                                     for col, r in zip(c.ref.columns, c.ref.referenced))
        source = root if i == len(chain) - 1 else sql.SQL("{} AS {}").format(
            qualified(chain[i + 1].schema, chain[i + 1].table), sql.Identifier(f"g{i + 1}"))
        cond = sql.SQL("EXISTS (SELECT 1 FROM {} WHERE {} AND {})").format(source, link, cond)
    return sql.SQL("SELECT count(*) FROM {} AS {} WHERE {}").format(qualified(child.schema, child.table),
                                                                  sql.Identifier("g0"), cond)


def unchanged_query(rel: ChildRelation, keys: Values, xmins: pa.Array | pa.ChunkedArray) -> sql.Composed:
    """How many of the exported rows are still as exported (after a rolled-back move)."""
    return sql.SQL("SELECT count(*) FROM {} WHERE {} AND {}").format(rel.rel, rel.key_match(keys), xmin_check(xmins))


def referencing_query(child: Child, parent: sql.Composable, parent_keys: sql.Composable) -> sql.Composed:
    """How many rows of the child reference the exported rows of its parent (`parent_keys`: their
    key match, on the parent's relation `parent`, aliased p)."""
    link = sql.SQL(" AND ").join(sql.SQL("p.{} = g.{}").format(sql.Identifier(r), sql.Identifier(c))
                                 for c, r in zip(child.ref.columns, child.ref.referenced))
    return sql.SQL("SELECT count(*) FROM {} AS g WHERE EXISTS (SELECT 1 FROM {} AS p WHERE {} AND {})").format(
        qualified(child.schema, child.table), parent, link, parent_keys)
