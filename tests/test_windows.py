"""Read windows and the range delete (archiver/reader.py, Selection.range_delete_query): small
windows force every boundary case (days longer than a window, ties on the timestamp, the unfinished
day read again, windows that end on a day, gaps longer than a window), and a row written into an
already exported range must never be deleted unseen."""
from __future__ import annotations

import logging
from collections import Counter
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest

from archive_checks import archived_ids, assert_invariant, manifests, table_ids
from archiver import reader
from archiver.controls import RunControls
from archiver.runner import run_archive
from common import batch_writer
from common.archive import layout
from common.config import load_config
from common.exit_codes import ExitCode
from common.archive.storage import LocalStorage
from conftest import make_config


def utc_day(value: date) -> date:
    if isinstance(value, datetime):
        return (value.astimezone(timezone.utc) if value.tzinfo else value).date()
    return value


def assert_truthful_objects(store: LocalStorage, *, batch_size: int) -> None:
    for m in manifests(store):
        table = batch_writer.decode(store.get(m.key), fmt="parquet", columns=["created_at"])[0]
        days = {utc_day(ts) for ts in table.column("created_at").to_pylist()}
        assert days == {layout.parse_key("", m.key).day}, m.key
        assert 0 < m.rows <= batch_size


@pytest.mark.parametrize("window,batch_size", [(7, 5), (50, 5), (3, 40)],
                         ids=["days-span-windows", "windows-span-days", "window-below-batch"])
def test_small_windows_archive_every_row_once_one_day_per_object(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                                  pg_dsn: str, audit_table: Any, window: int,
                                                                  batch_size: int) -> None:
    monkeypatch.setattr(reader, "WINDOW_ROWS", window)  # audit_table: ~10 rows a day
    original = table_ids(audit_table)
    results, code = run_archive(load_config(make_config(tmp_path, dsn=pg_dsn, defaults={"batch_size": batch_size})))
    assert code == ExitCode.OK and results[0].status == "completed"
    store = LocalStorage(tmp_path / "archive")
    archived = archived_ids(store)
    assert_invariant(original, table_ids(audit_table), archived)
    left = audit_table.execute("SELECT count(*) FROM audit_logs WHERE created_at < now() - interval '90 days'").fetchone()
    assert left == (0,) and results[0].rows == len(archived) > 1000
    assert_truthful_objects(store, batch_size=batch_size)


def test_rows_sharing_one_timestamp_are_paged_by_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, pg_dsn: str,
                                                     pg: psycopg.Connection[Any]) -> None:
    monkeypatch.setattr(reader, "WINDOW_ROWS", 7)
    pg.execute("CREATE TABLE audit_logs (id bigint PRIMARY KEY, created_at timestamptz NOT NULL)")
    pg.execute("INSERT INTO audit_logs SELECT g, '2024-05-01 12:00:00+00' FROM generate_series(1, 33) g")
    results, code = run_archive(load_config(make_config(tmp_path, dsn=pg_dsn, defaults={"batch_size": 5})))
    assert code == ExitCode.OK and results[0].objects == 7  # 33 rows of one day in fives
    assert_invariant(set(range(1, 34)), table_ids(pg), archived_ids(LocalStorage(tmp_path / "archive")))


def test_a_day_longer_than_a_batch_switches_to_key_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, pg_dsn: str,
                                                         pg: psycopg.Connection[Any]) -> None:
    # days of 3 rows, then a day of 12 (cut in fives by key), then days of 3 again
    monkeypatch.setattr(reader, "WINDOW_ROWS", 7)
    pg.execute("CREATE TABLE audit_logs (id bigint PRIMARY KEY, created_at timestamptz NOT NULL)")
    pg.execute("INSERT INTO audit_logs SELECT g, '2024-05-01 00:00+00'::timestamptz + (g / 3) * interval '1 day'"
               " + g * interval '1 minute' FROM generate_series(0, 14) g")
    pg.execute("INSERT INTO audit_logs SELECT 100 + g, '2024-05-06 12:00+00' FROM generate_series(0, 11) g")
    pg.execute("INSERT INTO audit_logs SELECT 200 + g, '2024-05-07 00:00+00'::timestamptz + (g / 3) * interval '1 day'"
               " FROM generate_series(0, 8) g")
    original = table_ids(pg)
    results, code = run_archive(load_config(make_config(tmp_path, dsn=pg_dsn, defaults={"batch_size": 5})))
    store = LocalStorage(tmp_path / "archive")
    assert code == ExitCode.OK and sorted(m.rows for m in manifests(store)) == [2] + [3] * 8 + [5, 5]
    assert_invariant(original, table_ids(pg), archived_ids(store))
    assert_truthful_objects(store, batch_size=5)


class RowsRead:
    """Counts the rows every read window returns (the real reader runs underneath)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.rows, self._read = 0, reader.read_window
        monkeypatch.setattr(reader, "read_window", self)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        table, encodings = self._read(*args, **kwargs)
        self.rows += table.num_rows
        return table, encodings


def six_rows_a_day(pg: psycopg.Connection[Any], first_day: int, last_day: int) -> None:
    pg.execute("INSERT INTO audit_logs (created_at) SELECT '2024-01-01 00:00+00'::timestamptz + d * interval '1 day'"
               " + h * interval '3 hours' FROM generate_series(%s::int, %s::int) d, generate_series(0, 5) h",
               (first_day, last_day))


def test_windows_after_the_first_end_on_a_day_and_read_no_row_twice(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                                  pg_dsn: str, pg: psycopg.Connection[Any]) -> None:
    # windows of 20 rows over days of 6: the first reads 3 days and 2 rows of the 4th again; then
    # windows of 3 whole days (18 rows). One LIMIT alone re-read 2 rows of every window. Before the
    # first window, PROBE_ROWS rows are read once to size it (WINDOW_BYTES).
    monkeypatch.setattr(reader, "WINDOW_ROWS", 20)
    pg.execute("CREATE TABLE audit_logs (id bigserial PRIMARY KEY, created_at timestamptz NOT NULL)")
    six_rows_a_day(pg, 0, 39)
    read = RowsRead(monkeypatch)
    results, code = run_archive(load_config(make_config(tmp_path, dsn=pg_dsn, defaults={"batch_size": 10})))
    store = LocalStorage(tmp_path / "archive")
    assert code == ExitCode.OK and results[0].rows == 240 and not table_ids(pg)
    assert read.rows == 240 + 2 + reader.PROBE_ROWS
    assert sorted(m.rows for m in manifests(store)) == [6] * 40


def test_a_gap_longer_than_a_window_is_crossed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, pg_dsn: str,
                                               pg: psycopg.Connection[Any]) -> None:
    # windows of 3 days once the density is known; 30 days without a row, then 10 more days
    monkeypatch.setattr(reader, "WINDOW_ROWS", 20)
    pg.execute("CREATE TABLE audit_logs (id bigserial PRIMARY KEY, created_at timestamptz NOT NULL)")
    six_rows_a_day(pg, 0, 9)
    six_rows_a_day(pg, 40, 49)
    original = table_ids(pg)
    results, code = run_archive(load_config(make_config(tmp_path, dsn=pg_dsn, defaults={"batch_size": 10})))
    store = LocalStorage(tmp_path / "archive")
    assert code == ExitCode.OK and results[0].objects == 20
    assert_invariant(original, table_ids(pg), archived_ids(store))
    assert_truthful_objects(store, batch_size=10)


class WindowSizes:
    """The rows and Arrow bytes of every window read (the real reader runs underneath)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.windows: list[tuple[int, int]] = []
        self._read = reader.read_window
        monkeypatch.setattr(reader, "read_window", self)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        table, encodings = self._read(*args, **kwargs)
        self.windows.append((table.num_rows, table.nbytes))
        return table, encodings


@pytest.mark.parametrize("batch_size", [1000, 7], ids=["bytes-bound", "rows-bound"])
def test_wide_rows_get_windows_and_batches_of_fewer_rows(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, pg_dsn: str,
                                                         pg: psycopg.Connection[Any], batch_size: int) -> None:
    """Rows alone bound nothing on a table of large documents: a window stays within WINDOW_BYTES
    (so memory does, whatever batch_size says), every row is still archived exactly once, and
    each object still holds one day."""
    monkeypatch.setattr(reader, "WINDOW_BYTES", 40_000)  # ~10 of these 4 kB rows
    pg.execute("CREATE TABLE audit_logs (id bigserial PRIMARY KEY, created_at timestamptz NOT NULL, doc text)")
    six_rows_a_day(pg, 0, 19)  # 120 rows, 6 a day
    pg.execute("UPDATE audit_logs SET doc = repeat(md5(id::text), 125)")  # 4,000 bytes each
    original = table_ids(pg)
    sizes = WindowSizes(monkeypatch)
    results, code = run_archive(load_config(make_config(tmp_path, dsn=pg_dsn, defaults={"batch_size": batch_size})))
    store = LocalStorage(tmp_path / "archive")
    assert code == ExitCode.OK and results[0].rows == 120
    assert_invariant(original, table_ids(pg), archived_ids(store))
    probe, *windows = sizes.windows
    assert probe[0] == reader.PROBE_ROWS and len(windows) > 5
    assert all(nbytes <= 2 * reader.WINDOW_BYTES for _rows, nbytes in windows), windows  # one row of slack
    assert_truthful_objects(store, batch_size=min(batch_size, 10))


PK_VALUES = {"bigint": "g", "text": "'k' || g", "uuid": "md5(g::text)::uuid"}


@pytest.mark.parametrize("pk_type", sorted(PK_VALUES))
@pytest.mark.parametrize("ts_type", ["timestamptz", "timestamp", "date"])
@pytest.mark.parametrize("batch_size", [3, 10], ids=["key-order", "day-order"])
def test_partition_and_key_types_in_both_read_orders(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
                                                    tmp_path: Path, pg_dsn: str, pg: psycopg.Connection[Any],
                                                    ts_type: str, pk_type: str, batch_size: int) -> None:
    # 5 rows a day, with ties on the timestamp; 3 a batch cuts days by key, 10 takes whole days
    monkeypatch.setattr(reader, "WINDOW_ROWS", 7)
    caplog.set_level(logging.INFO, logger="archiver")
    pg.execute(f"CREATE TABLE audit_logs (id {pk_type} PRIMARY KEY, created_at {ts_type} NOT NULL, note text)")
    pg.execute(f"INSERT INTO audit_logs SELECT {PK_VALUES[pk_type]}, ('2024-01-01 00:00+00'::timestamptz"
               " + (g / 5) * interval '1 day' + (g % 2) * interval '1 hour')::" + ts_type +
               ", 'n' || g FROM generate_series(0, 59) g")
    original = table_ids(pg)
    results, code = run_archive(load_config(make_config(tmp_path, dsn=pg_dsn, defaults={"batch_size": batch_size})))
    assert code == ExitCode.OK and results[0].status == "completed"
    store = LocalStorage(tmp_path / "archive")
    archived = Counter({str(k): n for k, n in archived_ids(store).items()})  # uuids come back as their text
    assert_invariant({str(k) for k in original}, table_ids(pg), archived)
    assert len(archived) == 60 and not table_ids(pg)
    assert_truthful_objects(store, batch_size=batch_size)
    assert "batch by batch" not in caplog.text  # every range delete matched its rows exactly


class WriteIntoExportedRange:
    """Between export and delete, the application writes a row backdated into the first batch's
    (timestamp, id) range and purges another row of that batch: the counts then balance, so only
    the xmin re-check keeps the new row from being deleted unseen."""

    def __init__(self, dsn: str) -> None:
        self.dsn, self.new_id = dsn, 0

    def __call__(self, point: str) -> None:  # a hook: archiver/hooks.py
        if point == "after_upload" and not self.new_id:
            with psycopg.connect(self.dsn, autocommit=True) as c:
                self.new_id = c.execute("INSERT INTO audit_logs (created_at) VALUES ('2024-01-01 01:30+00') RETURNING id").fetchone()[0]
                c.execute("DELETE FROM audit_logs WHERE created_at = '2024-01-01 02:00+00'")


def test_row_written_into_an_exported_range_is_not_deleted_unseen(caplog: pytest.LogCaptureFixture, tmp_path: Path,
                                                                  pg_dsn: str, pg: psycopg.Connection[Any]) -> None:
    caplog.set_level(logging.INFO, logger="archiver")
    pg.execute("CREATE TABLE audit_logs (id bigserial PRIMARY KEY, created_at timestamptz NOT NULL)")
    pg.execute("INSERT INTO audit_logs (created_at) SELECT '2024-01-01 00:00+00'::timestamptz"
               " + d * interval '1 day' + h * interval '1 hour' FROM generate_series(0, 3) d, generate_series(0, 9) h")
    original = table_ids(pg)
    purged = pg.execute("SELECT id FROM audit_logs WHERE created_at = '2024-01-01 02:00+00'").fetchone()[0]
    cfg = load_config(make_config(tmp_path, dsn=pg_dsn))
    writer = WriteIntoExportedRange(pg_dsn)
    results, code = run_archive(cfg, hook=writer)
    assert code == ExitCode.OK and results[0].rolled_back_batches == 1  # day 1 lost a row: its object went too
    assert "deleting batch by batch" in caplog.text
    assert writer.new_id in table_ids(pg)  # inside an exported range, never exported
    run_archive(cfg)
    archived = archived_ids(LocalStorage(tmp_path / "archive"))
    assert archived[writer.new_id] == 1
    assert_invariant(original - {purged} | {writer.new_id}, table_ids(pg), archived)


def test_a_where_clause_deletes_by_listed_keys(tmp_path: Path, pg_dsn: str, small_audit: Any) -> None:
    # `where` may depend on more than the row (another table, the clock): no range delete then
    tables = [{"name": "audit_logs", "timestamp_column": "created_at", "primary_key": "id", "where": "action <> 'logout'"}]
    original = table_ids(small_audit)
    results, code = run_archive(load_config(make_config(tmp_path, dsn=pg_dsn, tables=tables)))
    assert code == ExitCode.OK
    archived = archived_ids(LocalStorage(tmp_path / "archive"))
    assert_invariant(original, table_ids(small_audit), archived)
    kept = small_audit.execute("SELECT count(*) FROM audit_logs WHERE action = 'logout'"
                               " AND created_at < now() - interval '90 days'").fetchone()
    assert kept is not None and kept[0] > 0 and results[0].rows == len(archived)


@pytest.mark.parametrize("batch_size,first_run", [(2, 2), (10, 5)], ids=["key-order", "day-order"])
def test_kept_rows_continue_after_the_last_row_not_the_largest_key(tmp_path: Path, pg_dsn: str, pg: psycopg.Connection[Any],
                                                                  batch_size: int, first_run: int) -> None:
    # delete_after_archive: false continues from a position. A batch's largest key need not be its
    # last row's: after [(00:00, 10), (00:01, 1)] come (00:01, 2..4), which must not be skipped.
    pg.execute("CREATE TABLE audit_logs (id bigint PRIMARY KEY, created_at timestamptz NOT NULL)")
    pg.execute("INSERT INTO audit_logs VALUES (10, '2024-05-01 00:00+00')")
    pg.execute("INSERT INTO audit_logs SELECT g, '2024-05-01 00:01+00' FROM generate_series(1, 4) g")
    pg.execute("INSERT INTO audit_logs SELECT g, '2024-05-02 00:00+00'::timestamptz + g * interval '1 minute'"
               " FROM generate_series(5, 9) g")
    path = make_config(tmp_path, dsn=pg_dsn, defaults={"batch_size": batch_size, "delete_after_archive": False})
    first, _ = run_archive(load_config(path), controls=RunControls(max_rows=first_run))
    results, code = run_archive(load_config(path))
    assert code == ExitCode.OK and (first[0].rows, results[0].rows) == (first_run, 10 - first_run)
    archived = archived_ids(LocalStorage(tmp_path / "archive"))
    assert archived == Counter(range(1, 11)) and len(table_ids(pg)) == 10
