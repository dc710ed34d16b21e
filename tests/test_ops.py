"""Operations surface in-process (issue 6): health checks against a real PostgreSQL and moto S3,
metrics from a real run, the textfile and Pushgateway outputs, endpoint ports, logs, the schedule
interval. The running process (HTTP from a subprocess, signals, --daemon) is tests/test_ops_process.py."""
from __future__ import annotations

import json
import logging
import signal
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from click.testing import CliRunner
from conftest import free_port, make_config, seed_audit
from conftest import http_get as fetch
from prometheus_client.parser import text_string_to_metric_families
from pytest_httpserver import HTTPServer

from archiver.app import ArchiverOptions, run
from archiver.daemon import parse_interval
from archiver.main import cli
from archiver.runner import run_archive
from common.config import Config, load_config
from common.errors import ConfigError
from archiver.ops.health import HealthChecker, RunState
from archiver.ops.http_server import serve_endpoints
from archiver.ops.metrics import ArchiverMetrics
from common.archive.storage import LocalStorage

ISSUE_METRICS = ["archiver_rows_archived_total", "archiver_batches_total", "archiver_bytes_uploaded_total",
                 "archiver_batch_duration_seconds", "archiver_last_success_timestamp_seconds",
                 "archiver_fallback_pending_files", "archiver_errors_total", "archiver_run_in_progress"]


@pytest.fixture(autouse=True)
def _restore_process_state() -> Iterator[None]:
    """In-process runs install signal handlers and replace the root log handlers: put them back."""
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    yield
    for signum, handler in handlers.items():
        signal.signal(signum, handler)
    for h in list(root.handlers):
        if h not in saved:
            root.removeHandler(h)
            h.close()
    for h in saved:
        if h not in root.handlers:
            root.addHandler(h)
    root.setLevel(level)


@pytest.fixture()
def audit_table(pg: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    """A small audit_logs: 200 rows over 100 days, ~20 of them (in ~10 daily objects) expired."""
    seed_audit(pg, rows=200, days=100)
    return pg


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(text: str, name: str, **labels: str) -> float:
    return samples(text)[(name, tuple(sorted(labels.items())))]


def closed_endpoint() -> str:
    return f"http://127.0.0.1:{free_port()}"


def config(tmp_path: Path, **kw: Any) -> Config:
    return load_config(make_config(tmp_path, **kw))


# -- /health ------------------------------------------------------------------------------------
def test_everything_reachable_is_healthy(pg_dsn: str, moto_server: str, bucket: str, tmp_path: Path) -> None:
    code, doc = HealthChecker(config(tmp_path, dsn=pg_dsn, bucket=bucket, endpoint=moto_server), state=RunState()).report()
    assert (code, doc["status"], doc["reasons"]) == (200, "healthy", [])
    assert doc["checks"]["database"]["databases"]["production_db"]["status"] == "ok"
    assert doc["checks"]["s3"] == {"status": "ok", "storage": "s3", "bucket": bucket,
                                   "latency_ms": doc["checks"]["s3"]["latency_ms"]}
    assert doc["checks"]["fallback"] == {"pending_files": 0, "bytes": 0, "dir": str(tmp_path / "fallback")}
    assert doc["last_run"] is None


@pytest.mark.parametrize("fallback,code,status", [(True, 200, "degraded"), (False, 503, "unhealthy")])
def test_s3_cut_is_degraded_with_a_fallback_and_unhealthy_without(pg_dsn: str, tmp_path: Path, fallback: bool,
                                                                   code: int, status: str) -> None:
    cfg = config(tmp_path, dsn=pg_dsn, bucket="audit-archives", endpoint=closed_endpoint(),
                 s3={"local_fallback_dir": str(tmp_path / "fb") if fallback else None})
    got, doc = HealthChecker(cfg, state=RunState()).report()
    assert (got, doc["status"], doc["checks"]["s3"]["status"]) == (code, status, "down")
    assert "s3 unreachable" in doc["reasons"][0]


def test_database_down_is_unhealthy_and_never_shows_the_password(tmp_path: Path) -> None:
    dsn = f"host=127.0.0.1 port={free_port()} user=archiver password=hunter2-secret dbname=prod"
    code, doc = HealthChecker(config(tmp_path, dsn=dsn), state=RunState()).report()
    assert (code, doc["status"]) == (503, "unhealthy")
    db = doc["checks"]["database"]["databases"]["production_db"]
    assert db["status"] == "down" and db["target"].startswith("127.0.0.1:") and "refused" in db["error"]
    assert "hunter2" not in json.dumps(doc)


def test_a_database_that_never_answers_times_out_instead_of_hanging(tmp_path: Path) -> None:
    with socket.socket() as silent:  # accepts connections (backlog) and never speaks
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        dsn = f"host=127.0.0.1 port={silent.getsockname()[1]} user=root dbname=x"
        code, doc = HealthChecker(config(tmp_path, dsn=dsn), state=RunState(), timeout=0.5).report()
    db = doc["checks"]["database"]["databases"]["production_db"]
    assert (code, db["status"], db["error"]) == (503, "timeout", "no answer within 0.5s")


def test_batches_waiting_in_the_fallback_directory_are_degraded(pg_dsn: str, tmp_path: Path) -> None:
    cfg = config(tmp_path, dsn=pg_dsn)  # storage: local, fallback dir configured but unused by local
    cfg = cfg.model_copy(update={"storage": "s3", "s3": cfg.s3.model_copy(update={"endpoint_url": closed_endpoint()})})
    fb = LocalStorage(tmp_path / "fallback", location="fallback")
    from common.archive.manifest import sha256_hex
    for key, data in [("db/public.t/year=2020/month=01/day=01/part-1.parquet", b"x" * 100),
                      ("db/public.t/year=2020/month=01/day=01/part-1.parquet.manifest.json", b"{}")]:
        fb.put(key, data, sha256=sha256_hex(data))
    _code, doc = HealthChecker(cfg, state=RunState()).report()
    assert doc["checks"]["fallback"]["pending_files"] == 1 and doc["checks"]["fallback"]["bytes"] == 102
    assert "1 batches wait in the fallback directory" in doc["reasons"]


def test_a_failed_last_run_is_degraded(pg_dsn: str, tmp_path: Path) -> None:
    state = RunState()
    state.run_started()
    from archiver.ops.events import TableResult
    state.table_done(TableResult("production_db", "public", "audit_logs", status="failed", error="boom"))
    state.run_finished([], 1)
    code, doc = HealthChecker(config(tmp_path, dsn=pg_dsn), state=state).report()
    assert (code, doc["status"], doc["reasons"]) == (200, "degraded", ["last run failed: production_db/public.audit_logs"])
    assert doc["last_run"]["result"] == "failed" and doc["last_run"]["exit_code"] == 1


def test_checks_are_cached_until_the_config_changes(pg_dsn: str, tmp_path: Path) -> None:
    good = config(tmp_path, dsn=pg_dsn)
    checker = HealthChecker(good, state=RunState(), cache_seconds=3600)
    assert checker.report()[0] == 200
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        db = conn.info.dbname
    with psycopg.connect(pg_dsn.replace(f"dbname={db}", "dbname=postgres"), autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{db}" ALLOW_CONNECTIONS false')
        try:
            assert checker.report()[0] == 200  # cached: no new connection within cache_seconds
            checker.set_config(good)
            assert checker.report()[0] == 503
        finally:
            admin.execute(f'ALTER DATABASE "{db}" ALLOW_CONNECTIONS true')


# -- endpoints ----------------------------------------------------------------------------------
def test_health_and_metrics_can_share_one_port() -> None:
    port = free_port()
    routes = [("monitoring.health_port", port, "/health", lambda: (200, "application/json", b'{"status": "healthy"}')),
              ("monitoring.metrics_port", port, "/metrics", ArchiverMetrics().route)]
    with serve_endpoints(bind="127.0.0.1", endpoints=routes) as servers:
        assert len(servers) == 1
        assert fetch(f"http://127.0.0.1:{port}/health") == (200, '{"status": "healthy"}')
        assert "archiver_run_in_progress 0.0" in fetch(f"http://127.0.0.1:{port}/metrics")[1]
        assert fetch(f"http://127.0.0.1:{port}/other")[0] == 404
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)


@pytest.mark.parametrize("key", ["health_port", "metrics_port"])
def test_a_port_in_use_is_a_clear_error_with_exit_2(key: str, pg_dsn: str, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        other = free_port()
        ports = {"health_port": port, "metrics_port": other} if key == "health_port" else {"health_port": other, "metrics_port": port}
        path = make_config(tmp_path, dsn=pg_dsn, monitoring={"enabled": True, **ports})
        result = CliRunner().invoke(cli, ["--config", str(path)])
    assert result.exit_code == 2
    assert f"archiver: error: monitoring.{key}: cannot listen on 127.0.0.1:{port}: port {port} is already in use" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("bind", ["192.0.2.1", "no-such-host.invalid"])
def test_a_bind_address_not_on_this_host_is_a_config_error(bind: str) -> None:
    routes = [("monitoring.health_port", free_port(), "/health", lambda: (200, "text/plain", b""))]
    with pytest.raises(ConfigError, match=f"cannot listen on {bind}:.*not available on this host; check monitoring.bind"):
        with serve_endpoints(bind=bind, endpoints=routes):
            pass


@pytest.mark.parametrize("ports", [{"health_port": None, "metrics_port": None}, {"enabled": False}])
def test_endpoints_can_be_disabled(ports: dict[str, Any], pg_dsn: str, audit_table: Any, tmp_path: Path) -> None:
    with socket.socket() as taken:  # 8000/8001 may be anything on a test host; disabled means never bound
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        path = make_config(tmp_path, dsn=pg_dsn, monitoring={"enabled": True, "health_port": taken.getsockname()[1],
                                                             "metrics_port": taken.getsockname()[1], **ports})
        assert run(ArchiverOptions(config_path=path)) == 0


# -- metrics from a real run --------------------------------------------------------------------
def test_metrics_count_what_the_run_did(pg_dsn: str, audit_table: Any, tmp_path: Path) -> None:
    metrics = ArchiverMetrics()
    results, code = run_archive(config(tmp_path, dsn=pg_dsn), observer=metrics)
    (r,) = results
    text = metrics.render().decode()
    labels = {"database": "production_db", "table": "public.audit_logs"}
    assert code == 0 and r.rows > 0
    assert value(text, "archiver_rows_archived_total", **labels) == r.rows
    assert value(text, "archiver_batches_total", status="success", **labels) == r.objects
    assert value(text, "archiver_bytes_uploaded_total", **labels) == r.bytes
    assert value(text, "archiver_batch_duration_seconds_count") == r.objects
    assert value(text, "archiver_last_success_timestamp_seconds", **labels) > 0
    assert value(text, "archiver_run_in_progress") == 0
    assert value(text, "archiver_runs_total", result="success") == 1


def test_a_failed_table_counts_an_error_of_its_kind(pg_dsn: str, tmp_path: Path) -> None:
    metrics = ArchiverMetrics()
    _results, code = run_archive(config(tmp_path, dsn=pg_dsn), observer=metrics)  # audit_logs does not exist
    text = metrics.render().decode()
    assert code == 1
    assert value(text, "archiver_errors_total", database="production_db", table="public.audit_logs", kind="config") == 1
    assert ("archiver_last_success_timestamp_seconds", (("database", "production_db"), ("table", "public.audit_logs"))) \
        not in samples(text)
    assert value(text, "archiver_last_run_exit_code") == 1


def test_textfile_is_replaced_atomically_and_keeps_last_success_of_other_tables(pg_dsn: str, audit_table: Any,
                                                                                tmp_path: Path) -> None:
    textfile = tmp_path / "textfile" / "archiver.prom"
    textfile.parent.mkdir()
    textfile.write_text('archiver_last_success_timestamp_seconds{database="other_db",table="public.t"} 1.7e+09\n')
    old_inode = textfile.stat().st_ino
    before = audit_table.execute("SELECT count(*) FROM audit_logs").fetchone()[0]
    path = make_config(tmp_path, dsn=pg_dsn, monitoring={"enabled": True, "health_port": None, "metrics_port": None,
                                                         "textfile_path": str(textfile)})
    assert run(ArchiverOptions(config_path=path)) == 0
    after = audit_table.execute("SELECT count(*) FROM audit_logs").fetchone()[0]
    text = textfile.read_text()
    assert textfile.stat().st_ino != old_inode  # renamed into place, never rewritten in place
    assert sorted(p.name for p in textfile.parent.iterdir()) == ["archiver.prom"]  # no temp file left
    assert oct(textfile.stat().st_mode & 0o777) == "0o644"
    assert value(text, "archiver_rows_archived_total", database="production_db", table="public.audit_logs") == before - after
    assert value(text, "archiver_last_success_timestamp_seconds", database="other_db", table="public.t") == 1.7e9
    assert value(text, "archiver_last_run_exit_code") == 0
    for name in ISSUE_METRICS:
        assert f"# TYPE {name.removesuffix('_total')}" in text


# -- notifications from a real run -------------------------------------------------------------
@pytest.mark.parametrize("status", [200, 500])
def test_a_failed_run_notifies_and_keeps_its_exit_code(status: int, httpserver: HTTPServer, pg_dsn: str,
                                                       audit_table: Any, tmp_path: Path) -> None:
    httpserver.expect_request("/hook", method="POST").respond_with_data("ok" if status == 200 else "down", status=status)
    path = make_config(tmp_path, dsn=pg_dsn, tables=[{"name": "audit_logs"}, {"name": "missing_table"}],
                       notifications={"slack": {"webhook_url": httpserver.url_for("/hook"), "timeout": 5}})
    assert run(ArchiverOptions(config_path=path)) == 1
    (req, _resp), = httpserver.log
    text = json.loads(req.get_data())["text"]
    assert "FAILURE production_db/public.missing_table" in text and "audit_logs" not in text
    assert "table public.missing_table does not exist" in text
    log_text = (tmp_path / "archiver.log").read_text()
    assert ("notification via slack failed: HTTP 500" in log_text) == (status == 500)


def test_a_run_that_raises_is_reported_and_still_writes_the_textfile(httpserver: HTTPServer, pg_dsn: str,
                                                                     tmp_path: Path) -> None:
    httpserver.expect_request("/hook", method="POST").respond_with_data("ok")
    textfile = tmp_path / "archiver.prom"
    path = make_config(tmp_path, dsn=pg_dsn, notifications={"slack": {"webhook_url": httpserver.url_for("/hook")}},
                       monitoring={"enabled": True, "health_port": None, "metrics_port": None,
                                   "textfile_path": str(textfile)})
    doc = yaml.safe_load(path.read_text())
    doc["databases"][0]["password_file"] = str(tmp_path / "no-such-secret")
    path.write_text(yaml.safe_dump(doc))
    result = CliRunner().invoke(cli, ["--config", str(path)])
    assert result.exit_code == 2 and "password_file: cannot read" in result.output
    (req, _resp), = httpserver.log
    text = json.loads(req.get_data())["text"]
    assert "FAILURE the whole run" in text and "password_file" in text and "--dry-run" in text
    assert value(textfile.read_text(), "archiver_last_run_exit_code") == 2
    assert value(textfile.read_text(), "archiver_errors_total", database="", table="", kind="config") == 1


# -- logs ---------------------------------------------------------------------------------------
def test_log_has_the_words_the_runbook_greps_and_no_password(pg_dsn: str, audit_table: Any, tmp_path: Path) -> None:
    dsn = pg_dsn + " password=hunter2-secret"  # trust auth ignores it; it must still never be logged
    path = make_config(tmp_path, dsn=dsn, tables=[{"name": "audit_logs"}, {"name": "missing_table"}])
    assert run(ArchiverOptions(config_path=path, verbose=True)) == 1
    log_text = (tmp_path / "archiver.log").read_text()
    assert "table public.audit_logs completed" in log_text
    assert "ERROR table public.missing_table failed" in log_text
    assert "hunter2" not in log_text and pg_dsn not in log_text


def test_json_log_lines_carry_database_and_table(pg_dsn: str, audit_table: Any, tmp_path: Path) -> None:
    path = make_config(tmp_path, dsn=pg_dsn, logging={"file": str(tmp_path / "logs" / "a.jsonl"), "format": "json"})
    assert run(ArchiverOptions(config_path=path)) == 0
    lines = [json.loads(line) for line in (tmp_path / "logs" / "a.jsonl").read_text().splitlines()]
    done = [d for d in lines if "completed" in d["message"]]
    assert done and done[0]["database"] == "production_db" and done[0]["table"] == "public.audit_logs"
    assert {"timestamp", "level", "message"} <= set(lines[0])


def test_an_unwritable_log_file_is_a_clear_error(pg_dsn: str, tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("a file where a directory should be")
    path = make_config(tmp_path, dsn=pg_dsn, logging={"file": str(tmp_path / "blocker" / "archiver.log")})
    result = CliRunner().invoke(cli, ["--config", str(path)])
    assert result.exit_code == 2 and f"logging.file: cannot open {tmp_path}/blocker/archiver.log" in result.output


# -- schedule -----------------------------------------------------------------------------------
@pytest.mark.parametrize("text,seconds", [("15m", 900), ("1h", 3600), ("1h30m", 5400), ("90s", 90), ("90", 90),
                                          ("1d", 86400), (" 2H ", 7200), ("0.5s", 0.5)])
def test_schedule_interval_accepts_durations(text: str, seconds: float) -> None:
    assert parse_interval(text) == seconds


@pytest.mark.parametrize("text", ["", "0m", "1x", "h", "1h-5m", "soon"])
def test_schedule_interval_rejects_anything_else(text: str) -> None:
    with pytest.raises(ConfigError, match="schedule.interval: .* is not a duration like 15m"):
        parse_interval(text)


def test_daemon_with_a_bad_interval_exits_2(pg_dsn: str, tmp_path: Path) -> None:
    path = make_config(tmp_path, dsn=pg_dsn, schedule={"interval": "hourly"})
    result = CliRunner().invoke(cli, ["--config", str(path), "--daemon"])
    assert result.exit_code == 2 and "schedule.interval: 'hourly' is not a duration" in result.output


def test_the_stop_file_ends_the_daemon_with_exit_0(pg_dsn: str, audit_table: Any, tmp_path: Path) -> None:
    path = make_config(tmp_path, dsn=pg_dsn, schedule={"interval": "1h"})
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "STOP").touch()
    result = CliRunner().invoke(cli, ["--config", str(path), "--daemon"])
    assert result.exit_code == 0
    assert "daemon stopping" in (tmp_path / "archiver.log").read_text()


def test_config_keys_for_monitoring_exist_with_issue_defaults(tmp_path: Path) -> None:
    m = load_config(_write(tmp_path, {})).monitoring
    assert (m.bind, m.health_port, m.metrics_port) == ("127.0.0.1", 8001, 8000)


def _write(tmp_path: Path, doc: dict[str, Any]) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p

