"""The archiver's read-only ADBC session (common/arrow_source.py) against the real PostgreSQL:
settings reach it, and failures come out as one-line messages with libpq's reason and no secret."""
from __future__ import annotations

import pytest

from common.arrow_source import ArrowSource
from common.db import session_settings
from common.errors import DatabaseError, ServiceUnavailable

SETTINGS = session_settings(application_name="pg-archiver-test", statement_timeout="5s", lock_timeout=None)


def test_session_carries_the_archivers_settings(pg_dsn: str) -> None:
    with ArrowSource(pg_dsn, SETTINGS) as source:
        table = source.read("SELECT current_setting('application_name') AS app, current_setting('TimeZone') AS tz,"
                            " current_setting('statement_timeout') AS st, '2024-01-01 12:00+02'::timestamptz::text AS ts")
    assert table.to_pylist() == [{"app": "pg-archiver-test", "tz": "UTC", "st": "5s", "ts": "2024-01-01 10:00:00+00"}]


def test_an_unreachable_server_is_a_one_line_reason_without_the_password(free_tcp_port: int) -> None:
    dsn = f"host=127.0.0.1 port={free_tcp_port} user=archiver dbname=x password=s3cret-pw"
    with pytest.raises(ServiceUnavailable) as info:
        ArrowSource(dsn, SETTINGS)
    message = str(info.value)
    assert message.startswith(f"cannot connect to database 127.0.0.1:{free_tcp_port}/x: ")
    assert "Connection refused" in message and "s3cret-pw" not in message and "\n" not in message


def test_a_failing_statement_names_the_server_error(pg_dsn: str) -> None:
    with ArrowSource(pg_dsn, SETTINGS) as source, pytest.raises(DatabaseError) as info:
        source.read('SELECT * FROM "no such table"')
    assert 'relation "no such table" does not exist' in str(info.value) and "\n" not in str(info.value)
