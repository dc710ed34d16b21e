"""Run events the archiver emits, so metrics, health and notifications (issue 6) can listen
without the archiving code knowing about them."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

#: Why a run stopped before its end (pt-archiver's --why-quit; set by archiver/controls.py), for
#: the summary and the archiver_last_run_stop_reason metric; "none" when it ran to the end.
STOP_REASONS = ("none", "max_runtime", "stop_file", "max_rows", "signal", "replica_lag")


@dataclass
class TableResult:
    database: str
    schema: str
    table: str
    status: str = "pending"  # completed | failed | skipped | stopped
    rows: int = 0
    objects: int = 0
    bytes: int = 0
    source_bytes: int = 0
    seconds: float = 0.0
    fallback_objects: int = 0
    rolled_back_batches: int = 0
    error: str | None = None
    error_kind: str | None = None  # an ErrorKind value (common.errors), None unless failed
    #: Failed because a service stopped answering (common.errors.is_silence): the run exits 3.
    silent: bool = False
    resumed: int = 0
    #: Expired rows left in the table because a foreign key still references them, and the
    #: referencing tables (archiver/references.py).
    kept_referenced: int = 0
    referenced_by: list[str] = field(default_factory=list)
    #: Rows whose timestamp column (`time_column`) is NULL: never expired, they stay in the table
    #: (common.expiry.count_untimed).
    untimed_rows: int = 0
    time_column: str = ""
    #: Expired rows still in the table after the run, and the age of the oldest (archiver/backlog.py);
    #: None when the run did not measure them (a failed, skipped or signalled table).
    backlog_rows: int | None = None
    backlog_oldest_seconds: float | None = None
    #: Partitions past retention still attached, waiting to be retired (0 until partition retirement).
    partitions_pending: int = 0
    #: Why the table stopped before its end (archiver/controls.py STOP_REASONS); "" when it did not.
    stop_reason: str = ""
    #: This host's clock minus the database's when the table started (common.expiry.database_now).
    clock_skew_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.schema}.{self.table}"

    @property
    def ratio(self) -> float:
        return self.source_bytes / self.bytes if self.bytes else 0.0


def run_stop_reason(results: list[TableResult]) -> str:
    """Why the run stopped before its end: the first stopped table's reason, "none" if none did."""
    return next((r.stop_reason for r in results if r.status == "stopped" and r.stop_reason), "none")


class Observer(Protocol):
    def run_started(self) -> None: ...
    def batch_done(self, result: TableResult, *, rows: int, nbytes: int, seconds: float, location: str) -> None: ...
    def batch_failed(self, result: TableResult, *, kind: str) -> None: ...
    def table_done(self, result: TableResult) -> None: ...
    def run_finished(self, results: list[TableResult], exit_code: int) -> None: ...


class NullObserver:
    def run_started(self) -> None:
        pass

    def batch_done(self, result: TableResult, *, rows: int, nbytes: int, seconds: float, location: str) -> None:
        pass

    def batch_failed(self, result: TableResult, *, kind: str) -> None:
        pass

    def table_done(self, result: TableResult) -> None:
        pass

    def run_finished(self, results: list[TableResult], exit_code: int) -> None:
        pass


class Observers(NullObserver):
    """Fans events out; one failing observer never breaks the run."""

    def __init__(self, *observers: Observer) -> None:
        self.observers = list(observers)

    def _each(self, name: str, *args: object, **kwargs: object) -> None:
        import logging

        for o in self.observers:
            try:
                getattr(o, name)(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001
                logging.getLogger("archiver").warning("observer %s.%s failed: %s", type(o).__name__, name, exc)

    def run_started(self) -> None:
        self._each("run_started")

    def batch_done(self, result: TableResult, *, rows: int, nbytes: int, seconds: float, location: str) -> None:
        self._each("batch_done", result, rows=rows, nbytes=nbytes, seconds=seconds, location=location)

    def batch_failed(self, result: TableResult, *, kind: str) -> None:
        self._each("batch_failed", result, kind=kind)

    def table_done(self, result: TableResult) -> None:
        self._each("table_done", result)

    def run_finished(self, results: list[TableResult], exit_code: int) -> None:
        self._each("run_finished", results, exit_code)
