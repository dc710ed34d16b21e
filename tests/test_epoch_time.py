"""Integer Unix-time columns (issue 28): exact conversions, what inspecting the table refuses, the row
at the cutoff in each unit end to end, the index on the column used as it is, each unit through
archive, dry run, query and restore by date, and validate, and the backlog gauges."""
from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pytest

from archive_checks import archived_ids, assert_invariant, manifests, table_ids
from archiver.controls import RunControls
from archiver.dry_run import plan
from archiver.runner import run_archive
from archiver.selection import Selection
from archiver.table_check import inspect_table
from common.cli import Environment
from common.config import TableConfig, load_config
from common.epoch import EPOCH, epoch_days, from_epoch, to_epoch
from common.errors import UsageError
from common.expiry import ClockReading
from common.exit_codes import ExitCode
from common.archive.storage import LocalStorage
from conftest import make_config, throwaway_database
from query.app import QueryOptions, run as run_query
from restore.engine import restore
from validate.app import ValidateOptions, run as run_validate

UTC = timezone.utc
DAY = 86400.0


# -- conversions -----------------------------------------------------------------------------------
@pytest.mark.parametrize("unit, micros, value", [
    ("s", 0, 1733832000), ("s", 500_000, 1733832001), ("ms", 500_000, 1733832000500), ("ms", 500_300, 1733832000501),
    ("us", 500_300, 1733832000500300)])
def test_an_instant_becomes_the_first_whole_unit_at_or_after_it(unit: str, micros: int, value: int) -> None:
    when = datetime(2024, 12, 10, 12, 0, 0, micros, tzinfo=UTC)
    assert to_epoch(when, unit) == value
    assert from_epoch(value, unit) >= when > from_epoch(value - 1, unit)


def test_an_instant_before_1970_rounds_up_too() -> None:
    assert to_epoch(datetime(1969, 12, 31, 23, 59, 59, 500_000, tzinfo=UTC), "s") == 0
    assert to_epoch(datetime(1, 1, 1, tzinfo=UTC), "us") == -62135596800 * 1_000_000


@pytest.mark.parametrize("values", [pa.array([-1, 0, 86_399_999, 86_400_000], pa.int64()),
                                    pa.array([Decimal(v) for v in (-1, 0, 86_399_999, 86_400_000)], pa.decimal128(20, 0)),
                                    pa.array(["-1", "0", "86399999", "86400000"])],
                         ids=["bigint", "numeric", "jsonl-text"])
def test_a_unix_time_falls_on_its_utc_day_before_1970_too(values: pa.Array) -> None:
    assert epoch_days(values, "ms").tolist() == [-1, 0, 0, 1]


# -- inspecting the table --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def kinds() -> Iterator[psycopg.Connection[Any]]:
    """One row whose every column holds 2024-12-10T12:00Z in its own way (smallint: 100 s)."""
    with throwaway_database() as dsn, psycopg.connect(dsn, autocommit=True) as pg:
        pg.execute("CREATE TABLE kinds (id int PRIMARY KEY, small smallint, whole integer, big bigint,"
                   " dec numeric(20,0), frac numeric(15,3), plain numeric, at timestamptz, day date, txt text)")
        pg.execute("INSERT INTO kinds VALUES (1, 100, 1733832000, 1733832000000, 1733832000000000, 1733832000.5,"
                   " 1733832000, '2024-12-10T12:00Z', '2024-12-10', '1733832000')")
        yield pg


def inspected(pg: psycopg.Connection[Any], column: str, unit: str | None) -> Any:
    return inspect_table(pg, TableConfig(name="kinds", timestamp_column=column, timestamp_unit=unit))


@pytest.mark.parametrize("column, unit", [("small", "s"), ("whole", "s"), ("big", "ms"), ("dec", "us")])
def test_an_integer_column_with_its_unit_is_accepted(kinds: psycopg.Connection[Any], column: str, unit: str) -> None:
    _oid, _schema, keys = inspected(kinds, column, unit)
    assert keys == ("id",)


@pytest.mark.parametrize("column, pg_type", [("small", "smallint"), ("whole", "integer"), ("big", "bigint"),
                                             ("dec", "numeric(20,0)")])
def test_an_integer_column_without_a_unit_is_refused(kinds: psycopg.Connection[Any], column: str, pg_type: str) -> None:
    said = f"public.kinds: timestamp_column '{column}' is {pg_type}: give the unit of its Unix time, timestamp_unit: s, ms or us"
    with pytest.raises(UsageError, match=f"^{re.escape(said)}$"):
        inspected(kinds, column, None)


@pytest.mark.parametrize("column", ["frac", "plain", "txt"])
def test_a_column_that_cannot_hold_whole_unix_times_is_refused(kinds: psycopg.Connection[Any], column: str) -> None:
    with pytest.raises(UsageError, match="not a timestamp or date, nor an integer of Unix time"):
        inspected(kinds, column, "ms")


@pytest.mark.parametrize("column", ["at", "day"])
def test_a_unit_on_a_timestamp_or_date_column_is_refused(kinds: psycopg.Connection[Any], column: str) -> None:
    with pytest.raises(UsageError, match="timestamp_unit ms is for an integer timestamp_column; .*: remove timestamp_unit"):
        inspected(kinds, column, "ms")


@pytest.mark.parametrize("column, unit, right", [("whole", "ms", "s"), ("whole", "us", "s"), ("big", "us", "ms")])
def test_a_unit_too_fine_for_the_newest_value_is_refused(kinds: psycopg.Connection[Any], column: str, unit: str,
                                                          right: str) -> None:
    """Seconds read as milliseconds are January 1970: every row would be archived and deleted."""
    with pytest.raises(UsageError, match=rf"so every row would be archived; in {right} it is 2024-12-10T12:00:00Z:"
                                         rf" set timestamp_unit: {right}$"):
        inspected(kinds, column, unit)


def test_a_unit_too_coarse_for_the_newest_value_is_a_warning(kinds: psycopg.Connection[Any],
                                                             caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="archiver"):
        inspected(kinds, "big", "s")
    assert any("so no row would expire; in ms it is 2024-12-10T12:00:00Z" in m for m in caplog.messages)


# -- the row at the cutoff -------------------------------------------------------------------------
#: The database's clock for these runs: cutoff = NOW - 90 days = 2024-12-10T12:00:00 + micros.
NOW = datetime(2025, 3, 10, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize("unit, pg_type, micros, before, at", [
    ("s", "integer", 0, 1733831999, 1733832000),
    ("s", "integer", 500_000, 1733832000, 1733832001),
    ("ms", "bigint", 500_000, 1733832000499, 1733832000500),
    ("ms", "bigint", 500_300, 1733832000500, 1733832000501),
    ("us", "numeric(20,0)", 500_300, 1733832000500299, 1733832000500300)])
def test_the_row_just_before_the_cutoff_goes_and_the_row_at_it_stays(
        tmp_path: Path, pg_dsn: str, pg: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch,
        unit: str, pg_type: str, micros: int, before: int, at: int) -> None:
    clock = ClockReading(NOW.replace(microsecond=micros), 0.0)
    monkeypatch.setattr("archiver.table_job.database_now", lambda *a, **kw: clock)
    monkeypatch.setattr("archiver.dry_run.database_now", lambda *a, **kw: clock)
    pg.execute(f"CREATE TABLE ticks (id int PRIMARY KEY, at {pg_type}, note text)")
    pg.execute("INSERT INTO ticks VALUES (1, %s, 'before'), (2, %s, 'at'), (3, %s, 'after'), (4, NULL, 'no time')",
               (before, at, at + 1))
    cfg = load_config(make_config(tmp_path, dsn=pg_dsn, tables=[{"name": "ticks", "timestamp_column": "at",
                                                                 "timestamp_unit": unit}]))
    lines, code = plan(cfg, now=NOW)
    assert code == ExitCode.OK and "eligible rows 1," in lines[4] and f"expired: at < {at} (Unix time in {unit})" in lines[4]
    (result,), code = run_archive(cfg)
    assert code == ExitCode.OK and result.rows == 1 and result.untimed_rows == 1
    store = LocalStorage(tmp_path / "archive")
    assert archived_ids(store) == {1: 1} and table_ids(pg, "ticks") == {2, 3, 4}
    (m,) = manifests(store)
    assert m.min_ts == m.max_ts == from_epoch(before, unit).isoformat() and "/year=2024/month=12/day=10/" in m.key


@pytest.mark.parametrize("unit, pg_type", [("s", "integer"), ("ms", "bigint"), ("us", "numeric(20,0)")])
def test_the_column_is_compared_as_it_is_so_its_index_serves(pg: psycopg.Connection[Any], unit: str, pg_type: str) -> None:
    """The bounds are the column's integers (bigint or numeric literals): no function around the
    column, so the reads and the range deletes walk its index."""
    scale = {"s": 1, "ms": 1000, "us": 1_000_000}[unit]
    pg.execute(f"CREATE TABLE ticks (id bigint PRIMARY KEY, at {pg_type})")
    pg.execute("CREATE INDEX ticks_at ON ticks (at)")
    pg.execute(f"INSERT INTO ticks SELECT g, (1733832000 + g * 60) * {scale}::bigint FROM generate_series(1, 2000) g")
    pg.execute("ANALYZE ticks")
    t = TableConfig(name="ticks", timestamp_column="at", timestamp_unit=unit)
    _oid, schema, keys = inspect_table(pg, t)
    sel = Selection(t, schema, datetime(2024, 12, 11, tzinfo=UTC), keys)
    day, next_day = sel.day_start(date(2024, 12, 10)), sel.day_start(date(2024, 12, 11))
    assert (day, next_day) == (1733788800 * scale, 1733875200 * scale)
    export, _ = sel.export_query(limit=100, lower=(day, None), by_key=False, all_text=False, upper=next_day)
    delete = sel.range_delete_query((day, None), (next_day, None), pa.array([1], pa.uint32()))
    pg.execute("SET enable_seqscan = off")  # a function around the column would leave it no other way
    for query in (export, delete):
        explained = "\n".join(r[0] for r in pg.execute(b"EXPLAIN " + query.as_bytes(pg)).fetchall())
        assert re.search(rf"Index (Only )?Scan using ticks_at .*\n.*Index Cond: .*\(at >= '?{day}'?::", explained), explained


# -- every tool, each unit -------------------------------------------------------------------------
@pytest.mark.parametrize("unit, pg_type, fmt", [("s", "integer", "parquet"), ("us", "numeric(20,0)", "parquet"),
                                                ("ms", "bigint", "jsonl")])
def test_each_unit_goes_through_archive_query_restore_and_validate(tmp_path: Path, pg_dsn: str, pg: psycopg.Connection[Any],
                                                                   unit: str, pg_type: str, fmt: str) -> None:
    scale = {"s": 1, "ms": 1000, "us": 1_000_000}[unit]
    pg.execute(f"CREATE TABLE app_events (id bigint PRIMARY KEY, happened {pg_type}, what text, body jsonb)")
    pg.execute("CREATE INDEX ON app_events (happened)")
    pg.execute(f"""INSERT INTO app_events SELECT g, CASE WHEN g % 25 <> 0 THEN
                     floor(extract(epoch FROM now() - interval '1 hour' - g * interval '2 days') * {scale}) + g END,
                   'e' || g, jsonb_build_object('g', g, 's', E'q"\\t') FROM generate_series(1, 70) g""")
    pg.execute("CREATE TABLE orig AS SELECT * FROM app_events")
    tables = [{"name": "app_events", "timestamp_column": "happened", "timestamp_unit": unit}]
    config = make_config(tmp_path, dsn=pg_dsn, tables=tables, defaults={"format": fmt})
    cfg = load_config(config)
    (result,), code = run_archive(cfg)
    store = LocalStorage(tmp_path / "archive")
    archived = archived_ids(store)
    assert code == ExitCode.OK and result.rows == len(archived) > 20 and result.untimed_rows == 2
    assert_invariant(table_ids(pg, "orig"), table_ids(pg, "app_events"), archived)
    start = (datetime.now(UTC) - timedelta(days=120)).date()
    end = start + timedelta(days=9)
    lo, hi = ((datetime(d.year, d.month, d.day, tzinfo=UTC) - EPOCH) // timedelta(microseconds=1_000_000 // scale)
              for d in (start, end + timedelta(days=1)))
    in_days = "SELECT {} FROM {} WHERE happened >= %(lo)s AND happened < %(hi)s"
    want = {r[0] for r in pg.execute(in_days.format("id", "orig"), {"lo": lo, "hi": hi}).fetchall()}
    out, err = io.StringIO(), io.StringIO()
    assert run_query(QueryOptions(config_path=config, database="production_db", table="app_events", output_format="jsonl",
                                  start_date=start.isoformat(), end_date=end.isoformat(), columns=("id",)),
                     env=Environment(stdout=out, stderr=err)) == 0, err.getvalue()
    assert len(want) >= 4 and {json.loads(line)["id"] for line in out.getvalue().splitlines()} == want
    assert run_validate(ValidateOptions(config_path=config, output_format="json"), env=Environment(stdout=out)) == 0
    report = restore(cfg, database="production_db", table="app_events", restore_all=True,
                     start_date=start, end_date=end)
    assert report.total("inserted") == len(want)
    back, orig = in_days.format("*", "app_events"), in_days.format("*", "orig")
    for a, b in ((back, orig), (orig, back)):  # every column as it was, the time column's integers too
        assert pg.execute(f"{a} EXCEPT ALL {b}", {"lo": lo, "hi": hi}).fetchall() == []


def test_the_backlog_age_comes_from_the_unix_time(tmp_path: Path, pg_dsn: str, pg: psycopg.Connection[Any]) -> None:
    pg.execute("CREATE TABLE audit_logs (id int PRIMARY KEY, created_epoch bigint NOT NULL)")
    pg.execute("INSERT INTO audit_logs SELECT g, extract(epoch FROM now() - make_interval(days => 90 + g))::bigint"
               " FROM generate_series(1, 30) g")
    tables = [{"name": "audit_logs", "timestamp_column": "created_epoch", "timestamp_unit": "s"}]
    cfg = load_config(make_config(tmp_path, dsn=pg_dsn, tables=tables, monitoring={"enabled": False, "backlog_exact_count": True}))
    (result,), code = run_archive(cfg, controls=RunControls(max_rows=10))
    left = 30 - result.rows
    assert code == ExitCode.OK and result.status == "stopped" and result.backlog_rows == left > 0
    assert result.backlog_oldest_seconds == pytest.approx((90 + left) * DAY, abs=120)


def test_rows_kept_resume_after_the_last_unix_time_archived(tmp_path: Path, pg_dsn: str, pg: psycopg.Connection[Any]) -> None:
    """delete_after_archive: false continues from the checkpoint's position, whose time is the
    column's integer (as text in the JSON): each expired row archived once over two runs."""
    pg.execute("CREATE TABLE audit_logs (id int PRIMARY KEY, at_ms bigint NOT NULL)")
    pg.execute("INSERT INTO audit_logs SELECT g, (extract(epoch FROM now() - make_interval(days => 80 + g, hours => 1)) * 1000)::bigint"
               " FROM generate_series(1, 30) g")
    tables = [{"name": "audit_logs", "timestamp_column": "at_ms", "timestamp_unit": "ms"}]
    cfg = load_config(make_config(tmp_path, dsn=pg_dsn, tables=tables, defaults={"delete_after_archive": False}))
    (first,), _code = run_archive(cfg, controls=RunControls(max_rows=8))
    (second,), code = run_archive(cfg)
    assert first.status == "stopped" and 8 <= first.rows < 21 and code == ExitCode.OK and second.rows == 21 - first.rows
    archived = archived_ids(LocalStorage(tmp_path / "archive"))
    assert archived == {i: 1 for i in range(10, 31)} and table_ids(pg) == set(range(1, 31))


def test_a_day_larger_than_a_batch_is_cut_by_time_and_key(tmp_path: Path, pg_dsn: str, pg: psycopg.Connection[Any]) -> None:
    """Several rows share each second: batches of one day end at a (time, key) bound, and the
    range deletes compare the integer column with bigint bounds (an integer column here)."""
    pg.execute("CREATE TABLE audit_logs (id int PRIMARY KEY, at_s integer NOT NULL)")
    pg.execute("INSERT INTO audit_logs SELECT g, extract(epoch FROM date_trunc('day', now()) - interval '100 days')::int"
               " + (g / 9) * 86400 + (g % 3) FROM generate_series(1, 26) g")
    tables = [{"name": "audit_logs", "timestamp_column": "at_s", "timestamp_unit": "s"}]
    cfg = load_config(make_config(tmp_path, dsn=pg_dsn, tables=tables, defaults={"batch_size": 4}))
    (result,), code = run_archive(cfg)
    store = LocalStorage(tmp_path / "archive")
    assert code == ExitCode.OK and result.rows == 26 and table_ids(pg) == set()
    assert_invariant(set(range(1, 27)), set(), archived_ids(store))
    found = manifests(store)
    assert len(found) >= 7 and all(m.rows <= 4 and m.min_ts[:10] == m.max_ts[:10] for m in found)
