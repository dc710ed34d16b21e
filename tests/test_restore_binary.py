"""Restore's binary COPY path (restore/copybinary.py): every type it encodes comes back exactly,
edge values and NULLs included; an object with a type it does not encode takes the text path."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pytest

from common import batch_writer
from restore import copybinary
from restore.engine import restore
from restore_support import archive

DDL = """
CREATE DOMAIN moment AS timestamptz;
CREATE TABLE edge (
  id bigint PRIMARY KEY, created_at timestamptz NOT NULL,
  i2 smallint, i4 integer, f4 real, f8 double precision, b boolean,
  t text, vc varchar(20), c char(5), nm name, u uuid,
  n numeric(12,2), n0 numeric(18,0), n5 numeric(10,5), n3 numeric(16,3),
  ts timestamp, d date, ip inet, j json, jb jsonb, by bytea, tm time, mo moment
)"""
ROWS = r"""
INSERT INTO edge VALUES
 (1, '2020-01-01 00:00:00+00', -32768, -2147483648, 'NaN', '-Infinity', true, '', '', '', '', '00000000-0000-0000-0000-000000000000',
  0, 0, 0, 0, '1999-12-31 23:59:59.999999', '1999-12-31', '10.0.0.1', '{}', '{}', '',
  '00:00:00', '2020-01-01 00:00:00+00'),
 (2, '2020-01-01 00:00:01.5+00', 32767, 2147483647, 3.4e38, 1.7976931348623157e308, false, E'tab\there\nnew\\back', 'é☃', 'ab', 'a name',
  'ffffffff-ffff-ffff-ffff-ffffffffffff', -0.01, -999999999999999999, 12345.67891, -9999999999999.999,
  '2000-01-01 00:00:00', '2000-01-01', '192.168.1.77/24', '{"a": [1, 2.50, "x"]}', '{"b": {"c": null}, "a": 1}', '\x00ff10',
  '24:00:00', 'infinity'),
 (3, '2020-01-01 12:00:00+00', 0, 0, -0, -0, NULL, 'x', 'y', 'z', 'n', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
  9999999999.99, 999999999999999999, -0.00001, 0.001, '1900-02-28 12:34:56.000001', '0044-03-15', '::1', '[1,2]', '"s"', '\x41',
  '23:59:59.999999', '4713-01-01 00:00:00+00 BC'),
 (4, '2020-01-01 23:59:59.999999+00', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 (5, '2020-01-02 06:00:00+00', 1, 1, 1.5, 2.25, true, 'end', 'v', 'c', 'nn', 'c4ca4238-a0b9-2382-0dcc-509a6f75849b',
  1234.5, 10000, 1, 10000.001, 'infinity', '-infinity', '2001:db8::ff00:42:8329/64', 'null', 'null', NULL,
  '12:34:56.789', '-infinity'),
 (6, '2020-01-02 06:00:01+00', 2, 2, 0.1, 0.1, false, 'e', 'v', 'c', 'nn', 'c4ca4238-a0b9-2382-0dcc-509a6f75849c',
  100000000, 0.5, 99999.99999, 1.1, '-infinity', 'infinity', '::ffff:1.2.3.4', '1', '1', '\x',
  NULL, '294247-01-10 04:00:54.775806+00'),
 (7, '2020-01-02 06:00:02+00', 2, 2, 0.1, 0.1, false, 'e', 'v', 'c', 'nn', NULL,
  1, 1, 1, 1, '0001-12-31 23:59:59.999999 BC', '5874897-12-31', NULL, NULL, NULL, NULL,
  '00:00:00.000001', '10000-01-01 00:00:00+00')
"""


def test_every_binary_encoded_type_comes_back_byte_for_byte(tmp_path: Path, pg_dsn: str, pg: psycopg.Connection[Any],
                                                            s3_client: Any, bucket: str, moto_server: str) -> None:
    pg.execute(DDL)
    pg.execute(ROWS)
    arch = archive(tmp_path, pg, dsn=pg_dsn, bucket=bucket, endpoint=moto_server, client=s3_client, table="edge",
                   batch_size=2)
    for key in arch.keys():  # the binary path is the one taken for these objects
        _table, schema, encodings, _doc = batch_writer.decode(arch.s3.get_object(Bucket=bucket, Key=key)["Body"].read(),
                                                              fmt="parquet")
        plain = [(c.name, c.typname, encodings[c.name]) for c in schema.columns if copybinary.plan([c], encodings) is None]
        assert plain == [], key
    report = restore(arch.cfg, database="production_db", table="edge", restore_all=True, conflict_strategy="skip",
                     s3_client=s3_client)
    assert report.rows == 7 and report.total("inserted") == 7
    assert arch.dump() == arch.before


@pytest.mark.parametrize(("ddl", "value"), [("interval", "'1 day'"), ("int[]", "'{1,2}'"), ("cidr", "'10.0.0.0/8'"),
                                             ("numeric", "1.5")])
def test_an_object_with_a_type_it_does_not_encode_takes_the_text_path(tmp_path: Path, pg_dsn: str,
                                                                       pg: psycopg.Connection[Any], s3_client: Any,
                                                                       bucket: str, moto_server: str, ddl: str,
                                                                       value: str) -> None:
    pg.execute(f"CREATE TABLE other (id bigint PRIMARY KEY, created_at timestamptz NOT NULL, v {ddl})")
    pg.execute(f"INSERT INTO other VALUES (1, '2020-01-01', {value}), (2, '2020-01-01 01:00', NULL)")
    arch = archive(tmp_path, pg, dsn=pg_dsn, bucket=bucket, endpoint=moto_server, client=s3_client, table="other")
    (key,) = arch.keys()
    _table, schema, encodings, _doc = batch_writer.decode(arch.s3.get_object(Bucket=bucket, Key=key)["Body"].read(),
                                                          fmt="parquet")
    assert copybinary.plan(schema.columns, encodings) is None
    restore(arch.cfg, database="production_db", table="other", restore_all=True, conflict_strategy="skip",
            s3_client=s3_client)
    assert arch.dump() == arch.before


@pytest.mark.parametrize("width", ["decimal32", "decimal64"])
def test_narrower_decimals_encode_like_decimal128(width: str) -> None:
    """numeric fields are built from decimal128's 16-byte words; a narrower Arrow decimal (a newer
    Parquet reader's choice) is widened first, never read with the wrong stride."""
    import pyarrow as pa
    from decimal import Decimal

    from common.pgtypes import Column

    values = [Decimal("-12.34"), None, Decimal("0.00"), Decimal("9999.99")]
    col = Column("n", "numeric", "numeric(6,2)", "b", precision=6, scale=2)
    (encode,) = copybinary.plan([col], {"n": "native"}) or []
    wide = encode(pa.array(values, pa.decimal128(6, 2)))
    narrow = encode(pa.array(values, getattr(pa, width)(6, 2)))
    assert narrow.to_pylist() == wide.to_pylist()


INET = ["0.0.0.0/0", "255.255.255.255", "10.1.2.3/8", "192.168.0.0/16", "1.2.3.4/31", "127.0.0.1", "::1",
        "::ffff:10.0.0.1", "2001:db8::/32", "99.0.0.0/7"]


@pytest.mark.parametrize("value", INET)
def test_inet_fields_are_what_inet_send_writes(pg: psycopg.Connection[Any], value: str) -> None:
    # the archive holds inet_out's text; the field must be inet_send's bytes behind their length
    row = pg.execute("SELECT v::text, inet_send(v) FROM (SELECT %s::inet AS v) s", (value,)).fetchone()
    if row is None:
        pytest.fail("no row")
    text, sent = row
    prefixed = len(sent).to_bytes(4, "big") + bytes(sent)
    assert copybinary._inet(pa.array([text, None, text])).to_pylist() == [prefixed, b"\xff\xff\xff\xff", prefixed]
