"""The archiver under faults (issue 3): kill -9 anywhere, signals, S3 outages with the local
fallback, database faults. Every scenario ends with a clean run and checks the invariant: each
original row is in its table or in exactly one archive object; never both, never neither, never twice."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from archive_checks import archived, archived_ids, assert_invariant, table_ids
from common import batch_writer
from common.archive import layout
from common.archive.storage import LocalStorage, S3Storage
from conftest import make_config, seed_audit

ROOT = Path(__file__).resolve().parent.parent


def archiver(config: Path, *extra: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "archiver.main", "--config", str(config), *extra], cwd=ROOT,
                          env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout)


def start_archiver(config: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "archiver.main", "--config", str(config), *extra], cwd=ROOT,
                            env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_until(condition: Callable[[], bool], what: str, *, proc: subprocess.Popen[str] | None = None,
               timeout: float = 30) -> None:
    """Poll `condition` until it holds. Only for what a child process shows to the outside (a log
    line, objects in the bucket, its database session), where there is no event to wait on; fails
    at once if `proc` ends first."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc is None or proc.poll() is None, f"the archiver exited ({proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} after {timeout}s"
        time.sleep(0.05)


def wait_for_log(path: Path, text: str, *, count: int = 1, timeout: float = 30) -> None:
    """Until `text` appears `count` times in the log (the archiver is past start-up and working)."""
    wait_until(lambda: path.exists() and path.read_text().count(text) >= count, f"{text!r} in the log", timeout=timeout)


def stored_objects(store: S3Storage) -> list[str]:
    """Data objects stored (one listing: polled while a run goes, to pick a moment to kill it)."""
    return [o.key for o in store.list("") if not layout.is_manifest(o.key) and not layout.is_control_key(o.key)]


def orphans(*stores: Any) -> list[str]:
    """Data objects that do not count as archived (half-written moves)."""
    out = []
    for store in stores:
        counted = archived(store)
        out += [o.key for o in store.list("") if not layout.is_manifest(o.key) and not layout.is_control_key(o.key)
                and o.key not in counted]
    return out


class Scenario:
    """A seeded table with many small batches, archived to moto S3 with a fallback directory."""

    def __init__(self, tmp_path: Path, dsn: str, conn: psycopg.Connection[Any], s3_client: Any, bucket: str,
                 endpoint: str, **overrides: Any) -> None:
        seed_audit(conn, rows=400, days=130)  # ~120 expired rows over ~40 days
        self.conn, self.tmp = conn, tmp_path
        self.original = table_ids(conn)
        self.s3 = S3Storage(s3_client, bucket)
        self.fallback = LocalStorage(tmp_path / "fallback")
        overrides.setdefault("defaults", {"batch_size": 3})
        self.args = {"dsn": dsn, "bucket": bucket, "endpoint": endpoint}
        self.config = make_config(tmp_path, **self.args, **overrides)

    def reconfigure(self, **overrides: Any) -> None:
        """Rewrite the config (e.g. without the slow-down a scenario needed) for the final run."""
        overrides.setdefault("defaults", {"batch_size": 3})
        self.config = make_config(self.tmp, **self.args, **overrides)

    def check(self) -> None:
        assert_invariant(self.original, table_ids(self.conn), archived_ids(self.s3, self.fallback))
        assert orphans(self.s3, self.fallback) == []
        expired = self.conn.execute("SELECT count(*) FROM audit_logs WHERE created_at < now() - interval '90 days'").fetchone()[0]
        assert expired == 0

    @property
    def log(self) -> str:
        return (self.tmp / "archiver.log").read_text()


@pytest.fixture()
def scenario(tmp_path: Path, pg_dsn: str, pg: psycopg.Connection[Any], s3_client: Any, bucket: str, s3_endpoint: str) -> Scenario:
    return Scenario(tmp_path, pg_dsn, pg, s3_client, bucket, s3_endpoint)


# -- kill -9 ---------------------------------------------------------------------------------

KILL_POINTS = [
    ("after_read", 5, None),  # the reader thread dies; an earlier batch may be mid-move
    ("after_checkpoint", 4, True),  # batch recorded as in flight, not uploaded
    ("between_object_and_manifest", 4, True),  # object stored, manifest not
    ("after_upload", 4, True),  # objects stored and verified, no manifest, rows not deleted
    ("after_manifest_set", 4, True),  # DELETE ran, the group's manifest set stored, not committed
    ("before_commit", 4, True),  # DELETE ran, manifest set stored, transaction not committed
    ("after_delete", 4, True),  # committed, checkpoint not yet updated
]


@pytest.mark.parametrize(("point", "nth", "resumes"), KILL_POINTS, ids=[p[0] for p in KILL_POINTS])
def test_kill_at_each_point_loses_and_duplicates_no_rows(scenario: Scenario, point: str, nth: int, resumes: bool | None) -> None:
    killed = archiver(scenario.config, env={"ARCHIVER_TEST_KILL_AT": f"{point}:{nth}"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    rerun = archiver(scenario.config)
    assert rerun.returncode == 0, rerun.stderr
    if resumes is not None:
        assert ("Resuming from checkpoint" in scenario.log) == resumes
    scenario.check()


@pytest.mark.s3_servers
def test_kill_after_upload_in_jsonl_format_resumes_exactly(tmp_path: Path, pg_dsn: str, pg: psycopg.Connection[Any],
                                                           s3_client: Any, bucket: str, s3_endpoint: str) -> None:
    # JSONL keeps keys as text; one batch holds ids 95..105, where "100" < "99" as text: the
    # resume must still find every one of them in the table
    pg.execute("CREATE TABLE audit_logs (id bigint PRIMARY KEY, created_at timestamptz NOT NULL)")
    pg.execute("INSERT INTO audit_logs SELECT g, '2026-01-05 12:00:00+00'::timestamptz + g * interval '1 second'"
               " FROM generate_series(95, 105) g")
    pg.execute("INSERT INTO audit_logs SELECT g, now() FROM generate_series(1, 5) g")
    original = table_ids(pg)
    config = make_config(tmp_path, dsn=pg_dsn, bucket=bucket, endpoint=s3_endpoint,
                         defaults={"batch_size": 50, "format": "jsonl"})
    killed = archiver(config, env={"ARCHIVER_TEST_KILL_AT": "after_upload:1"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert table_ids(pg) == original  # uploaded, nothing deleted yet
    assert archiver(config).returncode == 0
    # the resume took the stored batch back (it deletes no rows: it cannot tell an updated one)
    # and the run archived the 11 rows again
    assert "taken back: 11 of its 11 rows are still in the table" in (tmp_path / "archiver.log").read_text()
    assert table_ids(pg) == set(range(1, 6))
    assert_invariant(original, table_ids(pg), archived_ids(S3Storage(s3_client, bucket)))


def test_row_updated_before_the_rerun_keeps_its_update(tmp_path: Path, pg_dsn: str, pg: psycopg.Connection[Any]) -> None:
    # killed with a batch stored but its rows not deleted; the application then updates one of
    # them. The rerun must not delete that row on the strength of the old archived version.
    pg.execute("CREATE TABLE audit_logs (id bigint PRIMARY KEY, created_at timestamptz NOT NULL, action text)")
    pg.execute("INSERT INTO audit_logs SELECT g, '2024-01-01 00:00+00'::timestamptz + g * interval '1 hour', 'old'"
               " FROM generate_series(1, 10) g")
    config = make_config(tmp_path, dsn=pg_dsn)
    killed = archiver(config, env={"ARCHIVER_TEST_KILL_AT": "after_upload:1"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    pg.execute("UPDATE audit_logs SET action = 'changed' WHERE id = 3")
    assert archiver(config).returncode == 0
    store = LocalStorage(tmp_path / "archive")
    assert_invariant(set(range(1, 11)), table_ids(pg), archived_ids(store))
    actions = {}
    for key in archived(store):
        t = batch_writer.decode(store.get(key), fmt="parquet", columns=["id", "action"])[0]
        actions.update(zip(t.column("id").to_pylist(), t.column("action").to_pylist()))
    assert actions[3] == "changed" and actions[4] == "old"


#: Three seeds in the suite; `make soak` (scripts/soak.py) kills at random moments hundreds of times.
@pytest.mark.parametrize("seed", [1, 4, 5])
def test_kill_at_random_moments_loses_and_duplicates_no_rows(tmp_path: Path, pg_dsn: str, pg: psycopg.Connection[Any],
                                                             s3_client: Any, bucket: str, moto_server: str, seed: int) -> None:
    sc = Scenario(tmp_path, pg_dsn, pg, s3_client, bucket, moto_server, defaults={"batch_size": 2, "sleep_seconds": 0.03})
    rng = random.Random(seed)
    for _attempt in range(2):  # two crashes in a row, then a clean run
        # killed after a random number (1-15) of this run's objects are stored, out of ~60
        # batches: the moment within that batch's move is whatever the poll's latency makes it
        target = len(stored_objects(sc.s3)) + rng.randint(1, 15)
        proc = start_archiver(sc.config)
        wait_until(lambda: len(stored_objects(sc.s3)) >= target, f"{target} stored objects", proc=proc)
        assert proc.poll() is None, "the run ended before the kill: the scenario is too small"
        proc.kill()
        proc.communicate(timeout=30)
    sc.reconfigure()
    final = archiver(sc.config)
    assert final.returncode == 0, final.stderr
    sc.check()


@pytest.mark.parametrize("seed", [1, 4])
def test_rows_kept_killed_at_random_moments_every_expired_row_is_archived_once(
        tmp_path: Path, pg_dsn: str, pg: psycopg.Connection[Any], s3_client: Any, bucket: str, moto_server: str,
        seed: int) -> None:
    """delete_after_archive: false resumes from a position: a kill while later uploads had landed
    and an earlier one had not moved it past rows that no object held (archived never)."""
    kept = {"batch_size": 2, "delete_after_archive": False}
    sc = Scenario(tmp_path, pg_dsn, pg, s3_client, bucket, moto_server, defaults={**kept, "sleep_seconds": 0.03})
    expired = {r[0] for r in pg.execute("SELECT id FROM audit_logs WHERE created_at < now() - interval '90 days'")}
    rng = random.Random(seed)
    for _attempt in range(2):
        target = len(stored_objects(sc.s3)) + rng.randint(1, 15)
        proc = start_archiver(sc.config)
        wait_until(lambda: len(stored_objects(sc.s3)) >= target, f"{target} stored objects", proc=proc)
        proc.kill()
        proc.communicate(timeout=30)
    sc.reconfigure(defaults=kept)
    final = archiver(sc.config)
    assert final.returncode == 0, final.stderr
    assert table_ids(pg) == sc.original
    assert archived_ids(sc.s3, sc.fallback) == Counter(expired)


def test_corrupt_checkpoint_is_reported_and_the_move_still_finishes(scenario: Scenario) -> None:
    killed = archiver(scenario.config, env={"ARCHIVER_TEST_KILL_AT": "after_upload:3"})
    assert killed.returncode == -signal.SIGKILL
    (cp,) = list((scenario.tmp / "checkpoints").rglob("*.json"))
    cp.write_text(cp.read_text()[:20])  # truncated mid-write by a broken disk, say
    rerun = archiver(scenario.config)
    assert rerun.returncode == 0, rerun.stderr
    assert "is corrupt" in scenario.log and list(cp.parent.glob("*.corrupt-*"))
    scenario.check()


# -- signals ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 0)])
def test_signal_finishes_the_batch_and_exits_promptly(tmp_path: Path, pg_dsn: str, pg: psycopg.Connection[Any],
                                                      s3_client: Any, bucket: str, moto_server: str,
                                                      sig: signal.Signals, code: int) -> None:
    sc = Scenario(tmp_path, pg_dsn, pg, s3_client, bucket, moto_server, defaults={"batch_size": 2, "sleep_seconds": 0.2})
    proc = start_archiver(sc.config)
    wait_for_log(tmp_path / "archiver.log", "rows archived")
    assert proc.poll() is None
    sent = time.monotonic()
    proc.send_signal(sig)
    proc.communicate(timeout=30)
    assert proc.returncode == code
    # The run had minutes of batches left (sleep_seconds): it stopped at the signal, not at its end.
    # 15 s, not less: with parallel test workers the two cores are shared.
    assert time.monotonic() - sent < 15
    assert "stopping" in sc.log and "summary" in sc.log
    assert orphans(sc.s3, sc.fallback) == []
    sc.reconfigure()
    assert archiver(sc.config).returncode == 0
    sc.check()


# -- one archiver per table ------------------------------------------------------------------

def _hold_table_lock(conn: psycopg.Connection[Any]) -> None:
    from common.pg.db import LOCK_CLASS
    oid = conn.execute("SELECT 'audit_logs'::regclass::oid").fetchone()[0]
    conn.execute("SELECT pg_advisory_lock(%s)", ((LOCK_CLASS << 32) | oid,))


def test_second_archiver_skips_a_busy_table(scenario: Scenario, pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as other:
        _hold_table_lock(other)
        busy = archiver(scenario.config)
        assert busy.returncode == 0, busy.stderr
        assert "being archived by another archiver" in scenario.log
        assert table_ids(scenario.conn) == scenario.original
    assert archiver(scenario.config).returncode == 0
    scenario.check()


def commits_seen(conn: psycopg.Connection[Any], seen: set[Any]) -> set[Any]:
    """Adds the moments the archiver's session last committed (pg_stat_activity) to `seen`."""
    rows = conn.execute("SELECT query_start FROM pg_stat_activity WHERE datname = current_database()"
                        " AND application_name = 'pg-archiver' AND query = 'COMMIT'").fetchall()
    seen.update(r[0] for r in rows)
    return seen


def test_wait_for_lock_waits_then_archives(scenario: Scenario, pg_dsn: str) -> None:
    seen: set[Any] = set()
    other = psycopg.connect(pg_dsn, autocommit=True)
    _hold_table_lock(other)
    proc = start_archiver(scenario.config, "--wait-for-lock", "30")
    # it has tried the lock and tried again: its session keeps committing lock attempts (a
    # process state polled from pg_stat_activity, as the archiver logs nothing while it waits)
    wait_until(lambda: len(commits_seen(scenario.conn, seen)) >= 4, "repeated lock attempts", proc=proc)
    assert proc.poll() is None  # still waiting
    assert table_ids(scenario.conn) == scenario.original
    other.close()  # releases the lock
    proc.communicate(timeout=60)
    assert proc.returncode == 0
    scenario.check()


@pytest.mark.s3_servers
def test_two_archivers_at_once_never_archive_a_row_twice(scenario: Scenario) -> None:
    procs = [start_archiver(scenario.config, "--wait-for-lock", "60") for _ in range(2)]
    for p in procs:
        p.communicate(timeout=120)
        assert p.returncode == 0
    scenario.check()


# -- stop conditions -------------------------------------------------------------------------

def test_stop_file_ends_the_run_cleanly(scenario: Scenario) -> None:
    stop = scenario.tmp / "STOP"
    stop.touch()
    done = archiver(scenario.config, "--stop-file", str(stop))
    assert done.returncode == 0
    assert "stop file" in scenario.log
    assert table_ids(scenario.conn) == scenario.original  # a run that starts while it exists moves nothing
    stop.unlink()
    assert archiver(scenario.config).returncode == 0
    scenario.check()
