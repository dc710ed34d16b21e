"""The read-only database cross-check: are an archived object's primary keys still in the live table
(an unfinished move)? Per object, one index probe of its pk range (from the manifest), and only when
live rows fall in that range one indexed query with the object's keys; never a row at a time."""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from psycopg import sql
from psycopg_pool import ConnectionPool

from common.config import Config, DatabaseConfig, TableConfig
from common.pg.db import application_name, conninfo, pool, qualified, session_settings, table_oid, table_schema
from common.errors import UsageError

log = logging.getLogger("validate.db")


@dataclass(frozen=True)
class LiveTable:
    database: str
    schema: str
    table: str
    pk_types: dict[str, str]  # column -> format_type(), for the casts of the key arrays
    pool: ConnectionPool


@dataclass(frozen=True)
class Presence:
    count: int
    sample: list[str]


class LiveRows:
    """Connection pools (one per database in scope) in read-only sessions, and what the check needs
    to know about each configured table. Tables that keep their rows on purpose
    (delete_after_archive: false) are left out."""

    def __init__(self, cfg: Config, tables: Iterable[tuple[DatabaseConfig, TableConfig]], *, size: int) -> None:
        self.cfg = cfg
        self.size = max(size, 1)
        self.wanted = [(db, t) for db, t in tables if cfg.options(t).delete_after_archive]
        self.skipped = [f"{db.name} {t.schema_}.{t.name}" for db, t in tables if not cfg.options(t).delete_after_archive]
        self.tables: dict[tuple[str, str, str], LiveTable] = {}
        self.notes: list[str] = []
        self._stack = ExitStack()
        self.pools: dict[str, ConnectionPool] = {}  # by database name
        self._lock = threading.Lock()
        self._absent: set[tuple[str, str, str]] = set()

    def __enter__(self) -> LiveRows:
        try:
            pools = self.pools
            for db, t in self.wanted:
                if db.name not in pools:
                    info, settings = conninfo(db), self._settings(t)
                    # pool() probes with one plain connection first: an unreachable server fails
                    # at once (exit 3).
                    pools[db.name] = self._stack.enter_context(pool(info, settings, size=self._pool_size(db)))
                self._inspect(db, t, pools[db.name])
        except BaseException:
            self._stack.close()
            raise
        if self.skipped:
            self.notes.append("not cross-checked against the database (delete_after_archive: false keeps the rows): "
                              + ", ".join(self.skipped))
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self._stack.close()

    def _pool_size(self, db: DatabaseConfig) -> int:
        """--parallel checks share one pool per database, capped by its connection_pool_size."""
        cap = max(self.cfg.options(t).connection_pool_size for _db, t in self.wanted if _db.name == db.name)
        return max(1, min(self.size, cap))

    def _settings(self, t: TableConfig) -> dict[str, str]:
        opts = self.cfg.options(t)
        settings = session_settings(application_name=application_name(opts.application_name, role="validate"),
                                    statement_timeout=opts.statement_timeout, lock_timeout=opts.lock_timeout)
        # Belt and braces for "never changes anything": the server refuses writes in these sessions.
        settings["default_transaction_read_only"] = "on"
        return settings

    def _inspect(self, db: DatabaseConfig, t: TableConfig, p: ConnectionPool) -> None:
        with p.connection() as conn:
            try:
                schema = table_schema(conn, table_oid(conn, t.schema_, t.name))
            except UsageError as exc:
                self.notes.append(f"{db.name}: {exc}; its archives were not cross-checked against the database")
                return
        types = {c.name: c.pg_type for c in schema.columns}
        self.tables[(db.name, t.schema_, t.name)] = LiveTable(db.name, t.schema_, t.name, types, p)

    def child(self, database: str | None, schema: str, table: str) -> LiveTable | None:
        """A child table archived with a configured one (issue 28), looked up once, on the pool of
        its database; None when the database is not in scope or the table is gone."""
        ident = (database or "", schema, table)
        with self._lock:
            if ident not in self.tables and ident not in self._absent:
                p = self.pools.get(ident[0])
                live = None
                if p is not None:
                    with p.connection() as conn:
                        try:
                            found = table_schema(conn, table_oid(conn, schema, table))
                            live = LiveTable(ident[0], schema, table, {c.name: c.pg_type for c in found.columns}, p)
                        except UsageError:
                            pass
                if live is None:
                    self._absent.add(ident)
                else:
                    self.tables[ident] = live
            return self.tables.get(ident)

    def lookup(self, database: str | None, schema: str, table: str) -> LiveTable | None:
        return self.tables.get((database or "", schema, table))

    def present(self, live: LiveTable, *, pk: list[str], keys: Callable[[], list[list[Any]]],
                bounds: tuple[Any, Any] | None) -> Presence | None:
        """How many of the object's keys are still in the table (and the first few); None when the
        table lacks a key column. `keys` gives one list of values per key column. With `bounds`
        (a one-column pk range, in PostgreSQL's order) one index probe of the range answers the
        usual case, an empty range, without sending the keys at all."""
        types = [live.pk_types.get(c) for c in pk]
        if not pk or any(t is None for t in types):
            return None
        cols = sql.SQL(", ").join(sql.Identifier(c) for c in pk)
        rel = qualified(live.schema, live.table)
        # format_type() output from the catalog, not user input
        arrays = [sql.SQL("%s::{}[]").format(sql.SQL(t)) for t in types]  # type: ignore[arg-type]
        if len(pk) == 1:
            shown: sql.Composable = sql.Identifier(pk[0])
            match = sql.SQL("{} = ANY({})").format(shown, arrays[0])
        else:
            shown = sql.SQL("({})").format(cols)
            match = sql.SQL("({}) IN (SELECT * FROM unnest({}))").format(cols, sql.SQL(", ").join(arrays))
        with live.pool.connection() as conn:
            if bounds is not None and len(pk) == 1:
                probe = sql.SQL("SELECT EXISTS (SELECT 1 FROM {rel} WHERE {col} BETWEEN %s::{typ} AND %s::{typ})").format(
                    rel=rel, col=sql.Identifier(pk[0]), typ=sql.SQL(types[0]))  # type: ignore[arg-type]
                row = conn.execute(probe, bounds).fetchone()
                if row is not None and not row[0]:
                    return Presence(0, [])
            query = sql.SQL("SELECT count(*), (array_agg({shown}::text ORDER BY {cols}))[1:3] FROM {rel} "
                            "WHERE {match}").format(shown=shown, cols=cols, rel=rel, match=match)
            row = conn.execute(query, keys()).fetchone()
        assert row is not None
        return Presence(int(row[0]), list(row[1] or []))
