"""`python -m restore.main` as the runbook uses it (issue 4): listing without --restore-all/--s3-key
(text, or JSON with nothing else on stdout), restores, dry runs, and exit codes for what goes wrong."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from archive_checks import copy_archived

from common.archive.storage import S3Storage

from conftest import make_config
from restore.main import cli
from restore_support import Archived, arch, shared  # noqa: F401 - fixtures

ROOT = Path(__file__).resolve().parent.parent



def invoke(arch: Archived, *args: str) -> Result:
    base = ["--config", str(arch.cfg_path), "--database", "production_db", "--table", "audit_logs"]
    return CliRunner().invoke(cli, base + list(args), catch_exceptions=False)


def test_json_listing_is_the_only_thing_on_stdout(arch: Archived) -> None:
    # A real process: logs must go to stderr, so stdout parses as JSON as it is.
    proc = subprocess.run(
        [sys.executable, "-m", "restore.main", "--config", str(arch.cfg_path), "--database", "production_db",
         "--table", "audit_logs", "--output-format", "json"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert proc.returncode == 0, proc.stderr
    listing = json.loads(proc.stdout)

    assert len(listing) == len(arch.keys())
    for item in listing:
        assert {"key", "start", "end", "rows", "bytes", "storage_class", "location"} <= set(item)
        assert item["location"] == "s3" and item["storage_class"] == "STANDARD"
        assert item["bytes"] == arch.s3.head_object(Bucket=arch.bucket, Key=item["key"])["ContentLength"]
    starts = [datetime.fromisoformat(i["start"]) for i in listing]
    assert starts == sorted(starts) and all(s.utcoffset() == timezone.utc.utcoffset(None) for s in starts)
    assert sum(i["rows"] for i in listing) == 16


def test_text_listing_shows_each_object_and_a_total(arch: Archived) -> None:
    result = invoke(arch, "--start-date", "2024-01-02", "--end-date", "2024-01-02")
    assert result.exit_code == 0, result.stderr
    keys = [k for k in arch.keys() if "/day=02/" in k]
    assert all(k in result.stdout for k in keys)
    assert "/day=01/" not in result.stdout
    assert f"{len(keys)} objects, 4 rows" in result.stdout


def test_table_may_be_named_with_its_schema(arch: Archived) -> None:
    result = CliRunner().invoke(cli, ["--config", str(arch.cfg_path), "--database", "production_db",
                                      "--table", "public.audit_logs", "--output-format", "json"])
    assert result.exit_code == 0 and len(json.loads(result.stdout)) == len(arch.keys())


def test_restore_all_with_skip_prints_a_per_object_summary(arch: Archived) -> None:
    result = invoke(arch, "--restore-all", "--conflict-strategy", "skip")

    assert result.exit_code == 0, result.stderr
    assert "restore completed" in result.stdout and "16 inserted, 0 skipped, 0 overwritten" in result.stdout
    assert all(k in result.stdout for k in arch.keys())
    n = len(arch.keys())
    assert all(f"restored {i}/{n} " in result.stderr for i in range(1, n + 1))  # progress, on stderr
    assert arch.dump() == arch.before


def test_restore_summary_as_json(arch: Archived) -> None:
    key = arch.keys()[0]
    result = invoke(arch, "--s3-key", key, "--output-format", "json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert [o["key"] for o in doc["objects"]] == [key] and doc["inserted"] == arch.manifest(key).rows


def test_dry_run_changes_nothing(arch: Archived) -> None:
    arch.conn.execute("INSERT INTO audit_logs (id, created_at) VALUES (1, '2024-01-01')")
    before = arch.dump()

    result = invoke(arch, "--restore-all", "--dry-run", "--target-table", "brand_new")
    assert result.exit_code == 0, result.stderr
    result_same = invoke(arch, "--restore-all", "--dry-run", "--conflict-strategy", "overwrite")
    assert result_same.exit_code == 0, result_same.stderr

    assert f"would restore {len(arch.keys())} objects, 16 rows" in result.stdout
    assert "2024-01-01T00:00:00Z .. 2024-01-04T23:59:59.999999Z" in result.stdout
    assert "would be created" in result.stdout
    assert arch.dump() == before
    exists = arch.conn.execute("SELECT to_regclass('public.brand_new')").fetchone()
    assert exists == (None,)


@pytest.mark.parametrize("args", [
    ["--restore-all", "--start-date", "01/02/2024"],
    ["--restore-all", "--start-date", "2024-01-05", "--end-date", "2024-01-04"],
    ["--start-date", "2024-13-01"],
    ["--restore-all", "--s3-key", "x.parquet"],
    ["--restore-all", "--conflict-strategy", "merge"],
])
def test_usage_errors_exit_2(arch: Archived, args: list[str]) -> None:
    result = invoke(arch, *args)
    assert result.exit_code == 2
    assert "Traceback" not in result.stderr


def test_unknown_key_exits_1_naming_it(arch: Archived) -> None:
    key = arch.keys()[0].replace("part-", "part-nope-")
    result = invoke(arch, "--s3-key", key)
    assert result.exit_code == 1
    assert key in result.stderr and "Traceback" not in result.stderr


def test_unconfigured_table_without_archives_is_a_config_error(arch: Archived) -> None:
    result = CliRunner().invoke(cli, ["--config", str(arch.cfg_path), "--database", "production_db",
                                      "--table", "no_such_table", "--restore-all"])
    assert result.exit_code == 2 and "no_such_table" in result.stderr


def test_table_no_longer_configured_is_still_listed_from_its_archives(arch: Archived, tmp_path: Path) -> None:
    cfg = make_config(tmp_path, dsn=arch.conn.info.dsn, bucket=arch.bucket, endpoint=arch.s3.meta.endpoint_url,
                      tables=[{"name": "some_other_table"}])
    result = CliRunner().invoke(cli, ["--config", str(cfg), "--database", "production_db", "--table", "audit_logs",
                                      "--output-format", "json"])
    assert result.exit_code == 0, result.stderr
    assert sorted(i["key"] for i in json.loads(result.stdout)) == arch.keys()


@pytest.mark.s3_servers
def test_table_in_another_schema(tmp_path: Path, pg: Any, pg_dsn: str, bucket: str, s3_endpoint: str,
                                 s3_client: Any) -> None:
    pg.execute("CREATE SCHEMA audit")
    pg.execute("CREATE TABLE audit.events (id bigint PRIMARY KEY, created_at timestamptz NOT NULL, what text)")
    pg.execute("INSERT INTO audit.events SELECT g, '2024-02-01'::timestamptz + g * interval '1 hour', 'e' || g"
               " FROM generate_series(1, 30) g")
    cfg = make_config(tmp_path, dsn=pg_dsn, bucket=bucket, endpoint=s3_endpoint,
                      tables=[{"name": "events", "schema": "audit"}])
    from archiver.runner import run_archive
    from common.config import load_config
    assert run_archive(load_config(cfg), s3_client=s3_client)[1] == 0
    base = ["--config", str(cfg), "--database", "production_db", "--table", "events", "--schema", "audit"]

    listed = CliRunner().invoke(cli, base + ["--output-format", "json"])
    restored = CliRunner().invoke(cli, base + ["--restore-all"])

    assert listed.exit_code == 0 and sum(i["rows"] for i in json.loads(listed.stdout)) == 30
    assert restored.exit_code == 0, restored.stderr
    assert pg.execute("SELECT count(*), min(what), max(id) FROM audit.events").fetchone() == (30, "e1", 30)


def test_unreachable_s3_exits_3(arch: Archived, tmp_path: Path, free_tcp_port: int) -> None:
    cfg = make_config(tmp_path, dsn="host=127.0.0.1 dbname=unused", bucket=arch.bucket,
                      endpoint=f"http://127.0.0.1:{free_tcp_port}")
    result = CliRunner().invoke(cli, ["--config", str(cfg), "--database", "production_db", "--table", "audit_logs"])
    assert result.exit_code == 3 and "S3" in result.stderr


def test_unreachable_database_exits_3_without_the_password(arch: Archived, tmp_path: Path, free_tcp_port: int) -> None:
    cfg = make_config(tmp_path, dsn=f"host=127.0.0.1 port={free_tcp_port} user=x password=hunter2 dbname=y",
                      bucket=arch.bucket, endpoint=arch.s3.meta.endpoint_url)
    result = CliRunner().invoke(cli, ["--config", str(cfg), "--database", "production_db", "--table", "audit_logs",
                                      "--restore-all"])
    assert result.exit_code == 3
    assert f"127.0.0.1:{free_tcp_port}" in result.stderr and "hunter2" not in result.stderr + result.stdout


@pytest.mark.s3_servers
def test_corrupted_object_exits_1_naming_it(tmp_path: Path, arch: Archived, pg_dsn: str, s3_endpoint: str,
                                            s3_client: Any, bucket: str) -> None:
    # Its own bucket: the object is damaged for this test only.
    key = arch.keys()[0]
    copy_archived(S3Storage(arch.s3, arch.bucket), S3Storage(s3_client, bucket), key)
    s3_client.put_object(Bucket=bucket, Key=key, Body=b"PAR1 not what was archived")
    cfg = make_config(tmp_path, dsn=arch.conn.info.dsn, bucket=bucket, endpoint=s3_endpoint,
                      tables=[{"name": "audit_logs"}])

    result = CliRunner().invoke(cli, ["--config", str(cfg), "--database", "production_db", "--table", "audit_logs",
                                      "--s3-key", key])

    assert result.exit_code == 1 and key in result.stderr
    assert arch.ids() == []
