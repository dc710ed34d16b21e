"""Run events the archiver emits, so metrics, health and notifications (issue 6) can listen
without the archiving code knowing about them."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


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
    resumed: int = 0
    #: Expired rows left in the table because a foreign key still references them, and the
    #: referencing tables (archiver/references.py).
    kept_referenced: int = 0
    referenced_by: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.schema}.{self.table}"

    @property
    def ratio(self) -> float:
        return self.source_bytes / self.bytes if self.bytes else 0.0


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
