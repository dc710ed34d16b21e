"""Archives that query engines read as they lie (issues 16 and 27): a table's folder holds only its
Parquet objects in year=/month=/day= folders, and manifests, digests and withdrawal records live in
its control folder. Archives written in the legacy layouts (sidecar manifests, with hidden or older
names, and `_digests/`, `_withdrawn/` inside the table's folder) stay readable by restore, validate
and query, validate reports them as `legacy_layout`, and `--migrate-layout` moves them, verified,
idempotent and resumable. Real archives: the archiver against PostgreSQL, moto S3 over HTTP."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pyarrow.dataset as ds
import pytest

from archive_checks import archived, archived_ids
from archiver.runner import run_archive
from common.archive import layout, manifest_sets
from common.archive.manifest import sha256_hex
from common.archive.manifest_sets import entry_bytes
from common.cli import Environment
from common.config import load_config
from common.exit_codes import ExitCode
from common.archive.storage import LocalStorage, S3Storage, Storage
from conftest import make_config
from query.app import QueryOptions
from query.app import run as query
from restore.engine import restore
from validate.checks import validate

ROOT = Path(__file__).resolve().parents[1]
TABLE_DIR = ("production_db", "public.audit_logs")


def archiver_cli(config: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "archiver.main", "--config", str(config), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})})


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


def test_the_table_folder_holds_only_its_data_objects(local_archive: tuple[Path, int]) -> None:
    root, _rows = local_archive
    folder = root.joinpath(*TABLE_DIR)
    files = [p.relative_to(folder) for p in folder.rglob("*") if p.is_file()]
    assert files and all(p.name.startswith("part-") and p.suffix == ".parquet" and
                         [x.split("=")[0] for x in p.parts[:-1]] == ["year", "month", "day"] for p in files)
    control = root / "_control" / TABLE_DIR[0] / TABLE_DIR[1]
    assert sorted(p.name for p in control.iterdir()) == ["digests", "manifests"]


def test_one_manifest_set_per_group_of_batches_not_one_manifest_per_object(local_archive: tuple[Path, int]) -> None:
    root, _rows = local_archive
    objects = list(root.joinpath(*TABLE_DIR).rglob("*.parquet"))
    sets = list((root / "_control" / TABLE_DIR[0] / TABLE_DIR[1] / "manifests").iterdir())
    assert len(archived(LocalStorage(root))) == len(objects) > 30
    assert len(sets) <= len(objects) / 3  # groups of up to 8 batches of one read window share a set


# -- archives written in the legacy layouts -------------------------------------------------------
def to_legacy(store: Storage, *, names: str = "hidden") -> int:
    """Rewrite the archive as it was before issue 27 (names="hidden": issue 16's sidecars;
    "older": before it): each manifest as a sidecar beside its object, with exactly the bytes its
    identity names, digests in `<table>/_digests/`, withdrawal records in `<table>/_withdrawn/`."""
    moved = 0
    for info in list(store.list("")):
        key = info.key
        if layout.is_manifest_set(key):
            for r in manifest_sets.read(store.get(key), key=key):
                body = entry_bytes(json.loads(r.manifest.to_bytes()) | ({"replaces": r.replaces} if r.replaces else {}))
                target = layout.manifest_key(r.key) if names == "hidden" else layout.legacy_manifest_key(r.key)
                store.put(target, body, sha256=sha256_hex(body))
                moved += 1
        elif layout.in_control(key):
            table_dir = layout.table_prefix("", *layout.table_of_control("", key))  # type: ignore[misc]
            folder = layout.LEGACY_DIGESTS_DIR if f"/{layout.DIGESTS}" in key else layout.LEGACY_WITHDRAWN_DIR
            body = store.get(key)
            store.put(f"{table_dir}{folder}{key.rpartition('/')[2]}", body, sha256=sha256_hex(body))
        else:
            continue
        store.delete(key)
    return moved


@pytest.fixture(params=["hidden", "older"])
def legacy(request: pytest.FixtureRequest, tmp_path: Path, pg_dsn: str, bucket: str, moto_server: str, s3_client: Any,
           small_audit: psycopg.Connection[Any]) -> tuple[Path, S3Storage, int]:
    small_audit.execute("CREATE TABLE orig AS SELECT * FROM audit_logs")
    path = make_config(tmp_path, dsn=pg_dsn, bucket=bucket, endpoint=moto_server)
    assert run_archive(load_config(path))[1] == ExitCode.OK
    store = S3Storage(s3_client, bucket)
    rows = sum(archived_ids(store).values())
    assert to_legacy(store, names=request.param) > 30
    assert sum(archived_ids(store).values()) == rows  # the legacy layout counts the same rows
    return path, store, rows


def legacy_keys(store: Storage) -> list[str]:
    return sorted(o.key for o in store.list("") if layout.is_legacy(o.key))


def test_validate_reads_the_legacy_layout_and_reports_it(legacy: tuple[Path, S3Storage, int]) -> None:
    path, _store, rows = legacy
    report = validate(load_config(path))
    assert [(p.type, p.key) for p in report.problems] == [("legacy_layout", "production_db/public.audit_logs/")]
    assert "--migrate-layout" in report.problems[0].message
    assert report.summary.rows == rows


def test_restore_brings_back_a_legacy_layouts_rows(legacy: tuple[Path, S3Storage, int], pg: psycopg.Connection[Any],
                                                   s3_client: Any) -> None:
    path, _store, rows = legacy
    restore(load_config(path), database="production_db", table="audit_logs", restore_all=True, s3_client=s3_client)
    back = pg.execute("SELECT count(*) FROM audit_logs a JOIN orig o USING (id, created_at, email, payload)").fetchone()
    assert pg.execute("SELECT count(*) FROM audit_logs").fetchone() == (pg.execute("SELECT count(*) FROM orig").fetchone()[0],)
    assert back is not None and back[0] == pg.execute("SELECT count(*) FROM orig").fetchone()[0] and rows > 0


def test_query_reads_a_legacy_layout(legacy: tuple[Path, S3Storage, int], s3_client: Any) -> None:
    path, _store, rows = legacy
    out = io.StringIO()
    code = query(QueryOptions(config_path=path, database="production_db", table="audit_logs", columns=("id",),
                              output_format="jsonl"), env=Environment(stdout=out, stderr=io.StringIO()),
                 s3_client=s3_client)
    assert code == 0 and len(out.getvalue().splitlines()) == rows


def test_migrate_layout_moves_every_legacy_key_once(legacy: tuple[Path, S3Storage, int]) -> None:
    path, store, rows = legacy
    before = legacy_keys(store)
    dry = archiver_cli(path, "--migrate-layout", "--dry-run")
    sidecars, digests = sum(layout.is_manifest(k) for k in before), sum(layout.is_legacy_digest(k) for k in before)
    assert dry.returncode == 0, dry.stderr
    assert f"would move {sidecars} manifests, {digests} digests and 0 withdrawal records of 1 tables" in dry.stdout
    assert legacy_keys(store) == before  # a dry run changes nothing
    first = archiver_cli(path, "--migrate-layout")
    assert first.returncode == 0, first.stderr
    assert f"{len(before)} legacy keys removed" in first.stdout
    assert legacy_keys(store) == []
    assert validate(load_config(path)).ok
    again = archiver_cli(path, "--migrate-layout")
    assert again.returncode == 0 and "moved 0 manifests, 0 digests and 0 withdrawal records of 0 tables" in again.stdout
    assert sum(archived_ids(store).values()) == rows


def test_migration_killed_after_its_set_finishes_on_the_rerun(legacy: tuple[Path, S3Storage, int]) -> None:
    path, store, rows = legacy
    killed = archiver_cli(path, "--migrate-layout", env={"ARCHIVER_TEST_KILL_AT": "after_migration_set:1"})
    assert killed.returncode == -9, killed.stderr
    assert sum(archived_ids(store).values()) == rows  # a sidecar and its copy in the set count once
    done = archiver_cli(path, "--migrate-layout")
    assert done.returncode == 0 and "moved 0 manifests" in done.stdout
    assert legacy_keys(store) == [] and validate(load_config(path)).ok


def test_a_sidecar_whose_copies_differ_is_kept_and_reported(legacy: tuple[Path, S3Storage, int]) -> None:
    path, store, _rows = legacy
    hidden = next(k for k in legacy_keys(store) if layout.is_manifest(k))
    key = layout.data_key(hidden)
    doc = json.loads(store.get(hidden))
    doc["rows"] += 1
    changed = json.dumps(doc).encode()
    other = layout.legacy_manifest_key(key) if hidden == layout.manifest_key(key) else layout.manifest_key(key)
    store.put(other, changed, sha256=sha256_hex(changed))
    done = archiver_cli(path, "--migrate-layout")
    assert done.returncode == ExitCode.FAILURE and "1 left in place because they differ" in done.stdout
    assert legacy_keys(store) == [layout.legacy_manifest_key(key)]


def test_fallback_directory_migrates_too(tmp_path: Path, local_archive: tuple[Path, int]) -> None:
    """A batch that waited in the fallback directory since before the upgrade keeps its manifest."""
    from archiver.migration.layout import migrate_layout
    from common.archive.fallback import FallbackDir

    fallback = FallbackDir(tmp_path / "fallback")
    key = legacy_batch(local_archive, fallback)
    assert fallback.pending()[0] == 1
    result = migrate_layout(load_config(tmp_path / "config.yaml"), [fallback])
    assert (result.manifests, result.conflicts, legacy_keys(fallback)) == (1, [], [])
    assert list(archived(fallback)) == [key] and fallback.pending()[0] == 1


# -- the archiver's own paths over batches from before the upgrade --------------------------------
def legacy_batch(local_archive: tuple[Path, int], store: LocalStorage) -> str:
    """One real archived object with its manifest under the older sidecar name, in `store`."""
    archive = LocalStorage(local_archive[0])
    key, manifest = next(iter(archived(archive).items()))
    data, body = archive.get(key), manifest.to_bytes()
    store.put(key, data, sha256=sha256_hex(data))
    store.put(layout.legacy_manifest_key(key), body, sha256=sha256_hex(body))
    return key


def test_taking_back_a_legacy_batch_records_it(tmp_path: Path, local_archive: tuple[Path, int]) -> None:
    from archiver.sink import ArchiveSink

    store = LocalStorage(tmp_path / "other")
    key = legacy_batch(local_archive, store)
    manifest = archived(store)[key]
    ArchiveSink(store, None).take_back(manifest, store.location, recorded=True)
    assert archived(store) == {} and store.head(key) is None


def test_draining_a_batch_with_both_sidecars_uploads_it_once(tmp_path: Path, local_archive: tuple[Path, int],
                                                            s3_client: Any, bucket: str) -> None:
    from archiver.sink import ArchiveSink
    from common.archive.fallback import FallbackDir

    fallback = FallbackDir(tmp_path / "fb")
    key = legacy_batch(local_archive, fallback)
    body = fallback.get(layout.legacy_manifest_key(key))
    fallback.put(layout.manifest_key(key), body, sha256=sha256_hex(body))  # a migration stopped halfway
    s3 = S3Storage(s3_client, bucket)
    drained = ArchiveSink(s3, fallback).drain()
    assert (drained.drained, drained.quarantined, drained.remaining) == (1, 0, 0)
    assert fallback.pending() == (0, 0) and fallback.quarantined() is None
    assert list(archived(s3)) == [key] and [o.key for o in s3.list("") if not layout.is_control_key(o.key)] == [key]


def test_withdraw_takes_back_a_damaged_objects_batch_by_hand(tmp_path: Path, local_archive: tuple[Path, int]) -> None:
    """The runbook's repair of a damaged object: moved aside, its batch withdrawn, validate clean."""
    root, rows = local_archive
    store = LocalStorage(root)
    key, manifest = next(iter(archived(store).items()))
    (tmp_path / "damaged").mkdir()
    (root / key).rename(tmp_path / "damaged" / "object.parquet")
    path = tmp_path / "config.yaml"
    assert [p.type for p in validate(load_config(path)).problems] == ["missing_object"]
    done = archiver_cli(path, "--withdraw", key)
    assert done.returncode == 0 and f"withdrawn: {key} ({manifest.rows} rows)" in done.stdout, done.stderr
    assert key not in archived(store) and sum(archived_ids(store).values()) == rows - manifest.rows
    assert validate(load_config(path)).ok
    again = archiver_cli(path, "--withdraw", key)
    assert again.returncode == ExitCode.FAILURE and "already withdrawn" in again.stderr


def test_a_database_named_like_the_control_folder_is_refused(tmp_path: Path) -> None:
    from common.errors import ConfigError

    path = make_config(tmp_path, dsn="host=127.0.0.1")
    text = path.read_text().replace("name: production_db", "name: _control")
    path.write_text(text)
    with pytest.raises(ConfigError, match="_control"):
        load_config(path)
