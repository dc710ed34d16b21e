"""The engines users have read a table's folder as the table (issue 27): with nothing but Parquet
objects in `year=/month=/day=` folders and one schema per table, pyarrow.dataset, DuckDB, Polars and
Spark each get exactly the rows PostgreSQL held, with no filter and no table definition written by
hand: `infinity` timestamps and dates, BC dates, a day whose rows are all NULL in some columns,
numeric, jsonb and time included. A column added after the first run is missing from the older
objects: each engine reads both with its schema-merging option, as the runbook says. A real
archive (PostgreSQL, the archiver, `storage: local`); Spark runs when pyspark and Java are
installed, and says why when not."""
from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from archiver.runner import run_archive
from common.config import load_config
from conftest import make_config, throwaway_database

#: `infinity` of a timestamp column, as DuckDB stores it and reads it back (docs/runbooks.md).
INFINITY = 9223372036854775807

DDL = """
CREATE TABLE history (
  id bigint PRIMARY KEY, created_at timestamptz NOT NULL, valid_until timestamptz, valid_to date,
  local_at timestamp, at_time time, amount numeric(12,2), payload jsonb, note text);
INSERT INTO history
SELECT g, now() - interval '200 days' + g * interval '1 hour',
       CASE WHEN g % 5 = 0 THEN 'infinity' WHEN g % 7 = 0 THEN '-infinity' ELSE now() + g * interval '1 day' END,
       CASE WHEN g % 5 = 0 THEN 'infinity'::date WHEN g % 11 = 0 THEN '4713-01-01 BC'::date ELSE current_date + g END,
       '2024-01-01'::timestamp + g * interval '1 minute', '12:00'::time + g * interval '1 second',
       g * 1.25, jsonb_build_object('g', g),
       CASE WHEN g > 48 THEN 'n' || g END          -- the first two days: all NULL
FROM generate_series(1, 240) g;
"""


@dataclass(frozen=True)
class Folder:
    path: Path
    rows: dict[int, tuple[Any, ...]]  # id -> (valid_until is infinity, amount as text, note, extra)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Folder]:
    """The table archived in two runs, a column added in between: its folder, and what PostgreSQL
    held (read before the rows left it)."""
    tmp = tmp_path_factory.mktemp("engines")
    read = "SELECT id, valid_until = 'infinity', amount::text, note, {} FROM history"
    tables = [{"name": "history", "timestamp_column": "created_at", "primary_key": "id"}]
    with throwaway_database() as dsn, psycopg.connect(dsn, autocommit=True) as pg:
        pg.execute(DDL)
        rows = {r[0]: r[1:] for r in pg.execute(read.format("NULL::int"))}
        # The first run takes the first five days; then `extra` is added, and the second run the rest.
        cfg = make_config(tmp, dsn=dsn, tables=tables, defaults={"retention_days": 195, "batch_size": 40})
        assert run_archive(load_config(cfg))[1] == 0
        pg.execute("ALTER TABLE history ADD COLUMN extra int")
        pg.execute("UPDATE history SET extra = id")
        rows.update({r[0]: r[1:] for r in pg.execute(read.format("extra"))})
        cfg = make_config(tmp, dsn=dsn, tables=tables, defaults={"retention_days": 0, "batch_size": 40})
        assert run_archive(load_config(cfg))[1] == 0
        assert pg.execute("SELECT count(*) FROM history").fetchone() == (0,)
    assert 0 < sum(v[3] is None for v in rows.values()) < len(rows)  # both versions in the folder
    yield Folder(tmp / "archive" / "production_db" / "public.history", rows)


def expected(folder: Folder) -> list[tuple[Any, ...]]:
    return sorted((i, *v) for i, v in folder.rows.items())


def test_the_folder_holds_only_parquet_objects(folder: Folder) -> None:
    files = [p for p in folder.path.rglob("*") if p.is_file()]
    assert files and all(p.suffix == ".parquet" for p in files)


def newest_schema(folder: Folder) -> pa.Schema:
    """The schema of the table's newest object (a column added since the older ones included)."""
    return pq.read_schema(max(folder.path.rglob("*.parquet"), key=lambda p: p.stat().st_mtime))


def test_pyarrow_dataset_reads_the_folder(folder: Folder) -> None:
    dataset = ds.dataset(folder.path, format="parquet", schema=newest_schema(folder))
    table = dataset.to_table().sort_by("id")
    ids = table.column("id").to_pylist()
    assert ids == sorted(folder.rows)
    micros = pc.cast(table.column("valid_until"), pa.int64()).to_pylist()
    assert [m == INFINITY for m in micros] == [folder.rows[i][0] for i in ids]
    assert [str(a) for a in table.column("amount").to_pylist()] == [folder.rows[i][1] for i in ids]
    assert table.column("note").to_pylist() == [folder.rows[i][2] for i in ids]
    assert table.column("extra").to_pylist() == [folder.rows[i][3] for i in ids]


def test_duckdb_reads_the_folder(folder: Folder) -> None:
    got = duckdb.sql(
        f"SELECT id, valid_until = 'infinity'::timestamptz, amount::varchar, note, extra"
        f" FROM read_parquet('{folder.path}/**/*.parquet', hive_partitioning = true, union_by_name = true)"
        " ORDER BY id").fetchall()
    assert got == expected(folder)


def test_polars_reads_the_folder(folder: Folder) -> None:
    """The call that failed on the folder (issue 27): other files beside the data, and a column's
    type changing from object to object."""
    pl = pytest.importorskip("polars")
    schema = pl.read_parquet_schema(max(folder.path.rglob("*.parquet"), key=lambda p: p.stat().st_mtime))
    frame = pl.scan_parquet(folder.path, hive_partitioning=True, schema=schema, missing_columns="insert").sort("id").collect()
    ids = frame["id"].to_list()
    assert ids == sorted(folder.rows)
    infinite = frame["valid_until"].cast(pl.Int64) == INFINITY
    assert infinite.to_list() == [folder.rows[i][0] for i in ids]
    assert [str(a) for a in frame["amount"].to_list()] == [folder.rows[i][1] for i in ids]
    assert frame["note"].to_list() == [folder.rows[i][2] for i in ids]
    assert frame["extra"].to_list() == [folder.rows[i][3] for i in ids]


def test_spark_reads_the_folder(folder: Folder, monkeypatch: pytest.MonkeyPatch) -> None:
    pyspark = pytest.importorskip("pyspark", reason="pyspark is not installed: pip install -e '.[spark]'")
    if shutil.which("java") is None:
        pytest.skip("Spark needs Java (a JRE 17 or newer on the PATH)")
    from pyspark.sql import SparkSession

    monkeypatch.setenv("SPARK_LOCAL_IP", "127.0.0.1")  # loopback only: Spark would pick eth0's address

    spark = (SparkSession.builder.master("local[1]").appName("pg-archiver-test")
             .config("spark.ui.enabled", "false").config("spark.driver.host", "127.0.0.1")
             .config("spark.driver.bindAddress", "127.0.0.1").config("spark.sql.session.timeZone", "UTC")
            .config("spark.sql.timeType.enabled", "true")  # Spark 4.1+ reads Parquet TIME when asked
             .getOrCreate())
    try:
        df = spark.read.option("mergeSchema", "true").parquet(str(folder.path))
        rows = df.selectExpr("id", "amount", "note", "extra", "unix_micros(valid_until) AS micros").orderBy("id").collect()
        assert [r["id"] for r in rows] == sorted(folder.rows)
        assert [r["micros"] == INFINITY for r in rows] == [folder.rows[r["id"]][0] for r in rows]
        assert [str(r["amount"]) for r in rows] == [folder.rows[r["id"]][1] for r in rows]
        assert [r["note"] for r in rows] == [folder.rows[r["id"]][2] for r in rows]
        assert [r["extra"] for r in rows] == [folder.rows[r["id"]][3] for r in rows]
        assert {"year", "month", "day"} <= set(df.columns)
        assert pyspark.__version__
    finally:
        spark.stop()
