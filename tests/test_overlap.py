"""Overlapping runs on one host (issue 18): cron fires while the previous run still works. A one-shot
run whose monitoring ports are held by an archiver of the same config runs without endpoints,
skips the tables that one holds, and exits 0; any other holder of the port stays exit 2, and so
does daemon mode."""
from __future__ import annotations

import json
import socket
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from conftest import free_port, http_get, make_config, seed_audit
from pytest_httpserver import HTTPServer
from test_ops_process import TABLE, Archiver, key, monitoring

from archive_checks import archived_ids, assert_invariant, table_ids
from archiver.main import cli
from archiver.ops.surface import OpsSurface
from common.config import load_config
from common.archive.fallback import FallbackDir
from common.archive.storage import LocalStorage

HELD = "monitoring ports are held by another archiver of this config"


def cli_run(path: Path, *args: str) -> Any:
    return CliRunner().invoke(cli, ["--config", str(path), *args])


@pytest.fixture()
def ten_batches(pg: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    """200 rows over 100 days: ~20 expired rows in ~10 daily batches."""
    seed_audit(pg, rows=200, days=100)
    return pg


def test_overlapping_one_shot_runs_both_exit_0_and_move_each_row_once(pg_dsn: str, ten_batches: Any,
                                                                       tmp_path: Path) -> None:
    original = table_ids(ten_batches)
    # sleep_seconds keeps the first run inside the table (holding its lock) for ~10 s.
    config = make_config(tmp_path, dsn=pg_dsn, defaults={"sleep_seconds": 1}, monitoring=monitoring(tmp_path))
    with Archiver(config) as first:
        first.until("the first run's first batch", lambda: first.metrics().get(key("archiver_rows_archived_total", **TABLE)))
        with Archiver(config, stderr=tmp_path / "second-stderr.txt") as second:
            assert second.exit_code() == 0, second.log()
        assert first.proc.poll() is None, "the first run ended before the second ran: nothing overlapped"
        assert first.exit_code(timeout=60) == 0, first.log()
    log = (tmp_path / "archiver.log").read_text()
    assert HELD in log and f"pid {first.proc.pid}" in log
    assert "being archived by another archiver (advisory lock held); skipped" in log
    archived = archived_ids(LocalStorage(tmp_path / "archive"))
    assert_invariant(original, table_ids(ten_batches), archived)
    assert archived and set(Counter(archived).values()) == {1}


def test_a_one_shot_run_beside_an_archiver_of_its_config_runs_without_endpoints(pg_dsn: str, audit_table: Any,
                                                                                tmp_path: Path) -> None:
    path = make_config(tmp_path, dsn=pg_dsn, monitoring=monitoring(tmp_path))
    with OpsSurface(load_config(path), config_path=str(path)):  # the earlier run, holding both ports
        result = cli_run(path)
    assert result.exit_code == 0, result.output
    assert HELD in (tmp_path / "archiver.log").read_text()
    assert not table_ids(audit_table) & archived_ids(LocalStorage(tmp_path / "archive")).keys()


def test_daemon_mode_refuses_a_port_held_by_an_archiver_of_its_config(pg_dsn: str, tmp_path: Path) -> None:
    path = make_config(tmp_path, dsn=pg_dsn, monitoring=monitoring(tmp_path))
    with OpsSurface(load_config(path), config_path=str(path)):
        result = cli_run(path, "--daemon")
    assert result.exit_code == 2
    assert "is held by another archiver (pid" in result.output and "daemon mode needs its own ports" in result.output


def test_an_archiver_of_another_config_on_the_port_gives_exit_2_naming_it(pg_dsn: str, tmp_path: Path) -> None:
    mon = monitoring(tmp_path)
    (tmp_path / "other").mkdir()
    other = make_config(tmp_path / "other", dsn=pg_dsn, monitoring=mon)
    path = make_config(tmp_path, dsn=pg_dsn, monitoring=mon)
    with OpsSurface(load_config(other), config_path=str(other)):
        result = cli_run(path)
    assert result.exit_code == 2
    assert f"config {other.resolve()}" in result.output and "give each config its own monitoring ports" in result.output


@pytest.mark.parametrize("answer", ["not_http", "other_json"])
def test_a_foreign_listener_on_the_port_still_gives_exit_2(answer: str, httpserver: HTTPServer, pg_dsn: str,
                                                           tmp_path: Path) -> None:
    with socket.socket() as raw:
        if answer == "not_http":  # listens, never answers: the probe times out
            raw.bind(("127.0.0.1", 0))
            raw.listen(1)
            port = raw.getsockname()[1]
        else:  # some other service's JSON on every path
            httpserver.expect_request("/identity").respond_with_json({"service": "exporter", "pid": 1})
            port = httpserver.port
        path = make_config(tmp_path, dsn=pg_dsn, monitoring={"enabled": True, "health_port": port,
                                                             "metrics_port": free_port()})
        result = cli_run(path)
    assert result.exit_code == 2
    assert f"monitoring.health_port: cannot listen on 127.0.0.1:{port}: port {port} is already in use" in result.output


def test_identity_is_served_on_both_ports_and_in_the_health_json(pg_dsn: str, tmp_path: Path) -> None:
    path = make_config(tmp_path, dsn=pg_dsn, monitoring=monitoring(tmp_path))
    cfg = load_config(path)
    with OpsSurface(cfg, config_path=str(path)):
        for port in (cfg.monitoring.health_port, cfg.monitoring.metrics_port):
            code, body = http_get(f"http://127.0.0.1:{port}/identity")
            assert code == 200 and json.loads(body)["config"] == str(path.resolve())
        _code, body = http_get(f"http://127.0.0.1:{cfg.monitoring.health_port}/health")
        assert json.loads(body)["archiver"]["mode"] == "one-shot"


def test_only_one_of_two_runs_sharing_a_fallback_directory_drains_it(tmp_path: Path) -> None:
    first, second = FallbackDir(tmp_path / "fb"), FallbackDir(tmp_path / "fb")
    assert first.claim() is True
    first.share()
    assert second.claim() is False  # the first is still running: no drain under its feet
    first.release()
    second.release()
    assert second.claim() is True
    second.release()
    assert FallbackDir(tmp_path / "fb").pending() == (0, 0)  # the lock is never taken for a batch
