"""Restore after `expired_partitions: drop` (issue 15): the leaves the archiver dropped are created
again from the bounds their manifests recorded, so the rows go back where they came from; with a
default partition, an overlapping partition or a plain --target-table nothing is recreated and the
rows go where PostgreSQL routes them. Archives are real (the archiver, moto over HTTP)."""
from __future__ import annotations

import re

from pathlib import Path
from typing import Any

import psycopg
import pytest

from archiver.runner import run_archive
from common.config import Config, load_config
from common.errors import DataIntegrityError
from common.exit_codes import ExitCode
from conftest import make_config
from restore import render
from restore.engine import restore
from restore.partitions import Leaf, check_bound, recreate
from restore_support import dump
from schema_support import partitions_of, seed_partitioned

TABLES = [{"name": "audit_logs", "timestamp_column": "created_at"}]
BOUNDS = ("SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_partition_tree('audit_logs') t"
          " JOIN pg_class c ON c.oid = t.relid WHERE t.isleaf")


def bounds(pg: psycopg.Connection[Any]) -> dict[str, str]:
    return {r[0]: r[1] for r in pg.execute(BOUNDS).fetchall()}


def archive_dropping(tmp_path: Path, pg_dsn: str, bucket: str, endpoint: str, *, mode: str = "drop") -> Config:
    cfg = load_config(make_config(tmp_path, dsn=pg_dsn, bucket=bucket, endpoint=endpoint, tables=TABLES,
                                  defaults={"retention_days": 90, "batch_size": 50, "expired_partitions": mode}))
    results, code = run_archive(cfg)
    assert code == ExitCode.OK and results[0].status == "completed", results
    return cfg


def count(pg: psycopg.Connection[Any], table: str) -> int:
    row = pg.execute(f"SELECT count(*) FROM {table}").fetchone()
    assert row is not None
    return int(row[0])


def restore_all(cfg: Config, **kwargs: Any) -> Any:
    return restore(cfg, database="production_db", table="audit_logs", restore_all=True, **kwargs)


@pytest.mark.parametrize(("strategy", "multi_level"), [("fail", False), ("skip", False), ("overwrite", False),
                                                       ("skip", True)],
                         ids=["fail", "skip", "overwrite", "skip-quarters-of-halves"])
def test_dropped_leaves_come_back_with_their_bounds_and_every_row_once(
        tmp_path: Path, pg_dsn: str, pg: psycopg.Connection[Any], bucket: str, moto_server: str,
        strategy: str, multi_level: bool) -> None:
    seed_partitioned(pg, default=False, multi_level=multi_level)
    original, before = bounds(pg), dump(pg, "audit_logs")
    cfg = archive_dropping(tmp_path, pg_dsn, bucket, moto_server)
    dropped = set(original) - set(bounds(pg))
    assert len(dropped) >= 2, "the run retired whole leaves"
    report = restore_all(cfg, conflict_strategy=strategy)
    assert bounds(pg) == original
    assert dump(pg, "audit_logs") == before  # byte-identical: every row back exactly once
    assert sorted(report.recreated_partitions) == sorted(f"public.{n} {original[n]}" for n in dropped)
    assert report.total("inserted") == report.rows
    text = render.report_text(report)
    assert all(f"recreated partition public.{n} FOR VALUES FROM" in text for n in dropped), text


def test_a_default_partition_takes_the_rows_and_nothing_is_recreated(
        tmp_path: Path, pg_dsn: str, pg: psycopg.Connection[Any], bucket: str, moto_server: str) -> None:
    seed_partitioned(pg, default=True)
    before, in_default = dump(pg, "audit_logs"), count(pg, "audit_logs_default")  # its old rows are archived too
    cfg = archive_dropping(tmp_path, pg_dsn, bucket, moto_server)
    left = partitions_of(pg)
    report = restore_all(cfg, conflict_strategy="skip")
    assert report.recreated_partitions == [] and partitions_of(pg) == left
    assert any("has a default partition" in n for n in report.notes), report.notes
    assert dump(pg, "audit_logs") == before
    from_dropped = sum(o.rows or 0 for o in report.selected if o.manifest and o.manifest.partition)
    assert from_dropped > 0 and count(pg, "audit_logs_default") == in_default + from_dropped


def test_an_overlapping_partition_is_left_alone_and_takes_the_rows(
        tmp_path: Path, pg_dsn: str, pg: psycopg.Connection[Any], bucket: str, moto_server: str) -> None:
    seed_partitioned(pg, default=False)
    original, before = bounds(pg), dump(pg, "audit_logs")
    cfg = archive_dropping(tmp_path, pg_dsn, bucket, moto_server)
    dropped = sorted(set(original) - set(bounds(pg)))
    # An operator's own partition spanning the first two dropped months.
    low = original[dropped[0]].split(" TO ")[0].removeprefix("FOR VALUES FROM ")
    high = original[dropped[1]].split(" TO ")[1]
    pg.execute(f"CREATE TABLE audit_logs_span PARTITION OF audit_logs FOR VALUES FROM {low} TO {high}")
    report = restore_all(cfg, conflict_strategy="skip")
    assert sorted(report.recreated_partitions) == sorted(f"public.{n} {original[n]}" for n in dropped[2:])
    refused = [n for n in report.notes if "would overlap" in n]
    assert len(refused) == 2 and all(f"public.{n} not recreated" in " ".join(refused) for n in dropped[:2]), report.notes
    assert dump(pg, "audit_logs") == before
    assert set(bounds(pg)) == (set(original) - set(dropped[:2])) | {"audit_logs_span"}
    span = pg.execute("SELECT count(*) FROM audit_logs_span").fetchone()
    assert span is not None and span[0] > 0


def test_dry_run_says_which_partitions_it_would_recreate_and_changes_nothing(
        tmp_path: Path, pg_dsn: str, pg: psycopg.Connection[Any], bucket: str, moto_server: str) -> None:
    seed_partitioned(pg, default=False)
    original = bounds(pg)
    cfg = archive_dropping(tmp_path, pg_dsn, bucket, moto_server)
    after, rows = bounds(pg), pg.execute("SELECT count(*) FROM audit_logs").fetchone()
    report = restore_all(cfg, dry_run=True)
    text = render.report_text(report)
    for name in set(original) - set(after):
        assert f"would recreate partition public.{name} {original[name]}" in text, text
    assert report.recreated_partitions == []
    assert bounds(pg) == after and pg.execute("SELECT count(*) FROM audit_logs").fetchone() == rows


def test_a_plain_target_table_gets_every_row_and_no_partition(
        tmp_path: Path, pg_dsn: str, pg: psycopg.Connection[Any], bucket: str, moto_server: str) -> None:
    seed_partitioned(pg, default=False)
    cfg = archive_dropping(tmp_path, pg_dsn, bucket, moto_server)
    after = bounds(pg)
    report = restore_all(cfg, target_table="audit_restored", conflict_strategy="skip")
    assert report.created_target and report.recreated_partitions == [] and bounds(pg) == after
    restored = pg.execute("SELECT count(*), count(DISTINCT id) FROM audit_restored").fetchone()
    assert restored == (report.rows, report.rows) and report.rows > 0


def test_a_detached_leaf_kept_as_a_table_is_not_recreated(
        tmp_path: Path, pg_dsn: str, pg: psycopg.Connection[Any], bucket: str, moto_server: str) -> None:
    """detach keeps the leaf as a table of its own: restore cannot create it under its name, says so,
    and PostgreSQL refuses rows no partition covers; the run rolls back."""
    seed_partitioned(pg, default=False)
    cfg = archive_dropping(tmp_path, pg_dsn, bucket, moto_server, mode="detach")
    after = bounds(pg)
    with pytest.raises(Exception, match="no partition of relation"):
        restore_all(cfg)
    assert bounds(pg) == after


def test_the_note_on_a_detached_leaf_gives_the_attach_that_puts_its_rows_back(
        tmp_path: Path, pg_dsn: str, pg: psycopg.Connection[Any], bucket: str, moto_server: str) -> None:
    """What the operator runs, from the (dry-run) note: the detached table still holds its rows."""
    seed_partitioned(pg, default=False)
    before = count(pg, "audit_logs")
    cfg = archive_dropping(tmp_path, pg_dsn, bucket, moto_server, mode="detach")
    notes = [n for n in restore_all(cfg, dry_run=True).notes if "exists as a table of its own" in n]
    assert notes and count(pg, "audit_logs") < before
    for note in notes:
        pg.execute(re.search(r"attach it again \((ALTER TABLE .+? ATTACH PARTITION .+?)\), or restore", note).group(1))
    attached = count(pg, "audit_logs")
    # the rest, archived row by row from the leaf that straddled the cutoff, comes back from S3;
    # the attached leaves' rows are there already
    report = restore_all(cfg, conflict_strategy="skip")
    assert report.total("inserted") == before - attached and count(pg, "audit_logs") == before
    assert report.total("skipped") == report.rows - report.total("inserted") > 0


@pytest.mark.parametrize("bound", [
    "FOR VALUES FROM ('2025-01-01 00:00:00+00') TO ('2025-02-01 00:00:00+00')",
    "FOR VALUES FROM (MINVALUE) TO ('it''s')",
    "FOR VALUES FROM (-5, 10) TO (7.5e3, MAXVALUE)",
    "FOR VALUES IN ('a', NULL, true)",
    "FOR VALUES WITH (modulus 4, remainder 1)",
    "FOR VALUES IN ('ACME\\Corp', 'O''Brien; DROP')",
    # with standard_conforming_strings (recreate sets it): the two values `x\` and `);DROP TABLE t;--`
    "FOR VALUES IN ('x\\', ');DROP TABLE t;--')",
])
def test_bounds_as_pg_get_expr_prints_them_are_accepted(bound: str) -> None:
    assert check_bound(bound, key="k") == bound


@pytest.mark.parametrize("bound", [
    "DEFAULT",
    "FOR VALUES FROM ('2025-01-01') TO ('2025-02-01'); DROP TABLE audit_logs",
    "FOR VALUES FROM (now()) TO (MAXVALUE)",
    "FOR VALUES IN ('a') -- comment",
    "FOR VALUES IN (E'a')",
    "FOR VALUES IN ('a'::text)",
    "FOR VALUES IN ($$a$$)",
    "for values in ('a')",
])
def test_anything_else_in_a_manifest_bound_is_refused(bound: str) -> None:
    with pytest.raises(DataIntegrityError, match="not a partition bound"):
        check_bound(bound, key="k")


def test_a_list_bound_with_a_backslash_is_recreated_with_its_values(pg: psycopg.Connection[Any]) -> None:
    pg.execute("CREATE TABLE tenants (id int, tenant text, PRIMARY KEY (id, tenant)) PARTITION BY LIST (tenant)")
    pg.execute("SET standard_conforming_strings = off")  # a session where a backslash would escape
    bound = "FOR VALUES IN ('ACME\\Corp', 'O''Brien; DROP')"
    with pg.transaction():
        assert recreate(pg, Leaf("public", "tenants_acme", ("public", "tenants"), check_bound(bound, key="k"))) is None
    pg.execute("RESET standard_conforming_strings")
    pg.execute("INSERT INTO tenants VALUES (1, 'ACME\\Corp'), (2, 'O''Brien; DROP')")
    got = pg.execute("SELECT tenant FROM tenants_acme ORDER BY id").fetchall()
    assert got == [("ACME\\Corp",), ("O'Brien; DROP",)]


def test_a_bound_is_recorded_as_it_reads_back_where_the_database_turns_standard_strings_off(
        pg: psycopg.Connection[Any], pg_dsn: str) -> None:
    # There pg_get_expr doubles a backslash ('ACME\\Corp'); restore reads bounds with the setting on,
    # so it would have created a partition for the value `ACME\\Corp`, and no row would fit it.
    from archiver.partitions import leaves
    from common.pg.db import apply_settings
    from common.pgtypes import SESSION_SETTINGS
    dbname = pg.execute("SELECT current_database()").fetchone()[0]
    pg.execute(f'ALTER DATABASE "{dbname}" SET standard_conforming_strings = off')
    pg.execute("CREATE TABLE tenants (id int, tenant text, created_at timestamptz, PRIMARY KEY (id, tenant))"
               " PARTITION BY LIST (tenant)")
    pg.execute("CREATE TABLE tenants_acme PARTITION OF tenants FOR VALUES IN (E'ACME\\\\Corp')")
    with psycopg.connect(pg_dsn) as conn:
        apply_settings(conn, SESSION_SETTINGS)
        (leaf,) = leaves(conn, conn.execute("SELECT 'tenants'::regclass::oid").fetchone()[0], "created_at")
    assert leaf.bound == "FOR VALUES IN ('ACME\\Corp')"
