"""What a phase costs the PostgreSQL server, besides wall time (issue 15): WAL bytes written, dead
tuples left in the table, and the server's CPU seconds.

- WAL: `pg_wal_lsn_diff(pg_current_wal_lsn(), <lsn before>)`. The LSN is the cluster's, so anything
  else writing on the server meanwhile (another database, a checkpoint) is counted too.
- Dead tuples: `n_dead_tup` of pg_stat_user_tables summed over the table and its partitions, read
  once every other session of the phase's database has ended (a backend flushes its statistics
  as it exits; pg_stat_force_next_flush() then flushes ours). The bench tables have autovacuum
  off (bench/seed.py) so nothing resets the count during the phase. A dropped partition's
  statistics go with it (it had no dead tuples: it was never deleted from).
- CPU: utime + stime + cutime + cstime (/proc/<pid>/stat) of the postmaster and of every live
  child of it, before and after. Backends that exit during the phase are reaped by the postmaster,
  so their time arrives in its cutime/cstime; long-lived processes (checkpointer, WAL writer) are
  counted with what they did meanwhile. It counts every session of the server, so another user's
  queries on the same server add to it. There is no pg_postmaster_pid(): the postmaster is found as
  the parent of this probe's own backend, and that only works when the server runs on this machine
  (in the same PID namespace); otherwise the CPU figure is None.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

_TICK = os.sysconf("SC_CLK_TCK")
_DEAD_SQL = ("SELECT coalesce(sum(n_dead_tup), 0) FROM pg_stat_user_tables WHERE relid = %(t)s::regclass"
             " OR relid IN (SELECT relid FROM pg_partition_tree(%(t)s::regclass))")
_OTHERS_SQL = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"


@dataclass
class ServerCost:
    wal_bytes: int
    dead_tuples: int
    cpu_seconds: float | None  # None: the server's processes are not visible from here

    def per_row(self, rows: int) -> dict[str, float | None]:
        n = max(rows, 1)
        return {"wal_bytes_per_row": self.wal_bytes / n, "dead_tuples_per_row": self.dead_tuples / n,
                "server_cpu_us_per_row": None if self.cpu_seconds is None else self.cpu_seconds * 1e6 / n}

    def to_json(self, rows: int) -> dict[str, Any]:
        return {**asdict(self), **self.per_row(rows), "rows": rows}


def _stat(pid: int | str) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (which may hold spaces)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None  # exited meanwhile
    return text[text.rindex(")") + 2:].split()


def _ticks(fields: list[str]) -> int:
    # After the name: state ppid ... utime (index 11) stime cutime cstime.
    return sum(int(v) for v in fields[11:15])


def server_cpu(postmaster: int) -> float:
    """CPU seconds of the postmaster, its reaped children and its live children."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat(entry)
        if fields is not None and (int(entry) == postmaster or int(fields[1]) == postmaster):
            total += _ticks(fields)
    return total / _TICK


def find_postmaster(conn: psycopg.Connection[Any]) -> int | None:
    """The parent of this session's backend, if it is a postgres process on this machine."""
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    fields = _stat(row[0]) if row else None
    if fields is None:
        return None
    parent = int(fields[1])
    try:
        comm = Path(f"/proc/{parent}/comm").read_text().strip()
    except OSError:
        return None
    return parent if comm in ("postgres", "postmaster") else None


class ServerProbe:
    """Around one timed phase on one database: start() before, finish() after."""

    def __init__(self, dsn: str, table: str = "audit_logs") -> None:
        self.dsn, self.table = dsn, table
        self.dbname = str(conninfo_to_dict(dsn).get("dbname"))
        self.lsn = ""
        self.cpu: float | None = None
        self.postmaster: int | None = None

    def start(self) -> ServerProbe:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            self.postmaster = find_postmaster(conn)
            row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
            self.lsn = str(row[0]) if row else "0/0"
            self.cpu = server_cpu(self.postmaster) if self.postmaster else None
        return self

    def finish(self, *, timeout: float = 30.0) -> ServerCost:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            self._await_others(conn, timeout)
            cpu = server_cpu(self.postmaster) - self.cpu if self.postmaster and self.cpu is not None else None
            row = conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s::pg_lsn)", (self.lsn,)).fetchone()
            wal = int(row[0]) if row else 0
            conn.execute("SELECT pg_stat_force_next_flush()")
            dead = conn.execute(_DEAD_SQL, {"t": self.table}).fetchone()
        return ServerCost(wal, int(dead[0]) if dead else 0, cpu)

    @staticmethod
    def _await_others(conn: psycopg.Connection[Any], timeout: float) -> None:
        """Until the phase's sessions have ended (and so flushed their statistics and been reaped)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            row = conn.execute(_OTHERS_SQL).fetchone()
            if not row or not row[0]:
                return
            time.sleep(0.05)  # a backend's exit is not an event a client can wait on
