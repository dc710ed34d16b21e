"""Partitioned tables (issue 15 item 3): a table entry names the partitioned parent; rows are
archived through it, objects keep the parent's name, restore targets the parent; multi-level
partitioning works through the leaves. expired_partitions: keep (the default) deletes rows."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest

from archive_checks import archived_ids, assert_invariant, manifests, table_ids
from archiver.runner import run_archive
from common.config import load_config
from common.exit_codes import ExitCode
from common.storage import LocalStorage
from conftest import make_config
from restore.engine import restore
from schema_support import partitions_of, seed_partitioned

EXPIRED = "SELECT count(*) FROM audit_logs WHERE created_at < now() - interval '90 days'"
TABLES = [{"name": "audit_logs", "timestamp_column": "created_at"}]


@pytest.mark.parametrize("multi_level", [False, True], ids=["monthly", "quarters-of-halves"])
def test_partitioned_table_with_keep_archives_through_the_parent_and_restores_into_it(
        tmp_path: Path, pg_dsn: str, pg: psycopg.Connection[Any], multi_level: bool) -> None:
    leaves = seed_partitioned(pg, multi_level=multi_level)
    original = table_ids(pg)
    cfg = load_config(make_config(tmp_path, dsn=pg_dsn, tables=TABLES, defaults={"batch_size": 50}))
    results, code = run_archive(cfg)
    assert code == ExitCode.OK and results[0].status == "completed", results
    store = LocalStorage(tmp_path / "archive")
    archived = archived_ids(store)
    assert_invariant(original, table_ids(pg), archived)
    assert pg.execute(EXPIRED).fetchone() == (0,) and len(archived) > 300
    assert partitions_of(pg) == {*leaves}  # keep: every partition stays
    found = manifests(store)
    assert {m.table for m in found} == {"audit_logs"} and all("/public.audit_logs/" in m.key for m in found)
    assert all(m.primary_key == ["id", "created_at"] for m in found)
    report = restore(cfg, database="production_db", table="audit_logs", restore_all=True)
    assert report.total("inserted") == len(archived)
    assert table_ids(pg) == original
