"""The bound on rows read but not yet encoded (archiver/budget.py): the reader waits for the
encoders instead of holding many windows in memory."""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from archive_checks import archived_ids, assert_invariant, table_ids
from archiver import reader, table_job
from archiver.budget import RowBudget
from archiver.runner import run_archive
from common.config import load_config
from common.exit_codes import ExitCode
from common.storage import LocalStorage
from conftest import make_config


def test_a_take_that_does_not_fit_waits_for_rows_given_back() -> None:
    budget, stop = RowBudget(10), threading.Event()
    assert budget.take(8, stop)
    taken = threading.Event()
    waiter = threading.Thread(target=lambda: budget.take(5, stop) and taken.set())
    waiter.start()
    assert not taken.wait(0.3)
    budget.give(8)
    assert taken.wait(2)
    waiter.join()
    assert budget.used == 5


def test_a_batch_larger_than_the_limit_still_fits_alone() -> None:
    budget = RowBudget(10)
    assert budget.take(25, threading.Event()) and budget.used == 25


def test_a_waiting_take_gives_up_when_the_run_stops() -> None:
    budget, stop = RowBudget(10), threading.Event()
    budget.take(10, stop)
    threading.Timer(0.2, stop.set).start()
    assert budget.take(1, stop) is False and budget.used == 10


def test_slow_encoding_keeps_unencoded_rows_within_the_budget(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                              pg_dsn: str, audit_table: Any) -> None:
    """Batches as large as windows (batch_size 20, 20-row windows) and an encoder far slower than
    the reader: at no time are more than UNENCODED_WINDOWS windows' rows waiting to be encoded,
    and every row is still archived exactly once."""
    monkeypatch.setattr(reader, "WINDOW_ROWS", 20)
    held, peak, lock = [0], [0], threading.Lock()
    encode = table_job.TableJob._encode

    def slow_encode(self: table_job.TableJob, batch: reader.Batch) -> Any:
        with lock:
            held[0] += batch.count
            peak[0] = max(peak[0], held[0])
        time.sleep(0.02)
        try:
            return encode(self, batch)
        finally:
            with lock:
                held[0] -= batch.count

    taken = RowBudget.take

    def counted_take(self: RowBudget, rows: int, stop: threading.Event) -> bool:
        ok = taken(self, rows, stop)
        with lock:
            peak[0] = max(peak[0], self.used)
        return ok

    monkeypatch.setattr(table_job.TableJob, "_encode", slow_encode)
    monkeypatch.setattr(RowBudget, "take", counted_take)
    original = table_ids(audit_table)
    results, code = run_archive(load_config(make_config(tmp_path, dsn=pg_dsn, defaults={"batch_size": 20})))
    assert code == ExitCode.OK and results[0].status == "completed" and results[0].objects > 50
    assert 0 < peak[0] <= 2 * 20  # UNENCODED_WINDOWS (2) windows of 20 rows
    assert_invariant(original, table_ids(audit_table), archived_ids(LocalStorage(tmp_path / "archive")))
