"""What the soak runs against (scripts/soak.py): a throwaway PostgreSQL database with the soak table,
moto's S3 server in a child process on a loopback port behind a TcpProxy, the archiver's config,
and the archiver runs themselves. Everything binds 127.0.0.1."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import psycopg
import yaml
from psycopg import sql


ROOT = Path(__file__).resolve().parent.parent
# The test suite's TCP proxy (cut, stall, restore): one proxy for the tests and the soak.
sys.path.insert(0, str(ROOT / "tests"))
from pg_databases import throwaway_database  # noqa: E402 - after the path it lives on
from tcp_proxy import TcpProxy  # noqa: E402

ADMIN_DSN = os.environ.get("ARCHIVER_SOAK_DSN") or os.environ.get(
    "ARCHIVER_TEST_DSN", "host=127.0.0.1 port=5432 user=root dbname=postgres")
BUCKET = "soak-archive"
TABLE = "soak_events"
DATABASE = "soak_db"  # the name the config gives the database (its real name is a throwaway one)
#: retention_days moves from FIRST_RETENTION (about half the seeded rows expired: the first runs have a
#: backlog) to LAST_RETENTION over the cycles, so every cycle has newly expired rows to archive.
FIRST_RETENTION, LAST_RETENTION = 200, 30
#: Moto's test credentials (the soak never talks to a real S3).
AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}

DDL = f"""
CREATE TABLE {TABLE} (
    id bigserial PRIMARY KEY,
    created_at timestamptz NOT NULL,
    v integer NOT NULL DEFAULT 0,  -- bumped by the writer: a lost update shows as a stale v
    payload text NOT NULL
);
CREATE INDEX ON {TABLE} (created_at);
"""


@dataclass
class Env:
    dsn: str
    s3_url: str  # moto itself (for the checks)
    proxy: TcpProxy  # what the archivers talk to
    work: Path
    config: Path

    def s3(self) -> Any:
        return boto3.client("s3", endpoint_url=self.s3_url, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    @property
    def fallback(self) -> Path:
        return self.work / "fallback"


@contextmanager
def environment(*, rows: int, keep: bool) -> Iterator[Env]:
    work = Path(tempfile.mkdtemp(prefix="pg-archiver-soak-"))
    os.environ.update(AWS_ENV)
    try:
        with _moto(work) as s3_url, throwaway_database("archiver_soak", admin_dsn=ADMIN_DSN) as dsn:
            proxy = TcpProxy(int(s3_url.rsplit(":", 1)[1]))
            try:
                boto3.client("s3", endpoint_url=s3_url, region_name="us-east-1").create_bucket(Bucket=BUCKET)
                seed(dsn, rows)
                env = Env(dsn, s3_url, proxy, work, work / "config.yaml")
                write_config(env, retention_days=FIRST_RETENTION)
                yield env
            finally:
                proxy.close()
    finally:
        if keep:
            print(f"soak: kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def seed(dsn: str, rows: int) -> None:
    """`rows` rows over the last 365 days, oldest first (id order is time order)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(DDL)
        conn.execute(sql.SQL("""INSERT INTO {} (created_at, payload)
            SELECT now() - interval '365 days' + g * (interval '364 days' / %s), md5(g::text)
            FROM generate_series(1, %s) g""").format(sql.Identifier(TABLE)), (rows, rows))
        conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(TABLE)))


def retention(cycle: int, cycles: int) -> int:
    return round(FIRST_RETENTION - (FIRST_RETENTION - LAST_RETENTION) * cycle / max(1, cycles))


def write_config(env: Env, *, retention_days: int) -> None:
    cfg = {
        "s3": {"bucket": BUCKET, "endpoint_url": env.proxy.url, "region": "us-east-1",
               "local_fallback_dir": str(env.fallback), "max_attempts": 2, "connect_timeout": 2,
               "read_timeout": 5, "max_concurrency": 4, "probe_interval_seconds": 1},
        "storage": "s3",
        "defaults": {"retention_days": retention_days, "batch_size": 2000, "lock_timeout": "2s"},
        "databases": [{"name": DATABASE, "dsn": env.dsn,
                       "tables": [{"name": TABLE, "timestamp_column": "created_at", "primary_key": "id"}]}],
        "logging": {"file": str(env.work / "archiver.log"), "level": "INFO"},
        "checkpoint_dir": str(env.work / "checkpoints"),
        "monitoring": {"enabled": False},
    }
    env.config.write_text(yaml.safe_dump(cfg, sort_keys=False))


def start_archiver(env: Env, name: str) -> subprocess.Popen[bytes]:
    """One archiver run (`python -m archiver.main`), its output appended to <work>/<name>.out."""
    out = open(env.work / f"{name}.out", "ab")  # noqa: SIM115 - the child owns it; closed below
    try:
        return subprocess.Popen([sys.executable, "-m", "archiver.main", "--config", str(env.config)], cwd=ROOT,
                                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **AWS_ENV})
    finally:
        out.close()


def kill9(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


@contextmanager
def _moto(work: Path) -> Iterator[str]:
    """moto's server in a child process (its CPU off the soak's own threads), on a free loopback port."""
    for _attempt in range(5):
        port = _free_port()
        log = open(work / "moto.out", "ab")  # noqa: SIM115 - the child owns it
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **AWS_ENV})
        log.close()
        url = f"http://127.0.0.1:{port}"
        if _wait_http(url, proc):
            try:
                yield url
            finally:
                proc.terminate()
                proc.wait(timeout=30)
            return
        kill9(proc)  # type: ignore[arg-type]
    raise RuntimeError(f"moto's server did not start (see {work / 'moto.out'})")


def _wait_http(url: str, proc: subprocess.Popen[Any], timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(url + "/moto-api/", timeout=2):  # noqa: S310 - our loopback server
                return True
        except OSError:
            time.sleep(0.2)
    return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
