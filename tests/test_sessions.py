"""connection_pool_size caps the database sessions a tool holds per database (issue 14): the
archiver needs exactly two (a writer and a reader) and refuses a smaller cap before it starts;
validate's parallel database checks share a pool no larger than the cap. Sessions are counted in
the real server's pg_stat_activity while the tool works."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from archive_checks import table_ids
from archiver.ops.events import NullObserver, TableResult
from archiver.runner import run_archive
from common.config import load_config
from common.errors import ConfigError
from common.exit_codes import ExitCode
from conftest import ADMIN_DSN, make_config
from validate.checks import validate
from validate.objects import Checked


def sessions_on(dsn: str, app_like: str) -> int:
    """Client sessions other than ours on the test database whose application_name matches."""
    dbname = conninfo_to_dict(dsn)["dbname"]
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        row = admin.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name LIKE %s"
                            " AND pid <> pg_backend_pid()", (dbname, app_like)).fetchone()
    return int(row[0]) if row else 0


class SessionCounter(NullObserver):
    """Counts the archiver's sessions after every stored batch (the writer and the reader are open)."""

    def __init__(self, dsn: str) -> None:
        self.dsn, self.seen = dsn, []  # type: list[int]

    def batch_done(self, result: TableResult, *, rows: int, nbytes: int, seconds: float, location: str) -> None:
        self.seen.append(sessions_on(self.dsn, "pg-archiver%"))


@pytest.mark.parametrize("pool_size", [2, 5, 20])
def test_archiver_holds_two_sessions_per_database_whatever_the_pool_size(
        tmp_path: Path, pg_dsn: str, small_audit: psycopg.Connection[Any], pool_size: int) -> None:
    cfg = load_config(make_config(tmp_path, dsn=pg_dsn, defaults={"connection_pool_size": pool_size}))
    counter = SessionCounter(pg_dsn)
    results, code = run_archive(cfg, observer=counter)
    assert code == ExitCode.OK and results[0].rows > 0
    assert counter.seen and max(counter.seen) == 2


def test_pool_size_below_two_is_refused_before_anything_moves(tmp_path: Path, pg_dsn: str,
                                                               small_audit: psycopg.Connection[Any]) -> None:
    before = table_ids(small_audit)
    cfg = load_config(make_config(tmp_path, dsn=pg_dsn, defaults={"connection_pool_size": 1}))
    with pytest.raises(ConfigError, match=r"connection_pool_size 1 is too small: the archiver holds 2 sessions"):
        run_archive(cfg)
    assert table_ids(small_audit) == before
    assert not (tmp_path / "archive").exists()


def test_validate_checks_share_a_pool_capped_by_connection_pool_size(tmp_path: Path, pg_dsn: str,
                                                                      small_audit: psycopg.Connection[Any]) -> None:
    cfg = load_config(make_config(tmp_path, dsn=pg_dsn, defaults={"connection_pool_size": 2}))
    run_archive(cfg)
    seen: list[int] = []

    def on_object(_checked: Checked) -> None:
        seen.append(sessions_on(pg_dsn, "pg-archiver validate"))

    report = validate(cfg, parallel=8, on_object=on_object)
    assert report.ok, report.problems
    assert seen and 1 <= max(seen) <= 2
