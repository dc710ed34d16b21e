"""The operations surface of a running archiver process (issue 6): /health and /metrics over real
HTTP from a one-shot run and from `--daemon`, `degraded` when S3 is cut, `unhealthy` when the
database is down, and SIGTERM / SIGHUP in daemon mode. Ports are free ones, never 8000/8001."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
import yaml
from archive_checks import archived
from common.archive.storage import LocalStorage
from conftest import free_port, make_config, seed_audit
from conftest import http_get as fetch
from prometheus_client.parser import text_string_to_metric_families

T = TypeVar("T")
TABLE = {"database": "production_db", "table": "public.audit_logs"}


@pytest.fixture()
def audit_table(pg: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    """200 rows over 100 days: ~20 expired rows in ~10 daily batches."""
    seed_audit(pg, rows=200, days=100)
    return pg


class Archiver:
    """`python -m archiver.main` as a child process; killed (by its own pid) if a test leaves it running."""

    def __init__(self, config: Path, *args: str, stderr: Path | None = None) -> None:
        self.config = config
        self.health_url = self.metrics_url = ""
        mon = yaml.safe_load(config.read_text())["monitoring"]
        if mon.get("enabled"):
            self.health_url = f"http://127.0.0.1:{mon['health_port']}/health"
            self.metrics_url = f"http://127.0.0.1:{mon['metrics_port']}/metrics"
        self.stderr = stderr or config.parent / "stderr.txt"
        with self.stderr.open("wb") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "archiver.main", "--config", str(config), *args],
                                         stdout=subprocess.DEVNULL, stderr=err)

    def __enter__(self) -> Archiver:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def send(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def exit_code(self, timeout: float = 30) -> int:
        return self.proc.wait(timeout=timeout)

    def log(self) -> str:
        return self.stderr.read_text()

    def health(self) -> tuple[int, dict[str, Any]]:
        code, body = fetch(self.health_url)
        return code, json.loads(body)

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return parse_metrics(fetch(self.metrics_url)[1])

    def until(self, what: str, probe: Callable[[], T | None], timeout: float = 30) -> T:
        """Poll `probe` until it returns something truthy; fail with the process's stderr otherwise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                got = probe()
            except (OSError, ValueError, KeyError):
                got = None
            if got:
                return got
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        pytest.fail(f"never saw {what} (exit code {self.proc.poll()}); stderr:\n{self.log()[-3000:]}")


def parse_metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def key(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return name, tuple(sorted(labels.items()))


def monitoring(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return {"enabled": True, "health_port": free_port(), "metrics_port": free_port(), **extra}


def rows(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT count(*) FROM audit_logs").fetchone()
    assert row is not None
    return int(row[0])


def archived_rows(root: Path) -> int:
    return sum(m.rows for m in archived(LocalStorage(root)).values())


def last_run_finished(a: Archiver) -> dict[str, Any] | None:
    _code, doc = a.health()
    run = doc["last_run"]
    return doc if run and run["result"] != "running" else None


# -- one-shot -----------------------------------------------------------------------------------
def test_one_shot_run_serves_health_and_metrics_while_it_runs(pg_dsn: str, audit_table: Any, tmp_path: Path) -> None:
    before = rows(audit_table)
    textfile = tmp_path / "node_exporter" / "archiver.prom"
    # sleep_seconds holds the run between batches, so the endpoints can be read while it works.
    config = make_config(tmp_path, dsn=pg_dsn, defaults={"sleep_seconds": 60},
                         monitoring=monitoring(tmp_path, textfile_path=str(textfile)))
    with Archiver(config) as a:
        m = a.until("a first batch in /metrics", lambda: (lambda m: m if m.get(key("archiver_rows_archived_total", **TABLE))
                                                          else None)(a.metrics()))
        assert m[key("archiver_run_in_progress")] == 1
        assert m[key("archiver_batches_total", status="success", **TABLE)] == 1
        code, doc = a.health()
        assert (code, doc["status"]) == (200, "healthy")
        assert doc["last_run"]["result"] == "running" and doc["last_run"]["finished"] is None
        assert doc["checks"]["database"]["databases"]["production_db"]["status"] == "ok"
        a.send(signal.SIGTERM)
        assert a.exit_code() == 0
        assert "received SIGTERM" in a.log()  # the engine logs how it stops (archiver/controls.py)
    with pytest.raises(urllib.error.URLError):  # the endpoints end with the run
        urllib.request.urlopen(a.health_url, timeout=5)
    final = parse_metrics(textfile.read_text())
    assert final[key("archiver_run_in_progress")] == 0
    assert final[key("archiver_rows_archived_total", **TABLE)] == before - rows(audit_table) == archived_rows(tmp_path / "archive")


# -- daemon -------------------------------------------------------------------------------------
def test_daemon_is_degraded_while_s3_is_cut_and_sigterm_between_runs_exits_0(pg_dsn: str, audit_table: Any,
                                                                              tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    config = make_config(tmp_path, dsn=pg_dsn, bucket="audit-archives", endpoint=closed, monitoring=monitoring(tmp_path),
                         schedule={"interval": "1h"})
    with Archiver(config, "--daemon") as a:
        doc = a.until("the first run to finish", lambda: last_run_finished(a))
        code, doc = a.health()
        assert (code, doc["status"]) == (200, "degraded")
        assert doc["checks"]["s3"]["status"] == "down" and doc["checks"]["database"]["status"] == "ok"
        assert doc["checks"]["fallback"]["pending_files"] > 0 and doc["last_run"]["fallback_batches"] > 0
        m = a.metrics()
        assert m[key("archiver_fallback_pending_files")] == doc["checks"]["fallback"]["pending_files"]
        assert m[key("archiver_batches_total", status="fallback", **TABLE)] == doc["last_run"]["fallback_batches"]
        assert m[key("archiver_run_in_progress")] == 0
        a.send(signal.SIGTERM)
        assert a.exit_code(timeout=10) == 0
    assert "SIGTERM received; daemon stopping" in a.log()


def test_daemon_is_unhealthy_while_the_database_is_down(tmp_path: Path) -> None:
    dsn = f"host=127.0.0.1 port={free_port()} user=archiver password=hunter2-secret dbname=prod"
    config = make_config(tmp_path, dsn=dsn, monitoring=monitoring(tmp_path), schedule={"interval": "1h"})
    with Archiver(config, "--daemon") as a:
        doc = a.until("the first run to finish", lambda: last_run_finished(a))
        code, doc = a.health()
        assert (code, doc["status"]) == (503, "unhealthy")
        db = doc["checks"]["database"]["databases"]["production_db"]
        assert db["status"] == "down" and "refused" in db["error"]
        assert doc["last_run"]["result"] == "unavailable"
        assert doc["last_run"]["failed_tables"] == ["production_db/public.audit_logs"]
        assert "hunter2" not in json.dumps(doc)
        m = a.metrics()
        assert m[key("archiver_errors_total", kind="database_unreachable", **TABLE)] == 1
        assert m[key("archiver_last_run_exit_code")] == 3
        assert a.proc.poll() is None  # the daemon outlives a failed run
        a.send(signal.SIGTERM)
        assert a.exit_code(timeout=10) == 0
    assert "hunter2" not in a.log()


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 0), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_during_a_daemon_run_finishes_the_batch(sig: signal.Signals, code: int, pg_dsn: str,
                                                              audit_table: Any, tmp_path: Path) -> None:
    before = rows(audit_table)
    config = make_config(tmp_path, dsn=pg_dsn, defaults={"sleep_seconds": 60}, monitoring=monitoring(tmp_path))
    with Archiver(config, "--daemon") as a:
        a.until("a first batch", lambda: a.metrics().get(key("archiver_rows_archived_total", **TABLE)))
        a.send(sig)
        assert a.exit_code() == code
    log = a.log()
    assert f"received {sig.name}" in log and f"{sig.name} received; daemon stopping" in log
    assert "next run at" not in log
    # Nothing lost: every row that left the table is in a verified archive.
    assert before - rows(audit_table) == archived_rows(tmp_path / "archive") > 0


def test_sighup_reopens_the_log_and_reloads_the_config_keeping_the_old_one_if_bad(pg_dsn: str, audit_table: Any,
                                                                                   tmp_path: Path) -> None:
    config = make_config(tmp_path, dsn=pg_dsn, monitoring=monitoring(tmp_path), schedule={"interval": "1h"})
    good = yaml.safe_load(config.read_text())
    logfile = tmp_path / "archiver.log"
    with Archiver(config, "--daemon") as a:
        a.until("the first run", lambda: "next run at" in logfile.read_text())
        logfile.rename(tmp_path / "archiver.log.1")  # what logrotate does before signalling
        a.send(signal.SIGHUP)
        a.until("a reopened log with the reload", lambda: "configuration reloaded" in logfile.read_text())

        config.write_text("databases: [\n")
        a.send(signal.SIGHUP)
        a.until("the bad reload logged", lambda: "config reload failed" in logfile.read_text())
        assert "keeping the previous configuration" in logfile.read_text()
        assert a.health()[0] == 200 and a.proc.poll() is None

        config.write_text(yaml.safe_dump(dict(good, schedule={"interval": "1s"})))
        a.send(signal.SIGHUP)  # the shorter interval takes effect while the daemon waits: a second run follows
        a.until("a second run", lambda: logfile.read_text().count("run finished with exit code 0") >= 1)
        a.send(signal.SIGTERM)
        assert a.exit_code() == 0
    rotated = (tmp_path / "archiver.log.1").read_text()
    assert "daemon started" in rotated and "configuration reloaded" not in rotated
