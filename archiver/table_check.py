"""What the archiver checks in the catalog before it touches a table: the configured columns exist,
the timestamp column has a type the day layout can use (an integer one with the unit of its Unix
time), and the key identifies a row: the table's primary key (any width), or the columns of a
unique index whose columns are all NOT NULL."""
from __future__ import annotations

import logging
from typing import Any

import psycopg
from psycopg import sql

from common.config import TableConfig
from common.pg.db import qualified, table_oid, table_schema, unique_keys
from common.epoch import UNITS, from_epoch, is_integer_time, plausible_units
from common.errors import UsageError
from common.pgtypes import Column, TableSchema

log = logging.getLogger("archiver")

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
    check_time_column(t, schema.column(t.timestamp_column))
    if t.timestamp_unit is not None:
        check_unit(conn, t)
    return oid, schema, resolve_key(t, unique_keys(conn, oid))


def check_time_column(t: TableConfig, ts: Column) -> None:
    """A timestamp or a date, or an integer column of Unix time with its timestamp_unit; a unit
    on any other column is refused too: it says the operator meant another column, or another
    table, and a guess either way could archive the wrong rows."""
    name, col = f"{t.schema_}.{t.name}", t.timestamp_column
    if is_integer_time(ts):
        if t.timestamp_unit is None:
            raise UsageError(f"{name}: timestamp_column {col!r} is {ts.pg_type}: give the unit of its Unix time,"
                             " timestamp_unit: s, ms or us")
        return
    if ts.typname not in SUPPORTED_TIMESTAMPS:
        raise UsageError(f"{name}: timestamp_column {col!r} is {ts.pg_type}, not a timestamp or date, nor an integer"
                         " of Unix time (smallint, integer, bigint, numeric(p,0)) with timestamp_unit")
    if t.timestamp_unit is not None:
        raise UsageError(f"{name}: timestamp_unit {t.timestamp_unit} is for an integer timestamp_column; {col!r} is"
                         f" {ts.pg_type}: remove timestamp_unit")


def check_unit(conn: psycopg.Connection[Any], t: TableConfig) -> None:
    """The newest value read in the configured unit, against the units it is plausible in (common.
    epoch.plausible_units). Too fine a unit (milliseconds stored, us configured) reads every row as
    January 1970, so every row would be archived and deleted: refused. Too coarse a one reads them
    as far in the future, so none ever expires: a warning. One max() per run: an index probe with
    the index on the column that the archiver's ordered reads want anyway."""
    row = conn.execute(sql.SQL("SELECT max({}), clock_timestamp() FROM {}").format(
        sql.Identifier(t.timestamp_column), qualified(t.schema_, t.name))).fetchone()
    if row is None or row[0] is None:
        return
    newest, unit = int(row[0]), t.timestamp_unit
    assert unit is not None
    fits = plausible_units(newest, row[1])
    if not fits or unit in fits:
        return
    name, col, better = f"{t.schema_}.{t.name}", t.timestamp_column, fits[0]
    meant = f"in {better} it is {from_epoch(newest, better):%Y-%m-%dT%H:%M:%SZ}"
    if UNITS.index(better) < UNITS.index(unit):
        raise UsageError(f"{name}: timestamp_unit {unit} reads the newest {col}, {newest}, as"
                         f" {from_epoch(newest, unit):%Y-%m-%dT%H:%M:%SZ}, so every row would be archived; {meant}:"
                         f" set timestamp_unit: {better}")
    log.warning("%s: timestamp_unit %s reads the newest %s, %d, as far in the future, so no row would expire; %s:"
                " is timestamp_unit %s meant?", name, unit, col, newest, meant, better, extra={"table": name})


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
