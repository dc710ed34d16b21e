"""Bounded waits on PostgreSQL (issue 31).

libpq alone cannot tell a silent server from a busy one. Its keepalives and tcp_user_timeout end a
connection whose peer stopped acknowledging (a dropped route, a dead host); but a peer that still
acknowledges and never answers (a proxy or pooler in front of a failed-over primary, a load
balancer holding the connection) looks to TCP exactly like a healthy server running a long
statement. A statement_timeout low enough to bound that would kill the long statements of a
healthy server.

So the watchdog asks the server. Every session the tools open is registered here (psycopg
connections through WatchedConnection, the archiver's ADBC reader through ArrowSource). When a
session has waited on the server for database_timeouts.silence_seconds without receiving a byte,
a thread opens a new connection (bounded by probe_seconds) and looks the session up in
pg_stat_activity:

- still `active`: a long statement of a healthy server; wait on (and ask again later);
- idle, or gone: the server answered and the answer was lost; or active but itself waiting to
  send to or read from this client (ClientWrite, ClientRead) while nothing arrives here: the
  path between them is dead. The session is ended (its socket shut down, its backend
  terminated, which releases its locks) and the wait fails;
- no answer to the probe either: the server is silent; every session to it is ended.

The wait that was ended raises ServerSilent (a psycopg.OperationalError, so every `except
psycopg.Error` clean-up still runs): exit 3, kind database, with a one-line message."""
from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from common.config import DatabaseTimeouts
from common.pg.sockets import park, shut, since_last_byte

log = logging.getLogger("archiver")

#: The timeouts of each conninfo common.pg.db.conninfo built from a config (a handful per process);
#: a DSN nobody registered (a replica's, a test's) gets the defaults.
_TIMEOUTS: dict[str, DatabaseTimeouts] = {}
_DEFAULT = DatabaseTimeouts()


def remember(info: str, timeouts: DatabaseTimeouts) -> None:
    _TIMEOUTS[info] = timeouts


def timeouts_for(info: str) -> DatabaseTimeouts:
    return _TIMEOUTS.get(info, _DEFAULT)


def with_libpq_limits(info: str, t: DatabaseTimeouts) -> str:
    """`info` plus libpq's connect_timeout, keepalives and tcp_user_timeout; what the DSN sets
    itself wins. (On a Unix-domain socket libpq ignores the TCP ones.)"""
    params = conninfo_to_dict(info)
    wanted: dict[str, Any] = {
        "connect_timeout": t.connect_seconds, "keepalives": 1, "keepalives_idle": t.keepalives_idle_seconds,
        "keepalives_interval": t.keepalives_interval_seconds, "keepalives_count": t.keepalives_count,
        "tcp_user_timeout": int(t.tcp_user_timeout_seconds * 1000),
    }
    extra = {k: v for k, v in wanted.items() if k not in params}
    return make_conninfo(info, **extra) if extra else info


class ServerSilent(psycopg.OperationalError):
    """A wait the watchdog ended: the server stopped answering (common.errors.classify: exit 3)."""

    silent = True


class Watch:
    """One registered session: where it goes, its backend, how to find its socket, its wait."""

    def __init__(self, dog: Watchdog, *, info: str, target: str, pid: int | None, fd: Callable[[], int | None],
                 timeouts: DatabaseTimeouts, parks: bool) -> None:
        self.dog, self.info, self.target, self.pid, self._fd = dog, info, target, pid, fd
        self.timeouts, self.parks = timeouts, parks
        self.busy_since: float | None = None
        self.serial = 0
        self.broken: str | None = None
        #: A wait ended by parking its socket (pg_sockets.park): the thread in it never returns.
        self.parked = False
        self.closed = False

    def fd(self) -> int | None:
        try:
            return None if self.closed else self._fd()
        except Exception:  # noqa: BLE001 - a closed psycopg connection raises on .socket
            return None

    def silent_for(self, now: float) -> float:
        if self.busy_since is None:
            return 0.0
        silent = now - self.busy_since
        fd = self.fd()
        since = since_last_byte(fd) if fd is not None else None
        return min(silent, since) if since is not None else silent

    @contextmanager
    def waiting(self) -> Iterator[None]:
        """Around one wait on the server; a wait the watchdog ended raises ServerSilent."""
        with self.dog.lock:
            if self.broken:
                raise ServerSilent(self.broken)
            self.serial += 1
            self.busy_since = time.monotonic()
        try:
            yield
        except psycopg.OperationalError as exc:
            if self.broken and not isinstance(exc, ServerSilent):
                raise ServerSilent(self.broken) from exc
            raise
        finally:
            with self.dog.lock:
                self.busy_since = None


class Watchdog:
    """One per process: the registered sessions and the thread that watches their waits."""

    def __init__(self) -> None:
        # Reentrant: a session collected (weakref.finalize: unregister) while this thread holds it.
        self.lock = threading.RLock()
        self.watches: set[Watch] = set()
        self._thread: threading.Thread | None = None
        #: target -> (monotonic time, message) of the last time it was given up on, for /health.
        self.gave_up: dict[str, tuple[float, str]] = {}

    def register(self, *, info: str, target: str, pid: int | None, fd: Callable[[], int | None],
                 timeouts: DatabaseTimeouts | None = None, parks: bool = False) -> Watch:
        """`pid`: the session's backend (None until known: judged only by whether the server
        answers). `parks`: end its waits by parking the socket instead of shutting it down (for a
        driver that must never see the connection fail under it: archiver/arrow_source.py)."""
        w = Watch(self, info=info, target=target, pid=pid, fd=fd, timeouts=timeouts or timeouts_for(info), parks=parks)
        with self.lock:
            self.watches.add(w)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, daemon=True, name="pg-watchdog")
                self._thread.start()
        return w

    def unregister(self, w: Watch) -> None:
        """Before its socket closes (under the lock, so the watchdog never shuts a reused fd)."""
        with self.lock:
            w.closed = True
            self.watches.discard(w)

    @contextmanager
    def closing(self, w: Watch) -> Iterator[None]:
        """Unregister and close the session while holding the lock."""
        with self.lock:
            w.closed = True
            self.watches.discard(w)
            yield

    def stalls(self) -> list[dict[str, Any]]:
        """Sessions waiting longer than their silence_seconds right now, and servers given up on in
        the last minute: what /health reports while a stall lasts."""
        now = time.monotonic()
        with self.lock:
            watches = list(self.watches)
            gave_up = dict(self.gave_up)
        out = [{"target": w.target, "pid": w.pid, "silent_seconds": round(s, 1)}
               for w in watches if (s := w.silent_for(now)) >= w.timeouts.silence_seconds]
        out += [{"target": t, "gave_up_seconds_ago": round(now - at, 1), "error": msg}
                for t, (at, msg) in gave_up.items() if now - at < 60]
        return out

    # -- the thread --------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self.lock:
                watches = list(self.watches)
            tick = min([w.timeouts.silence_seconds for w in watches] or [1.0]) / 4
            time.sleep(min(max(tick, 0.2), 2.0))
            now = time.monotonic()
            stuck: dict[str, list[Watch]] = {}
            for w in watches:
                if not w.broken and w.silent_for(now) >= w.timeouts.silence_seconds:
                    stuck.setdefault(w.target, []).append(w)
            for target, ws in stuck.items():
                try:
                    self._check(target, ws)
                except Exception:  # noqa: BLE001 - the watchdog must outlive anything it meets
                    log.exception("database watchdog failed checking %s", target)

    def _check(self, target: str, ws: list[Watch]) -> None:
        t = ws[0].timeouts
        asked = time.monotonic()
        serials = {w: w.serial for w in ws}
        answer = probe(ws[0].info, [w.pid for w in ws if w.pid is not None], t.probe_seconds)
        if answer is None:
            msg = (f"database {target} stopped answering: no answer for {t.silence_seconds:g}s, nor to a new"
                   f" connection within {t.probe_seconds}s (database_timeouts)")
            log.warning("%s; ending its sessions", msg)
            with self.lock:
                self.gave_up[target] = (time.monotonic(), msg)
                for w in [w for w in self.watches if w.target == target]:
                    self._break(w, msg)
            return
        for w in ws:
            state, event = answer.get(w.pid, (None, None)) if w.pid is not None else ("active", None)
            # Waiting on this client while this client hears nothing: only judged where the
            # kernel counts the bytes received (a known socket), not by the wait's length alone.
            on_us = event in ("ClientWrite", "ClientRead") and w.fd() is not None
            with self.lock:
                if w.serial != serials[w] or w.busy_since is None:
                    continue  # its answer came meanwhile
                if state == "active" and not on_us:
                    w.busy_since = time.monotonic()  # a long statement of a healthy server: ask later
                    continue
                if w.silent_for(time.monotonic()) < time.monotonic() - asked:
                    continue  # a byte arrived while we asked
                shown = f"{state} ({event})" if on_us else state or "gone"
                msg = (f"database {target}: no answer for {t.silence_seconds:g}s on a session the server shows as"
                       f" {shown}: its answer was lost (database_timeouts)")
                log.warning("%s; ending it", msg)
                self.gave_up[target] = (time.monotonic(), msg)
                self._break(w, msg)
            if state is not None and w.pid is not None and w.broken:
                terminate(w.info, w.pid, t.probe_seconds)  # its locks go now, not when TCP notices

    @staticmethod
    def _break(w: Watch, msg: str) -> None:
        """End a session (under the lock): its wait fails, or, for one that parks, is left for good
        (its caller stops waiting for it: w.parked); an idle one fails on its next use."""
        w.broken = msg
        fd = w.fd()
        if not w.parks:
            if fd is not None:
                shut(fd)
        elif w.busy_since is not None:
            if fd is not None:
                park(fd)
            w.parked = True


WATCHDOG = Watchdog()


def _bounded(work: Callable[[dict[str, Any]], None], seconds: int) -> dict[str, Any] | None:
    """Run `work` on a new connection in a thread, bounded by `seconds`: None when it did not end."""
    box: dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:
        try:
            work(box)
        except Exception as exc:  # noqa: BLE001 - reported to the caller
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=run, daemon=True, name="pg-watchdog-probe").start()
    if done.wait(seconds + 1):
        return box
    conn = box.get("conn")
    if conn is not None:
        shut(conn.pgconn.socket)
    return None


def probe(info: str, pids: list[int], seconds: int) -> dict[int, tuple[str | None, str | None]] | None:
    """pg_stat_activity's (state, wait_event) of these backends, over a new connection; None when
    the server does not answer within `seconds`. A server that answers with an error (too many
    clients, ...) is alive: its sessions count as active."""
    def work(box: dict[str, Any]) -> None:
        box["conn"] = conn = psycopg.connect(make_conninfo(info, connect_timeout=seconds), autocommit=True)
        with conn:
            rows = conn.execute("SELECT pid, state, wait_event FROM pg_stat_activity WHERE pid = ANY(%s)",
                                (pids,)).fetchall()
        box["states"] = {int(pid): (state, event) for pid, state, event in rows}

    box = _bounded(work, seconds)
    if box is None:
        return None
    if "states" in box:
        return box["states"]
    exc = box.get("error")
    if isinstance(exc, psycopg.Error) and exc.sqlstate:
        return {pid: ("active", None) for pid in pids}  # the server itself refused: it is alive
    return None  # a timeout, a refused or reset connection


def terminate(info: str, pid: int, seconds: int) -> None:
    """End a backend whose client gave up on it (best effort; the same role may)."""
    def work(box: dict[str, Any]) -> None:
        box["conn"] = conn = psycopg.connect(make_conninfo(info, connect_timeout=seconds), autocommit=True)
        with conn:
            conn.execute("SELECT pg_terminate_backend(%s)", (pid,))

    _bounded(work, seconds)


class WatchedConnection(psycopg.Connection[Any]):
    """A psycopg connection whose every wait on the server (statements, fetches, COPY, commit) is
    watched (psycopg routes them all through Connection.wait)."""

    _watch: Watch | None = None

    @classmethod
    def connect(cls, conninfo: str = "", **kwargs: Any) -> WatchedConnection:  # type: ignore[override]
        conn = super().connect(conninfo, **kwargs)
        target = describe(conninfo)
        ref = weakref.ref(conn)

        def fd() -> int | None:
            c = ref()
            return None if c is None or c.closed else int(c.pgconn.socket)

        conn._watch = w = WATCHDOG.register(info=conninfo, target=target, pid=conn.info.backend_pid, fd=fd)
        weakref.finalize(conn, WATCHDOG.unregister, w)
        return conn

    def wait(self, gen: Any, interval: float = 0.1, timeout: float | None = None) -> Any:
        w = self._watch
        if w is None or timeout is not None:
            # A wait with its own limit (psycopg's notifies(): a LISTEN session is silent by design)
            return super().wait(gen, interval, timeout)
        with w.waiting():
            return super().wait(gen, interval, timeout)

    def close(self) -> None:
        w = self._watch
        if w is None:
            super().close()
            return
        with WATCHDOG.closing(w):
            super().close()


def describe(info: str) -> str:
    """host:port/dbname (never the password): the target a message names."""
    try:
        d = conninfo_to_dict(info)
    except psycopg.ProgrammingError:
        return "<unparseable DSN>"
    host = d.get("host") or d.get("hostaddr") or "localhost"
    return f"{host}:{d.get('port') or 5432}/{d.get('dbname') or d.get('user') or ''}"
