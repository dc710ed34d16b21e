"""Query results straight into Arrow: the ADBC PostgreSQL driver runs each query as
`COPY (...) TO STDOUT (FORMAT binary)` and decodes it in C++, with no Python object per value.

Issue 2 measured it at ~195k rows/s against ~140k for CSV parsed by pyarrow; on the 2M-row bench
it halved the archiver's client CPU for reading and cut the server's COPY time by a quarter
(binary output is cheaper than CSV). The driver's connection is separate from the psycopg pool:
it only reads, in autocommit, so every query is one statement with one snapshot."""
from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future, TimeoutError as FutureTimeout
from types import TracebackType
from typing import Any

import adbc_driver_manager
import adbc_driver_postgresql as adbc_pg
import pyarrow as pa
from psycopg.conninfo import make_conninfo

from common.pg.db import LIBPQ_HINT, describe_target, settings_query
from common.errors import DatabaseError, DatabaseSilent, DatabaseUnavailable, message_lines
from common.pg.sockets import new_socket_to, socket_fds
from common.pg.watchdog import WATCHDOG, ServerSilent, timeouts_for, with_libpq_limits

#: Size of the driver's record batches. Its default, 16 MB, left the archiver's peak RSS ~15 MB
#: higher on the 2M-row bench (265-272 MB against 253-258 MB), at the same speed; 1 MB gave no more.
BATCH_BYTES = 4 << 20
_PREFIXES = ("IO: ", "[libpq] ", "Failed to connect: ", "Execution error [PGRES_FATAL_ERROR]: ")


def reason(exc: BaseException) -> str:
    """The driver's message without its layers of prefixes: libpq's own words, one line."""
    lines = message_lines(exc, skip=(LIBPQ_HINT, "Query was:"))
    text = lines[0] if lines else type(exc).__name__
    changed = True
    while changed:
        changed = False
        for p in _PREFIXES:
            if text.startswith(p):
                text, changed = text[len(p):], True
    return text[:300]


class ArrowSource:
    """One read-only ADBC session with the archiver's session settings (UTC, ISO dates, ...).

    It uses the driver manager's low-level API: its DB-API module imports pyarrow.dataset (and the
    libraries behind it) for nothing used here: ~4 MB of the archiver's RSS after start-up. A
    low-level connection is in autocommit mode, as ADBC specifies (tests/test_arrow_source.py)."""

    def __init__(self, info: str, settings: dict[str, str]) -> None:
        self.target = describe_target(info)
        limits = timeouts_for(info)
        # libpq's connect_timeout (its default is to wait forever), but no keepalives and no
        # tcp_user_timeout: the 1.8 driver aborts the whole process on an error libpq raises
        # itself, a connection lost under a query among them (a result without a SQLSTATE:
        # apache/arrow-adbc#3878, fixed in 1.11). The watchdog bounds its waits instead, and parks
        # the socket of one it gives up on (common/pg/sockets.py park): that query's thread (_Worker)
        # is left waiting for good, and the caller gets DatabaseSilent.
        info = make_conninfo(with_libpq_limits(info, limits), keepalives=0, tcp_user_timeout=0)
        self._worker = _Worker()
        before = socket_fds()
        try:
            # libpq takes a key=value conninfo as readily as a URI; the password stays inside it.
            self._db = adbc_pg.connect(info)
            self._conn = adbc_driver_manager.AdbcConnection(self._db)
        except adbc_driver_manager.Error as exc:
            self._close_all()
            self._worker.stop()
            raise DatabaseUnavailable(f"cannot connect to database {self.target}: {reason(exc)}") from None
        fd = new_socket_to(before, info)
        # Watched from here on; its backend's pid is known after the first query.
        self._watch = WATCHDOG.register(info=info, target=self.target, pid=None, fd=lambda: fd, timeouts=limits,
                                        parks=True)
        try:
            self.apply(settings)
            self._watch.pid = int(self._run("SELECT pg_backend_pid() AS pid").column(0)[0].as_py())
        except BaseException:
            self.close()
            raise

    def apply(self, settings: dict[str, str]) -> None:
        self._run(settings_query(settings).as_string(None))

    def read(self, query: str) -> pa.Table:
        """The whole result of one query (callers bound it with LIMIT)."""
        return self._run(query)

    def snapshot(self) -> str:
        """The database's snapshot now (txid_current_snapshot() as text): taken before a leaf's
        first read, it sees no row written after any of the leaf's reads began, so a later count
        can tell such a row (archiver/partitions.py count_leaf). Not one transaction around all the
        reads: that kept one snapshot open for as long as a leaf took to read, waits on the
        pipeline included, holding back vacuum's horizon for the whole database meanwhile."""
        return str(self._run("SELECT txid_current_snapshot()::text AS snapshot").column(0)[0].as_py())

    def _run(self, query: str) -> pa.Table:
        """Run on the worker thread; waited for here until it ends or the watchdog parks it."""
        w = self._watch
        if w.broken:
            raise DatabaseSilent(w.broken)
        done = self._worker.submit(lambda: self._execute_watched(query))
        try:
            while True:
                try:
                    return done.result(timeout=0.25)
                except FutureTimeout:
                    if w.parked:
                        raise DatabaseSilent(w.broken or "database stopped answering") from None
        except adbc_driver_manager.Error as exc:
            if w.broken:
                raise DatabaseSilent(w.broken) from None
            raise DatabaseError(f"reading from database {self.target} failed: {reason(exc)}") from None

    def _execute_watched(self, query: str) -> pa.Table:
        try:
            with self._watch.waiting():
                return self._execute(query)
        except ServerSilent as exc:  # already given up on: the driver was not called
            raise DatabaseSilent(str(exc)) from None

    def _execute(self, query: str) -> pa.Table:
        stmt = adbc_driver_manager.AdbcStatement(self._conn)
        try:
            stmt.set_options(**{adbc_pg.StatementOptions.BATCH_SIZE_HINT_BYTES.value: str(BATCH_BYTES)})
            stmt.set_sql_query(query)
            stream, _ = stmt.execute_query()
            return pa.RecordBatchReader.from_stream(stream).read_all()
        finally:
            stmt.close()

    def close(self) -> None:
        w = getattr(self, "_watch", None)
        if w is None:
            self._close_all()
        elif w.parked:
            # A query still runs in the driver on the parked socket: its handles stay open (and
            # referenced, never collected) for as long as the process lives.
            WATCHDOG.unregister(w)
            _ABANDONED.append(self)
        else:
            with WATCHDOG.closing(w):  # its socket is never touched once closed (a reused fd)
                self._close_all()
        self._worker.stop()

    def _close_all(self) -> None:
        for handle in (getattr(self, "_conn", None), getattr(self, "_db", None)):
            if handle is None:
                continue
            try:
                handle.close()
            except adbc_driver_manager.Error:
                pass  # a connection the server already dropped

    def __enter__(self) -> ArrowSource:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


#: ArrowSources whose query was parked (ArrowSource.close): kept so nothing closes their handles.
_ABANDONED: list[ArrowSource] = []


class _Worker:
    """The one thread that calls the driver for a session (the connection is not for concurrent
    use), so the caller can stop waiting on a query the watchdog parked. A daemon thread: a parked
    one must not keep the process from exiting."""

    def __init__(self) -> None:
        self._q: queue.Queue[tuple[Callable[[], Any], Future[Any]] | None] = queue.Queue()
        threading.Thread(target=self._loop, daemon=True, name="adbc-session").start()

    def submit(self, fn: Callable[[], Any]) -> Future[Any]:
        fut: Future[Any] = Future()
        self._q.put((fn, fut))
        return fut

    def stop(self) -> None:
        self._q.put(None)

    def _loop(self) -> None:
        while (item := self._q.get()) is not None:
            fn, fut = item
            try:
                fut.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                fut.set_exception(exc)
