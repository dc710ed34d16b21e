"""Tamper-evident run digests (issue 17) against moto over HTTP: each run writes one chained digest
per table, validate replays the chain end to end and catches an object rewritten together with its
manifest, a removed digest, a forged signature and an object in no digest; a run killed before its
digest leaves its objects to the next run's digest."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from archiver.hooks import HOOK_ENV
from archiver.runner import run_archive
from archive_checks import archived, drop_manifest, edit_manifest
from common.archive import layout, manifest_sets
from common.archive.storage import S3Storage
from common.config import Config, load_config
from common.archive.digest import Digest
from common.errors import ConfigError
from common.exit_codes import ExitCode
from common.archive.manifest import Manifest, hex_to_b64, sha256_hex
from compliance_support import all_keys, locked_bucket  # noqa: F401 - fixture
from conftest import make_config
from validate.checks import validate

ROOT = Path(__file__).resolve().parents[1]
KEY_ENV = "PG_ARCHIVER_TEST_DIGEST_KEY"


def digest_keys(s3_client: Any, bucket: str) -> list[str]:
    return sorted(k for k in all_keys(s3_client, bucket) if f"/{layout.DIGESTS}" in k)


def data_keys(s3_client: Any, bucket: str) -> list[str]:
    return sorted(k for k in all_keys(s3_client, bucket) if k.endswith(".parquet"))


def next_second() -> None:
    """Until the wall clock's second changes (S3's LastModified has whole seconds)."""
    start = int(time.time())
    while int(time.time()) == start:
        time.sleep(0.02)


def two_runs(tmp_path: Path, dsn: str, bucket: str, endpoint: str, **s3: Any) -> Config:
    """Two archiver runs (retention 110 days, then 90): two digests in one table's chain."""
    run_archive(load_config(make_config(tmp_path, dsn=dsn, bucket=bucket, endpoint=endpoint, s3=s3,
                                        defaults={"retention_days": 110, "batch_size": 1000})))
    cfg = load_config(make_config(tmp_path, dsn=dsn, bucket=bucket, endpoint=endpoint, s3=s3))
    _r, code = run_archive(cfg)
    assert code == ExitCode.OK
    return cfg


@pytest.fixture()
def signed(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setenv(KEY_ENV, "the-secret-of-the-audit-team")
    return {"digest_key_env": KEY_ENV}


@pytest.mark.s3_servers
def test_each_run_appends_one_signed_digest_listing_every_object(tmp_path: Path, pg_dsn: str, small_audit: Any,
                                                                 bucket: str, s3_endpoint: str, s3_client: Any,
                                                                 signed: dict[str, Any]) -> None:
    cfg = two_runs(tmp_path, pg_dsn, bucket, s3_endpoint, **signed)
    keys = digest_keys(s3_client, bucket)
    assert len(keys) == 2
    docs = [Digest.from_bytes(s3_client.get_object(Bucket=bucket, Key=k)["Body"].read(), key=k) for k in keys]
    first_bytes = s3_client.get_object(Bucket=bucket, Key=keys[0])["Body"].read()
    assert docs[0].previous_key is None and docs[1].previous_key == keys[0]
    assert docs[1].previous_sha256 == sha256_hex(first_bytes)
    recorded = {e.key: e for d in docs for e in d.objects}
    assert sorted(recorded) == data_keys(s3_client, bucket)
    stored = archived(S3Storage(s3_client, bucket))
    for key, e in recorded.items():
        m = stored[key]
        assert (e.sha256, e.size, e.rows) == (m.sha256, m.size, m.rows)
    assert all(d.signature and d.signature_algorithm == "HMAC-SHA256" for d in docs)
    report = validate(cfg, s3_client=s3_client)
    assert report.ok, report.text_lines()


def rewrite_consistently(s3_client: Any, bucket: str, key: str) -> None:
    """Drop one row from an object and store it again with a manifest that matches the new bytes:
    every per-object check passes; only the digest can tell."""
    table = pq.read_table(io.BytesIO(s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()))
    sink = pa.BufferOutputStream()
    pq.write_table(table.slice(1), sink, compression="zstd")
    data = sink.getvalue().to_pybytes()
    s3_client.put_object(Bucket=bucket, Key=key, Body=data)
    edit_manifest(S3Storage(s3_client, bucket), key, sha256=sha256_hex(data), size=len(data), rows=table.num_rows - 1)


def test_validate_catches_an_object_rewritten_with_its_manifest(tmp_path: Path, pg_dsn: str, small_audit: Any,
                                                                bucket: str, moto_server: str, s3_client: Any) -> None:
    cfg = two_runs(tmp_path, pg_dsn, bucket, moto_server)
    victim = data_keys(s3_client, bucket)[3]
    rewrite_consistently(s3_client, bucket, victim)
    report = validate(cfg, s3_client=s3_client)
    assert [(p.type, p.key) for p in report.problems] == [("digest_mismatch", victim)], report.text_lines()


@pytest.mark.s3_servers
def test_validate_catches_a_deleted_digest_in_the_middle_of_the_chain(
        tmp_path: Path, pg_dsn: str, small_audit: Any, bucket: str, s3_endpoint: str, s3_client: Any) -> None:
    cfg = two_runs(tmp_path, pg_dsn, bucket, s3_endpoint)
    first, second = digest_keys(s3_client, bucket)
    s3_client.delete_object(Bucket=bucket, Key=first)
    report = validate(cfg, s3_client=s3_client)
    assert ("digest_chain_broken", second) in [(p.type, p.key) for p in report.problems], report.text_lines()


@pytest.mark.s3_servers
def test_validate_catches_the_newest_digest_deleted_in_a_locked_bucket(
        tmp_path: Path, pg_dsn: str, small_audit: Any, locked_bucket: str, s3_endpoint: str, s3_client: Any) -> None:
    """No later digest names the newest one; the bucket's versions do (Object Lock buckets are versioned)."""
    cfg = two_runs(tmp_path, pg_dsn, locked_bucket, s3_endpoint, object_lock={"mode": "GOVERNANCE", "retain_days": 1})
    _first, second = digest_keys(s3_client, locked_bucket)
    s3_client.delete_object(Bucket=locked_bucket, Key=second)  # a delete marker over the locked version
    report = validate(cfg, s3_client=s3_client)
    broken = [p for p in report.problems if p.type == "digest_chain_broken"]
    assert [p.key for p in broken] == [second] and "deleted" in broken[0].message


def test_validate_catches_a_forged_signature(tmp_path: Path, pg_dsn: str, small_audit: Any, bucket: str,
                                             moto_server: str, s3_client: Any, signed: dict[str, Any]) -> None:
    cfg = two_runs(tmp_path, pg_dsn, bucket, moto_server, **signed)
    _first, second = digest_keys(s3_client, bucket)
    doc = json.loads(s3_client.get_object(Bucket=bucket, Key=second)["Body"].read())
    doc["objects"] = doc["objects"][1:]  # hide an object from the record, keep the old signature
    s3_client.put_object(Bucket=bucket, Key=second, Body=json.dumps(doc).encode())
    report = validate(cfg, s3_client=s3_client)
    broken = [p for p in report.problems if p.type == "digest_chain_broken"]
    assert [p.key for p in broken] == [second] and "signature does not verify" in broken[0].message


def test_validate_catches_a_deleted_object_the_chain_records(tmp_path: Path, pg_dsn: str, small_audit: Any, bucket: str,
                                                            moto_server: str, s3_client: Any) -> None:
    cfg = two_runs(tmp_path, pg_dsn, bucket, moto_server)
    victim = data_keys(s3_client, bucket)[0]
    s3_client.delete_object(Bucket=bucket, Key=victim)
    drop_manifest(S3Storage(s3_client, bucket), victim)
    report = validate(cfg, s3_client=s3_client)
    assert [(p.type, p.key) for p in report.problems] == [("digest_chain_broken", victim)], report.text_lines()


@pytest.mark.s3_servers
def test_validate_reports_an_object_in_no_digest(tmp_path: Path, pg_dsn: str, small_audit: Any, bucket: str,
                                                 s3_endpoint: str, s3_client: Any) -> None:
    """An object planted between two runs is older than the second run's digest, which does not
    record it: in no digest."""
    run_archive(load_config(make_config(tmp_path, dsn=pg_dsn, bucket=bucket, endpoint=s3_endpoint,
                                        defaults={"retention_days": 110, "batch_size": 1000})))
    source = data_keys(s3_client, bucket)[0]
    planted = source.replace("part-", "part-planted-")
    next_second()  # S3 times have whole seconds: the plant must be seen to come after the first digest
    s3_client.copy_object(Bucket=bucket, Key=planted, CopySource={"Bucket": bucket, "Key": source})
    store = S3Storage(s3_client, bucket)
    copy = archived(store)[source]
    copy.key = planted
    manifest_sets.write(store, prefix="", manifests=[copy])
    next_second()  # ... and before the second
    cfg = load_config(make_config(tmp_path, dsn=pg_dsn, bucket=bucket, endpoint=s3_endpoint))
    run_archive(cfg)
    assert len(digest_keys(s3_client, bucket)) == 2
    report = validate(cfg, s3_client=s3_client, quick=True)
    assert ("orphaned_file", planted) in {(p.type, p.key) for p in report.problems}, report.text_lines()


def test_archive_without_digests_validates_as_before_with_a_note(tmp_path: Path, pg_dsn: str, small_audit: Any,
                                                                 bucket: str, moto_server: str, s3_client: Any) -> None:
    cfg = two_runs(tmp_path, pg_dsn, bucket, moto_server)
    for key in digest_keys(s3_client, bucket):
        s3_client.delete_object(Bucket=bucket, Key=key)
    report = validate(cfg, s3_client=s3_client)
    assert report.ok, report.text_lines()
    assert any("have no digests" in n for n in report.notes)


def test_kill_before_digest_leaves_the_objects_to_the_next_runs_digest(tmp_path: Path, pg_dsn: str, small_audit: Any,
                                                                      bucket: str, moto_server: str, s3_client: Any) -> None:
    path = make_config(tmp_path, dsn=pg_dsn, bucket=bucket, endpoint=moto_server)
    proc = subprocess.run([sys.executable, "-m", "archiver.main", "--config", str(path)], cwd=ROOT,
                          env={**os.environ, HOOK_ENV: "before_digest:1"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr
    stored = data_keys(s3_client, bucket)
    assert stored and digest_keys(s3_client, bucket) == []
    cfg = load_config(path)
    report = validate(cfg, s3_client=s3_client, quick=True)
    assert report.ok and any("have no digests" in n for n in report.notes)
    run_archive(cfg)  # nothing new to archive: its digest records the killed run's objects
    keys = digest_keys(s3_client, bucket)
    assert len(keys) == 1
    d = Digest.from_bytes(s3_client.get_object(Bucket=bucket, Key=keys[0])["Body"].read(), key=keys[0])
    assert sorted(e.key for e in d.objects) == stored
    report = validate(cfg, s3_client=s3_client)
    assert report.ok, report.text_lines()


def test_unset_digest_key_variable_is_a_config_error(tmp_path: Path, pg_dsn: str, small_audit: Any, bucket: str,
                                                     moto_server: str, s3_client: Any) -> None:
    os.environ.pop(KEY_ENV, None)
    cfg = load_config(make_config(tmp_path, dsn=pg_dsn, bucket=bucket, endpoint=moto_server, s3={"digest_key_env": KEY_ENV}))
    with pytest.raises(ConfigError, match=KEY_ENV):
        run_archive(cfg)
    assert all_keys(s3_client, bucket) == []
