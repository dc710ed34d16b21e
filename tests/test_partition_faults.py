"""kill -9 at random points of a partition retirement (issue 15 item 4): between upload, verify,
detach and drop. The rerun must finish: every row in the table, a detached leaf, or exactly one
archive object; no leaf dropped with a row that was not archived; nothing left half-retired."""
from __future__ import annotations

import json
import random
import signal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from archive_checks import archived_ids, assert_invariant, table_ids
from archiver.runner import run_archive
from common.config import load_config
from common.exit_codes import ExitCode
from common.archive.storage import LocalStorage, S3Storage
from conftest import make_config
from schema_support import archiver, partitions_of, seed_partitioned

TABLES = [{"name": "audit_logs", "timestamp_column": "created_at"}]
#: (point, highest n that is surely reached): ~3 leaves retired whole, ~3 batches of 50 rows each
POINTS = [("after_checkpoint", 6), ("between_object_and_manifest", 6), ("after_upload", 6),
          ("after_partition_archived", 2), ("after_detach", 2), ("before_drop", 2)]


def leftover_tables(conn: psycopg.Connection[Any], leaves: list[str]) -> set[str]:
    """Leaves that exist but are no longer partitions of the table (detached)."""
    attached = partitions_of(conn)
    return {name for name in leaves if name not in attached
            and conn.execute("SELECT to_regclass(%s)", (name,)).fetchone() != (None,)}


@pytest.mark.parametrize(("seed", "mode"), [(s, "drop") for s in range(1, 7)] + [(7, "detach"), (8, "detach")])
def test_kill_at_a_random_point_of_partition_retirement_loses_no_rows(tmp_path: Path, pg_dsn: str,
                                                                      pg: psycopg.Connection[Any], s3_client: Any,
                                                                      bucket: str, moto_server: str, seed: int,
                                                                      mode: str) -> None:
    rng = random.Random(seed)
    point, most = POINTS[(seed - 1) % len(POINTS)] if seed <= len(POINTS) else rng.choice(POINTS)
    if mode == "detach" and point == "before_drop":
        point, most = "after_detach", 2
    nth = rng.randint(1, most)
    leaves = seed_partitioned(pg, per_day=3)
    original = table_ids(pg)
    config = make_config(tmp_path, dsn=pg_dsn, bucket=bucket, endpoint=moto_server, tables=TABLES,
                         defaults={"batch_size": 50, "expired_partitions": mode})
    killed = archiver(config, env={"ARCHIVER_TEST_KILL_AT": f"{point}:{nth}"})
    assert killed.returncode == -signal.SIGKILL, (point, nth, killed.stderr)
    rerun = archiver(config)
    assert rerun.returncode == 0, rerun.stderr
    detached = leftover_tables(pg, leaves)
    if mode == "drop":
        assert detached == set(), "a detached leaf was left behind (forgotten)"
    else:
        assert detached, "detach keeps the retired leaves as tables"
    in_detached = set().union(*(table_ids(pg, name) for name in detached)) if detached else set()
    archived = archived_ids(S3Storage(s3_client, bucket), LocalStorage(tmp_path / "fallback"))
    # a detached leaf's rows were archived before its detach: once in the archive, out of the table
    assert in_detached <= set(archived)
    assert_invariant(original, table_ids(pg), archived)
    cp = json.loads(next((tmp_path / "checkpoints").rglob("*.json")).read_text())
    assert cp["pending"] == [] and cp["retiring"] is None
    expired = pg.execute("SELECT count(*) FROM audit_logs WHERE created_at < now() - interval '90 days'").fetchone()
    assert expired == (0,)
    log = (tmp_path / "archiver.log").read_text()
    assert "retired:" in log, log[-2000:]


@pytest.mark.parametrize("default", [False, True], ids=["concurrently", "plain-detach"])
def test_a_detach_that_waits_out_its_timeout_names_the_old_transaction_and_the_next_run_finishes(
        tmp_path: Path, pg_dsn: str, pg: psycopg.Connection[Any], default: bool) -> None:
    """An old transaction on the table (a long report) makes DETACH ... CONCURRENTLY wait for it to
    end, and a plain DETACH (next to a default partition) wait for the table's lock, until
    statement_timeout or lock_timeout ends the wait: the table fails with that said, not as an
    unreachable database, and nothing is lost; once it ends, a run finishes the leaf."""
    leaves = seed_partitioned(pg, default=default)
    original = table_ids(pg)
    report = psycopg.connect(pg_dsn)
    report.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
    report.execute("SELECT count(*) FROM audit_logs").fetchone()
    pid = report.info.backend_pid
    config = make_config(tmp_path, dsn=pg_dsn, tables=TABLES, defaults={
        "batch_size": 50, "expired_partitions": "drop", "statement_timeout": "1s", "lock_timeout": "1s"})
    cfg = load_config(config)
    try:
        results, code = run_archive(cfg)
        assert code == ExitCode.FAILURE and results[0].error_kind == "database"
        error = results[0].error or ""
        assert "unreachable" not in error
        assert f"DETACH PARTITION public.{leaves[0]}{'' if default else ' CONCURRENTLY'} gave up waiting" in error
        assert f"the oldest open transaction is pid {pid}" in error and "nothing is lost" in error
        # every row in the table or archived, none twice (a plain detach's leaf keeps its rows, and
        # its stored batches wait in the checkpoint for the next run to take back)
        archived = archived_ids(LocalStorage(tmp_path / "archive"))
        assert max(archived.values()) == 1 and original <= table_ids(pg) | set(archived)
    finally:
        report.rollback()
        report.close()
    results, code = run_archive(cfg)
    assert code == ExitCode.OK and results[0].status == "completed", results
    assert not {leaves[0]} & partitions_of(pg) and leftover_tables(pg, leaves) == set()
    assert_invariant(original, table_ids(pg), archived_ids(LocalStorage(tmp_path / "archive")))
