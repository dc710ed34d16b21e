"""The query tool (issue 16) against real archives: the archiver moves rows of a real PostgreSQL
table to moto S3 over HTTP (or a local directory), then `query` answers with a real DuckDB. Every
answer is compared with the same SQL predicate run by PostgreSQL on a copy of the rows taken
before archiving, restricted to the rows that were archived."""
from __future__ import annotations

import io
import json
import subprocess
import sys
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pyarrow.parquet as pq
import pytest

from archiver.runner import run_archive
from common.cli import Environment
from common.config import load_config
from common.errors import UsageError
from common.exit_codes import ExitCode
from conftest import make_config
from query.app import QueryOptions, run

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ["id", "created_at", "user_id", "email", "action", "payload", "ok", "amount"]
#: A value with a tab, a newline, a quote, a comma and non-ASCII text: must come out intact.
AWKWARD = 'tab\there, "quoted"\nnext line — é ✓'


@pytest.fixture()
def archived(tmp_path: Path, pg_dsn: str, bucket: str, s3_endpoint: str, small_audit: psycopg.Connection[Any]) -> Path:
    """small_audit archived to S3; `orig` keeps every row as it was before archiving."""
    pg = small_audit
    pg.execute("UPDATE audit_logs SET action = %s WHERE id %% 97 = 0", (AWKWARD,))
    pg.execute("CREATE TABLE orig AS SELECT * FROM audit_logs")
    path = make_config(tmp_path, dsn=pg_dsn, bucket=bucket, endpoint=s3_endpoint)
    _results, code = run_archive(load_config(path))
    assert code == ExitCode.OK
    return path


def expected(pg: psycopg.Connection[Any], where: str, *, start: date | None = None, end: date | None = None,
             columns: list[str] = COLUMNS) -> list[dict[str, Any]]:
    """What PostgreSQL says the same predicate selects among the archived rows, in (created_at, id) order."""
    span = ""
    if start:
        span += f" AND created_at >= '{start.isoformat()}'::timestamptz"
    if end:
        span += f" AND created_at < '{(end + timedelta(days=1)).isoformat()}'::timestamptz"
    cols = ", ".join(columns)
    pg.execute("SET TIME ZONE 'UTC'")
    rows = pg.execute(f"SELECT {cols} FROM orig WHERE id NOT IN (SELECT id FROM audit_logs)"
                      f" AND ({where}){span} ORDER BY created_at, id").fetchall()
    return [dict(zip(columns, r)) for r in rows]


def normalise(doc: dict[str, Any]) -> dict[str, Any]:
    """A JSON-lines row as Python values comparable with psycopg's."""
    out = dict(doc)
    if "created_at" in out:
        out["created_at"] = datetime.fromisoformat(out["created_at"]).astimezone(timezone.utc)
    if out.get("amount") is not None:
        out["amount"] = Decimal(out["amount"])
    if out.get("payload") is not None:
        out["payload"] = json.loads(out["payload"])
    return out


def query(config: Path, **kw: Any) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run(QueryOptions(config_path=config, database="production_db", table="audit_logs", **kw),
               env=Environment(stdout=out, stderr=err))
    return code, out.getvalue(), err.getvalue()


def days_ago(n: int) -> date:
    return (datetime.now(timezone.utc) - timedelta(days=n)).date()


PREDICATES = ["user_id = 42", "action = 'login' AND ok", "email LIKE 'user1%'", "amount > 500 AND NOT ok", "true"]


@pytest.mark.parametrize("where", PREDICATES)
@pytest.mark.parametrize("span", ["all", "one day", "ten days"])
def test_jsonl_answer_equals_the_predicate_on_the_original_rows(archived: Path, pg: psycopg.Connection[Any],
                                                                 where: str, span: str) -> None:
    start, end = {"all": (None, None), "one day": (days_ago(110), days_ago(110)),
                  "ten days": (days_ago(120), days_ago(111))}[span]
    code, out, err = query(archived, where=where, output_format="jsonl",
                           start_date=start and start.isoformat(), end_date=end and end.isoformat())
    assert code == 0, err
    got = [normalise(json.loads(line)) for line in out.splitlines()]
    want = expected(pg, where, start=start, end=end)
    assert got == want
    if where == "true" and span == "all":
        assert len(got) > 300  # the whole archive: a real answer, not an empty one


@pytest.mark.s3_servers
def test_csv_keeps_tabs_newlines_quotes_and_unicode(archived: Path, pg: psycopg.Connection[Any]) -> None:
    import csv

    code, out, err = query(archived, where="id % 97 = 0", columns=("id", "action", "email"), output_format="csv")
    assert code == 0, err
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0] == ["id", "action", "email"]
    want = expected(pg, "id % 97 = 0", columns=["id", "action", "email"])
    assert want and [[str(r["id"]), r["action"], r["email"]] for r in want] == rows[1:]
    assert all(r[1] == AWKWARD for r in rows[1:])


def test_limit_takes_the_first_rows_in_time_and_key_order(archived: Path, pg: psycopg.Connection[Any]) -> None:
    code, out, _ = query(archived, where="ok", columns=("id",), limit=7, output_format="jsonl")
    assert code == 0
    assert [json.loads(line)["id"] for line in out.splitlines()] == [r["id"] for r in expected(pg, "ok", columns=["id"])[:7]]


@pytest.mark.s3_servers
def test_parquet_output_holds_the_rows_with_their_types(archived: Path, pg: psycopg.Connection[Any], tmp_path: Path) -> None:
    target = tmp_path / "answer.parquet"
    code, out, _ = query(archived, where="user_id < 100", output_format="parquet", output=target)
    assert code == 0 and out == ""
    table = pq.read_table(target)
    want = expected(pg, "user_id < 100")
    assert table.column("id").to_pylist() == [r["id"] for r in want]
    assert table.column("amount").to_pylist() == [r["amount"] for r in want]
    assert table.column("created_at").to_pylist() == [r["created_at"] for r in want]


def test_table_output_shows_rows_for_a_person(archived: Path, pg: psycopg.Connection[Any]) -> None:
    code, out, _ = query(archived, where="id % 97 = 0", columns=("id", "action"))
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["id", "action"]
    ids = [int(line.split()[0]) for line in lines[2:]]
    assert ids == [r["id"] for r in expected(pg, "id % 97 = 0", columns=["id"])]
    assert "\\t" in lines[2] and "\\n" in lines[2]  # control characters shown escaped, one row per line


@pytest.mark.parametrize(("kw", "message"), [
    ({"where": "user_id = = 1"}, "Parser Error"),
    ({"where": "no_such_column = 1"}, 'Referenced column "no_such_column" not found'),
    ({"columns": ("id", "nope")}, '"nope" not found'),
    ({"where": "true); SELECT 1; SELECT (1"}, "one SQL expression"),
    ({"where": "true) --"}, "Parser Error"),
    ({"start_date": "2025-13-01"}, "not a date"),
    ({"start_date": "2025-03-02", "end_date": "2025-03-01"}, "before --start-date"),
    ({"output_format": "parquet"}, "give --output FILE"),
])
def test_bad_input_is_a_usage_error_with_the_engines_words(archived: Path, kw: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        query(archived, **kw)


def test_file_access_from_the_where_is_refused(archived: Path) -> None:
    with pytest.raises(UsageError, match="disabled by configuration"):
        query(archived, where="EXISTS (SELECT 1 FROM read_csv('/etc/passwd'))")


def test_bad_where_from_the_cli_exits_2_with_one_line(archived: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "query.main", "--config", str(archived), "--database", "production_db",
                           "--table", "audit_logs", "--where", "user_id = = 1"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == ExitCode.USAGE
    assert proc.stdout == "" and proc.stderr.strip().count("\n") == 0
    assert proc.stderr.startswith("query: error: query: Parser Error")


def test_a_failed_query_leaves_no_output_file(archived: Path, tmp_path: Path) -> None:
    target = tmp_path / "answer.csv"
    with pytest.raises(UsageError):
        query(archived, where="nope = 1", output_format="csv", output=target)
    assert not target.exists() and not list(tmp_path.glob(".answer.csv.*"))


def test_schema_drift_across_days_reads_a_missing_column_as_null(tmp_path: Path, pg_dsn: str,
                                                                  small_audit: psycopg.Connection[Any]) -> None:
    pg = small_audit
    path = make_config(tmp_path, dsn=pg_dsn, defaults={"retention_days": 110})
    assert run_archive(load_config(path))[1] == ExitCode.OK
    pg.execute("ALTER TABLE audit_logs ADD COLUMN reviewer text")
    pg.execute("UPDATE audit_logs SET reviewer = 'r' || (id % 3) WHERE created_at < now() - interval '90 days'")
    later = [r[0] for r in pg.execute("SELECT id FROM audit_logs WHERE reviewer = 'r1' ORDER BY created_at, id")]
    path = make_config(tmp_path, dsn=pg_dsn, defaults={"retention_days": 90})
    assert run_archive(load_config(path))[1] == ExitCode.OK
    code, out, err = query(path, where="reviewer = 'r1'", columns=("id", "reviewer"), output_format="jsonl")
    assert code == 0, err
    assert [json.loads(line)["id"] for line in out.splitlines()] == later and later
    code, out, _ = query(path, where="reviewer IS NULL", columns=("id",), output_format="jsonl", limit=3)
    assert code == 0 and len(out.splitlines()) == 3  # the first days were archived before the column existed


def test_local_storage_and_fallback_directory_are_both_read(tmp_path: Path, pg_dsn: str,
                                                             small_audit: psycopg.Connection[Any]) -> None:
    pg = small_audit
    pg.execute("CREATE TABLE orig AS SELECT * FROM audit_logs")
    path = make_config(tmp_path, dsn=pg_dsn)  # storage: local
    assert run_archive(load_config(path))[1] == ExitCode.OK
    code, out, _ = query(path, where="user_id % 10 = 3", output_format="jsonl")
    assert code == 0
    assert [normalise(json.loads(line)) for line in out.splitlines()] == expected(pg, "user_id % 10 = 3")


def test_glacier_objects_are_reported_and_the_answer_marked_incomplete(tmp_path: Path, pg_dsn: str, bucket: str,
                                                                        moto_server: str,
                                                                        small_audit: psycopg.Connection[Any]) -> None:
    path = make_config(tmp_path, dsn=pg_dsn, bucket=bucket, endpoint=moto_server, s3={"storage_class": "GLACIER"})
    assert run_archive(load_config(path))[1] == ExitCode.OK
    code, out, err = query(path, where="true", output_format="jsonl")
    assert code == ExitCode.FAILURE
    assert out == ""
    assert "are in GLACIER/DEEP_ARCHIVE and were not read" in err and "--request-glacier-restore" in err


def test_dates_without_archives_answer_nothing_and_say_so(archived: Path) -> None:
    code, out, err = query(archived, where="true", start_date="1999-01-01", end_date="1999-01-31", output_format="csv")
    assert code == 0 and out == ""
    assert "no archived objects of production_db/public.audit_logs in those dates" in err


def test_a_composite_key_table_answers_in_time_and_whole_key_order(tmp_path: Path, pg_dsn: str,
                                                                    pg: psycopg.Connection[Any]) -> None:
    """(tenant_id, id) keyed rows: three tenants share every id and timestamp, so only the whole
    key orders them; the answer equals PostgreSQL's over the archived rows."""
    from schema_support import seed_composite

    seed_composite(pg)
    pg.execute("CREATE TABLE orig AS SELECT * FROM audit_logs")
    path = make_config(tmp_path, dsn=pg_dsn, tables=[{"name": "audit_logs", "timestamp_column": "created_at"}],
                       defaults={"batch_size": 4})  # days of 9 rows: cut inside a day by key
    assert run_archive(load_config(path))[1] == ExitCode.OK
    code, out, err = query(path, where="tenant_id <> 't1'", columns=("tenant_id", "id", "email"), output_format="jsonl")
    assert code == 0, err
    pg.execute("SET TIME ZONE 'UTC'")
    want = pg.execute("SELECT tenant_id, id, email FROM orig o WHERE tenant_id <> 't1' AND NOT EXISTS"
                      " (SELECT 1 FROM audit_logs a WHERE (a.tenant_id, a.id) = (o.tenant_id, o.id))"
                      " ORDER BY created_at, tenant_id, id").fetchall()
    got = [tuple(json.loads(line).values()) for line in out.splitlines()]
    assert want and got == [tuple(r) for r in want]


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_char_n_values_compare_as_postgresql_compares_them(fmt: str, tmp_path: Path, pg_dsn: str,
                                                           pg: psycopg.Connection[Any]) -> None:
    # Parquet keeps char(5)'s pad ('ab   '), JSONL holds its text form ('ab'): the same --where
    # matched no row of one and every row of the other. PostgreSQL ignores the pad.
    pg.execute("CREATE TABLE coded (id int PRIMARY KEY, created_at timestamptz NOT NULL, code char(5))")
    pg.execute("INSERT INTO coded SELECT g, timestamptz '2024-01-01' + g * interval '1 hour',"
               " CASE WHEN g % 3 = 0 THEN 'ab' ELSE 'abc' END FROM generate_series(1, 60) g")
    want = [r[0] for r in pg.execute("SELECT id FROM coded WHERE code = 'ab' ORDER BY created_at, id")]
    path = make_config(tmp_path, dsn=pg_dsn, tables=[{"name": "coded"}], defaults={"retention_days": 1, "format": fmt})
    assert run_archive(load_config(path))[1] == ExitCode.OK
    out, err = io.StringIO(), io.StringIO()
    code = run(QueryOptions(config_path=path, database="production_db", table="coded", where="code = 'ab'",
                            output_format="jsonl"), env=Environment(stdout=out, stderr=err))
    assert code == 0, err.getvalue()
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["id"] for r in rows] == want and len(want) == 20
    assert {r["code"] for r in rows} == {"ab"}


def test_a_where_that_fails_on_the_rows_is_a_usage_error(tmp_path: Path, pg_dsn: str, pg: psycopg.Connection[Any]) -> None:
    # A cast of a text column: 'n/a' is no integer. Only the rows can show it, so check() on no
    # rows passes.
    pg.execute("CREATE TABLE coded (id int PRIMARY KEY, created_at timestamptz NOT NULL, code text)")
    pg.execute("INSERT INTO coded VALUES (1, '2024-01-01', 'n/a'), (2, '2024-01-01', '15')")
    path = make_config(tmp_path, dsn=pg_dsn, tables=[{"name": "coded"}], defaults={"retention_days": 1, "format": "jsonl"})
    assert run_archive(load_config(path))[1] == ExitCode.OK
    with pytest.raises(UsageError, match="--where: Conversion Error"):
        run(QueryOptions(config_path=path, database="production_db", table="coded", where="code::INTEGER = 0",
                         output_format="jsonl"),
            env=Environment(stdout=io.StringIO(), stderr=io.StringIO()))
