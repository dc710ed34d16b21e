"""Archive lifecycle (issue 29) on buckets with Object Lock, GOVERNANCE and COMPLIANCE, against moto
over HTTP: expire never deletes a version whose retention has not ended (it reports the date) nor
one under S3 legal hold; `hold` turns S3's legal hold ON for what it holds and OFF on release; and
objects archived later into a hold's scope (by days or by rows) are held as they are written, also
on a bucket without Object Lock."""
from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import psycopg
import pytest

from archiver.runner import run_archive
from common.archive import layout
from common.archive.s3client import make_client
from common.config import load_config
from compliance_support import locked_bucket  # noqa: F401 - fixture
from tcp_proxy import TcpProxy
from lifecycle_support import Archive, assert_valid, chain_kinds, cli, make_archive, run_expire, run_hold, write_config


def legal_hold(client: Any, bucket: str, key: str) -> str:
    return str(client.get_object_legal_hold(Bucket=bucket, Key=key).get("LegalHold", {}).get("Status", "OFF"))


def versions(client: Any, bucket: str, key: str) -> int:
    page = client.list_object_versions(Bucket=bucket, Prefix=key)
    return sum(1 for v in [*page.get("Versions", []), *page.get("DeleteMarkers", [])] if v["Key"] == key)


@pytest.mark.parametrize("mode", ["GOVERNANCE", "COMPLIANCE"])
def test_expire_keeps_objects_whose_retention_has_not_ended_and_reports_the_date(
        tmp_path: Path, pg_dsn: str, locked_bucket: str, moto_server: str, s3_client: Any, mode: str) -> None:
    arch = make_archive(tmp_path, pg_dsn, locked_bucket, moto_server, s3_client, lock={"mode": mode, "retain_days": 2})
    before, due = arch.keys(), arch.due()
    code, doc = run_expire(arch, s3_client)
    kept = {k["key"]: k for k in doc["tables"][0]["kept"]}
    assert code == 0 and set(kept) == due and doc["tables"][0]["expired"] == []
    tomorrow = datetime.now(timezone.utc) + timedelta(days=1)
    assert all(k["reason"] == "object_lock" and datetime.fromisoformat(k["retain_until"]) > tomorrow
               and mode in k["detail"] for k in kept.values())
    assert arch.keys() == before
    assert_valid(arch, s3_client)


def test_expire_deletes_every_version_once_governance_retention_ended_but_not_under_legal_hold(
        tmp_path: Path, pg_dsn: str, locked_bucket: str, moto_server: str, s3_client: Any) -> None:
    arch = make_archive(tmp_path, pg_dsn, locked_bucket, moto_server, s3_client,
                        lock={"mode": "GOVERNANCE", "retain_days": 2})
    due = sorted(arch.due())
    past = datetime.now(timezone.utc) - timedelta(days=1)
    for key in due[1:]:  # an administrator with s3:BypassGovernanceRetention shortens the retention
        s3_client.put_object_retention(Bucket=locked_bucket, Key=key, BypassGovernanceRetention=True,
                                       Retention={"Mode": "GOVERNANCE", "RetainUntilDate": past})
    s3_client.put_object_legal_hold(Bucket=locked_bucket, Key=due[0], LegalHold={"Status": "ON"})  # set by hand in S3
    code, doc = run_expire(arch, s3_client)
    kept = doc["tables"][0]["kept"]
    assert code == 0 and [(k["key"], k["reason"]) for k in kept] == [(due[0], "s3_legal_hold")]
    assert [versions(s3_client, locked_bucket, k) for k in due[1:]] == [0] * (len(due) - 1)  # no delete marker left
    assert due[0] in arch.keys()
    assert_valid(arch, s3_client)


@pytest.mark.parametrize("mode", ["GOVERNANCE", "COMPLIANCE"])
def test_hold_sets_s3_legal_hold_on_and_release_sets_it_off(tmp_path: Path, pg_dsn: str, locked_bucket: str,
                                                            moto_server: str, s3_client: Any, mode: str) -> None:
    arch = make_archive(tmp_path, pg_dsn, locked_bucket, moto_server, s3_client, lock={"mode": mode, "retain_days": 1})
    manifests = arch.keys()
    keys = sorted(manifests)
    day = manifests[keys[0]].min_ts[:10]
    whole = run_hold(arch, s3_client)["holds"][0]["hold_id"]
    by_day = run_hold(arch, s3_client, start_date=day, end_date=day)["holds"][0]["hold_id"]
    assert {legal_hold(s3_client, locked_bucket, k) for k in keys} == {"ON"}
    run_hold(arch, s3_client, release=whole, reason="settled")
    on = [k for k in keys if legal_hold(s3_client, locked_bucket, k) == "ON"]
    assert on == [k for k in keys if manifests[k].min_ts.startswith(day)]  # the day hold still holds its own
    run_hold(arch, s3_client, release=by_day, reason="settled")
    assert {legal_hold(s3_client, locked_bucket, k) for k in keys} == {"OFF"}
    assert_valid(arch, s3_client)


def archive_the_rest(arch: Archive, tmp_path: Path, endpoint: str, client: Any, lock: dict[str, Any] | None) -> set[str]:
    """Archive the rows left in the table (retention 90 days); returns the keys written."""
    before = set(arch.keys())
    config = write_config(tmp_path, arch.dsn, arch.bucket, endpoint, lock=lock, retention_days=90)
    _results, code = run_archive(load_config(config), s3_client=client)
    assert code == 0
    return set(arch.keys()) - before


@pytest.mark.parametrize("locked", [True, False], ids=["object-lock", "no-lock"])
def test_objects_written_later_into_a_hold_are_held(tmp_path: Path, pg_dsn: str, bucket: str, locked_bucket: str,
                                                    moto_server: str, s3_client: Any, locked: bool) -> None:
    lock = {"mode": "GOVERNANCE", "retain_days": 1} if locked else None
    name = locked_bucket if locked else bucket
    # First only the oldest rows (106-107 days); the rest stays in the table for now.
    arch = make_archive(tmp_path, pg_dsn, name, moto_server, s3_client, lock=lock, retention_days=106)
    with psycopg.connect(pg_dsn, autocommit=True) as c:  # two UTC days wholly past the 103 days, not archived yet
        day_104, day_105 = c.execute("SELECT ((clock_timestamp() - interval '104 days') AT TIME ZONE 'UTC')::date, "
                                     "((clock_timestamp() - interval '105 days') AT TIME ZONE 'UTC')::date").fetchone()
        row = c.execute("SELECT id, (created_at AT TIME ZONE 'UTC')::date FROM audit_logs "
                        "WHERE (created_at AT TIME ZONE 'UTC')::date = %s LIMIT 1", (day_105,)).fetchone()
    by_day = run_hold(arch, s3_client, start_date=day_104.isoformat(), end_date=day_104.isoformat())
    by_row = run_hold(arch, s3_client, where=f"id = {row[0]}")
    assert by_day["objects"] == [] and by_row["objects"] == []  # nothing of theirs is archived yet
    written = archive_the_rest(arch, tmp_path, moto_server, s3_client, lock)
    held = {k for k in written if _day(arch, k) in (day_104, row[1])}
    assert len(held) == 2
    if locked:
        assert {k for k in written if legal_hold(s3_client, name, k) == "ON"} == held
        for k in arch.due() - held:  # their retention ended (the held ones' has not: validate checks it)
            s3_client.put_object_retention(Bucket=name, Key=k, BypassGovernanceRetention=True,
                                           Retention={"Mode": "GOVERNANCE",
                                                      "RetainUntilDate": datetime.now(timezone.utc) - timedelta(days=1)})
    code, doc = run_expire(arch, s3_client)
    kept = {k["key"]: k["hold_id"] for k in doc["tables"][0]["kept"]}
    assert code == 0 and kept == {k: (by_day if _day(arch, k) == day_104 else by_row)["holds"][0]["hold_id"] for k in held}
    assert set(arch.keys()) & arch.due() == held
    assert_valid(arch, s3_client)


def test_batches_drained_from_the_fallback_directory_into_a_hold_are_held(
        tmp_path: Path, pg_dsn: str, locked_bucket: str, moto_server: str, s3_client: Any) -> None:
    lock = {"mode": "GOVERNANCE", "retain_days": 1}
    arch = make_archive(tmp_path, pg_dsn, locked_bucket, moto_server, s3_client, lock=lock, retention_days=106)
    run_hold(arch, s3_client)  # the whole table
    proxy = TcpProxy(int(urlparse(moto_server).port or 0))
    try:  # S3 answers the run's Object Lock check, then goes away before its first upload
        cfg = load_config(write_config(tmp_path, pg_dsn, locked_bucket, proxy.url, lock=lock))
        client = make_client(cfg)
        client.meta.events.register("before-call.s3.PutObject", lambda **_: proxy.cut())
        _results, code = run_archive(cfg, s3_client=client)
    finally:
        proxy.close()
    assert code == 0 and any((tmp_path / "fallback").rglob("*.parquet"))
    drained = archive_the_rest(arch, tmp_path, moto_server, s3_client, lock)
    assert drained and {k: legal_hold(s3_client, locked_bucket, k) for k in drained} == {k: "ON" for k in drained}


def _day(arch: Archive, key: str) -> date:
    parsed = layout.parse_key("", key)
    assert parsed is not None
    return parsed.day


def test_a_release_killed_after_its_record_is_finished_by_running_it_again(
        tmp_path: Path, pg_dsn: str, locked_bucket: str, moto_server: str, s3_client: Any) -> None:
    arch = make_archive(tmp_path, pg_dsn, locked_bucket, moto_server, s3_client, lock={"mode": "GOVERNANCE", "retain_days": 1})
    hold_id = run_hold(arch, s3_client)["holds"][0]["hold_id"]
    killed = cli("hold.main", "--config", str(arch.config), "--database", "production_db", "--table", "audit_logs",
                 "--release", hold_id, "--reason", "settled", env={"ARCHIVER_TEST_KILL_AT": "after_release_record:1"})
    assert killed.returncode == -9, killed.stderr
    keys = sorted(arch.keys())
    assert {legal_hold(s3_client, locked_bucket, k) for k in keys} == {"ON"}  # released on record, not yet in S3
    again = run_hold(arch, s3_client, release=hold_id, reason="settled")
    assert again["holds"][0]["released"]["reason"] == "settled" and sorted(again["objects"]) == keys
    assert {legal_hold(s3_client, locked_bucket, k) for k in keys} == {"OFF"}
    assert chain_kinds(arch).count("hold") == 2  # the placement and one release
    assert_valid(arch, s3_client)
