"""Archives that query engines read as they lie (issue 16): manifests are hidden sidecars, so a
reader applying Hadoop's hidden-file rule (pyarrow.dataset here; Spark, Trino, Hive and Athena do
the same) sees only Parquet under a table's location. Archives written with the older sidecar
names stay readable by restore, validate and query, and `--migrate-manifests` moves them, verified
and idempotent. Real archives: the archiver against PostgreSQL, moto S3 over HTTP."""
from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pyarrow.dataset as ds
import pytest

from archive_checks import archived_ids
from archiver.runner import run_archive
from common import layout
from common.cli import Environment
from common.config import load_config
from common.exit_codes import ExitCode
from common.storage import LocalStorage, S3Storage
from conftest import make_config
from query.app import QueryOptions
from query.app import run as query
from restore.engine import restore
from validate.checks import validate

ROOT = Path(__file__).resolve().parents[1]
TABLE_DIR = ("production_db", "public.audit_logs")


def archiver_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "archiver.main", "--config", str(config), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture()
def local_archive(tmp_path: Path, pg_dsn: str, small_audit: psycopg.Connection[Any]) -> tuple[Path, int]:
    path = make_config(tmp_path, dsn=pg_dsn)  # storage: local
    results, code = run_archive(load_config(path))
    assert code == ExitCode.OK and results[0].rows > 300
    return tmp_path / "archive", results[0].rows


def test_pyarrow_dataset_reads_the_table_location_with_no_filters(local_archive: tuple[Path, int]) -> None:
    root, rows = local_archive
    dataset = ds.dataset(root.joinpath(*TABLE_DIR), format="parquet", partitioning="hive")
    table = dataset.to_table()
    assert table.num_rows == rows
    assert {"year", "month", "day", "id", "created_at"} <= set(table.column_names)
    assert all(Path(f).name.startswith("part-") for f in dataset.files)


def test_duckdb_reads_the_table_location_as_the_runbook_says(local_archive: tuple[Path, int]) -> None:
    root, rows = local_archive
    glob = root.joinpath(*TABLE_DIR) / "year=*" / "month=*" / "day=*" / "*.parquet"
    got = duckdb.sql(f"SELECT count(*), count(DISTINCT id) FROM read_parquet('{glob}', hive_partitioning = true,"
                     " union_by_name = true)").fetchall()
    assert got == [(rows, rows)]


def test_each_manifest_is_a_hidden_sidecar_beside_its_object(local_archive: tuple[Path, int]) -> None:
    root, _rows = local_archive
    files = [p for p in root.rglob("*") if p.is_file()]
    data = {p for p in files if p.name.endswith(".parquet")}
    sidecars = {p for p in files if p.name.endswith(".manifest.json")}
    assert data and {p.parent / f"_{p.name}.manifest.json" for p in data} == sidecars


# -- archives written with the older sidecar names -----------------------------------------------
def to_legacy(store: S3Storage) -> int:
    """Rewrite every hidden manifest under its legacy name, as archives from before issue 16 were."""
    moved = 0
    for info in list(store.list("")):
        if layout.is_manifest(info.key) and not layout.is_legacy_manifest(info.key):
            body = store.get(info.key)
            from common.manifest import sha256_hex

            store.put(layout.legacy_manifest_key(layout.data_key(info.key)), body, sha256=sha256_hex(body))
            store.delete(info.key)
            moved += 1
    return moved


@pytest.fixture()
def legacy(tmp_path: Path, pg_dsn: str, bucket: str, moto_server: str, s3_client: Any,
           small_audit: psycopg.Connection[Any]) -> tuple[Path, S3Storage, int]:
    small_audit.execute("CREATE TABLE orig AS SELECT * FROM audit_logs")
    path = make_config(tmp_path, dsn=pg_dsn, bucket=bucket, endpoint=moto_server)
    assert run_archive(load_config(path))[1] == ExitCode.OK
    store = S3Storage(s3_client, bucket)
    assert to_legacy(store) > 30
    return path, store, sum(archived_ids(store).values())


def legacy_keys(store: S3Storage) -> list[str]:
    return [o.key for o in store.list("") if layout.is_legacy_manifest(o.key)]


def test_validate_accepts_the_older_layout(legacy: tuple[Path, S3Storage, int]) -> None:
    path, _store, rows = legacy
    report = validate(load_config(path))
    assert report.ok, report.problems
    assert report.summary.rows == rows


def test_restore_brings_back_an_older_layouts_rows(legacy: tuple[Path, S3Storage, int], pg: psycopg.Connection[Any],
                                                   s3_client: Any) -> None:
    path, _store, rows = legacy
    restore(load_config(path), database="production_db", table="audit_logs", restore_all=True, s3_client=s3_client)
    back = pg.execute("SELECT count(*) FROM audit_logs a JOIN orig o USING (id, created_at, email, payload)").fetchone()
    assert pg.execute("SELECT count(*) FROM audit_logs").fetchone() == (pg.execute("SELECT count(*) FROM orig").fetchone()[0],)
    assert back is not None and back[0] == pg.execute("SELECT count(*) FROM orig").fetchone()[0] and rows > 0


def test_query_reads_an_older_layout(legacy: tuple[Path, S3Storage, int], s3_client: Any) -> None:
    path, _store, rows = legacy
    out = io.StringIO()
    code = query(QueryOptions(config_path=path, database="production_db", table="audit_logs", columns=("id",),
                              output_format="jsonl"), env=Environment(stdout=out, stderr=io.StringIO()),
                 s3_client=s3_client)
    assert code == 0 and len(out.getvalue().splitlines()) == rows


def test_migrate_manifests_moves_every_old_sidecar_once(legacy: tuple[Path, S3Storage, int]) -> None:
    path, store, rows = legacy
    before = len(legacy_keys(store))
    first = archiver_cli(path, "--migrate-manifests")
    assert first.returncode == 0, first.stderr
    assert f"moved {before} manifests to hidden sidecars (0 had been copied already)" in first.stdout
    assert legacy_keys(store) == []
    assert validate(load_config(path)).ok
    again = archiver_cli(path, "--migrate-manifests")
    assert again.returncode == 0 and "moved 0 manifests" in again.stdout
    assert sum(archived_ids(store).values()) == rows


def test_migration_interrupted_after_a_copy_finishes_on_the_rerun(legacy: tuple[Path, S3Storage, int]) -> None:
    path, store, _rows = legacy
    old = legacy_keys(store)[0]
    body = store.get(old)
    from common.manifest import sha256_hex

    store.put(layout.manifest_key(layout.data_key(old)), body, sha256=sha256_hex(body))  # copied, old not yet deleted
    done = archiver_cli(path, "--migrate-manifests")
    assert done.returncode == 0 and "(1 had been copied already)" in done.stdout
    assert legacy_keys(store) == []


def test_a_sidecar_whose_copies_differ_is_kept_in_both_places(legacy: tuple[Path, S3Storage, int]) -> None:
    path, store, _rows = legacy
    old = legacy_keys(store)[0]
    doc = json.loads(store.get(old))
    doc["rows"] += 1
    changed = json.dumps(doc).encode()
    from common.manifest import sha256_hex

    store.put(layout.manifest_key(layout.data_key(old)), changed, sha256=sha256_hex(changed))
    done = archiver_cli(path, "--migrate-manifests")
    assert done.returncode == ExitCode.FAILURE and "1 left in both places because the copies differ" in done.stdout
    assert old in legacy_keys(store)


def test_fallback_directory_manifests_migrate_too(tmp_path: Path, local_archive: tuple[Path, int]) -> None:
    """A batch that waited in the fallback directory since before the upgrade keeps its manifest."""
    from archiver.migrate import migrate_manifests
    from common.fallback import FallbackDir
    from common.manifest import sha256_hex

    archive = LocalStorage(local_archive[0])
    key = next(o.key for o in archive.list("") if o.key.endswith(".parquet"))
    body = archive.get(layout.manifest_key(key))
    fallback = FallbackDir(tmp_path / "fallback")
    fallback.put(key, archive.get(key), sha256=sha256_hex(archive.get(key)))
    fallback.put(layout.legacy_manifest_key(key), body, sha256=sha256_hex(body))
    assert fallback.pending()[0] == 1
    result = migrate_manifests(load_config(tmp_path / "config.yaml"), [fallback])
    assert (result.moved, result.conflicts) == (1, [])
    assert fallback.get(layout.manifest_key(key)) == body and fallback.head(layout.legacy_manifest_key(key)) is None
    assert fallback.pending()[0] == 1


# -- the archiver's own paths over batches from before the upgrade --------------------------------
def legacy_batch(local_archive: tuple[Path, int], store: LocalStorage) -> str:
    """One real archived object with its manifest under the legacy name, in `store`."""
    from common.manifest import sha256_hex

    archive = LocalStorage(local_archive[0])
    key = next(o.key for o in archive.list("") if o.key.endswith(".parquet"))
    data, body = archive.get(key), archive.get(layout.manifest_key(key))
    store.put(key, data, sha256=sha256_hex(data))
    store.put(layout.legacy_manifest_key(key), body, sha256=sha256_hex(body))
    return key


def test_withdrawing_a_batch_removes_a_legacy_manifest_too(tmp_path: Path, local_archive: tuple[Path, int]) -> None:
    from archiver.sink import ArchiveSink

    store = LocalStorage(tmp_path / "other")
    key = legacy_batch(local_archive, store)
    ArchiveSink(store, None).withdraw(key, store.location)
    assert [o.key for o in store.list("")] == []


def test_draining_a_batch_with_both_sidecars_uploads_it_once(tmp_path: Path, local_archive: tuple[Path, int],
                                                            s3_client: Any, bucket: str) -> None:
    from archiver.sink import ArchiveSink
    from common.fallback import FallbackDir
    from common.manifest import sha256_hex

    fallback = FallbackDir(tmp_path / "fb")
    key = legacy_batch(local_archive, fallback)
    body = fallback.get(layout.legacy_manifest_key(key))
    fallback.put(layout.manifest_key(key), body, sha256=sha256_hex(body))  # a migration stopped halfway
    s3 = S3Storage(s3_client, bucket)
    drained = ArchiveSink(s3, fallback).drain()
    assert (drained.drained, drained.quarantined, drained.remaining) == (1, 0, 0)
    assert fallback.pending() == (0, 0) and fallback.quarantined() is None
    assert sorted(o.key for o in s3.list("")) == sorted([key, layout.manifest_key(key)])
