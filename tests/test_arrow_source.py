"""The archiver's read-only ADBC session (archiver/arrow_source.py) against the real PostgreSQL:
settings reach it, every read is its own transaction, uuids come back in PostgreSQL's text form
from either driver layout, and failures come out as one-line messages with libpq's reason and no secret."""
from __future__ import annotations

import uuid

import psycopg
import pyarrow as pa
import pytest

from archiver.arrow_source import ArrowSource
from common.pg.db import session_settings
from common.errors import DatabaseError, ServiceUnavailable
from common.pgtypes import _uuid_text

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


UUIDS = ["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", None, "00000000-0000-0000-0000-000000000000", None]


@pytest.mark.parametrize("layout", [pa.binary(), pa.binary(16)], ids=["variable (driver 1.8)", "fixed (driver 1.9+)"])
def test_uuid_text_reads_either_driver_layout_with_nulls(layout: pa.DataType) -> None:
    raw = pa.array([None if u is None else uuid.UUID(u).bytes for u in UUIDS], layout)
    assert _uuid_text(raw).to_pylist() == UUIDS


def test_uuid_text_refuses_a_value_that_is_not_16_bytes() -> None:
    with pytest.raises(pa.ArrowInvalid):
        _uuid_text(pa.array([bytes(15)], pa.binary()))


def test_uuid_column_read_by_the_driver_comes_back_as_postgres_text(pg_dsn: str) -> None:
    with ArrowSource(pg_dsn, SETTINGS) as source:
        table = source.read("SELECT u FROM (VALUES ('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid), (NULL)) v(u)")
    assert _uuid_text(table.column("u").chunk(0)).to_pylist() == ["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", None]


def test_every_read_is_its_own_transaction_and_none_stays_open(pg_dsn: str) -> None:
    """The reader's windows rely on one statement = one snapshot, and a session left idle in a
    transaction would hold back vacuum on the production table (the connection is autocommit)."""
    settings = dict(SETTINGS, application_name="pg-archiver-autocommit")
    with ArrowSource(pg_dsn, settings) as source, psycopg.connect(pg_dsn) as conn:
        first, second = (source.read("SELECT txid_current() AS x").column("x")[0].as_py() for _ in range(2))
        state = conn.execute("SELECT state FROM pg_stat_activity WHERE application_name = %s", (settings["application_name"],)).fetchone()
    assert first != second and state == ("idle",)
