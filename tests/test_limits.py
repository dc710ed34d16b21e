"""Sparing production (issue 3): max runtime, replica lag, parallel databases."""
from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from archive_checks import archived_ids, assert_invariant, table_ids
from archiver.app import ArchiverOptions, make_controls
from archiver.runner import run_archive
from archiver.pipeline import INFLIGHT_PER_UPLOAD
from common.archive import layout
from common.cli import Environment
from common.config import load_config
from common.exit_codes import ExitCode
from common.archive.s3client import make_client
from common.archive.storage import LocalStorage, S3Storage
from conftest import make_config, seed_audit, throwaway_database
from s3_events import once_after


def test_max_runtime_stops_cleanly_and_the_next_run_resumes(tmp_path: Path, pg_dsn: str, small_audit: Any,
                                                            bucket: str, moto_server: str, s3_client: Any) -> None:
    path = make_config(tmp_path, dsn=pg_dsn, bucket=bucket, endpoint=moto_server,
                       defaults={"batch_size": 5, "max_runtime_minutes": 10})
    cfg = load_config(path)
    original = table_ids(small_audit)
    controls = make_controls(cfg, ArchiverOptions(config_path=path))
    assert controls.max_runtime_seconds == 600
    client = make_client(cfg)

    def the_runtime_runs_out() -> None:
        # the first move outlasts the runtime: its start moves back by the whole runtime, at
        # the moment S3 has stored the run's first object (no sleep, no wall-clock race)
        controls.started -= 600

    ran_out = once_after(client, "PutObject", the_runtime_runs_out)
    results, code = run_archive(cfg, controls=controls, s3_client=client)
    assert ran_out.is_set()
    assert code == ExitCode.OK and results[0].status == "stopped"
    # ~80 objects in a full run; batches stored before the stop are finished, queued ones called off
    assert 0 < results[0].objects <= cfg.s3.max_concurrency * INFLIGHT_PER_UPLOAD
    run_archive(load_config(make_config(tmp_path, dsn=pg_dsn, bucket=bucket, endpoint=moto_server)))
    assert_invariant(original, table_ids(small_audit), archived_ids(S3Storage(s3_client, bucket)))


def test_replica_that_cannot_be_asked_pauses_until_max_runtime(caplog: pytest.LogCaptureFixture, tmp_path: Path,
                                                               pg_dsn: str, small_audit: Any, free_tcp_port: int) -> None:
    caplog.set_level(logging.INFO)
    path = make_config(tmp_path, dsn=pg_dsn, defaults={"batch_size": 5, "max_replica_lag_seconds": 0.2,
                                                        "max_runtime_minutes": 0.03})
    doc = yaml.safe_load(path.read_text())
    doc["databases"][0]["replica_dsns"] = [f"host=127.0.0.1 port={free_tcp_port} user=root dbname=x connect_timeout=1"]
    path.write_text(yaml.safe_dump(doc))
    cfg = load_config(path)
    results, code = run_archive(cfg, controls=make_controls(cfg, ArchiverOptions(config_path=path)))
    assert code == ExitCode.OK and results[0].status == "stopped"
    # paused after the first batches: only those already in flight were finished
    assert results[0].objects <= cfg.s3.max_concurrency * INFLIGHT_PER_UPLOAD + 1
    assert "replica lag unknown exceeds 0.2s; pausing" in caplog.text


def test_replica_in_sync_does_not_pause(tmp_path: Path, pg_dsn: str, small_audit: Any) -> None:
    path = make_config(tmp_path, dsn=pg_dsn, defaults={"batch_size": 50, "max_replica_lag_seconds": 5})
    doc = yaml.safe_load(path.read_text())
    doc["databases"][0]["replica_dsns"] = [pg_dsn]  # not in recovery: lag 0
    path.write_text(yaml.safe_dump(doc))
    cfg = load_config(path)
    results, code = run_archive(cfg, controls=make_controls(cfg, ArchiverOptions(config_path=path)))
    assert code == ExitCode.OK and results[0].status == "completed"


@pytest.fixture()
def second_db() -> Iterator[str]:
    """Another throwaway database, seeded like the first."""
    with throwaway_database() as dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:
            seed_audit(conn, rows=300, days=130)
        yield dsn


def test_databases_run_in_parallel_up_to_max_workers(tmp_path: Path, pg_dsn: str, small_audit: Any, second_db: str) -> None:
    path = make_config(tmp_path, dsn=pg_dsn, defaults={"max_workers": 2})
    doc = yaml.safe_load(path.read_text())
    doc["databases"].append({"name": "billing_db", "dsn": second_db, "tables": [{"name": "audit_logs"}]})
    path.write_text(yaml.safe_dump(doc))
    results, code = run_archive(load_config(path))
    assert code == ExitCode.OK
    assert {(r.database, r.status) for r in results} == {("production_db", "completed"), ("billing_db", "completed")}
    assert all(r.rows > 0 for r in results)
    store = LocalStorage(tmp_path / "archive")
    assert {o.key.split("/")[0] for o in store.list("") if not layout.in_control(o.key)} == {"production_db", "billing_db"}


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("terminal", [True, False], ids=["terminal", "not-a-terminal"])
def test_progress_line_goes_to_the_tools_stderr_when_it_is_a_terminal(tmp_path: Path, pg_dsn: str, small_audit: Any,
                                                                     terminal: bool) -> None:
    path = make_config(tmp_path, dsn=pg_dsn, defaults={"batch_size": 50})
    cfg = load_config(path)
    stderr = Terminal() if terminal else io.StringIO()
    controls = make_controls(cfg, ArchiverOptions(config_path=path), env=Environment(stderr=stderr))
    results, code = run_archive(cfg, controls=controls)
    assert code == ExitCode.OK and results[0].rows > 0
    if terminal:
        assert stderr.getvalue().rsplit("\r", 1)[-1].startswith(f"{results[0].database} {results[0].name}: "
                                                                 f"{results[0].rows:,} rows, {results[0].objects} objects")
    else:
        assert stderr.getvalue() == ""
