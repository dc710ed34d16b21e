"""The table rows go back into: the live one, or a --target-table created from the archived schema
with its primary key. Also the archiver's per-table advisory lock, so an archiver run and a restore
never work on the same table at once."""
from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from common.pg.db import find_table_oid, primary_key_columns, qualified, table_schema, table_unlock, try_table_lock, unique_keys
from common.errors import ArchiverError, DataIntegrityError, UsageError
from common.pgtypes import TableSchema

# What format_type() prints: a (possibly schema-qualified, possibly quoted) name or a multi-word
# SQL type, an optional typmod, an optional time zone / interval field clause, array brackets.
# Checked because the type text comes from the archive and is spliced into CREATE TABLE.
_NAME = r'(?:[A-Za-z_][A-Za-z0-9_$]*|"(?:[^"]|"")+")'
_TYPE_RE = re.compile(
    rf"^{_NAME}(?:\.{_NAME})?(?: (?:varying|precision))?(?:\(\d+(?:,-?\d+)?\))?"
    r"(?: with(?:out)? time zone)?"
    r"(?: (?:year|month|day|hour|minute|second)(?: to (?:month|hour|minute|second(?:\(\d+\))?))?)?"
    r"(?:\[\])*$"
)


@dataclass(frozen=True)
class LiveTable:
    schema: str
    table: str
    oid: int
    columns: TableSchema
    primary_key: list[str]
    #: False when row-level security applies to this session: COPY FROM refuses such tables, the
    #: INSERT of the staging path applies their policies.
    copy_ok: bool = True

    @property
    def name(self) -> str:
        return f"{self.schema}.{self.table}"

    @property
    def relation(self) -> sql.Composed:
        return qualified(self.schema, self.table)


def find_table(conn: psycopg.Connection[Any], schema: str, table: str) -> LiveTable | None:
    oid = find_table_oid(conn, schema, table)
    if oid is None:
        return None
    rls = conn.execute("SELECT row_security_active(%s::oid::regclass)", (oid,)).fetchone()
    return LiveTable(schema, table, oid, table_schema(conn, oid), _conflict_key(conn, oid),
                     copy_ok=not (rls and rls[0]))


def _conflict_key(conn: psycopg.Connection[Any], oid: int) -> list[str]:
    """The columns that tell a restored row from a live one: the primary key (any width), or for a
    table without one a unique index whose columns are all NOT NULL, as the archiver accepts."""
    return primary_key_columns(conn, oid) or next((cols for cols, _, notnull in unique_keys(conn, oid) if notnull), [])


def require_table(conn: psycopg.Connection[Any], schema: str, table: str) -> LiveTable:
    live = find_table(conn, schema, table)
    if live is None:
        raise UsageError(f"table {schema}.{table} does not exist (use --target-table to restore into a new table)")
    if not live.primary_key:
        raise UsageError(f"table {schema}.{table} has no primary key (nor a unique index whose columns are all NOT NULL); restore needs one to detect conflicts")
    return live


def check_type(pg_type: str) -> str:
    if not _TYPE_RE.match(pg_type):
        raise DataIntegrityError(f"archived column type {pg_type!r} is not a type name; refusing to create a table from it")
    return pg_type


def create_table(conn: psycopg.Connection[Any], schema: str, table: str, archived: TableSchema,
                 primary_key: list[str]) -> LiveTable:
    """Create the table from the archived column types with the archived primary key. Generated and
    identity columns become plain columns holding the archived values (their definitions are not
    archived)."""
    missing = [c for c in primary_key if c not in archived.names]
    if not primary_key or missing:
        raise DataIntegrityError(f"cannot create {schema}.{table}: the archive names no usable primary key")
    cols = [sql.SQL("{} {}").format(sql.Identifier(c.name), sql.SQL(check_type(c.pg_type)))  # type: ignore[arg-type]
            for c in archived.columns]
    pk = sql.SQL(", ").join(sql.Identifier(c) for c in primary_key)
    conn.execute(sql.SQL("CREATE TABLE {} ({}, PRIMARY KEY ({}))").format(
        qualified(schema, table), sql.SQL(", ").join(cols), pk))
    return require_table(conn, schema, table)


@contextmanager
def table_lock(conn: psycopg.Connection[Any], live: LiveTable) -> Iterator[None]:
    """Hold the archiver's advisory lock on the table for the restore: an archiver run skips it
    meanwhile instead of archiving the rows being brought back."""
    # Session-level, so it does not commit anything: a `fail` run stays one transaction.
    if not try_table_lock(conn, live.oid):
        raise ArchiverError(f"{live.name} is being archived right now (the archiver's advisory lock is held); "
                            "wait for that run to finish or stop it, then restore")
    try:
        yield
    finally:
        table_unlock(conn, live.oid)
