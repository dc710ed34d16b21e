"""Foreign keys that reference an archived table (production schemas, item 1), against a real
PostgreSQL and moto S3 over HTTP: CASCADE, SET NULL and SET DEFAULT refuse the table before anything
is exported; NO ACTION and RESTRICT keep the rows still referenced, count and report them, and a
later run moves them once nothing references them. Every scenario checks that each original row is
in its table or in exactly one archive object."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from archive_checks import archived_ids, assert_invariant, table_ids
from archiver.main import cli
from archiver.references import read_references
from archiver.runner import run_archive
from common.config import load_config
from common.exit_codes import ExitCode
from common.archive.storage import LocalStorage, S3Storage
from conftest import make_config, seed_audit
from schema_support import seed_partitioned

ROOT = Path(__file__).resolve().parent.parent
EXPIRED = "created_at < now() - interval '90 days'"


def archiver(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "archiver.main", "--config", str(config), *extra], cwd=ROOT,
                          env=dict(os.environ), capture_output=True, text=True, timeout=120)


def expired_ids(conn: psycopg.Connection[Any], table: str = "audit_logs") -> set[int]:
    return {r[0] for r in conn.execute(f"SELECT id FROM {table} WHERE {EXPIRED}").fetchall()}


def add_references(conn: psycopg.Connection[Any], *, action: str = "NO ACTION", count: int = 5,
                   partitioned: bool = False) -> set[int]:
    """audit_refs(log_id REFERENCES audit_logs ON DELETE <action>) pointing at `count` expired rows
    spread over the expired days, and at one young row. Returns the expired ids referenced."""
    default = " DEFAULT 1" if action == "SET DEFAULT" else ""
    part = " PARTITION BY LIST (kind)" if partitioned else ""
    conn.execute(f"CREATE TABLE audit_refs (kind int NOT NULL, log_id bigint{default}"
                 f" REFERENCES audit_logs (id) ON DELETE {action}){part}")
    if partitioned:  # PostgreSQL clones the constraint onto each partition
        conn.execute("CREATE TABLE audit_refs_0 PARTITION OF audit_refs FOR VALUES IN (0)")
        conn.execute("CREATE TABLE audit_refs_1 PARTITION OF audit_refs FOR VALUES IN (1)")
    ids = sorted(expired_ids(conn))[5::len(expired_ids(conn)) // count][:count]
    young = youngest_id(conn)
    conn.execute("INSERT INTO audit_refs SELECT i %% 2, x FROM unnest(%s::bigint[]) WITH ORDINALITY u(x, i)", (ids + [young],))
    return set(ids)


def youngest_id(conn: psycopg.Connection[Any]) -> int:
    return int(conn.execute("SELECT id FROM audit_logs ORDER BY created_at DESC LIMIT 1").fetchone()[0])


def refs_snapshot(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute("SELECT kind, log_id FROM audit_refs ORDER BY kind, log_id").fetchall()


def kept_gauge(textfile: Path) -> float:
    for family in text_string_to_metric_families(textfile.read_text()):
        for s in family.samples:
            if s.name == "archiver_rows_kept_referenced" and s.labels["table"] == "public.audit_logs":
                return float(s.value)
    raise AssertionError("no archiver_rows_kept_referenced for public.audit_logs")


class World:
    """audit_logs (~120 expired rows over ~40 days) archived to moto S3 in batches of 3."""

    def __init__(self, tmp_path: Path, dsn: str, conn: psycopg.Connection[Any], s3_client: Any, bucket: str,
                 endpoint: str) -> None:
        seed_audit(conn, rows=400, days=130)
        self.conn, self.tmp = conn, tmp_path
        self.original = table_ids(conn)
        self.s3 = S3Storage(s3_client, bucket)
        self.textfile = tmp_path / "archiver.prom"
        self.config = make_config(tmp_path, dsn=dsn, bucket=bucket, endpoint=endpoint, defaults={"batch_size": 3},
                                  monitoring={"enabled": True, "health_port": None, "metrics_port": None,
                                              "textfile_path": str(self.textfile)})

    def archived(self) -> Any:
        return archived_ids(self.s3)

    def check(self) -> None:
        assert_invariant(self.original, table_ids(self.conn), self.archived())

    @property
    def log(self) -> str:
        return (self.tmp / "archiver.log").read_text()


@pytest.fixture()
def world(tmp_path: Path, pg_dsn: str, pg: psycopg.Connection[Any], s3_client: Any, bucket: str, moto_server: str) -> World:
    return World(tmp_path, pg_dsn, pg, s3_client, bucket, moto_server)


# -- actions that would change unarchived rows: the table is refused ------------------------------

@pytest.mark.parametrize("action", ["CASCADE", "SET NULL", "SET DEFAULT"])
def test_changing_action_refuses_the_table_and_moves_nothing(world: World, action: str) -> None:
    add_references(world.conn, action=action)
    refs = refs_snapshot(world.conn)
    run = archiver(world.config)
    assert run.returncode == ExitCode.FAILURE, run.stderr
    assert "refused: foreign key audit_refs_log_id_fkey of public.audit_refs" in world.log
    assert f"(ON DELETE {action})" in world.log and "nothing was exported or deleted" in world.log
    assert "unexpected error" not in world.log
    assert list(world.s3.list("")) == []
    assert table_ids(world.conn) == world.original and refs_snapshot(world.conn) == refs
    assert list((world.tmp / "checkpoints").rglob("*.json")) == []


def test_refused_table_does_not_stop_the_other_tables(world: World, pg_dsn: str) -> None:
    add_references(world.conn, action="CASCADE")
    world.conn.execute("CREATE TABLE audit_events AS SELECT * FROM audit_logs")
    world.conn.execute("ALTER TABLE audit_events ADD PRIMARY KEY (id)")
    config = make_config(world.tmp, dsn=pg_dsn, tables=[{"name": "audit_logs"}, {"name": "audit_events"}])
    run = archiver(config)
    assert run.returncode == ExitCode.FAILURE
    assert "table public.audit_logs failed: public.audit_logs refused" in world.log
    assert "table public.audit_events completed" in world.log
    assert expired_ids(world.conn, "audit_events") == set() and table_ids(world.conn) == world.original


def test_cascade_does_not_matter_when_rows_are_kept_after_archiving(tmp_path: Path, pg_dsn: str,
                                                                  pg: psycopg.Connection[Any]) -> None:
    # delete_after_archive: false deletes nothing, so no ON DELETE action ever fires
    seed_audit(pg, rows=200, days=130)
    add_references(pg, action="CASCADE")
    expired = expired_ids(pg)
    results, code = run_archive(load_config(make_config(tmp_path, dsn=pg_dsn, defaults={"delete_after_archive": False})))
    assert code == ExitCode.OK and results[0].rows == len(expired) and results[0].kept_referenced == 0


# -- NO ACTION / RESTRICT: referenced rows stay, every other expired row moves ----------------------

@pytest.mark.parametrize("action", ["NO ACTION", "RESTRICT"])
def test_referenced_rows_stay_until_nothing_references_them(world: World, action: str) -> None:
    referenced = add_references(world.conn, action=action)
    expired = expired_ids(world.conn)
    first = archiver(world.config)
    assert first.returncode == ExitCode.OK, first.stderr
    assert expired_ids(world.conn) == referenced
    assert set(world.archived()) == expired - referenced
    world.check()
    kept = f"{len(referenced)} expired rows kept: still referenced by public.audit_refs"
    assert f"WARNING {kept}" in world.log and f"s, {kept}" in world.log  # the warning, the summary line
    assert kept_gauge(world.textfile) == len(referenced)
    world.conn.execute("DELETE FROM audit_refs")
    second = archiver(world.config)
    assert second.returncode == ExitCode.OK, second.stderr
    assert expired_ids(world.conn) == set() and set(world.archived()) == expired
    world.check()
    assert kept_gauge(world.textfile) == 0


def test_reference_from_a_partitioned_table_keeps_its_rows(world: World) -> None:
    referenced = add_references(world.conn, partitioned=True)
    run = archiver(world.config)
    assert run.returncode == ExitCode.OK, run.stderr
    assert expired_ids(world.conn) == referenced
    # one constraint, the parent's: not its clones on the partitions
    assert f"{len(referenced)} expired rows kept: still referenced by public.audit_refs" in world.log
    assert "audit_refs_0" not in world.log and "audit_refs_1" not in world.log
    world.check()


def test_self_reference_moves_children_first_and_parents_once_free(world: World) -> None:
    c = world.conn
    c.execute("ALTER TABLE audit_logs ADD COLUMN parent_id bigint REFERENCES audit_logs (id)")
    old = sorted(expired_ids(c))
    parent, child, held = old[10], old[20], old[30]
    young = youngest_id(c)
    c.execute("UPDATE audit_logs SET parent_id = %s WHERE id = %s", (parent, child))
    c.execute("UPDATE audit_logs SET parent_id = %s WHERE id = %s", (held, young))  # young: stays for now
    first = archiver(world.config)
    assert first.returncode == ExitCode.OK, first.stderr
    assert expired_ids(c) == {parent, held} and child in world.archived()
    # counted when the run ends: the parent's child is gone by then, only `held` is still referenced
    assert "1 expired rows kept: still referenced by public.audit_logs" in world.log
    second = archiver(world.config)
    assert second.returncode == ExitCode.OK, second.stderr
    assert expired_ids(c) == {held}
    world.check()


def test_a_row_that_references_itself_is_archived_not_kept_forever(world: World) -> None:
    """A thread's root pointing at itself (parent_id = id): PostgreSQL deletes such a row even
    under RESTRICT, so nothing but the row itself holds it."""
    c = world.conn
    c.execute("ALTER TABLE audit_logs ADD COLUMN parent_id bigint REFERENCES audit_logs (id) ON DELETE RESTRICT")
    old = sorted(expired_ids(c))
    root, child = old[10], old[40]
    c.execute("UPDATE audit_logs SET parent_id = id WHERE id = ANY(%s)", ([root, old[20]],))
    c.execute("UPDATE audit_logs SET parent_id = %s WHERE id = %s", (root, child))
    first = archiver(world.config)
    assert first.returncode == ExitCode.OK, first.stderr
    assert expired_ids(c) == {root} and old[20] in world.archived()
    second = archiver(world.config)
    assert second.returncode == ExitCode.OK, second.stderr
    assert expired_ids(c) == set()
    world.check()


def test_reference_to_a_unique_column_that_is_not_the_key_keeps_its_rows(tmp_path: Path, pg_dsn: str,
                                                                         pg: psycopg.Connection[Any]) -> None:
    seed_audit(pg, rows=200, days=130)
    pg.execute("ALTER TABLE audit_logs ADD UNIQUE (email, user_id)")
    pg.execute("CREATE TABLE audit_mail (email text, user_id bigint, FOREIGN KEY (email, user_id) REFERENCES audit_logs (email, user_id))")
    original, expired = table_ids(pg), expired_ids(pg)
    held = set(sorted(expired)[:3])
    pg.execute("INSERT INTO audit_mail SELECT email, user_id FROM audit_logs WHERE id = ANY(%s)", (list(held),))
    pg.execute("INSERT INTO audit_mail SELECT email, NULL FROM audit_logs WHERE id = %s", (max(expired),))  # references nothing
    results, code = run_archive(load_config(make_config(tmp_path, dsn=pg_dsn)))
    assert code == ExitCode.OK and results[0].kept_referenced == len(held)
    assert expired_ids(pg) == held
    assert_invariant(original, table_ids(pg), archived_ids(LocalStorage(tmp_path / "archive")))


@pytest.mark.parametrize("archived", ["audit_parts", "audit_parts_2024"])
def test_references_to_a_partitioned_table_are_found_from_the_table_and_its_partitions(pg: psycopg.Connection[Any],
                                                                                      archived: str) -> None:
    # partitioned tables are not archived yet (their key includes the partition column), but the
    # catalog read must already see a partition's references: they are made on its parent
    pg.execute("CREATE TABLE audit_parts (id bigint, created_at timestamptz, PRIMARY KEY (id, created_at))"
               " PARTITION BY RANGE (created_at)")
    pg.execute("CREATE TABLE audit_parts_2024 PARTITION OF audit_parts FOR VALUES FROM ('2024-01-01') TO ('2025-01-01')")
    pg.execute("CREATE TABLE audit_parts_2025 PARTITION OF audit_parts FOR VALUES FROM ('2025-01-01') TO ('2026-01-01')")
    pg.execute("CREATE TABLE part_refs (part_id bigint, part_ts timestamptz, FOREIGN KEY (part_ts, part_id)"
               " REFERENCES audit_parts (created_at, id) ON DELETE RESTRICT) PARTITION BY HASH (part_id)")
    pg.execute("CREATE TABLE part_refs_0 PARTITION OF part_refs FOR VALUES WITH (MODULUS 2, REMAINDER 0)")
    pg.execute("CREATE TABLE part_refs_1 PARTITION OF part_refs FOR VALUES WITH (MODULUS 2, REMAINDER 1)")
    oid = pg.execute("SELECT %s::regclass::oid", (archived,)).fetchone()[0]
    (ref,) = read_references(pg, oid)
    assert (ref.constraint, ref.name, ref.action_name) == ("part_refs_part_ts_part_id_fkey", "public.part_refs", "RESTRICT")
    assert (ref.columns, ref.referenced) == (("part_ts", "part_id"), ("created_at", "id"))


def test_a_reference_to_one_leaf_is_found_from_the_partitioned_table(pg: psycopg.Connection[Any]) -> None:
    pg.execute("CREATE TABLE audit_parts (id bigint, created_at timestamptz, PRIMARY KEY (id, created_at))"
               " PARTITION BY RANGE (created_at)")
    pg.execute("CREATE TABLE audit_parts_2024 PARTITION OF audit_parts FOR VALUES FROM ('2024-01-01') TO ('2025-01-01')")
    pg.execute("CREATE TABLE leaf_refs (part_id bigint, part_ts timestamptz, FOREIGN KEY (part_id, part_ts)"
               " REFERENCES audit_parts_2024 (id, created_at) ON DELETE CASCADE)")
    (ref,) = read_references(pg, pg.execute("SELECT 'audit_parts'::regclass::oid").fetchone()[0])
    assert (ref.name, ref.action_name, ref.referenced) == ("public.leaf_refs", "CASCADE", ("id", "created_at"))


@pytest.mark.parametrize("mode", ["keep", "drop"])
def test_a_cascade_to_one_leaf_refuses_the_partitioned_table(tmp_path: Path, pg_dsn: str, pg: psycopg.Connection[Any],
                                                            mode: str) -> None:
    # Only the parent and its ancestors were read: the cascade deleted every referencing row (keep),
    # or the DROP failed on the dependency and left the leaf detached (drop).
    seed_partitioned(pg)
    pg.execute("CREATE TABLE notes (ev_id bigint, ev_ts timestamptz, FOREIGN KEY (ev_id, ev_ts)"
               " REFERENCES audit_logs_m00 (id, created_at) ON DELETE CASCADE)")
    pg.execute("INSERT INTO notes SELECT id, created_at FROM audit_logs_m00 ORDER BY id LIMIT 5")
    original = table_ids(pg)
    cfg = make_config(tmp_path, dsn=pg_dsn, tables=[{"name": "audit_logs", "timestamp_column": "created_at"}],
                      defaults={"expired_partitions": mode})
    results, code = run_archive(load_config(cfg))
    assert code == ExitCode.FAILURE and "notes_ev_id_ev_ts_fkey of public.notes (ON DELETE CASCADE)" in str(results[0].error)
    assert table_ids(pg) == original and pg.execute("SELECT count(*) FROM notes").fetchone() == (5,)
    assert list(LocalStorage(tmp_path / "archive").list("")) == []


# -- the dry run --------------------------------------------------------------------------------

def test_dry_run_reports_each_reference_and_what_the_run_would_do(world: World, pg_dsn: str) -> None:
    referenced = add_references(world.conn)
    world.conn.execute("CREATE TABLE audit_events (id bigint PRIMARY KEY, created_at timestamptz NOT NULL)")
    world.conn.execute("CREATE TABLE event_details (event_id bigint REFERENCES audit_events ON DELETE CASCADE)")
    expired = expired_ids(world.conn)
    config = make_config(world.tmp, dsn=pg_dsn, tables=[{"name": "audit_logs"}, {"name": "audit_events"}])
    result = CliRunner().invoke(cli, ["--config", str(config), "--dry-run"])
    assert result.exit_code == ExitCode.FAILURE, result.output
    out = result.output
    assert f"eligible rows {len(expired) - len(referenced)}," in out and ", key id, format parquet" in out
    assert (f"    foreign key audit_refs_log_id_fkey of public.audit_refs (ON DELETE NO ACTION):"
            f" {len(referenced)} expired rows kept while referenced") in out
    assert f"    {len(referenced)} expired rows kept: still referenced by public.audit_refs" in out
    assert "public.audit_events: key id, refused: foreign key event_details_event_id_fkey of public.event_details" in out
    assert "    foreign key event_details_event_id_fkey of public.event_details (ON DELETE CASCADE): refused" in out
    assert table_ids(world.conn) == world.original and list(world.s3.list("")) == []


# -- a reference inserted between export and delete ---------------------------------------------

def oldest_unreferenced(conn: psycopg.Connection[Any]) -> int:
    """The first row the export hands out: in the first batch stored."""
    return int(conn.execute("SELECT id FROM audit_logs a WHERE NOT EXISTS (SELECT 1 FROM audit_refs r WHERE r.log_id = a.id)"
                            " ORDER BY created_at, id LIMIT 1").fetchone()[0])


class ReferenceAfterUpload:
    """A run hook (archiver.hooks.Hook) that references an exported row once its batch is stored,
    before its delete starts: the delete's own NOT EXISTS sees the new reference and finds the
    batch changed."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.referenced: int | None = None

    def __call__(self, point: str) -> None:
        if point == "after_upload" and self.referenced is None:
            with psycopg.connect(self.dsn, autocommit=True) as c:
                self.referenced = oldest_unreferenced(c)
                c.execute("INSERT INTO audit_refs VALUES (0, %s)", (self.referenced,))


class ReferenceDuringDelete(ReferenceAfterUpload):
    """References an exported row in a transaction that commits only once the archiver's DELETE
    waits for it (the insert holds a key-share lock on the row): the DELETE's snapshot predates
    the reference, so only the constraint's trigger sees it and the DELETE fails."""

    def __call__(self, point: str) -> None:
        if point == "after_upload" and self.referenced is None:
            inserter = psycopg.connect(self.dsn)
            self.referenced = oldest_unreferenced(inserter)
            inserter.execute("INSERT INTO audit_refs VALUES (0, %s)", (self.referenced,))
            self.committer = threading.Thread(target=self._commit_once_the_delete_waits, args=(inserter,))
            self.committer.start()

    def _commit_once_the_delete_waits(self, inserter: psycopg.Connection[Any]) -> None:
        deadline = time.monotonic() + 30
        with psycopg.connect(self.dsn, autocommit=True) as watch:
            # Polled: the server offers no event for "a statement started waiting on a lock".
            while time.monotonic() < deadline and not watch.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND wait_event_type = 'Lock' AND query LIKE 'DELETE FROM%'").fetchone()[0]:
                time.sleep(0.02)
        inserter.commit()
        inserter.close()


def assert_withdrawn_then_archived(world: World, hook: ReferenceAfterUpload, referenced: set[int]) -> None:
    """The batch holding the new reference was withdrawn, nothing lost, validate clean; once the
    references are gone the next run archives the row."""
    cfg = load_config(world.config)
    results, code = run_archive(cfg, hook=hook)
    assert code == ExitCode.OK and results[0].status == "completed", results[0].error
    assert results[0].rolled_back_batches == 1
    assert hook.referenced is not None and hook.referenced in table_ids(world.conn)
    assert results[0].kept_referenced == len(referenced) + 1
    world.check()
    check = subprocess.run([sys.executable, "-m", "validate.main", "--config", str(world.config)], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == ExitCode.OK, check.stdout + check.stderr
    world.conn.execute("DELETE FROM audit_refs")
    results, code = run_archive(cfg)
    assert code == ExitCode.OK and hook.referenced in world.archived()
    assert expired_ids(world.conn) == set()
    world.check()


@pytest.mark.parametrize("action", ["NO ACTION", "RESTRICT", "NO ACTION DEFERRABLE INITIALLY DEFERRED"])
def test_reference_added_before_the_delete_withdraws_its_batch_and_loses_nothing(world: World, pg_dsn: str,
                                                                                 action: str) -> None:
    referenced = add_references(world.conn, action=action)
    assert_withdrawn_then_archived(world, ReferenceAfterUpload(pg_dsn), referenced)


@pytest.mark.parametrize("action", ["NO ACTION", "RESTRICT"])
def test_reference_committed_during_the_delete_is_no_error_and_loses_nothing(world: World, pg_dsn: str, action: str,
                                                                             caplog: pytest.LogCaptureFixture) -> None:
    referenced = add_references(world.conn, action=action)
    hook = ReferenceDuringDelete(pg_dsn)
    assert_withdrawn_then_archived(world, hook, referenced)
    hook.committer.join()
    assert 'delete refused: update or delete on table "audit_logs" violates foreign key constraint "audit_refs_log_id_fkey"' \
           f' on table "audit_refs" (Key (id)=({hook.referenced}) is still referenced' in caplog.text
