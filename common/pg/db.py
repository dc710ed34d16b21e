"""Database access: connection info (secrets never logged), pooled sessions with the archiver's
session settings, and catalog look-ups. Identifiers always go through psycopg.sql."""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg_pool import ConnectionPool

from common.config import DatabaseConfig
from common.errors import ConfigError, DatabaseUnavailable, UsageError, message_lines
from common.pg.watchdog import WatchedConnection, describe, remember, timeouts_for, with_libpq_limits
from common.pgtypes import COLUMNS_SQL, SESSION_SETTINGS, TableSchema, schema_from_rows


def conninfo(db: DatabaseConfig) -> str:
    """Build a libpq conninfo string; the password comes from password_env / password_file only.
    It carries libpq's limits of the config's database_timeouts, and every session opened with it
    is watched with them (common/pg/watchdog.py)."""
    params: dict[str, Any] = {}
    if not db.dsn:
        params = {"host": db.host, "port": db.port, "dbname": db.dbname or db.name, "user": db.user}
    password = _password(db)
    if password is not None:
        params["password"] = password
    info = make_conninfo(db.dsn or "", **{k: v for k, v in params.items() if v is not None})
    info = with_libpq_limits(info, db.timeouts)
    remember(info, db.timeouts)
    return info


def _password(db: DatabaseConfig) -> str | None:
    if db.password_file:
        try:
            return Path(db.password_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"databases[{db.name}].password_file: cannot read {db.password_file}: {exc.strerror}") from None
    if db.password_env:
        return os.environ.get(db.password_env)
    return None


def describe_target(info: str) -> str:
    """host:port/dbname for messages: never the password or the full DSN."""
    return describe(info)


#: The default of defaults.application_name in the config (common.config), for sessions of a tool
#: that has no config to read it from.
DEFAULT_APPLICATION_NAME = "pg-archiver"


def application_name(base: str = DEFAULT_APPLICATION_NAME, *, role: str | None = None) -> str:
    """What a session shows in pg_stat_activity: the configured name alone for the archiver's own
    sessions (operators and tests pick them out by it), '<name> <role>' for every other one (the
    restore, validate, wizard, health and replica-lag sessions), so `LIKE 'pg-archiver%'` finds all."""
    return base if role is None else f"{base} {role}"


def session_settings(*, application_name: str, statement_timeout: str | None, lock_timeout: str | None) -> dict[str, str]:
    settings = dict(SESSION_SETTINGS, application_name=application_name)
    if statement_timeout:
        settings["statement_timeout"] = statement_timeout
    if lock_timeout:
        settings["lock_timeout"] = lock_timeout
    return settings


def settings_query(settings: dict[str, str]) -> sql.Composed:
    """One statement that sets every session setting (values as literals, so it also serves the
    ADBC reader, which takes no parameters): one round trip instead of one per setting."""
    calls: list[sql.Composable] = [sql.SQL("set_config({}, {}, false)").format(sql.Literal(name), sql.Literal(value))
                                   for name, value in settings.items()]
    return sql.SQL("SELECT ") + sql.SQL(", ").join(calls or [sql.SQL("NULL")])


def apply_settings(conn: psycopg.Connection[Any], settings: dict[str, str]) -> None:
    conn.execute(settings_query(settings).as_bytes(conn))
    conn.commit()


def connect(info: str, settings: dict[str, str], *, connect_timeout: int | None = None,
            autocommit: bool = False) -> psycopg.Connection[Any]:
    """A session with `settings` applied (DatabaseUnavailable, with libpq's reason and never the
    password, when none can be made). autocommit: for sessions that only read the catalog or
    pg_stat_* and must not hold a transaction open (health checks, replica lag). Its waits on the
    server are bounded (common/pg/watchdog.py); connect_timeout: database_timeouts' by default."""
    info = with_libpq_limits(info, timeouts_for(info))  # connect_timeout among them, unless the DSN has one
    extra = {} if connect_timeout is None else {"connect_timeout": connect_timeout}
    try:
        conn = WatchedConnection.connect(info, autocommit=autocommit, **extra)
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"cannot connect to database {describe_target(info)}: {libpq_reason(exc)}") from None
    try:
        apply_settings(conn, settings)
    except BaseException:
        conn.close()
        raise
    return conn


#: The generic hint libpq adds under a refused connection.
LIBPQ_HINT = "Is the server running"


def libpq_reason(exc: Exception) -> str:
    """libpq's own words (they never include the password), minus its generic hint lines:
    'connection to server at "db", port 5432 failed: Connection refused'."""
    lines = message_lines(exc, skip=(LIBPQ_HINT,))
    return "; ".join(lines) if lines else type(exc).__name__


@contextmanager
def pool(info: str, settings: dict[str, str], *, size: int) -> Iterator[ConnectionPool]:
    """A psycopg-pool honouring connection_pool_size (issue 3); opened eagerly so an unreachable
    server fails at start with exit 3."""
    # Probe once first: a refused connection fails in milliseconds with libpq's reason, where the
    # pool would keep retrying until its timeout.
    connect(info, settings).close()
    p: ConnectionPool[Any] = ConnectionPool(
        with_libpq_limits(info, timeouts_for(info)), min_size=1, max_size=max(size, 1), open=False,
        connection_class=WatchedConnection, configure=lambda c: apply_settings(c, settings),
        kwargs={"autocommit": False}, name="archiver")
    try:
        p.open(wait=True, timeout=15)
    except Exception as exc:  # psycopg_pool.PoolTimeout hides the libpq reason; probe once for it
        try:
            psycopg.connect(info, connect_timeout=5).close()
            reason = str(exc)
        except psycopg.OperationalError as inner:
            reason = libpq_reason(inner)
        p.close()
        raise DatabaseUnavailable(f"cannot connect to database {describe_target(info)}: {reason}") from None
    try:
        yield p
    finally:
        p.close()


#: 'PGAR': the advisory lock namespace of archiver and restore; the table's oid is the other half.
LOCK_CLASS = 0x50474152


def try_table_lock(conn: psycopg.Connection[Any], oid: int) -> bool:
    """Take the session-level advisory lock on a table, without waiting (and without committing)."""
    got = conn.execute("SELECT pg_try_advisory_lock(%s)", ((LOCK_CLASS << 32) | oid,)).fetchone()
    return bool(got and got[0])


def table_unlock(conn: psycopg.Connection[Any], oid: int) -> None:
    try:
        conn.rollback()
        conn.execute("SELECT pg_advisory_unlock(%s)", ((LOCK_CLASS << 32) | oid,))
        conn.commit()
    except psycopg.Error:
        pass  # the lock ends with the session anyway


#: What the tools take a (schema, name) for: a table, plain or partitioned.
TABLE_KINDS = ("r", "p")
#: pg_class.relkind of relations that hold no rows of their own to archive or restore into.
NOT_TABLES = {"v": "a view", "m": "a materialized view", "f": "a foreign table", "S": "a sequence", "i": "an index",
              "I": "a partitioned index", "c": "a composite type", "t": "a TOAST table"}


def _relation(conn: psycopg.Connection[Any], schema: str, table: str) -> tuple[int, str] | None:
    """(oid, relkind) of the relation of that name, if any: names are parameters."""
    row = conn.execute("SELECT c.oid, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                       " WHERE n.nspname = %s AND c.relname = %s", (schema, table)).fetchone()
    return None if row is None else (int(row[0]), str(row[1]))


def find_table_oid(conn: psycopg.Connection[Any], schema: str, table: str) -> int | None:
    """The oid of a table (plain or partitioned), None when there is none."""
    rel = _relation(conn, schema, table)
    return rel[0] if rel is not None and rel[1] in TABLE_KINDS else None


def table_oid(conn: psycopg.Connection[Any], schema: str, table: str) -> int:
    rel = _relation(conn, schema, table)
    if rel is None:
        raise UsageError(f"table {schema}.{table} does not exist")
    if rel[1] not in TABLE_KINDS:
        what = NOT_TABLES.get(rel[1], f"a relation of kind {rel[1]!r}")
        raise UsageError(f"{schema}.{table} is {what}, not a table: name the table its rows are stored in")
    return rel[0]


def table_schema(conn: psycopg.Connection[Any], oid: int) -> TableSchema:
    return schema_from_rows(conn.execute(COLUMNS_SQL, (oid,)).fetchall())


def primary_key_columns(conn: psycopg.Connection[Any], oid: int) -> list[str]:
    rows = conn.execute(
        "SELECT a.attname FROM pg_index i JOIN LATERAL unnest(i.indkey) WITH ORDINALITY k(attnum, ord) ON true"
        " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum"
        " WHERE i.indrelid = %s AND i.indisprimary ORDER BY k.ord",
        (oid,),
    ).fetchall()
    return [r[0] for r in rows]


def qualified(schema: str, table: str) -> sql.Composed:
    return sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(table))


def unique_keys(conn: psycopg.Connection[Any], oid: int) -> list[tuple[list[str], bool, bool]]:
    """The table's primary key and unique indexes that can identify a row: (columns in index order,
    is the primary key, all columns NOT NULL). Partial and expression indexes identify nothing and
    are left out; a partitioned table's own (partitioned) indexes count."""
    rows = conn.execute(
        "SELECT i.indisprimary, array_agg(a.attname ORDER BY k.ord), bool_and(a.attnotnull)"
        " FROM pg_index i JOIN LATERAL unnest(i.indkey) WITH ORDINALITY k(attnum, ord) ON true"
        " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum"
        " WHERE i.indrelid = %s AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL"
        " AND k.ord <= i.indnkeyatts"  # INCLUDE columns identify nothing
        " GROUP BY i.indexrelid, i.indisprimary ORDER BY NOT i.indisprimary, i.indexrelid",
        (oid,),
    ).fetchall()
    return [(list(cols), bool(primary), bool(notnull)) for primary, cols, notnull in rows]
