"""The erase tool (issue 17) against real archives: the archiver moves rows of a real PostgreSQL
table to moto S3 over HTTP, then erase removes a data subject's rows. Checked against a copy of
the table taken before archiving: the erased rows are in no stored object (no version either), a
restore of the rest gives back exactly the other rows, validate stays clean and shows the erasure,
a kill -9 at any point leaves every row erased or intact, and COMPLIANCE-locked objects are refused."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
import pytest

from archiver.runner import run_archive
from common import batch_writer
from common.archive import layout
from common.archive.catalog import ArchiveNotFound, Catalog, resolve_table
from common.cli import Environment
from common.config import Config, load_config
from common.exit_codes import ExitCode
from compliance_support import all_keys, catalog_ids, locked_bucket  # noqa: F401 - fixture
from conftest import make_config
from erase.app import EraseOptions, run as erase
from restore.engine import restore as restore_engine
from restore.app import RestoreOptions, run as restore
from validate.checks import validate

ROOT = Path(__file__).resolve().parents[1]
WHERE = "user_id % 100 = 42 OR email = 'user1100@example.com'"
SQL_WHERE = "user_id % 100 = 42 OR email = 'user1100@example.com'"  # the same rows, in PostgreSQL


def archive(tmp_path: Path, dsn: str, pg: psycopg.Connection[Any], bucket: str, endpoint: str, **s3: Any) -> Path:
    """Archive small_audit; `orig` keeps every row as it was."""
    pg.execute("CREATE TABLE orig AS SELECT * FROM audit_logs")
    path = make_config(tmp_path, dsn=dsn, bucket=bucket, endpoint=endpoint, s3=s3)
    _r, code = run_archive(load_config(path))
    assert code == ExitCode.OK
    return path


def to_erase(pg: psycopg.Connection[Any]) -> set[int]:
    """Archived rows the request selects."""
    return {r[0] for r in pg.execute(f"SELECT id FROM orig WHERE id NOT IN (SELECT id FROM audit_logs) AND ({SQL_WHERE})")}


def run_erase(config: Path, *, dry_run: bool = False, where: str = WHERE, fmt: str = "text") -> tuple[int, str]:
    out = io.StringIO()
    code = erase(EraseOptions(config_path=config, database="production_db", table="audit_logs", where=where,
                              dry_run=dry_run, output_format=fmt), env=Environment(stdout=out, stderr=io.StringIO()))
    return code, out.getvalue()


def stored_ids(s3_client: Any, bucket: str) -> Counter[int]:
    """Primary keys in every stored version of every data object, manifest or not."""
    ids: Counter[int] = Counter()
    for page in s3_client.get_paginator("list_object_versions").paginate(Bucket=bucket):
        for v in page.get("Versions", []):
            if layout.is_manifest(v["Key"]) or layout.is_control_key(v["Key"]):
                continue
            body = s3_client.get_object(Bucket=bucket, Key=v["Key"], VersionId=v["VersionId"])["Body"].read()
            t = batch_writer.decode(body, fmt=batch_writer.format_of(v["Key"]), columns=["id"])[0]
            ids.update(t.column("id").to_pylist())
    return ids


def snapshot(s3_client: Any, bucket: str) -> dict[str, str]:
    return {f"{v['Key']}@{v['VersionId']}": v["ETag"]
            for page in s3_client.get_paginator("list_object_versions").paginate(Bucket=bucket)
            for v in page.get("Versions", [])}


def kill_erase_at(config: Path, point: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "erase.main", "--config", str(config), "--database", "production_db",
                           "--table", "audit_logs", "--where", WHERE], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "ARCHIVER_TEST_KILL_AT": point}, timeout=300)
    assert proc.returncode == -9, proc.stderr


@pytest.fixture()
def archived(tmp_path: Path, pg_dsn: str, small_audit: psycopg.Connection[Any], bucket: str, s3_endpoint: str) -> Path:
    return archive(tmp_path, pg_dsn, small_audit, bucket, s3_endpoint)


def test_dry_run_lists_objects_and_rows_and_changes_no_byte(archived: Path, pg: psycopg.Connection[Any], bucket: str,
                                                           s3_client: Any) -> None:
    before = snapshot(s3_client, bucket)
    want = to_erase(pg)
    assert len(want) >= 4  # several objects, for the kills between them
    code, out = run_erase(archived, dry_run=True, fmt="json")
    assert code == 0
    doc = json.loads(out)
    assert doc["dry_run"] and doc["rows_matching"] == len(want) and doc["rows_erased"] == 0
    assert all(o["replacement"] is None and 0 < o["matching"] <= o["rows"] for o in doc["objects"])
    assert snapshot(s3_client, bucket) == before


@pytest.mark.s3_servers
def test_erased_rows_are_in_no_object_and_the_rest_restores_identically(
        archived: Path, pg: psycopg.Connection[Any], bucket: str, s3_client: Any) -> None:
    erased = to_erase(pg)
    code, out = run_erase(archived)
    assert code == 0, out
    assert f"erased {len(erased)} rows" in out
    assert not set(stored_ids(s3_client, bucket)) & erased
    assert restore(RestoreOptions(config_path=archived, database="production_db", table="audit_logs",
                                  restore_all=True), env=Environment(stdout=io.StringIO())) == 0
    got = [r[0] for r in pg.execute("SELECT t::text FROM audit_logs t ORDER BY id")]
    want = [r[0] for r in pg.execute("SELECT t::text FROM orig t WHERE id <> ALL(%s) ORDER BY id", (sorted(erased),))]
    assert got == want


def test_validate_is_clean_after_erase_and_shows_the_erasure(archived: Path, pg: psycopg.Connection[Any],
                                                             bucket: str, s3_client: Any) -> None:
    erased = to_erase(pg)
    assert run_erase(archived)[0] == 0
    report = validate(load_config(archived), s3_client=s3_client)
    assert report.ok, report.text_lines()
    notes = [n for n in report.notes if n.startswith("erasure at")]
    assert len(notes) == 1 and f"{len(erased)} rows removed" in notes[0]
    digests = b"".join(s3_client.get_object(Bucket=bucket, Key=k)["Body"].read()
                       for k in all_keys(s3_client, bucket) if f"/{layout.DIGESTS}" in k)
    assert b'"erasures"' in digests and b"user1100@example.com" not in digests and b"user_id % 100" not in digests


def test_second_erase_of_the_same_request_finds_nothing(archived: Path, s3_client: Any, bucket: str) -> None:
    assert run_erase(archived)[0] == 0
    before = snapshot(s3_client, bucket)
    code, out = run_erase(archived)
    assert code == 0 and "0 matching rows in 0 objects" in out
    assert snapshot(s3_client, bucket) == before


@pytest.mark.parametrize("point", ["after_replacement:1", "after_replacement:2", "after_erase_digest:1",
                                   "after_old_removed:1"])
def test_kill_mid_erase_leaves_rows_erased_or_intact_and_a_rerun_finishes(
        archived: Path, pg: psycopg.Connection[Any], bucket: str, s3_client: Any, point: str) -> None:
    erased = to_erase(pg)
    cfg = load_config(archived)
    before = catalog_ids(cfg, s3_client)
    kill_erase_at(archived, point)
    during = catalog_ids(cfg, s3_client)
    assert max(during.values()) == 1, "a row counted twice after the kill"
    assert set(before) - set(during) <= erased and set(during) <= set(before)  # each row erased or intact
    code, out = run_erase(archived)
    assert code == 0, out
    after = catalog_ids(cfg, s3_client)
    assert max(after.values()) == 1 and set(after) == set(before) - erased
    assert not set(stored_ids(s3_client, bucket)) & erased
    report = validate(cfg, s3_client=s3_client)
    assert report.ok, report.text_lines()
    assert sum(int(n.split(": ")[1].split(" rows")[0]) for n in report.notes if n.startswith("erasure at")) == len(erased)


@pytest.mark.parametrize("point", ["after_replacement:2", "after_erase_digest:1"])
def test_validate_after_a_killed_erase_names_each_replaced_object_and_counts_its_rows_once(
        archived: Path, bucket: str, s3_client: Any, point: str) -> None:
    cfg = load_config(archived)
    kill_erase_at(archived, point)
    catalog = Catalog(cfg, s3_client=s3_client)
    counted = sum(o.rows or 0 for o in catalog.list_objects(resolve_table(cfg, "production_db", "audit_logs")))
    replaced = {old.key: new.key for old, new in catalog.superseded}
    assert replaced, "the kill point left no replaced object behind"
    report = validate(cfg, s3_client=s3_client)
    # Not overlapping_archives (its repair, "remove one copy", could remove the replacement) and,
    # once the erasure's digest is written, not orphaned_file either.
    assert {(p.type, p.key) for p in report.problems} == {("unfinished_erasure", k) for k in replaced}
    assert all(replaced[p.key] in p.message and "run erase again" in p.message for p in report.problems)
    assert report.summary.rows == counted
    code, out = run_erase(archived)
    assert code == 0 and f"finished {len(replaced)} interrupted erasures" in out
    assert validate(cfg, s3_client=s3_client).ok


def test_restore_of_one_object_a_killed_erase_replaced_is_refused_and_names_the_replacement(
        archived: Path, pg: psycopg.Connection[Any], s3_client: Any) -> None:
    cfg = load_config(archived)
    kill_erase_at(archived, "after_replacement:1")
    catalog = Catalog(cfg, s3_client=s3_client)
    catalog.list_objects(resolve_table(cfg, "production_db", "audit_logs"))
    (old, new), = catalog.superseded
    with pytest.raises(ArchiveNotFound, match=f"replaced by {new.key}.*run erase again"):
        restore_engine(cfg, database="production_db", table="audit_logs", s3_key=old.key, s3_client=s3_client)
    # the erased rows stay out of the table; the replacement restores what it holds
    report = restore_engine(cfg, database="production_db", table="audit_logs", s3_key=new.key, s3_client=s3_client)
    assert report.total("inserted") == new.rows and not to_erase(pg) & {r[0] for r in pg.execute("SELECT id FROM audit_logs")}


@pytest.mark.s3_servers
def test_compliance_locked_objects_are_refused_and_nothing_changes(
        tmp_path: Path, pg_dsn: str, small_audit: psycopg.Connection[Any], locked_bucket: str, s3_endpoint: str,
        s3_client: Any) -> None:
    path = archive(tmp_path, pg_dsn, small_audit, locked_bucket, s3_endpoint,
                   object_lock={"mode": "COMPLIANCE", "retain_days": 30})
    before = snapshot(s3_client, locked_bucket)
    code, out = run_erase(path)
    assert code == ExitCode.FAILURE
    refused = [line for line in out.splitlines() if line.startswith("refused: production_db/")]
    assert refused and all("COMPLIANCE lock" in line for line in refused)
    assert "nothing was changed for this table" in out
    assert snapshot(s3_client, locked_bucket) == before


@pytest.mark.s3_servers
def test_governance_locked_objects_are_erased_with_every_version(
        tmp_path: Path, pg_dsn: str, small_audit: psycopg.Connection[Any], locked_bucket: str, s3_endpoint: str,
        s3_client: Any) -> None:
    path = archive(tmp_path, pg_dsn, small_audit, locked_bucket, s3_endpoint,
                   object_lock={"mode": "GOVERNANCE", "retain_days": 30})
    erased = to_erase(small_audit)
    code, out = run_erase(path)
    assert code == 0, out
    assert not set(stored_ids(s3_client, locked_bucket)) & erased  # no old version keeps them
    replacements = [line.rsplit(" -> ", 1)[1] for line in out.splitlines() if " -> " in line]
    assert replacements and all(s3_client.head_object(Bucket=locked_bucket, Key=k)["ObjectLockMode"] == "GOVERNANCE"
                                for k in replacements)
    report = validate(load_config(path), s3_client=s3_client)
    assert report.ok, report.text_lines()


def test_cli_exits_2_on_a_bad_where_before_reading_any_object(archived: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "erase.main", "--config", str(archived), "--database", "production_db",
                           "--table", "audit_logs", "--where", "no_such_column = 1"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "no_such_column" in proc.stderr


def test_erasing_from_a_composite_key_table_keeps_whole_key_ranges(tmp_path: Path, pg_dsn: str, pg: psycopg.Connection[Any],
                                                                   bucket: str, moto_server: str, s3_client: Any) -> None:
    """(tenant_id, id) keys: the replacement manifests carry the key as the archiver writes it
    (lists), and exactly the other tenants' rows stay archived."""
    from schema_support import archived_keys, seed_composite
    from common.archive.storage import S3Storage

    seed_composite(pg)
    # 120 days: a dozen days archived, each object rewritten (every day holds each tenant's rows)
    path = make_config(tmp_path, dsn=pg_dsn, bucket=bucket, endpoint=moto_server,
                       tables=[{"name": "audit_logs", "timestamp_column": "created_at", "retention_days": 120}])
    assert run_archive(load_config(path))[1] == ExitCode.OK
    store = S3Storage(s3_client, bucket)
    before = archived_keys(store)
    code, _out = run_erase(path, where="tenant_id = 't1'")
    assert code == ExitCode.OK
    after = archived_keys(store)
    assert after == Counter({k: n for k, n in before.items() if k[0] != "t1"}) and len(after) < len(before)
    manifests = [e["manifest"] for o in store.list("") if layout.is_manifest_set(o.key)
                 for e in json.loads(store.get(o.key))["entries"]]
    replaced = [m for m in manifests if m.get("replaces")]
    assert replaced and all(m["primary_key"] == ["tenant_id", "id"] and isinstance(m["min_pk"], list) for m in replaced)
    assert validate(load_config(path), s3_client=s3_client).ok
