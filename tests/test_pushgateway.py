"""One-shot runs push their metrics to a real Prometheus Pushgateway (Debian's
prometheus-pushgateway, which .ci/run installs), started on a free loopback port per test: what it
holds afterwards is what Prometheus would scrape. A push replaces this host's whole group, so a
table that did not succeed this run keeps the last-success time pushed before (else it would
vanish, and an alert on its age would never fire); a Pushgateway that is down is a warning, never
the run's exit code."""
from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port, http_get, make_config
from prometheus_client import CollectorRegistry, Gauge, push_to_gateway
from test_ops import _restore_process_state, audit_table, samples, value  # noqa: F401 - fixtures

from archiver.app import ArchiverOptions, run

GROUP = {"job": "pg_archiver", "instance": socket.gethostname()}


@pytest.fixture()
def pushgateway(tmp_path: Path) -> Iterator[str]:
    binary = shutil.which("prometheus-pushgateway") or shutil.which("pushgateway")
    if binary is None:
        pytest.skip("prometheus-pushgateway not found: install Debian's `prometheus-pushgateway` package, as .ci/run does")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([binary, f"--web.listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL,
                            stderr=(tmp_path / "pushgateway.log").open("w"))
    try:
        deadline = time.monotonic() + 20
        while True:  # no readiness event to wait on but its own endpoint
            try:
                if http_get(f"{url}/-/ready")[0] == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Pushgateway did not start: {(tmp_path / 'pushgateway.log').read_text()[-500:]}")
            time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def pushed(url: str) -> str:
    """This host's group as the Pushgateway exposes it to Prometheus."""
    status, text = http_get(f"{url}/metrics")
    assert status == 200
    return text


def monitoring(url: str) -> dict[str, Any]:
    return {"enabled": True, "health_port": None, "metrics_port": None, "pushgateway_url": url}


def test_metrics_are_pushed_to_the_pushgateway(pushgateway: str, pg_dsn: str, audit_table: Any, tmp_path: Path) -> None:
    assert run(ArchiverOptions(config_path=make_config(tmp_path, dsn=pg_dsn, monitoring=monitoring(pushgateway)))) == 0
    text = pushed(pushgateway)
    assert value(text, "archiver_rows_archived_total", database="production_db", table="public.audit_logs", **GROUP) > 0
    assert value(text, "archiver_last_run_exit_code", **GROUP) == 0


def test_a_push_keeps_the_last_success_of_tables_that_did_not_succeed_this_run(
        pushgateway: str, pg_dsn: str, audit_table: Any, tmp_path: Path) -> None:
    earlier = CollectorRegistry()  # what an earlier run of this host pushed
    Gauge("archiver_last_success_timestamp_seconds", "", ["database", "table"], registry=earlier) \
        .labels("other_db", "public.t").set(1.7e9)
    push_to_gateway(pushgateway, job=GROUP["job"], registry=earlier, grouping_key={"instance": GROUP["instance"]})
    other_host = CollectorRegistry()
    Gauge("archiver_last_success_timestamp_seconds", "", ["database", "table"], registry=other_host) \
        .labels("production_db", "public.audit_logs").set(1.9e9)
    push_to_gateway(pushgateway, job=GROUP["job"], registry=other_host, grouping_key={"instance": "another-host"})

    path = make_config(tmp_path, dsn=pg_dsn, monitoring=monitoring(pushgateway))
    assert run(ArchiverOptions(config_path=path)) == 0

    text = pushed(pushgateway)
    assert value(text, "archiver_last_success_timestamp_seconds", database="other_db", table="public.t", **GROUP) == 1.7e9
    # this run's own success, not another host's newer time from the same Pushgateway
    mine = value(text, "archiver_last_success_timestamp_seconds", database="production_db", table="public.audit_logs",
                 **GROUP)
    assert abs(mine - time.time()) < 300


def test_a_pushgateway_that_is_down_is_a_warning_and_not_the_exit_code(pg_dsn: str, audit_table: Any,
                                                                       tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    assert run(ArchiverOptions(config_path=make_config(tmp_path, dsn=pg_dsn, monitoring=monitoring(closed)))) == 0
    log = (tmp_path / "archiver.log").read_text()
    assert "WARNING cannot read the last-success times this host pushed" in log
    assert "WARNING pushing metrics to the Pushgateway failed" in log
