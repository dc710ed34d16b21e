"""Object Lock (issue 17) against moto and SeaweedFS over HTTP: every object and manifest is stored locked, an
unlocked bucket is refused before anything is written, validate reports objects without the lock,
and a batch taken back under the lock never counts as archived while its rows are archived once."""
from __future__ import annotations

import io
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest

from archiver.runner import run_archive
from common.archive import layout
from common.config import load_config
from common.errors import ConfigError
from common.exit_codes import ExitCode
from compliance_support import all_keys, catalog_ids, locked_bucket  # noqa: F401 - fixture
from conftest import make_config
from test_archiver import oldest_id
from archive_checks import OnceAt, table_ids
from validate.checks import validate

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.s3_servers


def update_after_upload(dsn: str) -> OnceAt:
    """Changes one exported row between export and delete: the batch must be taken back, which a
    locked object cannot be by deleting it."""
    def update() -> None:
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute("UPDATE audit_logs SET action = 'changed' WHERE id = %s", (oldest_id(c),))
    return OnceAt("after_upload", update)


def lock_config(tmp_path: Path, dsn: str, bucket: str, endpoint: str, *, mode: str = "GOVERNANCE", days: int = 30,
                legal_hold: bool = False, lock: bool = True) -> Path:
    s3: dict[str, Any] = {"object_lock": {"mode": mode, "retain_days": days, "legal_hold": legal_hold}} if lock else {}
    return make_config(tmp_path, dsn=dsn, bucket=bucket, endpoint=endpoint, s3=s3)


@pytest.mark.parametrize("mode,legal_hold", [("GOVERNANCE", False), ("COMPLIANCE", True)])
def test_every_object_and_manifest_carries_the_mode_and_retain_until(tmp_path: Path, pg_dsn: str, small_audit: Any,
                                                                    locked_bucket: str, s3_endpoint: str, s3_client: Any,
                                                                    mode: str, legal_hold: bool) -> None:
    before = datetime.now(timezone.utc)
    cfg = load_config(lock_config(tmp_path, pg_dsn, locked_bucket, s3_endpoint, mode=mode, days=30, legal_hold=legal_hold))
    _results, code = run_archive(cfg)
    assert code == ExitCode.OK
    keys = all_keys(s3_client, locked_bucket)
    assert any(layout.is_manifest_set(k) for k in keys) and any(k.endswith(".parquet") for k in keys)
    for key in keys:
        head = s3_client.head_object(Bucket=locked_bucket, Key=key)
        assert head["ObjectLockMode"] == mode, key
        until = head["ObjectLockRetainUntilDate"]
        assert before + timedelta(days=30) - timedelta(minutes=1) <= until <= datetime.now(timezone.utc) + timedelta(days=30, minutes=1)
        if legal_hold:
            assert head.get("ObjectLockLegalHoldStatus") == "ON", key


def test_archiver_refuses_a_bucket_without_object_lock(tmp_path: Path, pg_dsn: str, small_audit: Any, bucket: str,
                                                       s3_endpoint: str, s3_client: Any, pg: psycopg.Connection[Any]) -> None:
    cfg = load_config(lock_config(tmp_path, pg_dsn, bucket, s3_endpoint))
    before = table_ids(pg)
    with pytest.raises(ConfigError, match="does not have Object Lock enabled"):
        run_archive(cfg)
    assert all_keys(s3_client, bucket) == [] and table_ids(pg) == before


@pytest.mark.parametrize("dry_run", [True, False])
def test_cli_exits_2_naming_the_unlocked_bucket(tmp_path: Path, pg_dsn: str, small_audit: Any, bucket: str,
                                                s3_endpoint: str, dry_run: bool) -> None:
    path = lock_config(tmp_path, pg_dsn, bucket, s3_endpoint)
    proc = subprocess.run([sys.executable, "-m", "archiver.main", "--config", str(path), *(["--dry-run"] if dry_run else [])],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert f"bucket {bucket!r} does not have Object Lock enabled" in proc.stderr + proc.stdout


def test_dry_run_names_the_lock_on_a_locked_bucket(tmp_path: Path, pg_dsn: str, small_audit: Any, locked_bucket: str,
                                                   s3_endpoint: str, s3_client: Any) -> None:
    from archiver.runner import dry_run

    lines, code = dry_run(load_config(lock_config(tmp_path, pg_dsn, locked_bucket, s3_endpoint, mode="COMPLIANCE")),
                          s3_client=s3_client)
    assert code == ExitCode.OK and any("Object Lock COMPLIANCE 30 days" in line for line in lines)
    assert all_keys(s3_client, locked_bucket) == []


@pytest.mark.parametrize("stored,checked,why", [
    (None, {"mode": "GOVERNANCE", "retain_days": 30}, "stored without Object Lock"),
    ({"mode": "GOVERNANCE", "retain_days": 2}, {"mode": "GOVERNANCE", "retain_days": 30}, "shorter than 30 days"),
    ({"mode": "GOVERNANCE", "retain_days": 30}, {"mode": "COMPLIANCE", "retain_days": 30}, "configured COMPLIANCE"),
])
def test_validate_reports_objects_without_the_configured_lock(tmp_path: Path, pg_dsn: str, small_audit: Any,
                                                              locked_bucket: str, s3_endpoint: str, s3_client: Any,
                                                              stored: dict[str, Any] | None, checked: dict[str, Any],
                                                              why: str) -> None:
    s3 = {"object_lock": stored} if stored else {}
    _r, code = run_archive(load_config(make_config(tmp_path, dsn=pg_dsn, bucket=locked_bucket, endpoint=s3_endpoint, s3=s3)))
    assert code == ExitCode.OK
    cfg = load_config(make_config(tmp_path, dsn=pg_dsn, bucket=locked_bucket, endpoint=s3_endpoint, s3={"object_lock": checked}))
    report = validate(cfg, s3_client=s3_client, quick=True)
    lock_problems = [p for p in report.problems if p.type == "object_lock_missing"]
    assert lock_problems and report.summary.objects == len(lock_problems)
    assert all(why in p.message for p in lock_problems)


def test_validate_is_clean_when_every_object_is_locked_as_configured(tmp_path: Path, pg_dsn: str, small_audit: Any,
                                                                     locked_bucket: str, s3_endpoint: str, s3_client: Any) -> None:
    cfg = load_config(lock_config(tmp_path, pg_dsn, locked_bucket, s3_endpoint))
    run_archive(cfg)
    report = validate(cfg, s3_client=s3_client)
    assert report.ok, report.text_lines()
    assert report.summary.objects > 0


def test_withdrawn_batch_under_lock_never_counts_and_its_rows_are_archived_once(
        tmp_path: Path, pg_dsn: str, small_audit: Any, locked_bucket: str, s3_endpoint: str, s3_client: Any,
        pg: psycopg.Connection[Any]) -> None:
    cfg = load_config(lock_config(tmp_path, pg_dsn, locked_bucket, s3_endpoint, mode="COMPLIANCE"))
    original = table_ids(pg)
    results, code = run_archive(cfg, hook=update_after_upload(pg_dsn))
    assert code == ExitCode.OK and results[0].rolled_back_batches == 1
    records = [k for k in all_keys(s3_client, locked_bucket) if f"/{layout.WITHDRAWN}" in k]
    assert len(records) == 1  # the locked object could not be deleted: a record takes it back
    run_archive(cfg)
    archived = catalog_ids(cfg, s3_client)
    left = table_ids(pg)
    assert max(archived.values()) == 1, "a row counted twice"
    assert set(archived) | left == original and not set(archived) & left
    report = validate(cfg, s3_client=s3_client)
    assert report.ok, report.text_lines()
    assert any("withdrawn batches" in n for n in report.notes)


def test_cost_notes_that_locked_objects_cannot_be_deleted_early(tmp_path: Path, pg_dsn: str, small_audit: Any,
                                                                locked_bucket: str, s3_endpoint: str, s3_client: Any) -> None:
    from common.cli import Environment
    from cost.app import CostOptions, run as cost

    path = lock_config(tmp_path, pg_dsn, locked_bucket, s3_endpoint, mode="COMPLIANCE", days=365)
    run_archive(load_config(path))
    out = io.StringIO()
    assert cost(CostOptions(config_path=path), s3_client=s3_client, env=Environment(stdout=out)) == 0
    assert "Object Lock COMPLIANCE for 365 days: no object, manifest or digest can be deleted early" in out.getvalue()
