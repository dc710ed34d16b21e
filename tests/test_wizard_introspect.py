"""What the wizard reads from the catalog: tables with sizes, the timestamp column it proposes, the
primary key, refusals, and eligible-row counts that agree with the archiver's dry run (issue 8)."""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest

from archiver.runner import dry_run
from common.config import load_config
from common.errors import UsageError
from conftest import make_config, seed_audit
from wizard.introspect import create_index_hint, eligibility, inspect, list_tables, resolve_table
from wizard.tables import describe_eligibility

SHAPES = {
    # name: (DDL, expected proposal, expected indexed)
    "indexed created_at wins over an unindexed ts": (
        "CREATE TABLE t (id int PRIMARY KEY, ts timestamptz, created_at timestamptz);"
        " CREATE INDEX ON t (created_at)", "created_at", True),
    "created_at wins by name when nothing is indexed": (
        "CREATE TABLE t (id int PRIMARY KEY, happened_on date, when_seen timestamp, created_at timestamptz)",
        "created_at", False),
    "an indexed column beats an unindexed created_at": (
        "CREATE TABLE t (id int PRIMARY KEY, created_at timestamptz, logged_at timestamptz);"
        " CREATE INDEX ON t (logged_at)", "logged_at", True),
    "updated_at is not proposed even when indexed": (
        "CREATE TABLE t (id int PRIMARY KEY, updated_at timestamptz, inserted_at timestamp);"
        " CREATE INDEX ON t (updated_at)", "inserted_at", False),
    "a date column alone is a candidate": (
        "CREATE TABLE t (id int PRIMARY KEY, day date, note text)", "day", False),
    "a partial index does not count": (
        "CREATE TABLE t (id int PRIMARY KEY, created_at timestamptz);"
        " CREATE INDEX ON t (created_at) WHERE created_at > '2020-01-01'", "created_at", False),
    "a second index column does not count": (
        "CREATE TABLE t (id int PRIMARY KEY, created_at timestamptz); CREATE INDEX ON t (id, created_at)",
        "created_at", False),
    "timestamp without time zone": (
        "CREATE TABLE t (id int PRIMARY KEY, created_at timestamp NOT NULL); CREATE INDEX ON t (created_at)",
        "created_at", True),
}


def _details(pg: psycopg.Connection[Any], name: str = "t") -> Any:
    return inspect(pg, resolve_table(list_tables(pg), name))


@pytest.mark.parametrize("shape", list(SHAPES))
def test_timestamp_column_proposal(pg: psycopg.Connection[Any], shape: str) -> None:
    ddl, expected, indexed = SHAPES[shape]
    pg.execute(ddl)
    d = _details(pg)
    assert d.candidates[0].name == expected
    assert d.candidates[0].indexed is indexed
    assert d.primary_key == ("id",)
    assert d.refusal() is None


@pytest.mark.parametrize("ddl, key", [
    ("CREATE TABLE t (id uuid PRIMARY KEY, created_at timestamptz)", ("id",)),
    ("CREATE TABLE t (created_at timestamptz, event_no bigint, CONSTRAINT t_pk PRIMARY KEY (event_no))", ("event_no",)),
    ("CREATE TABLE t (a int, b int, created_at timestamptz, PRIMARY KEY (b, a))", ("b", "a")),
    ("CREATE TABLE t (id int UNIQUE NOT NULL, created_at timestamptz)", ()),
])
def test_primary_key_is_read_from_the_catalog(pg: psycopg.Connection[Any], ddl: str, key: tuple[str, ...]) -> None:
    pg.execute(ddl)
    assert _details(pg).primary_key == key


@pytest.mark.parametrize("ddl, key", [
    ("CREATE TABLE t (a int, b int, created_at timestamptz, PRIMARY KEY (b, a))", ("b", "a")),
    ("CREATE TABLE t (id int UNIQUE NOT NULL, created_at timestamptz)", ("id",)),
    ("CREATE TABLE t (a int NOT NULL, b int NOT NULL, created_at timestamptz, UNIQUE (a, b))", ("a", "b")),
])
def test_a_composite_key_or_a_not_null_unique_index_is_offered(pg: psycopg.Connection[Any], ddl: str,
                                                               key: tuple[str, ...]) -> None:
    pg.execute(ddl)
    d = _details(pg)
    assert d.refusal() is None and d.key == key
    assert d.key_problem(tuple(reversed(key))) is None  # any order: the given order is the keyset order
    assert "neither the primary key nor a usable unique index" in (d.key_problem(("created_at",)) or "")


@pytest.mark.parametrize("ddl, reason", [
    ("CREATE TABLE t (id int UNIQUE, created_at timestamptz)", "has no primary key"),
    ("CREATE TABLE t (id int PRIMARY KEY, created text, n int)", "no timestamp, timestamptz or date column"),
])
def test_tables_the_archiver_cannot_take_are_refused(pg: psycopg.Connection[Any], ddl: str, reason: str) -> None:
    pg.execute(ddl)
    refusal = _details(pg).refusal()
    assert refusal is not None and reason in refusal and "public.t" in refusal


def test_tables_are_listed_largest_first_with_estimates(pg: psycopg.Connection[Any]) -> None:
    pg.execute("CREATE TABLE small (id int PRIMARY KEY)")
    pg.execute("CREATE TABLE big (id int PRIMARY KEY, pad text)")
    pg.execute("INSERT INTO big SELECT g, repeat('x', 200) FROM generate_series(1, 5000) g")
    pg.execute("ANALYZE big")
    tables = list_tables(pg)
    assert [t.qualified for t in tables] == ["public.big", "public.small"]
    big, small = tables
    assert big.est_rows == 5000 and big.size_bytes > 5000 * 200
    assert small.est_rows is None  # never analyzed: shown as such, not as 0


def test_partitioned_table_is_listed_once_with_its_partitions_size(pg: psycopg.Connection[Any]) -> None:
    pg.execute("CREATE TABLE ev (id bigint, created_at timestamptz NOT NULL, PRIMARY KEY (id, created_at))"
               " PARTITION BY RANGE (created_at)")
    pg.execute("CREATE TABLE ev_2024 PARTITION OF ev FOR VALUES FROM ('2024-01-01') TO ('2025-01-01')")
    pg.execute("CREATE TABLE ev_2025 PARTITION OF ev FOR VALUES FROM ('2025-01-01') TO ('2026-01-01')")
    pg.execute("INSERT INTO ev SELECT g, '2024-06-01'::timestamptz + g * interval '1 hour' FROM generate_series(1, 2000) g")
    pg.execute("ANALYZE ev")
    tables = list_tables(pg)
    assert [t.qualified for t in tables] == ["public.ev"]
    assert tables[0].est_rows == 2000 and tables[0].size_bytes > 0


def test_schema_qualified_and_ambiguous_names(pg: psycopg.Connection[Any]) -> None:
    pg.execute("CREATE SCHEMA app; CREATE SCHEMA other")
    pg.execute("CREATE TABLE app.logs (id int PRIMARY KEY); CREATE TABLE other.logs (id int PRIMARY KEY)")
    tables = list_tables(pg)
    assert resolve_table(tables, "other.logs").schema == "other"
    with pytest.raises(UsageError, match="ambiguous"):
        resolve_table(tables, "logs")
    with pytest.raises(UsageError, match="not found"):
        resolve_table(tables, "app.nope")


def test_eligible_rows_match_the_archiver_dry_run(pg: psycopg.Connection[Any], pg_dsn: str, tmp_path: Path) -> None:
    seed_audit(pg, rows=3000, days=300)
    now = datetime.now(timezone.utc)
    d = _details(pg, "audit_logs")
    e = eligibility(pg, d, timestamp_column="created_at", retention_days=120, now=now)
    expected = pg.execute("SELECT count(*) FROM audit_logs WHERE created_at < %s - interval '120 days'", (now,)).fetchone()
    assert expected is not None and e.eligible == expected[0] and 0 < expected[0] < 3000
    assert e.total == 3000 and not e.total_is_estimate
    cfg = load_config(make_config(tmp_path, dsn=pg_dsn, defaults={"retention_days": 120}))
    lines, _code = dry_run(cfg, now=now)
    assert any(f"eligible rows {e.eligible}," in line for line in lines), lines


def test_index_hint_quotes_identifiers(pg: psycopg.Connection[Any]) -> None:
    hint = create_index_hint(pg, "My Schema", "odd\"name", "Created At")
    assert hint == 'CREATE INDEX CONCURRENTLY ON "My Schema"."odd""name" ("Created At")'



@pytest.mark.parametrize("setting, value", [("statement_timeout", "300ms"), ("lock_timeout", "200ms")])
def test_a_count_that_cannot_finish_is_reported_not_counted(pg: psycopg.Connection[Any], pg_dsn: str,
                                                            setting: str, value: str) -> None:
    """A migration holding an exclusive lock must not hang the wizard nor pass as "unreachable"."""
    pg.execute("CREATE TABLE t (id int PRIMARY KEY, created_at timestamptz)")
    d = _details(pg)
    with psycopg.connect(pg_dsn) as blocker:
        blocker.execute("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
        pg.execute("SELECT set_config(%s, %s, false)", (setting, value))
        e = eligibility(pg, d, timestamp_column="created_at", retention_days=30, now=datetime.now(timezone.utc))
    assert e.eligible is None and e.total is None
    assert describe_eligibility(e, 30).startswith("eligible now: not counted")
