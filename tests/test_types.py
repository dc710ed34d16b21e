"""Every supported column type survives archiving exactly, and Parquet stays readable by stock
tools with natural types (issue 2, "Archive contract")."""
from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from archiver.runner import run_archive
from common import batch_writer
from common.config import load_config
from common.pg.db import apply_settings
from common.arrow_types import exceptions_of
from common.pgtypes import SESSION_SETTINGS, to_copy_csv
from common.archive.storage import LocalStorage
from conftest import make_config

FIXTURE = Path(__file__).parent / "fixtures" / "type_matrix.sql"


def dump(conn: psycopg.Connection[Any], table: str) -> bytes:
    with conn.cursor().copy(f"COPY (SELECT * FROM {table} ORDER BY id) TO STDOUT") as cp:
        return b"".join(bytes(b) for b in cp)


@pytest.fixture()
def archived_matrix(tmp_path: Path, pg_dsn: str, pg: psycopg.Connection[Any]) -> tuple[LocalStorage, bytes]:
    apply_settings(pg, SESSION_SETTINGS)
    pg.execute(FIXTURE.read_text())
    before = dump(pg, "typed")
    cfg = make_config(tmp_path, dsn=pg_dsn, tables=[{"name": "typed"}], defaults={"retention_days": 1})
    _results, code = run_archive(load_config(cfg))
    assert code == 0
    assert pg.execute("SELECT count(*) FROM typed").fetchone()[0] == 0
    return LocalStorage(tmp_path / "archive"), before


def objects(store: LocalStorage) -> list[str]:
    return sorted(o.key for o in store.list("") if o.key.endswith(".parquet"))


def test_every_type_comes_back_byte_for_byte(archived_matrix: tuple[LocalStorage, bytes], pg: psycopg.Connection[Any]) -> None:
    store, before = archived_matrix
    pg.execute("CREATE TABLE typed_back (LIKE typed INCLUDING ALL)")
    for key in objects(store):
        table, schema, encodings, doc = batch_writer.decode(store.get(key), fmt="parquet")
        with pg.cursor().copy("COPY typed_back FROM STDIN (FORMAT csv)") as cp:
            cp.write(to_copy_csv(table, schema, encodings, exceptions_of(doc)))
    assert dump(pg, "typed_back") == before


def test_lossless_types_are_natural_arrow_types(archived_matrix: tuple[LocalStorage, bytes]) -> None:
    store, _ = archived_matrix
    first = batch_writer.decode(store.get(objects(store)[0]), fmt="parquet")[0]
    types = {f.name: f.type for f in first.schema}
    assert types["i2"] == pa.int16() and types["i8"] == pa.int64() and types["f8"] == pa.float64()
    assert types["b"] == pa.bool_() and types["t"] == pa.string() and types["by"] == pa.binary()
    assert types["created_at"] == pa.timestamp("us", tz="UTC")
    assert types["n"] == pa.decimal128(12, 2)
    row = first.slice(0, 1).to_pylist()[0]
    assert row["n"] == Decimal("1234.50") and row["by"] == b"\x00\xff\x10"
    assert row["created_at"] == datetime(2026, 1, 5, 10, tzinfo=timezone.utc)


def test_every_object_has_the_same_schema_infinity_and_bc_included(archived_matrix: tuple[LocalStorage, bytes]) -> None:
    """Day 05 holds 'infinity' and NaN, day 06 BC dates and 24:00, day 07 neither: one schema."""
    store, _ = archived_matrix
    schemas = {k: pq.read_schema(store.root / k) for k in objects(store)}
    first = next(iter(schemas.values()))
    assert all(s.equals(first) for s in schemas.values()), schemas
    types = {f.name: f.type for f in first}
    assert types["ts"] == pa.timestamp("us") and types["tstz"] == pa.timestamp("us", tz="UTC")
    assert types["d"] == pa.date32() and types["tm"] == pa.time64("us") and types["dom"] == pa.int32()
    assert types["nfree"] == pa.string() and types["iv"] == pa.string() and types["e"] == pa.string()
    assert all(f.nullable for f in first)


def test_duckdb_reads_the_hive_partitioned_archive(archived_matrix: tuple[LocalStorage, bytes]) -> None:
    store, _ = archived_matrix
    glob = str(store.root / "**" / "*.parquet")
    rel = duckdb.sql(f"SELECT id, i8, t, year, month, day FROM read_parquet('{glob}', hive_partitioning = true,"
                     " union_by_name = true) ORDER BY id")
    rows = rel.fetchall()
    assert [r[0] for r in rows] == [1, 2, 3, 4]
    assert rows[0][1] == 3 and rows[0][2] == 'héllo "q" ,x'
    assert {(int(r[3]), int(r[4]), int(r[5])) for r in rows} == {(2026, 1, 5), (2026, 1, 6), (2026, 1, 7)}


def test_parquet_metadata_carries_postgres_types(archived_matrix: tuple[LocalStorage, bytes]) -> None:
    store, _ = archived_matrix
    _t, schema, _enc, doc = batch_writer.decode(store.get(objects(store)[0]), fmt="parquet")
    assert schema.column("n").pg_type == "numeric(12,2)" and schema.column("e").pg_type == "mood"
    assert doc["schema_fingerprint"] == schema.fingerprint() and doc["archiver_version"]


def test_json_columns_are_plain_text_every_iceberg_reader_maps(archived_matrix: tuple[LocalStorage, bytes]) -> None:
    """Parquet's String type, not its JSON logical type: Iceberg has no JSON type, and pyiceberg and
    polars.scan_iceberg did not read the JSON type as a string (common/batch_writer.py)."""
    import pyarrow.parquet as pq

    store, _ = archived_matrix
    path = store.root / objects(store)[0]
    parquet = pq.ParquetFile(path).schema
    logical = {parquet.column(i).name: str(parquet.column(i).logical_type) for i in range(len(parquet))}
    assert logical["j"] == logical["jb"] == logical["t"] == "String"
    assert duckdb.sql(f"SELECT typeof(jb::JSON) FROM read_parquet('{path}') LIMIT 1").fetchall() == [("JSON",)]


def test_manifest_column_docs_equal_the_objects_own_schema(archived_matrix: tuple[LocalStorage, bytes]) -> None:
    """restore can bring back every type from the manifest alone: it records what the file does."""
    from archive_checks import archived
    from common.pgtypes import column_docs

    store, _ = archived_matrix
    recorded = archived(store)
    for key in objects(store):
        _t, schema, encodings, _doc = batch_writer.decode(store.get(key), fmt="parquet")
        manifest = recorded[key]
        assert manifest.columns == column_docs(schema, encodings)
        assert [c["name"] for c in manifest.columns] == schema.names and all(c["pg_type"] for c in manifest.columns)


def test_numeric_scales_outside_a_decimal_come_back_exactly(tmp_path: Path, pg_dsn: str, pg: psycopg.Connection[Any]) -> None:
    # PostgreSQL 15 allows numeric(5,-2) (rounded to hundreds) and numeric(3,5) (below 0.01):
    # neither fits a Parquet decimal, whose scale lies between 0 and the precision. The scale of
    # the first was read as 2046 (its typmod's bits taken unsigned), and the second failed the
    # Parquet writer for the whole table.
    pg.execute("CREATE TABLE odd_num (id int PRIMARY KEY, created_at timestamptz NOT NULL,"
               " hundreds numeric(5,-2), tiny numeric(3,5), plain numeric(6,2))")
    pg.execute("INSERT INTO odd_num VALUES (1, '2024-01-01', 1234567, 0.00123, 12.5), (2, '2024-01-01', NULL, 0, NULL),"
               " (3, '2024-01-02', 0, -0.00999, 0)")
    before = dump(pg, "odd_num")
    cfg = make_config(tmp_path, dsn=pg_dsn, tables=[{"name": "odd_num"}], defaults={"retention_days": 1})
    _results, code = run_archive(load_config(cfg))
    assert code == 0 and pg.execute("SELECT count(*) FROM odd_num").fetchone()[0] == 0
    store = LocalStorage(tmp_path / "archive")
    pg.execute("CREATE TABLE odd_back (LIKE odd_num INCLUDING ALL)")
    for key in objects(store):
        table, schema, encodings, doc = batch_writer.decode(store.get(key), fmt="parquet")
        assert schema.column("hundreds").scale == -2 and encodings["hundreds"] == "text"
        assert table.schema.field("plain").type == pa.decimal128(6, 2)
        with pg.cursor().copy("COPY odd_back FROM STDIN (FORMAT csv)") as cp:
            cp.write(to_copy_csv(table, schema, encodings, exceptions_of(doc)))
    assert dump(pg, "odd_back") == before
