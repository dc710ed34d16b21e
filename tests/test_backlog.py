"""Backlog metrics and the run's stop reason (issue 18), read from the real registry after real runs
over a table whose backlog is known: 30 expired rows, one a day from 91 to 120 days old."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import make_config
from prometheus_client.parser import text_string_to_metric_families

from archiver.controls import RunControls
from archiver.ops.events import STOP_REASONS
from archiver.ops.metrics import ArchiverMetrics
from archiver.runner import run_archive
from common.config import load_config

TABLE = {"database": "production_db", "table": "public.audit_logs"}
DAY = 86400.0


@pytest.fixture()
def backlog(pg: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    pg.execute("CREATE TABLE audit_logs (id int PRIMARY KEY, created_at timestamptz NOT NULL)")
    pg.execute("INSERT INTO audit_logs SELECT g, now() - make_interval(days => 90 + g) FROM generate_series(1, 30) g")
    pg.execute("INSERT INTO audit_logs SELECT g, now() - make_interval(days => g) FROM generate_series(31, 40) g")
    return pg


def run(tmp_path: Path, dsn: str, *, controls: RunControls | None = None, **monitoring: Any) -> tuple[Any, dict[Any, float]]:
    metrics = ArchiverMetrics()
    cfg = load_config(make_config(tmp_path, dsn=dsn, monitoring={"enabled": False, **monitoring}))
    (result,), code = run_archive(cfg, controls=controls, observer=metrics)
    assert code == 0
    got = {(s.name, tuple(sorted(s.labels.items()))): s.value
           for fam in text_string_to_metric_families(metrics.render().decode()) for s in fam.samples}
    return result, got


def gauge(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def expired_left(conn: psycopg.Connection[Any]) -> tuple[int, float]:
    row = conn.execute("SELECT count(*), extract(epoch FROM now() - min(created_at)) FROM audit_logs"
                       " WHERE created_at < now() - interval '90 days'").fetchone()
    assert row is not None
    return int(row[0]), float(row[1] or 0)


def test_a_run_stopped_by_max_rows_exports_the_expired_rows_left_and_the_oldest_age(
        backlog: psycopg.Connection[Any], pg_dsn: str, tmp_path: Path) -> None:
    result, m = run(tmp_path, pg_dsn, controls=RunControls(max_rows=10), backlog_exact_count=True)
    left, oldest = expired_left(backlog)
    assert result.status == "stopped" and 0 < left < 30 and left == 30 - result.rows
    assert gauge(m, "archiver_backlog_rows", **TABLE) == left
    # the reader exports oldest first: what is left starts at day 90 + left
    assert gauge(m, "archiver_backlog_oldest_age_seconds", **TABLE) == pytest.approx(oldest, abs=60)
    assert oldest == pytest.approx((90 + left) * DAY, abs=60)


def test_a_completed_run_leaves_no_backlog(backlog: psycopg.Connection[Any], pg_dsn: str, tmp_path: Path) -> None:
    result, m = run(tmp_path, pg_dsn)
    assert result.status == "completed" and result.rows == 30
    assert gauge(m, "archiver_backlog_rows", **TABLE) == 0
    assert gauge(m, "archiver_backlog_oldest_age_seconds", **TABLE) == 0
    assert gauge(m, "archiver_partitions_pending_retirement", **TABLE) == 0
    assert gauge(m, "archiver_last_run_stop_reason", reason="none") == 1


def test_rows_kept_because_referenced_are_the_backlog(backlog: psycopg.Connection[Any], pg_dsn: str,
                                                      tmp_path: Path) -> None:
    backlog.execute("CREATE TABLE sessions (id int PRIMARY KEY, audit_id int REFERENCES audit_logs (id))")
    backlog.execute("INSERT INTO sessions VALUES (1, 30), (2, 12)")  # 120 and 102 days old
    result, m = run(tmp_path, pg_dsn)
    assert result.status == "completed" and result.rows == 28
    assert gauge(m, "archiver_rows_kept_referenced", **TABLE) == 2
    assert gauge(m, "archiver_backlog_rows", **TABLE) == 2
    assert gauge(m, "archiver_backlog_oldest_age_seconds", **TABLE) == pytest.approx(120 * DAY, abs=60)


def stop_file(tmp_path: Path) -> RunControls:
    (tmp_path / "STOP").touch()
    return RunControls(stop_file=tmp_path / "STOP")


@pytest.mark.parametrize("reason, controls", [
    ("max_rows", lambda tmp: RunControls(max_rows=5)),
    ("max_runtime", lambda tmp: RunControls(max_runtime_seconds=0)),
    ("stop_file", stop_file),
])
def test_the_stop_reason_is_a_metric_and_in_the_summary(reason: str, controls: Any, backlog: psycopg.Connection[Any],
                                                         pg_dsn: str, tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    result, m = run(tmp_path, pg_dsn, controls=controls(tmp_path))
    assert result.status == "stopped" and result.stop_reason == reason
    assert {r: gauge(m, "archiver_last_run_stop_reason", reason=r) for r in STOP_REASONS} == \
        {r: float(r == reason) for r in STOP_REASONS}
    assert f"summary run: stop reason {reason}" in caplog.messages
    assert any(f"summary production_db.public.audit_logs: stopped ({reason})" in m for m in caplog.messages)
