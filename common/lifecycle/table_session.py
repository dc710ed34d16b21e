"""The session `hold` and `expire` work under (issue 29): the archiver's advisory lock on the table,
so no run, erasure, hold or expiry writes the table's digest chain or changes its archive at the
same time, and the database's clock, which expiry decides by."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from common.config import Config
from common.pg.db import application_name, connect, conninfo, find_table_oid, session_settings, table_unlock, try_table_lock
from common.errors import ArchiverError
from common.expiry import database_now


class TableBusy(ArchiverError):
    """Another tool holds the table's advisory lock (exit 1)."""


@dataclass(frozen=True)
class TableSession:
    conn: Any
    locked: bool

    def now(self) -> datetime:
        """The database's clock (aware UTC); the transaction is ended so no snapshot is held."""
        reading = database_now(self.conn)
        self.conn.commit()
        return reading.now


@contextmanager
def table_session(cfg: Config, database: str, schema: str, table: str, *, role: str, lock: bool) -> Iterator[TableSession]:
    """A session on the table's database, holding the table's advisory lock when `lock` (TableBusy
    when another tool has it). A table no longer in the database has no lock to take."""
    db = cfg.database(database)
    settings = session_settings(application_name=application_name(cfg.defaults.application_name, role=role),
                                statement_timeout=None, lock_timeout=None)
    with connect(conninfo(db), settings) as conn:
        oid = find_table_oid(conn, schema, table) if lock else None
        if oid is not None and not try_table_lock(conn, oid):
            raise TableBusy(f"{database}/{schema}.{table} is busy (the archiver, erase, hold or expire holds its "
                            "advisory lock): try again when that run ends")
        conn.commit()
        try:
            yield TableSession(conn, oid is not None)
        finally:
            if oid is not None:
                table_unlock(conn, oid)
