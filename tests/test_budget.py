"""The bound on rows read but not yet encoded (archiver/budget.py): the reader waits for the
encoders instead of holding many windows in memory. Every wait here is on an event; a timeout
only turns a hang into a failure."""
from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest

from archive_checks import archived_ids, assert_invariant, table_ids
from archiver import reader
from archiver.budget import RowBudget
from archiver.runner import run_archive
from common import batch_writer
from common.config import load_config
from common.exit_codes import ExitCode
from common.archive.storage import LocalStorage
from conftest import make_config

T = TypeVar("T")

#: Guards against a hang only; no test waits this long when the code works.
TIMEOUT = 30


class WatchedStop(threading.Event):
    """A stop event that reports being looked at: a take that cannot fit must keep checking it
    while it waits (nothing else would end the wait), so each check is a sign it is waiting."""

    def __init__(self) -> None:
        super().__init__()
        self.checks: queue.Queue[None] = queue.Queue()

    def is_set(self) -> bool:
        self.checks.put(None)
        return super().is_set()

    def wait_for_checks(self, n: int) -> None:
        for _ in range(n):
            self.checks.get(timeout=TIMEOUT)


def in_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> Future[T]:
    """fn's outcome as a future, from a daemon thread: a broken budget that never lets go fails
    the test by timeout instead of hanging the session at exit."""
    result: Future[T] = Future()

    def run() -> None:
        try:
            result.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            result.set_exception(exc)

    threading.Thread(target=run, daemon=True).start()
    return result


def take_in_thread(budget: RowBudget, rows: int, stop: threading.Event) -> Future[bool]:
    return in_thread(budget.take, rows, stop)


def test_a_take_that_does_not_fit_waits_for_rows_given_back() -> None:
    budget, stop = RowBudget(10), WatchedStop()
    assert budget.take(8, stop) and budget.used == 8
    taken = take_in_thread(budget, 5, stop)
    stop.wait_for_checks(2)  # checked the stop again after a wait: it is waiting, not done
    assert not taken.done() and budget.used == 8
    budget.give(8)
    assert taken.result(timeout=TIMEOUT) is True
    assert budget.used == 5


def test_a_take_whose_bytes_do_not_fit_waits_though_its_rows_would() -> None:
    budget, stop = RowBudget(1000, max_bytes=100), WatchedStop()
    assert budget.take(2, stop, nbytes=80)
    taken = in_thread(budget.take, 2, stop, nbytes=40)  # 4 rows fit in 1000; 120 bytes not in 100
    stop.wait_for_checks(2)
    assert not taken.done() and budget.used_bytes == 80
    budget.give(2, 80)
    assert taken.result(timeout=TIMEOUT) is True and (budget.used, budget.used_bytes) == (2, 40)


def test_a_take_that_fits_does_not_wait() -> None:
    budget, stop = RowBudget(10), WatchedStop()
    assert budget.take(4, stop) and budget.take(6, stop)
    assert budget.used == 10 and stop.checks.empty()


def test_a_batch_larger_than_the_limit_still_fits_alone() -> None:
    budget = RowBudget(10)
    assert take_in_thread(budget, 25, threading.Event()).result(timeout=TIMEOUT) is True
    assert budget.used == 25


def test_a_waiting_take_gives_up_when_the_run_stops() -> None:
    budget, stop = RowBudget(10), WatchedStop()
    assert budget.take(10, stop)
    taken = take_in_thread(budget, 1, stop)
    stop.wait_for_checks(1)  # it is waiting
    stop.set()
    assert taken.result(timeout=TIMEOUT) is False
    assert budget.used == 10  # nothing taken for the batch that never started


@pytest.mark.parametrize("fails", [False, True], ids=["encoded", "encoding_failed"])
def test_rows_come_back_when_the_encoding_ends_however_it_ends(fails: bool) -> None:
    budget = RowBudget(10)
    assert budget.take(7, threading.Event())
    encoding: Future[bytes] = Future()
    assert budget.held_until_done(encoding, 7) is encoding
    assert budget.used == 7  # held while the encoding runs
    if fails:
        encoding.set_exception(OSError("disk full"))
    else:
        encoding.set_result(b"encoded")
    assert budget.used == 0


# -- the reader's use of the budget ------------------------------------------------------------

BATCH_ROWS = 20  # batch_size and, below, reader.WINDOW_ROWS: the budget is 2 windows of 20 rows
LIMIT = 2 * BATCH_ROWS  # UNENCODED_WINDOWS (2) * max(batch_size, WINDOW_ROWS)


@dataclass
class Wait:
    """The first take that had to wait: what the budget held then, and what it waited to take."""

    used: int
    rows: int
    taken: list[int]


class BudgetWatch:
    """Every take of the run's RowBudget, seen from outside (the real take still decides)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.taken: list[int] = []
        self.peak = 0
        self.budgets: list[RowBudget] = []
        self.first_wait: queue.Queue[Wait] = queue.Queue()
        real_take = RowBudget.take

        def take(budget: RowBudget, rows: int, stop: threading.Event, *, nbytes: int = 0) -> bool:
            if budget not in self.budgets:
                self.budgets.append(budget)
            # the reader is the only taker; gives come from encodings, held back by the gate
            if budget.used and budget.used + rows > budget.limit and self.first_wait.empty():
                self.first_wait.put(Wait(budget.used, rows, list(self.taken)))
            ok = real_take(budget, rows, stop, nbytes=nbytes)
            if ok:
                self.taken.append(rows)
                self.peak = max(self.peak, budget.used)
            return ok

        monkeypatch.setattr(RowBudget, "take", take)


@pytest.fixture()
def encoder_gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """Encoding (the real batch_writer.encode) starts only once the gate opens."""
    gate = threading.Event()
    encode = batch_writer.encode

    def gated(*args: Any, **kwargs: Any) -> bytes:
        assert gate.wait(TIMEOUT), "encoder gate never opened"
        return encode(*args, **kwargs)

    monkeypatch.setattr(batch_writer, "encode", gated)
    yield gate
    gate.set()  # never leave a run blocked behind a failed assertion


def expected_batches(conn: psycopg.Connection[Any], cutoff: datetime) -> list[int]:
    """Rows per batch, as the reader must cut them: one batch per expired UTC day, oldest first
    (each day of this table holds 10 rows at most, fewer than a batch)."""
    rows = conn.execute("SELECT count(*) FROM audit_logs WHERE created_at < %s"
                        " GROUP BY (created_at AT TIME ZONE 'UTC')::date ORDER BY (created_at AT TIME ZONE 'UTC')::date",
                        (cutoff,)).fetchall()
    return [int(r[0]) for r in rows]


def admitted(batches: list[int], limit: int) -> list[int]:
    """The batches a budget of `limit` admits while nothing is given back: each one that fits,
    or the first one alone."""
    out: list[int] = []
    for rows in batches:
        if out and sum(out) + rows > limit:
            break
        out.append(rows)
    return out


def test_the_reader_waits_for_the_encoders_once_the_budget_is_full(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                                  pg_dsn: str, audit_table: psycopg.Connection[Any],
                                                                  encoder_gate: threading.Event) -> None:
    """Batches as large as windows (batch_size 20, 20-row windows) and encoders that cannot start:
    the reader hands out exactly the batches that fit in UNENCODED_WINDOWS windows' rows, then
    waits; once the encoders run, every row is archived exactly once."""
    monkeypatch.setattr(reader, "WINDOW_ROWS", BATCH_ROWS)
    watch = BudgetWatch(monkeypatch)
    now = datetime.now(timezone.utc)
    batches = expected_batches(audit_table, now - timedelta(days=90))
    first = admitted(batches, LIMIT)
    assert 1 < len(first) < len(batches)  # the scenario fills the budget well before the end
    original = table_ids(audit_table)
    cfg = load_config(make_config(tmp_path, dsn=pg_dsn, defaults={"batch_size": BATCH_ROWS}))
    run = in_thread(run_archive, cfg, now=now)
    try:
        wait = watch.first_wait.get(timeout=TIMEOUT)
        assert (wait.taken, wait.used, wait.rows) == (first, sum(first), batches[len(first)])
        assert [b.limit for b in watch.budgets] == [LIMIT]
    finally:
        encoder_gate.set()
        # even after a failed assertion: the run must end before its database is dropped
        futures.wait([run], timeout=120)
    results, code = run.result(timeout=0)
    assert code == ExitCode.OK and results[0].status == "completed" and results[0].objects == len(batches)
    assert watch.taken == batches  # every batch went through the budget, in order
    assert 0 < watch.peak <= LIMIT
    assert watch.budgets[0].used == 0  # every row taken was given back
    assert_invariant(original, table_ids(audit_table), archived_ids(LocalStorage(tmp_path / "archive")))
