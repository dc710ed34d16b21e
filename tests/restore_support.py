"""Shared set-up for the restore tests (issue 4): a table with rows on known UTC days (and on their
boundaries), archived for real by the archiver to a moto S3 server, so restore has real objects to
bring back. The archiver deletes what it archives, so every restore goes into the emptied table."""
from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import psycopg
import pytest
from psycopg import sql

from archive_checks import archived
from archiver.runner import run_archive
from common.archive import layout
from common.config import Config, load_config
from common.archive.manifest import Manifest
from common.archive.storage import S3Storage
from common.pgtypes import SESSION_SETTINGS
from conftest import AUDIT_DDL, make_config, throwaway_database

#: 4 days x 4 rows: each day's first and last microsecond, and two rows in between.
DAYS = ["2024-01-01", "2024-01-02", "2024-01-03", "2024-01-04"]
TIMES = ["00:00:00", "06:00:00", "18:00:00", "23:59:59.999999"]

TYPE_MATRIX_DDL = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN posint AS integer CHECK (VALUE > 0);
CREATE TABLE type_matrix (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    created_at timestamptz NOT NULL,
    c_int2 smallint, c_int4 integer, c_int8 bigint,
    c_float4 real, c_float8 double precision,
    c_num numeric(12,2), c_num40 numeric(40,10), c_numu numeric,
    c_bool boolean,
    c_text text, c_varchar varchar(20), c_char char(5), c_uuid uuid,
    c_ts timestamp, c_tstz timestamptz, c_date date,
    c_time time, c_timetz timetz, c_interval interval,
    c_inet inet, c_cidr cidr, c_mac macaddr,
    c_json json, c_jsonb jsonb,
    c_int_arr integer[], c_text_arr text[],
    c_enum mood, c_domain posint,
    c_bytea bytea, c_varbit bit varying(16), c_money money,
    c_xml xml, c_point point, c_range int4range,
    c_gen bigint GENERATED ALWAYS AS (c_int4::bigint * 2) STORED
);
"""
_MATRIX_COLUMNS = """created_at, c_int2, c_int4, c_int8, c_float4, c_float8, c_num, c_num40, c_numu, c_bool,
    c_text, c_varchar, c_char, c_uuid, c_ts, c_tstz, c_date, c_time, c_timetz, c_interval, c_inet, c_cidr, c_mac,
    c_json, c_jsonb, c_int_arr, c_text_arr, c_enum, c_domain, c_bytea, c_varbit, c_money, c_xml, c_point, c_range"""
# Edge values per type: extremes, NaN/±Infinity, -0, 40-digit numerics, infinity/BC/year-10000 times,
# DST edges, quotes/newlines/unicode/'\N', empty strings vs NULL, empty arrays, a row of NULLs.
TYPE_MATRIX_ROWS = f"""
INSERT INTO type_matrix ({_MATRIX_COLUMNS}) VALUES
 ('2024-01-01 00:00:00+00', 1, 2, 3, 1.5, 2.25, 12.34, 123456789012345678901234567890.0123456789,
  3.14159265358979323846264338327950288419716939937510, true, 'hello', 'vc', 'ab',
  'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '2024-03-10 02:30:00', '2024-11-03 01:30:00-04', '2024-02-29',
  '23:59:59.999999', '12:00:00+05:30', '1 year 2 mons 3 days 04:05:06.789', '192.168.0.1/24', '10.0.0.0/8',
  '08:00:2b:01:02:03', '{{"a": [1, 2.50, "x"]}}', '{{"b": {{"c": null}}, "a": 1}}', '{{1,NULL,3}}',
  '{{"a b","c,d","e\\"f",NULL,""}}', 'happy', 42, '\\xdeadbeef', '1011', 1234.56, '<a x="1">t&amp;</a>',
  '(1.5,-2)', '[1,10)'),
 ('2024-01-02 00:00:00+00', -32768, -2147483648, -9223372036854775808, 'NaN', 'Infinity', 'NaN', -0.0000000001,
  'Infinity', false, E'line1\\nline2\\r\\n"quoted", back\\\\slash \\u00e9 \\U0001F600 \\t tab', '', '',
  '00000000-0000-0000-0000-000000000000', '10000-01-01 00:00:00', '0044-03-15 12:00:00+00 BC', 'infinity',
  '00:00', '00:00:00-12', '-178000000 years', '::1', '2001:db8::/32', 'ff:ff:ff:ff:ff:ff', '[]', '"s"', '{{}}',
  '{{}}', 'sad', 1, '\\x', '', -0.01, '', '(0,0)', 'empty'),
 ('2024-01-02 23:59:59.999999+00', 32767, 2147483647, 9223372036854775807, '-Infinity', '-Infinity',
  -9999999999.99, 9999999999999999999999999999.9999999999, '-Infinity', NULL, 'NULL', '\\N', ' x ', NULL,
  '-infinity', 'infinity', '-infinity', '24:00:00', '24:00:00+14', '1 mon -1 days', '0.0.0.0/0', '0.0.0.0/0',
  '00:00:00:00:00:00', 'null', 'null', '{{{{1,2}},{{3,4}}}}', '{{}}', 'ok', 2147483647, '\\x00ff',
  '1111111111111111', '92233720368547758.07', '<r/>', '(-1e-300,1e300)', '(,)'),
 ('2024-01-03 12:00:00+00', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL),
 ('2024-01-04 06:00:00+00', 0, 0, 0, 1e-45, 5e-324, 0, 0, 'NaN', true, '日本語 ''single'' "double" \u2028 \u2029 \u0085', 'x',
  'abcde', 'ffffffff-ffff-ffff-ffff-ffffffffffff', '1970-01-01 00:00:00', '2024-03-31 01:00:00+00',
  '0001-01-01 BC', '12:34:56.789', '23:59:59.999999-15:59', '00:00:00', '10.1.2.3', '10.1.2.0/24',
  '01:23:45:67:89:ab', '{{"k":"v with \\"quote\\""}}', '{{"num": 1.000000000000000000001}}', '{{-1}}',
  '{{"with\\\\backslash"}}', 'happy', 7, '\\x0a0d22', '0', 0, '<?xml version="1.0"?><doc/>', '(0,-0)', '[-5,5]'),
 ('2024-01-05 23:00:00+00', 5, 6, 7, 3.4028235e38, 1.7976931348623157e308, 0.1, 0.1, 0.1, false, 'x', 'y', 'z',
  'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a12', '2024-10-27 01:30:00', '2024-10-27 00:30:00+00', '2000-01-01',
  '01:02:03', '01:02:03+00', '1 day 2 hours', '255.255.255.255', '192.168.1.0/24', '01:23:45:67:89:ab',
  '1', '1', '{{}}', '{{"\\\\N"}}', 'ok', 3, '\\x5c', '01', 1, 'text', '(1,1)', '[3,3]'),
 ('2024-01-05 23:30:00+00', 5, 6, 7, '-0', '-0', 0.00, 0, '-0', true, 'negative zero', 'y', 'z',
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL)
"""


@dataclass
class Archived:
    """A table whose rows were archived (and so deleted) by the real archiver."""

    cfg: Config
    cfg_path: Path
    conn: psycopg.Connection[Any]
    s3: Any
    bucket: str
    table: str
    before: bytes  # COPY dump of the table before archiving

    def keys(self) -> list[str]:
        """Data keys in S3, sorted by name (so by day, not by time within a day)."""
        prefix = layout.table_prefix(self.cfg.s3.prefix, "production_db", "public", self.table)
        listed = self.s3.list_objects_v2(Bucket=self.bucket, Prefix=prefix).get("Contents", [])
        return sorted(o["Key"] for o in listed if not layout.is_manifest(o["Key"]) and not layout.is_control_key(o["Key"]))

    def keys_by_time(self) -> list[str]:
        """Data keys in the order restore takes them: by first timestamp."""
        return sorted(self.keys(), key=lambda k: (self.manifest(k).min_ts, k))

    def manifest(self, key: str) -> Manifest:
        return archived(S3Storage(self.s3, self.bucket), root=self.cfg.s3.prefix)[key]

    def dump(self, table: str | None = None) -> bytes:
        return dump(self.conn, table or self.table)

    def ids(self, table: str | None = None) -> list[int]:
        return [r[0] for r in self.conn.execute(f"SELECT id FROM {table or self.table} ORDER BY id").fetchall()]

    def reset(self) -> None:
        """Back to just after archiving, for a module-scoped archive shared by several tests."""
        others = self.conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> %s",
                                   (self.table,)).fetchall()
        for (name,) in others:
            self.conn.execute(sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(sql.Identifier(name)))
        self.conn.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(self.table)))


def dump(conn: psycopg.Connection[Any], table: str) -> bytes:
    """`COPY (SELECT * FROM t ORDER BY id) TO STDOUT` under the archiver's canonical session settings."""
    for name, value in SESSION_SETTINGS.items():
        conn.execute("SELECT set_config(%s, %s, false)", (name, value))
    out = bytearray()
    with conn.cursor().copy(f"COPY (SELECT * FROM {table} ORDER BY id) TO STDOUT") as copy:
        for block in copy:
            out += block
    return bytes(out)


def seed_days(conn: psycopg.Connection[Any]) -> None:
    conn.execute(AUDIT_DDL)
    stamps = [f"{d} {t}+00" for d in DAYS for t in TIMES]
    conn.execute(
        """INSERT INTO audit_logs (created_at, user_id, email, action, payload, ok, amount)
           SELECT ts, n, 'user' || n || '@example.com', 'login', jsonb_build_object('n', n), n %% 2 = 0, n * 1.25
           FROM unnest(%s::timestamptz[]) WITH ORDINALITY AS u(ts, n) ORDER BY n""",
        (stamps,),
    )


def archive(tmp_path: Path, conn: psycopg.Connection[Any], *, dsn: str, bucket: str, endpoint: str, client: Any,
            table: str, batch_size: int = 3, fmt: str = "parquet", **overrides: Any) -> Archived:
    cfg_path = make_config(tmp_path, dsn=dsn, bucket=bucket, endpoint=endpoint,
                           tables=[{"name": table, "timestamp_column": "created_at", "primary_key": "id"}],
                           defaults={"retention_days": 90, "batch_size": batch_size, "format": fmt}, **overrides)
    cfg = load_config(cfg_path)
    before = dump(conn, table)
    results, code = run_archive(cfg, s3_client=client)
    assert code == 0 and results[0].status == "completed", results
    remaining = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    assert remaining == (0,), "every row is old enough to be archived"
    return Archived(cfg, cfg_path, conn, client, bucket, table, before)


def scratch_database() -> AbstractContextManager[str]:
    """Like conftest's pg_dsn, for archives shared by the tests of one module (each CREATE/DROP
    DATABASE costs about a second)."""
    return throwaway_database("restore_test")


def shared_archive(tmp_path_factory: pytest.TempPathFactory, moto_server: str, *, seed: str = "days",
                   **kwargs: Any) -> Iterator[Archived]:
    """Body of a module-scoped fixture: a scratch database and bucket with an archived table."""
    client = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    bucket = f"restore-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    with scratch_database() as dsn, psycopg.connect(dsn, autocommit=True) as conn:
        if seed == "days":
            seed_days(conn)
            table = "audit_logs"
        else:
            conn.execute(TYPE_MATRIX_DDL)
            conn.execute(TYPE_MATRIX_ROWS)
            table = "type_matrix"
        yield archive(tmp_path_factory.mktemp("restore"), conn, dsn=dsn, bucket=bucket, endpoint=moto_server,
                      client=client, table=table, **kwargs)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, moto_server: str) -> Iterator[Archived]:
    """A module's archived audit_logs (import this and `arch` into a test module)."""
    yield from shared_archive(tmp_path_factory, moto_server)


@pytest.fixture()
def arch(shared: Archived) -> Iterator[Archived]:
    """The shared archive with its table emptied again after each test."""
    yield shared
    shared.reset()
