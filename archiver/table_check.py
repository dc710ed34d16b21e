"""What the archiver checks in the catalog before it touches a table: the configured columns exist,
the timestamp column has a type the day layout can use, and the key identifies a row: the table's
primary key (any width), or the columns of a unique index whose columns are all NOT NULL."""
from __future__ import annotations

from typing import Any

import psycopg

from common.config import TableConfig
from common.db import table_oid, table_schema, unique_keys
from common.errors import UsageError
from common.pgtypes import TableSchema

#: timestamp_column types the archiver accepts (wizard/introspect.py offers the same).
SUPPORTED_TIMESTAMPS = {"timestamptz", "timestamp", "date"}


def inspect_table(conn: psycopg.Connection[Any], t: TableConfig) -> tuple[int, TableSchema, tuple[str, ...]]:
    """(oid, schema, key columns), or a UsageError naming what is missing."""
    oid = table_oid(conn, t.schema_, t.name)
    schema = table_schema(conn, oid)
    names = schema.names
    for what, col in (("timestamp_column", t.timestamp_column), *(("primary_key", c) for c in t.key_columns or ())):
        if col not in names:
            raise UsageError(f"{t.schema_}.{t.name}: {what} {col!r} is not a column of the table")
    ts = schema.column(t.timestamp_column)
    if ts.typname not in SUPPORTED_TIMESTAMPS:
        raise UsageError(f"{t.schema_}.{t.name}: timestamp_column {t.timestamp_column!r} is {ts.pg_type}, not a timestamp or date")
    return oid, schema, resolve_key(t, unique_keys(conn, oid))


def resolve_key(t: TableConfig, candidates: list[tuple[list[str], bool, bool]]) -> tuple[str, ...]:
    """The key the archiver uses: the configured columns when they are the primary key or a NOT
    NULL unique index (in any order: the configured order is the keyset order), else the primary
    key; a UsageError saying which keys the table has otherwise."""
    name = f"{t.schema_}.{t.name}"
    pk = next((cols for cols, primary, _ in candidates if primary), None)
    wanted = t.key_columns
    if wanted is None:
        if pk is None:
            usable = [cols for cols, _, notnull in candidates if notnull]
            hint = (f"; name the columns of one of its unique indexes in primary_key: {_listed(usable)}" if usable
                    else " and no unique index whose columns are all NOT NULL: it cannot be archived")
            raise UsageError(f"{name} has no primary key{hint}")
        return tuple(pk)
    for cols, primary, notnull in candidates:
        if set(cols) == set(wanted) and (primary or notnull):
            return wanted
    if any(set(cols) == set(wanted) for cols, _, _ in candidates):
        raise UsageError(f"{name}: primary_key ({', '.join(wanted)}) is a unique index with a nullable column;"
                         " a NULL would not identify its row")
    usable = [cols for cols, primary, notnull in candidates if primary or notnull]
    raise UsageError(f"{name}: primary_key ({', '.join(wanted)}) is neither the table's primary key nor a unique index"
                     f" whose columns are all NOT NULL (it has: {_listed(usable) or 'none'})")


def _listed(keys: list[list[str]]) -> str:
    return "; ".join(f"({', '.join(cols)})" for cols in keys)
