"""What the archiver checks in the catalog before it touches a table: the configured columns exist,
the timestamp column has a type the day layout can use, and the key is the table's primary key."""
from __future__ import annotations

from typing import Any

import psycopg

from common.config import TableConfig
from common.db import primary_key_columns, table_oid, table_schema
from common.errors import UsageError
from common.pgtypes import TableSchema

#: timestamp_column types the archiver accepts (wizard/introspect.py offers the same).
SUPPORTED_TIMESTAMPS = {"timestamptz", "timestamp", "date"}


def inspect_table(conn: psycopg.Connection[Any], t: TableConfig) -> tuple[int, TableSchema, str]:
    """(oid, schema, primary-key type), or a UsageError naming what is missing."""
    oid = table_oid(conn, t.schema_, t.name)
    schema = table_schema(conn, oid)
    names = schema.names
    for what, col in (("timestamp_column", t.timestamp_column), ("primary_key", t.primary_key)):
        if col not in names:
            raise UsageError(f"{t.schema_}.{t.name}: {what} {col!r} is not a column of the table")
    ts = schema.column(t.timestamp_column)
    if ts.typname not in SUPPORTED_TIMESTAMPS:
        raise UsageError(f"{t.schema_}.{t.name}: timestamp_column {t.timestamp_column!r} is {ts.pg_type}, not a timestamp or date")
    pk = primary_key_columns(conn, oid)
    if pk != [t.primary_key]:
        raise UsageError(f"{t.schema_}.{t.name}: primary_key {t.primary_key!r} is not the table's primary key ({', '.join(pk) or 'none'})")
    return oid, schema, schema.column(t.primary_key).pg_type
