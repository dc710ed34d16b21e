"""Shared fixtures: a throwaway PostgreSQL database per test (on ARCHIVER_TEST_DSN's server, default
the local one), real S3 servers over HTTP on free loopback ports (moto, and SeaweedFS for the tests
marked s3_servers), and config builders."""
from __future__ import annotations

import inspect
import os
import socket
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path
from typing import Any, TypeVar

import boto3
import psycopg
import pytest
import yaml

import seaweedfs

from pg_databases import ADMIN_DSN, throwaway_database  # noqa: E402,F401 - tests import both from here
BUCKET = "audit-archives"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str) -> tuple[int, str]:
    """(status, body) of a GET, error statuses included: for the health and metrics endpoints."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture()
def free_tcp_port() -> Iterator[int]:
    """A loopback port nothing listens on (for 'service down' scenarios): held bound but not
    listening for the whole test, so a connection is refused and no other test worker
    (pytest-xdist) can start listening on it meanwhile."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield int(s.getsockname()[1])


@pytest.fixture(scope="session", autouse=True)
def _aws_env() -> Iterator[None]:
    # Credentials for moto only; never real ones.
    old = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


#: The S3 servers an end-to-end test marked s3_servers runs against, one test per server.
S3_SERVERS = ("moto", "seaweedfs")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "s3_servers(*names): run this test against each S3 server named (default: "
                            "moto and SeaweedFS); it takes the server's address from s3_endpoint, not moto_server")
    config.addinivalue_line("markers", "seaweedfs: the SeaweedFS run of an s3_servers test (-m 'not seaweedfs' skips them)")
    if not hasattr(config, "workerinput"):  # the controller (or a run without -n): one SeaweedFS for the run
        os.environ[seaweedfs.STATE_ENV] = str(seaweedfs.make_state_dir())


def pytest_unconfigure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput") and seaweedfs.STATE_ENV in os.environ:
        seaweedfs.stop(Path(os.environ.pop(seaweedfs.STATE_ENV)))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker("s3_servers")
    if marker is None:
        return
    if "moto_server" in inspect.signature(metafunc.function).parameters:
        raise pytest.UsageError(f"{metafunc.definition.nodeid}: an s3_servers test takes s3_endpoint, not moto_server")
    servers = [pytest.param(name, marks=[pytest.mark.seaweedfs] if name == "seaweedfs" else [])
               for name in marker.args or S3_SERVERS]
    metafunc.parametrize("s3_server", servers, indirect=True)


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request would drown failures
    # Port 0: the server binds a free port itself. A port picked first and bound later could be
    # taken meanwhile by another test worker's server (pytest-xdist).
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="session")
def seaweedfs_server(_aws_env: None) -> seaweedfs.SeaweedFS:
    """The run's SeaweedFS (tests/seaweedfs.py): its S3 endpoint and its Iceberg REST catalog URL.
    Shared by every test and worker of the run; a test keeps to its own buckets."""
    return seaweedfs.shared_server(Path(os.environ[seaweedfs.STATE_ENV]), owner=_controller_pid())


def _controller_pid() -> int:
    """The process that stops the server at the end: a pytest-xdist worker's parent, else this one."""
    return os.getppid() if os.environ.get("PYTEST_XDIST_WORKER") else os.getpid()


@pytest.fixture()
def s3_server(request: pytest.FixtureRequest) -> str:
    """Which S3 server this test runs against: moto, unless the test is marked s3_servers."""
    return str(getattr(request, "param", "moto"))


@pytest.fixture()
def s3_endpoint(s3_server: str, request: pytest.FixtureRequest) -> str:
    """The endpoint URL of this test's S3 server."""
    if s3_server == "seaweedfs":
        return str(request.getfixturevalue("seaweedfs_server").endpoint)
    return str(request.getfixturevalue("moto_server"))


T = TypeVar("T")


@contextmanager
def once_per_server(make: Callable[[str], AbstractContextManager[T]]) -> Iterator[Callable[[str], T]]:
    """For a module-scoped fixture (which cannot depend on the per-test s3_endpoint): what `make`
    builds on an S3 endpoint, built the first time a test asks for it there, and torn down with
    the module."""
    made: dict[str, T] = {}
    with ExitStack() as stack:
        def on(endpoint: str) -> T:
            if endpoint not in made:
                made[endpoint] = stack.enter_context(make(endpoint))
            return made[endpoint]
        yield on


@pytest.fixture()
def s3_client(s3_endpoint: str) -> Any:
    return boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")


@pytest.fixture()
def bucket(s3_client: Any) -> Iterator[str]:
    """A fresh bucket per test (unique name), emptied afterwards (a request per 1,000 keys: one per
    key cost a test with a thousand objects seconds)."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=name)
    yield name
    for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=name):
        if keys := [{"Key": o["Key"]} for o in page.get("Contents", [])]:
            s3_client.delete_objects(Bucket=name, Delete={"Objects": keys, "Quiet": True})


@pytest.fixture()
def pg_dsn() -> Iterator[str]:
    """A throwaway database, dropped after the test."""
    with throwaway_database() as dsn:
        yield dsn


@pytest.fixture()
def pg(pg_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        yield conn


AUDIT_DDL = """
CREATE TABLE audit_logs (
    id bigserial PRIMARY KEY,
    created_at timestamptz NOT NULL,
    user_id bigint,
    email text,
    action text,
    payload jsonb,
    ok boolean,
    amount numeric(12,2)
);
CREATE INDEX audit_logs_created_at ON audit_logs (created_at);
"""


def seed_audit(conn: psycopg.Connection[Any], *, rows: int, days: int, end_days_ago: int = 0) -> None:
    """rows spread evenly over `days` days ending `end_days_ago` days before now."""
    conn.execute(AUDIT_DDL)
    conn.execute(
        """INSERT INTO audit_logs (created_at, user_id, email, action, payload, ok, amount)
           SELECT now() - make_interval(days => %s) - (g * (%s::float8 * 86400 / %s)) * interval '1 second',
                  g %% 1000, 'user' || g || '@example.com', (ARRAY['login','logout','update'])[1 + g %% 3],
                  jsonb_build_object('n', g, 'tag', md5(g::text)), g %% 2 = 0, (g %% 100000) / 100.0
           FROM generate_series(1, %s) g""",
        (end_days_ago, days, rows, rows),
    )


def make_config(tmp_path: Path, *, dsn: str, bucket: str | None = None, endpoint: str | None = None,
                tables: list[dict[str, Any]] | None = None, **overrides: Any) -> Path:
    """Write a config file for a test and return its path."""
    cfg: dict[str, Any] = {
        "s3": {"bucket": bucket or BUCKET, "endpoint_url": endpoint, "region": "us-east-1",
               "local_fallback_dir": str(tmp_path / "fallback"), "max_attempts": 1,
               "connect_timeout": 1, "read_timeout": 5},
        "storage": "s3" if bucket else "local",
        "local_dir": None if bucket else str(tmp_path / "archive"),
        "defaults": {"retention_days": 90, "batch_size": 1000},
        "databases": [{"name": "production_db", "dsn": dsn,
                       "tables": tables or [{"name": "audit_logs", "timestamp_column": "created_at", "primary_key": "id"}]}],
        "logging": {"file": str(tmp_path / "archiver.log"), "level": "INFO"},
        "checkpoint_dir": str(tmp_path / "checkpoints"),
        "monitoring": {"enabled": False},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key].update(value)
        else:
            cfg[key] = value
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture()
def small_audit(pg: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    """audit_logs with 1,200 rows over 130 days ending today: ~40 days (~370 rows) are expired,
    so a run writes ~40 objects: quick against moto."""
    seed_audit(pg, rows=1200, days=130)
    return pg


@pytest.fixture()
def audit_table(pg: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    """audit_logs with 3,000 rows over 300 days ending today: 1,900-ish older than 90 days."""
    seed_audit(pg, rows=3000, days=300)
    return pg
