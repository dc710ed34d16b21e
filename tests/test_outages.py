"""S3 outages and the local fallback directory, a full disk, and database faults (issue 3)."""
from __future__ import annotations

import logging
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import psycopg
import pytest
from psycopg import sql
from click.testing import CliRunner

from archive_checks import OnceAt, archived_ids, assert_invariant, table_ids
from archiver.main import cli
from archiver.runner import run_archive
from common.archive import layout
from common.config import load_config
from common.exit_codes import ExitCode
from common.archive.s3client import make_client
from common.archive.storage import LocalStorage, S3Storage
from conftest import make_config, seed_audit
from schema_support import LONG_SCHEMA, LONG_TABLE
from tcp_proxy import TcpProxy


@pytest.fixture(autouse=True)
def _info_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)


@pytest.fixture()
def proxy(s3_endpoint: str) -> Iterator[TcpProxy]:
    p = TcpProxy(int(urlparse(s3_endpoint).port or 0))
    yield p
    p.close()


@pytest.fixture()
def seeded(pg: psycopg.Connection[Any]) -> set[int]:
    seed_audit(pg, rows=300, days=120)  # ~75 expired rows over ~30 days
    return table_ids(pg)


def config(tmp_path: Path, dsn: str, bucket: str, proxy: TcpProxy, **overrides: Any) -> Path:
    overrides.setdefault("defaults", {"batch_size": 5})
    return make_config(tmp_path, dsn=dsn, bucket=bucket, endpoint=proxy.url, **overrides)


def stores(tmp_path: Path, s3_client: Any, bucket: str) -> tuple[S3Storage, LocalStorage]:
    return S3Storage(s3_client, bucket), LocalStorage(tmp_path / "fallback")


@pytest.mark.s3_servers
def test_s3_down_sends_batches_to_fallback_then_next_run_drains_them(caplog: pytest.LogCaptureFixture, tmp_path: Path, pg_dsn: str, bucket: str, proxy: TcpProxy,
                                                                     s3_client: Any, pg: psycopg.Connection[Any], seeded: set[int]) -> None:
    cfg = load_config(config(tmp_path, pg_dsn, bucket, proxy))
    s3, fallback = stores(tmp_path, s3_client, bucket)
    proxy.cut()
    results, code = run_archive(cfg)
    assert code == ExitCode.OK and results[0].fallback_objects == results[0].objects > 0
    held = [o.key for o in fallback.list("") if not layout.is_manifest(o.key) and not layout.is_control_key(o.key)]
    assert held and all(layout.parse_key("", k) is not None for k in held)  # same key layout as the bucket
    assert list(s3.list("")) == []
    assert_invariant(seeded, table_ids(pg), archived_ids(fallback))

    proxy.restore()
    _results, code = run_archive(cfg)
    assert code == ExitCode.OK
    assert list(fallback.list("")) == []
    assert sorted(k for k in (o.key for o in s3.list("")) if not layout.is_manifest(k) and not layout.is_control_key(k)) == sorted(held)
    assert_invariant(seeded, table_ids(pg), archived_ids(s3))
    assert f"Drained {len(held)} fallback batches to S3" in caplog.text


class CutAfter:
    """Cuts S3 off once the n-th batch's object is stored (its PUT answered), from botocore's
    after-call event in the upload thread itself: with one upload thread no other object PUT can
    start before the cut (a hook in the table job's loop raced the next upload). Manifest sets,
    PUT by the mover thread, are not counted. It also counts the PUT calls made (once per call, not
    per botocore retry: before-call fires before the retry loop)."""

    def __init__(self, proxy: TcpProxy, client: Any, after: int) -> None:
        self.proxy, self.puts_before_cut, self.puts = proxy, after, 0
        self.calls = self.calls_at_cut = 0
        self.key = threading.local()
        client.meta.events.register("before-parameter-build.s3.PutObject", self._asked)
        client.meta.events.register("before-call.s3.PutObject", self._called)
        client.meta.events.register("after-call.s3.PutObject", self._answered)

    def _asked(self, params: dict[str, Any], **_: Any) -> None:
        self.key.value = params["Key"]

    def _called(self, **_: Any) -> None:
        self.calls += 1

    def _answered(self, **_: Any) -> None:  # returns None: a value would replace the response
        if layout.is_control_key(self.key.value):
            return
        self.puts += 1
        if self.puts == self.puts_before_cut:
            self.proxy.cut()
            self.calls_at_cut = self.calls


@pytest.mark.s3_servers
def test_outage_mid_run_opens_the_circuit_instead_of_retrying_every_batch(tmp_path: Path, pg_dsn: str, bucket: str,
                                                                          proxy: TcpProxy, s3_client: Any,
                                                                          pg: psycopg.Connection[Any], seeded: set[int]) -> None:
    # one upload in flight, so "the batches after the cut" is exact
    cfg = load_config(config(tmp_path, pg_dsn, bucket, proxy, s3={"max_concurrency": 1}))
    client = make_client(cfg)
    cut = CutAfter(proxy, client, after=3)
    results, code = run_archive(cfg, s3_client=client)
    assert code == ExitCode.OK
    assert results[0].fallback_objects >= 5 and results[0].objects - results[0].fallback_objects == 3
    # The calls already under way when S3 went silent fail (at most the next batch's object and the
    # manifest set of the batches stored before the cut, from the mover thread); that opened the
    # circuit, and the later batches (five or more) did not try S3 (probe interval 60s).
    assert cut.calls - cut.calls_at_cut <= 2
    proxy.restore()
    assert run_archive(cfg)[1] == ExitCode.OK
    s3, fallback = stores(tmp_path, s3_client, bucket)
    assert_invariant(seeded, table_ids(pg), archived_ids(s3, fallback))
    assert list(fallback.list("")) == []


def test_s3_down_without_fallback_exits_3_and_deletes_nothing(tmp_path: Path, pg_dsn: str, bucket: str, proxy: TcpProxy,
                                                              pg: psycopg.Connection[Any], seeded: set[int]) -> None:
    path = config(tmp_path, pg_dsn, bucket, proxy, s3={"local_fallback_dir": None})
    proxy.cut()
    result = CliRunner().invoke(cli, ["--config", str(path)])
    assert result.exit_code == ExitCode.UNAVAILABLE
    assert table_ids(pg) == seeded
    assert "no s3.local_fallback_dir is configured" in (tmp_path / "archiver.log").read_text()


def test_corrupted_fallback_batch_is_quarantined_not_uploaded(caplog: pytest.LogCaptureFixture, tmp_path: Path, pg_dsn: str, bucket: str, proxy: TcpProxy,
                                                              s3_client: Any, seeded: set[int]) -> None:
    cfg = load_config(config(tmp_path, pg_dsn, bucket, proxy))
    s3, fallback = stores(tmp_path, s3_client, bucket)
    proxy.cut()
    run_archive(cfg)
    victim = next(o.key for o in fallback.list("") if not layout.is_manifest(o.key) and not layout.is_control_key(o.key))
    path = fallback.root / victim
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    proxy.restore()
    _results, code = run_archive(cfg)
    assert code == ExitCode.FAILURE
    assert s3.head(victim) is None
    assert (fallback.root / ".quarantine" / victim).exists()
    assert "quarantined" in caplog.text


@pytest.fixture()
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs: a real ENOSPC from the kernel, no mocks (needs root, as CI has)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_fallback_disk_stops_the_table_without_deleting_unwritten_rows(tmp_path: Path, pg_dsn: str, bucket: str,
                                                                           proxy: TcpProxy, pg: psycopg.Connection[Any],
                                                                           seeded: set[int], tiny_disk: Path) -> None:
    cfg = load_config(config(tmp_path, pg_dsn, bucket, proxy, s3={"local_fallback_dir": str(tiny_disk)}))
    proxy.cut()
    results, code = run_archive(cfg)
    assert code == ExitCode.FAILURE and results[0].status == "failed"
    assert "is full (ENOSPC)" in (results[0].error or "")
    assert_invariant(seeded, table_ids(pg), archived_ids(LocalStorage(tiny_disk)))
    assert not [p for p in tiny_disk.rglob(".tmp-*")]


def kill_backend(dsn: str) -> OnceAt:
    """Terminates the archiver's database sessions after the first stored batch."""
    def kill() -> None:
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                      " WHERE application_name = 'pg-archiver' AND pid <> pg_backend_pid()"
                      " AND datname = current_database()")  # only this test's archiver
    return OnceAt("after_upload", kill)


def test_backend_killed_mid_run_fails_the_table_cleanly_and_rerun_finishes(caplog: pytest.LogCaptureFixture, tmp_path: Path, pg_dsn: str, bucket: str,
                                                                          proxy: TcpProxy, s3_client: Any,
                                                                          pg: psycopg.Connection[Any], seeded: set[int]) -> None:
    cfg = load_config(config(tmp_path, pg_dsn, bucket, proxy))
    results, code = run_archive(cfg, hook=kill_backend(pg_dsn))
    assert code == ExitCode.FAILURE and results[0].error_kind == "database"
    _results, code = run_archive(cfg)
    assert code == ExitCode.OK
    assert "Resuming from checkpoint" in caplog.text
    s3, fallback = stores(tmp_path, s3_client, bucket)
    assert_invariant(seeded, table_ids(pg), archived_ids(s3, fallback))


def test_lock_timeout_on_delete_is_retried_not_fatal(caplog: pytest.LogCaptureFixture, tmp_path: Path, pg_dsn: str, bucket: str, proxy: TcpProxy,
                                                     s3_client: Any, pg: psycopg.Connection[Any], seeded: set[int]) -> None:
    # set on the table, over the 5s default: per-table overrides reach the session
    cfg = load_config(config(tmp_path, pg_dsn, bucket, proxy, tables=[{"name": "audit_logs", "lock_timeout": "200ms"}]))
    locker = psycopg.connect(pg_dsn)
    locker.execute("SELECT id FROM audit_logs ORDER BY created_at LIMIT 1 FOR UPDATE")
    release = threading.Timer(1.5, locker.rollback)
    release.start()
    try:
        _results, code = run_archive(cfg)
    finally:
        release.join()
        locker.close()
    assert code == ExitCode.OK
    assert "lock timeout; retrying" in caplog.text
    s3, fallback = stores(tmp_path, s3_client, bucket)
    assert_invariant(seeded, table_ids(pg), archived_ids(s3, fallback))


def test_sessions_identify_themselves(tmp_path: Path, pg_dsn: str, bucket: str, proxy: TcpProxy, seeded: set[int]) -> None:
    seen: list[tuple[str, str]] = []

    def watch(point: str) -> None:
        if point == "after_upload" and not seen:
            with psycopg.connect(pg_dsn, autocommit=True) as c:
                seen.extend(c.execute("SELECT application_name, state FROM pg_stat_activity"
                                      " WHERE application_name = 'pg-archiver' AND datname = current_database()").fetchall())

    run_archive(load_config(config(tmp_path, pg_dsn, bucket, proxy)), hook=watch)
    assert len(seen) >= 2  # the mover's and the reader's sessions




def test_longest_non_ascii_names_go_to_a_local_archive_and_the_fallback_directory(
        tmp_path: Path, pg_dsn: str, pg: psycopg.Connection[Any], proxy: TcpProxy, bucket: str, s3_client: Any) -> None:
    """A 379-byte table folder is more than a filesystem name may hold: the local archive and, with
    S3 down, the fallback directory failed every write; then the drain uploads under the S3 key."""
    rel = sql.SQL("{}.{}").format(sql.Identifier(LONG_SCHEMA), sql.Identifier(LONG_TABLE))
    pg.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(LONG_SCHEMA)))
    pg.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, created_at timestamptz NOT NULL)").format(rel))
    pg.execute(sql.SQL("INSERT INTO {} SELECT g, now() - g * interval '1 day' + interval '1 hour'"
                       " FROM generate_series(1, 120) g").format(rel))
    table = [{"name": LONG_TABLE, "schema": LONG_SCHEMA, "timestamp_column": "created_at"}]
    proxy.cut()  # S3 down: every batch goes to the fallback directory
    results, code = run_archive(load_config(make_config(tmp_path, dsn=pg_dsn, bucket=bucket, endpoint=proxy.url,
                                                        tables=table)))
    assert code == ExitCode.OK and (results[0].rows, results[0].fallback_objects) == (30, 30), results
    fallback = LocalStorage(tmp_path / "fallback")
    assert sum(archived_ids(fallback, prefix="production_db/").values()) == 30
    assert all(len(p.name.encode()) <= 255 for p in (tmp_path / "fallback").rglob("*"))
    proxy.restore()  # S3 back: the next run drains the fallback directory under the same keys
    results, code = run_archive(load_config(make_config(tmp_path, dsn=pg_dsn, bucket=bucket, endpoint=proxy.url,
                                                        tables=table)))
    assert code == ExitCode.OK, results
    assert sum(archived_ids(S3Storage(s3_client, bucket)).values()) == 30 and list(fallback.list("")) == []
