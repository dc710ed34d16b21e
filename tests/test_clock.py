"""The database's clock decides what has expired (issue 18): with this host's clock (injected) a day
off, the archiver's run, its dry run and the wizard's count still take the cutoff from the
database's now(), and the skew is logged."""
from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import make_config

from archive_checks import table_ids
from archiver.runner import dry_run, run_archive
from common.config import load_config
from wizard.introspect import eligibility, inspect, list_tables, resolve_table

#: this host's clock against the database's: a day fast, a day slow
OFFSETS = pytest.mark.parametrize("offset", [timedelta(days=1), timedelta(days=-1)], ids=["host_fast", "host_slow"])


@pytest.fixture()
def two_rows(pg: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    """Row 1 expired an hour ago by the database's clock (retention 90 days); row 2 expires in an hour."""
    pg.execute("CREATE TABLE audit_logs (id int PRIMARY KEY, created_at timestamptz NOT NULL)")
    pg.execute("INSERT INTO audit_logs VALUES (1, now() - interval '90 days 1 hour'), (2, now() - interval '89 days 23 hours')")
    return pg


def host_clock(offset: timedelta) -> datetime:
    return datetime.now(timezone.utc) + offset


@OFFSETS
def test_the_cutoff_follows_the_database_clock_when_the_hosts_is_a_day_off(
        offset: timedelta, two_rows: psycopg.Connection[Any], pg_dsn: str, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    results, code = run_archive(load_config(make_config(tmp_path, dsn=pg_dsn)), now=host_clock(offset))
    assert code == 0 and results[0].rows == 1
    assert table_ids(two_rows) == {2}
    assert results[0].clock_skew_seconds == pytest.approx(offset.total_seconds(), abs=60)
    word = "ahead of" if offset > timedelta(0) else "behind"
    assert any(f"clock skew: this host's clock is 86" in r.message and word in r.message for r in caplog.records)


@OFFSETS
def test_the_dry_run_counts_by_the_database_clock(offset: timedelta, two_rows: psycopg.Connection[Any],
                                                  pg_dsn: str, tmp_path: Path) -> None:
    lines, _code = dry_run(load_config(make_config(tmp_path, dsn=pg_dsn)), now=host_clock(offset))
    assert any("eligible rows 1," in line for line in lines), lines


@OFFSETS
def test_the_wizard_counts_by_the_database_clock(offset: timedelta, two_rows: psycopg.Connection[Any]) -> None:
    details = inspect(two_rows, resolve_table(list_tables(two_rows), "audit_logs"))
    e = eligibility(two_rows, details, timestamp_column="created_at", retention_days=90, now=host_clock(offset))
    assert e.eligible == 1


def test_clocks_within_a_few_seconds_log_nothing(two_rows: psycopg.Connection[Any], pg_dsn: str, tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    run_archive(load_config(make_config(tmp_path, dsn=pg_dsn)), now=host_clock(timedelta(seconds=2)))
    assert not [r for r in caplog.records if "clock skew" in r.message]
