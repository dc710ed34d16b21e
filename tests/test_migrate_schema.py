"""`archiver --migrate-layout` rewrites objects of mixed schema (issue 27, part 3): objects written
before archives had one schema per table hold a timestamp, date or numeric column as text in a
batch where a value had no natural form (infinity, NaN, a BC date). The migration stores a verified
replacement in the table's schema before the old object goes, as erase does; afterwards every
object of the table has the same schema, validate is clean and restore gives back PostgreSQL's
rows byte for byte. A dry run changes nothing, a kill -9 at each point loses and duplicates no row,
and an object under Object Lock is reported, not rewritten. Real archives: the archiver against
PostgreSQL, writing as main did before issue 27, into moto S3 (and SeaweedFS) over HTTP."""
from __future__ import annotations

import io
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
import pyarrow.parquet as pq
import pytest

import archiver.reader
from archiver.migration.layout import migrate_layout
from archiver.runner import run_archive
from common.archive import layout
from common.config import load_config
from common.exit_codes import ExitCode
from common.archive.storage import S3Storage
from compliance_support import catalog_ids, locked_bucket  # noqa: F401 - fixture
from conftest import make_config
from restore.engine import restore
from test_layout import to_legacy
from test_one_schema import DDL, ROWS, _as_main_wrote_it, dump
from validate.checks import validate

ROOT = Path(__file__).resolve().parents[1]
ALL_IDS = Counter(range(1, 7))
#: The objects of days 1 and 2 hold infinities, NaN and BC dates: written as main wrote them,
#: some of their columns are text. Day 3's (all NULL) is in the table's schema already.
MIXED_DAYS = ["part-20240101", "part-20240102"]


def migrate(config: Path, *args: str, kill_at: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **({"ARCHIVER_TEST_KILL_AT": kill_at} if kill_at else {})}
    return subprocess.run([sys.executable, "-m", "archiver.main", "--config", str(config), "--migrate-layout", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)


def archive_as_main_did(tmp_path: Path, dsn: str, pg: psycopg.Connection[Any], bucket: str, endpoint: str,
                        monkeypatch: pytest.MonkeyPatch, **s3: Any) -> tuple[Path, bytes]:
    """The typed table (tests/test_one_schema.py) archived by the reader rule main had before
    issue 27, into S3: three objects, two of mixed schema. Returns the config and the table's
    COPY text before archiving."""
    pg.execute(DDL)
    pg.execute(ROWS)
    before = dump(pg, "typed")
    config = make_config(tmp_path, dsn=dsn, bucket=bucket, endpoint=endpoint, tables=[{"name": "typed"}],
                         defaults={"retention_days": 1, "batch_size": 2}, s3=s3)
    cut = archiver.reader._Cut.batch
    with monkeypatch.context() as m:
        m.setattr(archiver.reader._Cut, "batch", lambda self, *a, **k: _as_main_wrote_it(cut(self, *a, **k)))
        assert run_archive(load_config(config))[1] == ExitCode.OK
    assert pg.execute("SELECT count(*) FROM typed").fetchone() == (0,)
    return config, before


def mixed(config: Path) -> list[str]:
    report = validate(load_config(config))
    return sorted(p.key.rsplit("/", 1)[1][:13] for p in report.problems if p.type == "mixed_schema")


def versions(s3_client: Any, bucket: str) -> dict[str, str]:
    return {f"{v['Key']}@{v['VersionId']}": v["ETag"]
            for page in s3_client.get_paginator("list_object_versions").paginate(Bucket=bucket)
            for v in page.get("Versions", [])}


def data_schemas(store: S3Storage) -> list[Any]:
    return [pq.ParquetFile(io.BytesIO(store.get(o.key))).schema_arrow.remove_metadata() for o in store.list("")
            if o.key.endswith(".parquet")]


def restored_exactly(config: Path, pg: psycopg.Connection[Any], before: bytes, s3_client: Any) -> bool:
    report = restore(load_config(config), database="production_db", table="typed", restore_all=True, s3_client=s3_client)
    return report.rows == 6 and dump(pg, "typed") == before


@pytest.fixture()
def legacy(tmp_path: Path, pg_dsn: str, pg: psycopg.Connection[Any], bucket: str, s3_endpoint: str,
           monkeypatch: pytest.MonkeyPatch) -> tuple[Path, bytes]:
    config, before = archive_as_main_did(tmp_path, pg_dsn, pg, bucket, s3_endpoint, monkeypatch)
    assert mixed(config) == MIXED_DAYS
    return config, before


def test_dry_run_counts_the_objects_it_would_rewrite_and_changes_nothing(legacy: tuple[Path, bytes], bucket: str,
                                                                         s3_client: Any) -> None:
    config, _before = legacy
    snapshot = versions(s3_client, bucket)
    dry = migrate(config, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would rewrite 2 objects of mixed schema" in dry.stdout
    assert versions(s3_client, bucket) == snapshot


@pytest.mark.s3_servers
def test_migration_rewrites_mixed_objects_into_the_tables_one_schema(
        tmp_path: Path, pg_dsn: str, pg: psycopg.Connection[Any], bucket: str, s3_endpoint: str, s3_client: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """As an archive from before issue 27 lies: mixed schemas, and sidecar manifests and digests in
    the table's folder. One run moves the layout and rewrites; a second changes nothing."""
    config, before = archive_as_main_did(tmp_path, pg_dsn, pg, bucket, s3_endpoint, monkeypatch)
    store = S3Storage(s3_client, bucket)
    assert to_legacy(store) == 3
    assert len({str(s) for s in data_schemas(store)}) == 3
    done = migrate(config)
    assert done.returncode == 0, done.stderr
    assert "moved 3 manifests" in done.stdout and "rewrote 2 objects of mixed schema" in done.stdout
    assert len({str(s) for s in data_schemas(store)}) == 1 and len(data_schemas(store)) == 3
    assert not [o.key for o in store.list("") if layout.is_legacy(o.key)]
    report = validate(load_config(config))
    assert report.problems == [] and report.summary.rows == 6
    again = migrate(config)
    assert again.returncode == 0 and "rewrote 0 objects" in again.stdout and "moved 0 manifests" in again.stdout
    assert catalog_ids(load_config(config), s3_client, table="typed") == ALL_IDS
    assert restored_exactly(config, pg, before, s3_client)


@pytest.mark.parametrize("point,left", [("after_replacement:1", (1, 1)), ("after_replacement:2", (0, 2)),
                                        ("after_migration_digest:1", (0, 2)), ("after_old_removed:1", (0, 1))])
def test_kill_during_the_rewrite_loses_and_duplicates_no_row(legacy: tuple[Path, bytes], point: str,
                                                            left: tuple[int, int], pg: psycopg.Connection[Any],
                                                            bucket: str, s3_client: Any) -> None:
    config, before = legacy
    killed = migrate(config, kill_at=point)
    assert killed.returncode == -9, killed.stderr
    assert catalog_ids(load_config(config), s3_client, table="typed") == ALL_IDS  # every reader: each row once
    dry = migrate_layout(load_config(config), [S3Storage(s3_client, bucket)], dry_run=True).rewrites
    assert (dry.found, dry.finished) == left  # (objects still to rewrite, rewrites to finish)
    midway = validate(load_config(config))
    assert {p.type for p in midway.problems} <= {"unfinished_erasure", "mixed_schema"} and midway.summary.rows == 6
    assert all("run it again" in p.message for p in midway.problems if p.type == "unfinished_erasure")
    rerun = migrate(config)
    assert rerun.returncode == 0, rerun.stderr
    assert validate(load_config(config)).problems == []
    assert catalog_ids(load_config(config), s3_client, table="typed") == ALL_IDS
    assert restored_exactly(config, pg, before, s3_client)


def test_a_table_being_archived_is_skipped_and_the_migration_exits_1(legacy: tuple[Path, bytes], pg: psycopg.Connection[Any],
                                                                   bucket: str, s3_client: Any) -> None:
    from common.pg.db import find_table_oid, try_table_lock

    config, _before = legacy
    snapshot = versions(s3_client, bucket)
    oid = find_table_oid(pg, "public", "typed")
    assert oid is not None and try_table_lock(pg, oid)  # as the archiver's run holds it
    busy = migrate(config)
    assert busy.returncode == ExitCode.FAILURE, busy.stderr
    assert "rewrote 0 objects" in busy.stdout and "1 tables being archived were skipped" in busy.stdout
    assert versions(s3_client, bucket) == snapshot


@pytest.mark.s3_servers
def test_an_object_under_legal_hold_is_reported_not_rewritten(
        tmp_path: Path, pg_dsn: str, pg: psycopg.Connection[Any], locked_bucket: str, s3_endpoint: str,
        s3_client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    config, before = archive_as_main_did(tmp_path, pg_dsn, pg, locked_bucket, s3_endpoint, monkeypatch)
    store = S3Storage(s3_client, locked_bucket)
    held = next(o.key for o in store.list("") if MIXED_DAYS[0] in o.key)
    s3_client.put_object_legal_hold(Bucket=locked_bucket, Key=held, LegalHold={"Status": "ON"})
    result = migrate_layout(load_config(config), [store], dry_run=True)
    assert (result.rewrites.found, result.rewrites.locked) == (1, [held])
    done = migrate(config)
    assert done.returncode == 0, done.stderr
    assert "rewrote 1 objects" in done.stdout and "1 under Object Lock were left as they are" in done.stdout
    assert store.get(held) and mixed(config) == MIXED_DAYS[:1]
    assert catalog_ids(load_config(config), s3_client, table="typed") == ALL_IDS
    assert restored_exactly(config, pg, before, s3_client)


def test_objects_under_retention_are_reported_and_nothing_is_removed(
        tmp_path: Path, pg_dsn: str, pg: psycopg.Connection[Any], locked_bucket: str, s3_endpoint: str,
        s3_client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Archived with s3.object_lock (GOVERNANCE, which erase may bypass): the migration may not."""
    config, _before = archive_as_main_did(tmp_path, pg_dsn, pg, locked_bucket, s3_endpoint, monkeypatch,
                                          object_lock={"mode": "GOVERNANCE", "retain_days": 1})
    snapshot = versions(s3_client, locked_bucket)
    result = migrate_layout(load_config(config), [S3Storage(s3_client, locked_bucket)])
    assert (result.rewrites.rewritten, len(result.rewrites.locked), result.failed) == (0, 2, False)
    assert "2 under Object Lock were left as they are" in result.summary()
    assert versions(s3_client, locked_bucket) == snapshot and mixed(config) == MIXED_DAYS
