"""Helpers of the lifecycle tests (issue 29): a small archive of seven day objects whose rows are
100 to 107 days old, configured with an archive retention of 103 days, so that the older half is
due for expiry by the database's clock; and the tools run the way operators run them."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from archive_checks import archived
from archiver.runner import run_archive
from common.archive import digest
from common.archive.catalog import parse_ts
from common.cli import Environment
from common.config import load_config
from common.archive.storage import S3Storage
from conftest import make_config, seed_audit
from expire.app import ExpireOptions, run as expire
from hold.app import HoldOptions, run as hold
from validate.checks import validate

ROOT = Path(__file__).resolve().parents[1]
#: Rows over days 100-107 before now; objects whose newest row is older than this are due.
RETENTION = 103


@dataclass(frozen=True)
class Archive:
    config: Path
    bucket: str
    store: S3Storage
    dsn: str

    def keys(self) -> dict[str, Any]:
        """The data objects that count as archived, with their manifests."""
        return archived(self.store)

    def due(self) -> set[str]:
        """The objects past the archive retention: their newest row is over RETENTION days old."""
        with psycopg.connect(self.dsn, autocommit=True) as c:
            cutoff = c.execute("SELECT clock_timestamp() - make_interval(days => %s)", (RETENTION,)).fetchone()[0]
        return {k for k, m in self.keys().items() if (end := parse_ts(m.max_ts)) is not None and end < cutoff}


def make_archive(tmp_path: Path, dsn: str, bucket: str, endpoint: str, client: Any, *, lock: dict[str, Any] | None = None,
                 retention_days: int = 90) -> Archive:
    """Seed audit_logs (70 rows over 7 days ending 100 days ago) and archive it."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        seed_audit(conn, rows=70, days=7, end_days_ago=100)
    config = write_config(tmp_path, dsn, bucket, endpoint, lock=lock, retention_days=retention_days)
    _results, code = run_archive(load_config(config), s3_client=client)
    assert code == 0
    return Archive(config, bucket, S3Storage(client, bucket), dsn)


def write_config(tmp_path: Path, dsn: str, bucket: str, endpoint: str, *, lock: dict[str, Any] | None = None,
                 retention_days: int = 90) -> Path:
    return make_config(tmp_path, dsn=dsn, bucket=bucket, endpoint=endpoint,
                       s3={"object_lock": lock} if lock else {},
                       defaults={"retention_days": retention_days, "batch_size": 1000},
                       tables=[{"name": "audit_logs", "timestamp_column": "created_at", "primary_key": "id",
                                "archive_retention_days": RETENTION}])


def run_expire(a: Archive, client: Any, **kw: Any) -> tuple[int, dict[str, Any]]:
    out = io.StringIO()
    code = expire(ExpireOptions(config_path=a.config, output_format="json", **kw),
                  env=Environment(stdout=out, stderr=io.StringIO()), s3_client=client)
    return code, json.loads(out.getvalue())


def run_hold(a: Archive, client: Any, **kw: Any) -> dict[str, Any]:
    out = io.StringIO()
    kw.setdefault("reason", "litigation 2026-17")
    code = hold(HoldOptions(config_path=a.config, database="production_db", table="audit_logs", output_format="json",
                            **kw), env=Environment(stdout=out, stderr=io.StringIO()), s3_client=client)
    assert code == 0
    doc: dict[str, Any] = json.loads(out.getvalue())
    return doc


def assert_valid(a: Archive, client: Any) -> None:
    report = validate(load_config(a.config), s3_client=client)
    assert report.ok, report.text_lines()


def chain_kinds(a: Archive) -> list[str]:
    keys = digest.chain_keys(a.store, "", "production_db", "public", "audit_logs")
    return [digest.Digest.from_bytes(a.store.get(k), key=k).kind for k in keys]


def cli(module: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})
