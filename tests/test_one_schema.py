"""One schema per table (issue 27): a column's Parquet type follows from its PostgreSQL type alone,
so every object of a table whose columns did not change has the same schema, infinities, BC dates,
NaN and all-NULL batches included; engines reading the table's folder get exactly the rows
PostgreSQL held; restore is byte-exact; objects of older schema versions (and objects written
before format version 2) read alongside."""
from __future__ import annotations

import io
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

import archiver.reader
from archiver.runner import run_archive
from common import arrow_types, batch_writer
from common.cli import Environment
from common.config import load_config
from common.conform import conform, mixed_columns
from common.arrow_types import exceptions_of, pg_texts
from common.pgtypes import arrow_schema
from conftest import make_config
from query.app import QueryOptions, run as query
from restore.engine import restore
from validate.checks import validate

DDL = """
CREATE TYPE mood AS ENUM ('sad', 'happy');
CREATE DOMAIN moment AS timestamptz;
CREATE TABLE typed (
  id int PRIMARY KEY, created_at timestamptz NOT NULL,
  ts timestamp, tstz timestamptz, d date, tm time, mo moment,
  n numeric(12,2), nfree numeric, i2 smallint, i8 bigint, f8 float8, b boolean,
  t text, vc varchar(10), u uuid, jb jsonb, by bytea, e mood, iv interval, arr int[], spare int
)"""
# Day 1: infinities and NaN; day 2: BC, the last years, 24:00; day 3: every nullable column NULL.
ROWS = """
INSERT INTO typed VALUES
 (1, '2024-01-01 01:00+00', 'infinity', '-infinity', 'infinity', '12:00', 'infinity', 'NaN', 'NaN', 1, 2, 'NaN', true,
  'a', 'b', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"a": 1}', '\\x00ff', 'happy', '1 day', '{1,2}', NULL),
 (2, '2024-01-01 02:00+00', '-infinity', 'infinity', '-infinity', '00:00', '-infinity', 12.5, 1.5, -1, -2, 'Infinity', false,
  '', '', NULL, '[]', '\\x', 'sad', '-1 mons', '{}', NULL),
 (3, '2024-01-02 01:00+00', '4713-01-01 00:00:00 BC', '0044-03-15 12:00:00+00 BC', '5874897-12-31', '24:00:00',
  '4713-01-01 00:00:00+00 BC', -0.01, 1e-20, 0, 0, -0.0, NULL, 'x', 'y', NULL, 'null', NULL, NULL, NULL, NULL, NULL),
 (4, '2024-01-02 02:00+00', '294276-12-31 23:59:59.999999', '294247-01-10 04:00:54.775806+00', '4713-01-01 BC',
  '23:59:59.999999', '294276-12-31 23:59:59.999999+00', 9999999999.99, 123, NULL, NULL, 1.5, true, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL),
 (5, '2024-01-03 01:00+00', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL),
 (6, '2024-01-03 02:00+00', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL)
"""
#: Values no Parquet timestamp holds (past 294247-01-10 04:00:54.775806): NULL to other engines.
BEYOND = {(4, "ts"), (4, "mo")}


def dump(conn: psycopg.Connection[Any], table: str) -> bytes:
    with conn.cursor().copy(f"COPY (SELECT * FROM {table} ORDER BY id) TO STDOUT") as cp:
        return b"".join(bytes(b) for b in cp)


def pg_integers(conn: psycopg.Connection[Any], table: str) -> dict[str, list[Any]]:
    """Each temporal column as the integers a Parquet reader sees, computed by PostgreSQL itself:
    microseconds (days) since 1970, the infinities as DuckDB's extremes, NULL past 294247."""
    us = ("CASE WHEN {c} = 'infinity' THEN {inf} WHEN {c} = '-infinity' THEN {ninf} "
          "WHEN {c} > '294247-01-10 04:00:54.775806'::timestamp THEN NULL "
          "ELSE (extract(epoch FROM {c}) * 1000000)::bigint END")
    days = "CASE WHEN {c} = 'infinity' THEN {inf} WHEN {c} = '-infinity' THEN {ninf} ELSE {c} - date '1970-01-01' END"
    exprs = {"ts": us.format(c="ts::timestamptz", inf=arrow_types.TS_INF, ninf=arrow_types.TS_NINF).replace(
                 "'294247-01-10 04:00:54.775806'::timestamp", "'294247-01-10 04:00:54.775806+00'::timestamptz"),
             "tstz": us.format(c="tstz", inf=arrow_types.TS_INF, ninf=arrow_types.TS_NINF).replace("::timestamp ", "::timestamptz "),
             "mo": us.format(c="mo", inf=arrow_types.TS_INF, ninf=arrow_types.TS_NINF).replace("::timestamp ", "::timestamptz "),
             "d": days.format(c="d", inf=arrow_types.DATE_INF, ninf=arrow_types.DATE_NINF),
             "tm": "(extract(epoch FROM tm) * 1000000)::bigint"}
    cols = ", ".join(f"{e} AS {n}" for n, e in exprs.items())
    rows = conn.execute(f"SELECT {cols} FROM {table} ORDER BY id").fetchall()
    return {n: [r[i] for r in rows] for i, n in enumerate(exprs)}


@pytest.fixture()
def archived(tmp_path: Path, pg_dsn: str, pg: psycopg.Connection[Any]) -> dict[str, Any]:
    pg.execute(DDL)
    pg.execute(ROWS)
    before, integers = dump(pg, "typed"), pg_integers(pg, "typed")
    cfg = make_config(tmp_path, dsn=pg_dsn, tables=[{"name": "typed"}], defaults={"retention_days": 1, "batch_size": 2})
    assert run_archive(load_config(cfg))[1] == 0
    assert pg.execute("SELECT count(*) FROM typed").fetchone()[0] == 0
    folder = tmp_path / "archive" / "production_db" / "public.typed"
    return {"cfg": cfg, "before": before, "integers": integers, "folder": folder,
            "files": sorted(folder.rglob("*.parquet"))}


def test_every_object_of_the_table_has_the_identical_schema(archived: dict[str, Any]) -> None:
    files = archived["files"]
    assert len(files) == 3  # one a day, each day two rows
    schemas = [pq.read_schema(f) for f in files]
    assert all(s.equals(schemas[0]) for s in schemas)
    types = {f.name: f.type for f in schemas[0]}
    assert types["ts"] == pa.timestamp("us") and types["tstz"] == types["mo"] == pa.timestamp("us", tz="UTC")
    assert types["d"] == pa.date32() and types["tm"] == pa.time64("us") and types["n"] == pa.decimal128(12, 2)
    assert types["nfree"] == types["e"] == types["iv"] == types["arr"] == pa.string() and types["spare"] == pa.int32()
    assert all(f.nullable for f in schemas[0])


def _temporal_integers(table: pa.Table) -> dict[str, list[Any]]:
    width = {"d": pa.int32()}
    return {n: table.column(n).cast(width.get(n, pa.int64())).to_pylist() for n in ("ts", "tstz", "mo", "d", "tm")}


def test_pyarrow_dataset_reads_the_tables_folder_exactly(archived: dict[str, Any]) -> None:
    table = ds.dataset(archived["folder"], format="parquet", partitioning="hive").to_table().sort_by("id")
    assert table.column("id").to_pylist() == [1, 2, 3, 4, 5, 6]
    assert _temporal_integers(table) == archived["integers"]
    assert table.column("n").cast(pa.string()).to_pylist() == [None, "12.50", "-0.01", "9999999999.99", None, None]
    assert table.column("nfree").to_pylist() == ["NaN", "1.5", "0.00000000000000000001", "123", None, None]
    assert table.column("spare").null_count == 6


def test_duckdb_reads_the_tables_folder_exactly(archived: dict[str, Any]) -> None:
    glob = archived["folder"] / "**" / "*.parquet"
    ints = {"ts": "epoch_us({c})", "tstz": "epoch_us({c})", "mo": "epoch_us({c})", "d": "{c} - DATE '1970-01-01'",
            "tm": "epoch_us({c})"}
    infinite = {"ts": arrow_types.TS_INF, "tstz": arrow_types.TS_INF, "mo": arrow_types.TS_INF, "d": arrow_types.DATE_INF}
    cols = ", ".join(
        (f"CASE WHEN isinf({c}) AND {c} > '1970-01-01' THEN {infinite[c]} WHEN isinf({c}) THEN -{infinite[c]} "
         f"ELSE {ints[c].format(c=c)} END" if c in infinite else ints[c].format(c=c)) + f" AS {c}"
        for c in ints)
    rows = duckdb.sql(f"SELECT id, {cols}, n::VARCHAR, typeof(ts) FROM read_parquet('{glob}', hive_partitioning = true)"
                      " ORDER BY id").fetchall()
    assert [r[0] for r in rows] == [1, 2, 3, 4, 5, 6]
    got = {c: [r[i + 1] for r in rows] for i, c in enumerate(ints)}
    assert got == archived["integers"]
    assert [r[6] for r in rows] == [None, "12.50", "-0.01", "9999999999.99", None, None]
    assert {r[7] for r in rows} == {"TIMESTAMP"}


def test_polars_reads_every_object_as_one_table(archived: dict[str, Any]) -> None:
    """Polars stops at a type that differs between files ("data type mismatch for column"); the
    table's folder holds manifests too until they move to the control prefix: the files here."""
    pl = pytest.importorskip("polars")
    frame = pl.scan_parquet([str(f) for f in archived["files"]]).sort("id").collect()
    assert frame["id"].to_list() == [1, 2, 3, 4, 5, 6]
    as_ints = {n: frame[n].cast(pl.Int32 if n == "d" else pl.Int64).to_list() for n in ("ts", "tstz", "mo", "d")}
    assert as_ints == {n: v for n, v in archived["integers"].items() if n != "tm"}
    # Polars' Time (nanoseconds) ends at 23:59:59.999999999: PostgreSQL's 24:00:00 reads as NULL there
    expected_tm = [None if v == 86_400_000_000 else v for v in archived["integers"]["tm"]]
    assert [None if v is None else v // 1000 for v in frame["tm"].cast(pl.Int64).to_list()] == expected_tm


def test_restore_gives_back_every_value_byte_for_byte(archived: dict[str, Any], pg: psycopg.Connection[Any]) -> None:
    report = restore(load_config(archived["cfg"]), database="production_db", table="typed", restore_all=True)
    assert report.rows == 6
    assert dump(pg, "typed") == archived["before"]


def test_values_no_parquet_type_holds_are_kept_with_the_object(archived: dict[str, Any]) -> None:
    """NaN of a numeric(12,2) and the timestamps past 294247: NULL in the column (engines read
    NULL), their text in the object's metadata (restore's source)."""
    found = {}
    for f in archived["files"]:
        table, _schema, _enc, doc = batch_writer.decode(f.read_bytes(), fmt="parquet")
        for name, values in exceptions_of(doc).items():
            for row, text in values:
                found[(table.column("id")[row].as_py(), name)] = text
    assert found == {(1, "n"): "NaN", (4, "ts"): "294276-12-31 23:59:59.999999",
                     (4, "mo"): "294276-12-31 23:59:59.999999+00"}
    assert {k for k in found if k[1] != "n"} == BEYOND


# -- objects written before format version 2 --------------------------------------------------
def _as_main_wrote_it(batch: Any) -> Any:
    """Main's rule before issue 27: a fallible column (timestamps, date, numeric) is text in a
    batch where one of its values has no natural form (an infinity, NaN, a BC date)."""
    rows, encodings = batch.rows, dict(batch.encodings)
    for name in ("ts", "tstz", "d", "n"):
        col = rows.column(name)
        special = name in batch.exceptions or (arrow_types.is_temporal(col.type) and _odd(col))
        if special:
            rows = rows.set_column(rows.column_names.index(name), name, pg_texts(col, batch.exceptions.get(name, [])))
            encodings[name] = "text"
    batch.rows, batch.encodings, batch.exceptions = rows, encodings, {
        k: v for k, v in batch.exceptions.items() if encodings.get(k) != "text"}
    return batch


def _odd(col: pa.ChunkedArray) -> bool:
    text = pg_texts(col, [])
    return bool(pc.any(pc.match_substring_regex(text, "infinity|BC$|^\\d{5}")).as_py())


@pytest.fixture()
def legacy(tmp_path: Path, pg_dsn: str, pg: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    pg.execute(DDL)
    pg.execute(ROWS)
    before, integers = dump(pg, "typed"), pg_integers(pg, "typed")
    cfg = make_config(tmp_path, dsn=pg_dsn, tables=[{"name": "typed"}], defaults={"retention_days": 1, "batch_size": 2})
    cut = archiver.reader._Cut.batch
    monkeypatch.setattr(archiver.reader._Cut, "batch", lambda self, *a, **k: _as_main_wrote_it(cut(self, *a, **k)))
    assert run_archive(load_config(cfg))[1] == 0
    monkeypatch.undo()
    folder = tmp_path / "archive" / "production_db" / "public.typed"
    return {"cfg": cfg, "before": before, "integers": integers, "folder": folder, "files": sorted(folder.rglob("*.parquet"))}


def test_old_objects_have_mixed_schemas_and_conform_to_the_tables_schema(legacy: dict[str, Any]) -> None:
    schemas = [pq.read_schema(f) for f in legacy["files"]]
    assert schemas[0].field("ts").type == pa.string() and schemas[2].field("ts").type == pa.timestamp("us")
    conformed = []
    for f in legacy["files"]:
        table, schema, _enc, doc = batch_writer.decode(f.read_bytes(), fmt="parquet")
        canonical = arrow_schema(schema)
        assert bool(mixed_columns(pq.read_schema(f), canonical)) == (f != legacy["files"][2])
        out = conform(table, canonical, exceptions=exceptions_of(doc))
        assert not mixed_columns(out.table.schema, canonical)
        conformed.append(out)
    table = pa.concat_tables([c.table for c in conformed]).sort_by("id")
    assert _temporal_integers(table) == legacy["integers"]
    # the text 'NaN' of numeric(12,2) becomes NULL in the decimal column and an exception
    assert conformed[0].exceptions["n"] == [(0, "NaN")]


def test_old_objects_restore_byte_for_byte(legacy: dict[str, Any], pg: psycopg.Connection[Any]) -> None:
    restore(load_config(legacy["cfg"]), database="production_db", table="typed", restore_all=True)
    assert dump(pg, "typed") == legacy["before"]


def test_old_objects_are_reported_as_mixed_schema(legacy: dict[str, Any]) -> None:
    report = validate(load_config(legacy["cfg"]))
    mixed = sorted(p.key.rsplit("/", 1)[1][:13] for p in report.problems if p.type == "mixed_schema")
    assert mixed == ["part-20240101", "part-20240102"]
    assert {p.type for p in report.problems} == {"mixed_schema"}
    assert "--migrate-layout" in next(line for line in report.text_lines() if "mixed_schema" in line)


def test_query_reads_old_and_new_objects_as_one_table(legacy: dict[str, Any]) -> None:
    out = io.StringIO()
    code = query(QueryOptions(config_path=legacy["cfg"], database="production_db", table="typed",
                              columns=("id", "ts", "d", "n"), output_format="csv"),
                 env=Environment(stdout=out, stderr=io.StringIO()))
    assert code == 0
    lines = out.getvalue().splitlines()
    assert len(lines) == 7 and lines[0] == "id,ts,d,n"
    assert lines[1].startswith("1,infinity,infinity,") and lines[3].startswith("3,4713-01-01 00:00:00 BC,5874897-12-31,-0.01")


# -- schema evolution ---------------------------------------------------------------------------
EVOLVING = """
CREATE TABLE evolving (id int PRIMARY KEY, created_at timestamptz NOT NULL, qty int, ratio real, label varchar(10),
                       price numeric(8,2));
INSERT INTO evolving SELECT g, '2024-01-01'::timestamptz + g * interval '1 hour', g, g / 3.0, 'v' || g, g * 1.25
FROM generate_series(1, 30) g;
"""
CHANGES = """
ALTER TABLE evolving ADD COLUMN note text, ALTER COLUMN qty TYPE bigint, ALTER COLUMN ratio TYPE double precision,
  ALTER COLUMN label TYPE text, ALTER COLUMN price TYPE numeric(12,2);
INSERT INTO evolving SELECT g, '2024-01-03'::timestamptz + g * interval '1 hour', g * 10000000000, g / 7.0,
  repeat('w', 20) || g, g * 1000000.5, 'new ' || g FROM generate_series(31, 50) g;
"""


@pytest.fixture()
def evolved(tmp_path: Path, pg_dsn: str, pg: psycopg.Connection[Any]) -> dict[str, Any]:
    """Archived before and after columns were added and widened: objects of two schema versions."""
    pg.execute(EVOLVING)
    cfg = make_config(tmp_path, dsn=pg_dsn, tables=[{"name": "evolving"}],
                      defaults={"retention_days": 1, "batch_size": 10})
    assert run_archive(load_config(cfg))[1] == 0
    pg.execute(CHANGES)
    assert run_archive(load_config(cfg))[1] == 0
    files = sorted((tmp_path / "archive").rglob("*.parquet"))
    return {"cfg": cfg, "files": files, "tmp": tmp_path}


def test_each_schema_version_has_one_schema_and_new_columns_are_nullable(evolved: dict[str, Any]) -> None:
    schemas = {str(pq.read_schema(f)) for f in evolved["files"]}
    assert len(schemas) == 2
    newest = pq.read_schema(evolved["files"][-1])
    assert newest.field("qty").type == pa.int64() and newest.field("note").nullable


def test_restore_brings_back_both_versions_into_the_changed_table(evolved: dict[str, Any], pg: psycopg.Connection[Any]) -> None:
    before = pg.execute("SELECT id, qty, ratio, label, price, note FROM evolving ORDER BY id").fetchall()
    assert before == []  # every row was archived
    pg.execute("ALTER TABLE evolving ALTER COLUMN note SET DEFAULT 'was not archived'")
    report = restore(load_config(evolved["cfg"]), database="production_db", table="evolving", restore_all=True)
    assert report.rows == 50 and report.dropped_columns == []
    rows = pg.execute("SELECT id, qty, ratio, label, price, note FROM evolving ORDER BY id").fetchall()
    # the real 0.33333334 as ALTER ... TYPE double precision turned the live rows: 0.3333333432674408
    assert rows[0][1:] == (1, pa.scalar(1 / 3.0, pa.float32()).as_py(), "v1", Decimal("1.25"), "was not archived")
    assert rows[-1][1:4] == (500000000000, 50 / 7.0, "w" * 20 + "50") and rows[-1][5] == "new 50"


def test_query_validate_and_erase_read_both_versions(evolved: dict[str, Any]) -> None:
    from erase.app import EraseOptions, run as erase

    out = io.StringIO()
    assert query(QueryOptions(config_path=evolved["cfg"], database="production_db", table="evolving",
                              where="qty >= 10 AND (note IS NULL OR note LIKE 'new%')", columns=("id", "qty", "note"),
                              output_format="csv"), env=Environment(stdout=out, stderr=io.StringIO())) == 0
    lines = out.getvalue().splitlines()
    assert lines[1:3] == ["10,10,", "11,11,"] and lines[-1] == "50,500000000000,new 50" and len(lines) == 42
    report = validate(load_config(evolved["cfg"]))
    assert report.problems == []
    assert erase(EraseOptions(config_path=evolved["cfg"], database="production_db", table="evolving",
                              where="id IN (5, 45) OR label = 'v7'"),
                 env=Environment(stdout=io.StringIO(), stderr=io.StringIO())) == 0
    out = io.StringIO()
    query(QueryOptions(config_path=evolved["cfg"], database="production_db", table="evolving", columns=("id",),
                       output_format="csv"), env=Environment(stdout=out, stderr=io.StringIO()))
    ids = [int(x) for x in out.getvalue().split()[1:]]
    assert ids == [i for i in range(1, 51) if i not in (5, 7, 45)]
