"""What may stop or slow a run between batches (issue 3, "Spare production"): signals, a stop
file, max runtime, max rows, sleep between batches, replica lag; plus progress display. (The
test-only fault points are archiver/hooks.py.)"""
from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import psycopg

from common.config import ResolvedOptions
from common.pg.db import application_name, connect
from common.errors import DatabaseUnavailable, first_line
from archiver.ops.events import TableResult

log = logging.getLogger("archiver")


@dataclass
class RunControls:
    stop_file: Path | None = None
    max_rows: int | None = None
    max_runtime_seconds: float | None = None
    wait_for_lock: float = 0.0
    replica_dsns: list[str] = field(default_factory=list)
    #: Where the live progress line goes (the tool's stderr, when a terminal); None: a log line every 30 s.
    progress_to: TextIO | None = None
    started: float = field(default_factory=time.monotonic)
    rows_this_run: int = 0
    signal_received: int | None = None
    hard_stop: bool = False
    _last_progress: float = 0.0
    _signal_logged: bool = False
    #: The first thing that stopped the run (archiver/ops/events.py STOP_REASONS), None while nothing did.
    stop_reason: str | None = None
    _stop_event: threading.Event = field(default_factory=threading.Event)

    # -- signals -----------------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        """SIGINT/SIGTERM: finish the current batch, then stop (exit 130 / 0-1)."""
        def handler(signum: int, _frame: Any) -> None:
            # Only set flags here: logging from a signal handler can deadlock on the handler's lock.
            if self.signal_received is not None:  # a second signal: stop waiting for a stuck read
                self.hard_stop = True
            self.signal_received = signum
            self.stop_reason = self.stop_reason or "signal"
            self._stop_event.set()
        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)

    @property
    def stopping(self) -> bool:
        return self.signal_received is not None

    def should_stop(self, result: TableResult) -> bool:
        if self.stopping:
            return True
        if self.stop_file_present():
            return True
        if self.max_rows is not None and self.rows_this_run >= self.max_rows:
            log.info("--max-rows %d reached; stopping (the next run resumes)", self.max_rows)
            self.stop_reason = self.stop_reason or "max_rows"
            return True
        return self._out_of_time()

    def _out_of_time(self) -> bool:
        if not self._time_is_up():
            return False
        if self.signal_received is None:
            log.info("max runtime reached; stopping cleanly (the next run resumes)")
            self.signal_received = 0
            self.stop_reason = self.stop_reason or "max_runtime"
        return True

    def stop_file_present(self) -> bool:
        """True (and the run stops, exit 0) once the stop file exists; checked before every batch
        starts, so a run that begins while it exists moves nothing."""
        if self.stop_file is None or not self.stop_file.exists():
            return False
        if self.signal_received is None:
            log.info("stop file %s exists; stopping (remove it to let the archiver run)", self.stop_file)
            self.signal_received = 0
            self.stop_reason = self.stop_reason or "stop_file"
            self._stop_event.set()
        return True

    def _time_is_up(self) -> bool:
        return self.max_runtime_seconds is not None and time.monotonic() - self.started >= self.max_runtime_seconds

    def log_signal_stop(self) -> None:
        """Said once, from normal code (a signal handler must not log)."""
        if self.signal_received and not self._signal_logged:
            self._signal_logged = True
            log.warning("received %s; batches in flight finished, stopping (the next run resumes)",
                        signal.Signals(self.signal_received).name)

    def wants_more(self, rows_in_flight: int) -> bool:
        """Whether to start another batch: not after a stop (signal, stop file, max runtime), nor
        when --max-rows would be reached by the batches in flight."""
        if self.stopping or self.stop_file_present() or self._out_of_time():
            return False
        return self.max_rows is None or self.rows_this_run + rows_in_flight < self.max_rows

    def pause_between_batches(self, opts: ResolvedOptions, conn: psycopg.Connection[Any]) -> None:
        if opts.sleep_seconds:
            self._stop_event.wait(opts.sleep_seconds)
        if opts.max_replica_lag_seconds and self.replica_dsns:
            self._wait_for_replicas(opts.max_replica_lag_seconds)

    def _wait_for_replicas(self, limit: float) -> None:
        """Pause while any replica lags more than `limit` (or cannot be asked: pausing is the safe
        side); a signal, the stop file or max runtime still end the wait."""
        while not self.stopping:
            lag = max((replica_lag(dsn) for dsn in self.replica_dsns), default=0.0)
            if lag <= limit:
                return
            log.warning("replica lag %s exceeds %.1fs; pausing", "unknown" if lag == float("inf") else f"{lag:.1f}s", limit)
            self._stop_event.wait(min(limit, 10.0))
            if self._time_is_up():
                # The run's time went on waiting for the replicas: the lag is why it stopped.
                self.stop_reason = self.stop_reason or "replica_lag"
                return
            if self.stop_file_present():
                return

    # -- progress ----------------------------------------------------------------------------
    def progress(self, r: TableResult) -> None:
        now = time.monotonic()
        elapsed = max(now - self.started, 1e-6)
        if self.progress_to is not None:
            self.progress_to.write(f"\r{r.database} {r.name}: {r.rows:,} rows, {r.objects} objects, {r.rows / elapsed:,.0f} rows/s   ")
            self.progress_to.flush()
        elif now - self._last_progress >= 30:
            self._last_progress = now
            log.info("progress: %d rows archived in %d objects (%.0f rows/s)", r.rows, r.objects, r.rows / elapsed,
                     extra={"database": r.database, "table": r.name})

    def add_rows(self, n: int) -> None:
        self.rows_this_run += n


def replica_lag(dsn: str) -> float:
    """Seconds the replica's replay lags; 0 when it is idle or not a replica."""
    try:
        with connect(dsn, {"application_name": application_name(role="replica-lag")}, connect_timeout=5,
                     autocommit=True) as conn:
            row = conn.execute(
                "SELECT CASE WHEN pg_is_in_recovery() AND pg_last_wal_receive_lsn() <> pg_last_wal_replay_lsn()"
                " THEN EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()) ELSE 0 END"
            ).fetchone()
            return float(row[0] or 0) if row else 0.0
    except (DatabaseUnavailable, psycopg.Error) as exc:
        log.warning("cannot check replica lag: %s", first_line(exc))
        return float("inf")
