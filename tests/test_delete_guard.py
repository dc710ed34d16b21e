"""Tables whose rows the archiver's deletes cannot remove (archiver/delete_guard.py), against a real
PostgreSQL and moto S3 over HTTP: append-only audit tables as production has them. Each ends with
exit 1, a message that names the cause, every row still in the table and no object in the archive
(an object whose rows stay behind is what a move must never leave)."""
from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from archive_checks import archived_ids, assert_invariant, table_ids
from common.exit_codes import ExitCode
from common.archive.storage import S3Storage
from conftest import make_config, seed_audit
from schema_support import archiver, seed_partitioned

EXPIRED = "created_at < now() - interval '90 days'"


RAISE = """CREATE FUNCTION no_delete() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN RAISE EXCEPTION 'audit_logs is append-only'; END $$"""
SKIP = "CREATE FUNCTION no_delete() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$"
#: A legal hold: the rows of one user may not be deleted, the others may.
HOLD = """CREATE FUNCTION no_delete() RETURNS trigger LANGUAGE plpgsql AS
          $$ BEGIN IF OLD.user_id = 7 THEN RETURN NULL; END IF; RETURN OLD; END $$"""
ON_DELETE = "CREATE TRIGGER audit_logs_guard BEFORE DELETE ON audit_logs FOR EACH {} EXECUTE FUNCTION no_delete()"

GUARDS = {
    "row trigger that raises": ([RAISE, ON_DELETE.format("ROW")], "refused to delete the archived rows of"),
    "statement trigger that raises": ([RAISE, ON_DELETE.format("STATEMENT")], "audit_logs is append-only"),
    "row trigger that returns NULL": ([SKIP, ON_DELETE.format("ROW")], "a BEFORE DELETE trigger that returns NULL"),
    "legal hold on some rows": ([HOLD, ON_DELETE.format("ROW"), "UPDATE audit_logs SET user_id = 7 WHERE id % 40 = 0"],
                                "though none of them changed since the export"),
    "DO INSTEAD NOTHING rule": (["CREATE RULE audit_logs_keep AS ON DELETE TO audit_logs DO INSTEAD NOTHING"],
                                "rule audit_logs_keep rewrites DELETE on it"),
}


@pytest.fixture()
def role(pg: psycopg.Connection[Any]) -> Iterator[str]:
    """A login role of its own (roles are the cluster's: unique per test, dropped after it)."""
    name = f"archiver_{uuid.uuid4().hex[:10]}"
    pg.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
    yield name
    pg.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
    pg.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def as_role(dsn: str, role: str) -> str:
    return make_conninfo("", **{**conninfo_to_dict(dsn), "user": role})


def assert_nothing_moved(pg: psycopg.Connection[Any], original: set[Any], s3_client: Any, bucket: str) -> None:
    assert table_ids(pg) == original
    assert sum(archived_ids(S3Storage(s3_client, bucket)).values()) == 0


@pytest.mark.parametrize("guard", list(GUARDS))
def test_a_table_that_keeps_its_rows_fails_with_its_cause_and_leaves_no_object(
        tmp_path: Path, pg_dsn: str, pg: psycopg.Connection[Any], s3_client: Any, bucket: str, moto_server: str,
        guard: str) -> None:
    seed_audit(pg, rows=300, days=130)
    statements, message = GUARDS[guard]
    for statement in statements:
        pg.execute(statement)
    original = table_ids(pg)
    config = make_config(tmp_path, dsn=pg_dsn, bucket=bucket, endpoint=moto_server, defaults={"batch_size": 20})
    for _run in range(2):  # and so on every run: never exit 0 with nothing moved
        done = archiver(config)
        assert done.returncode == ExitCode.FAILURE, done.stderr
        assert message in done.stderr and "unexpected error" not in done.stderr
        # every row in the table or in exactly one object, never both
        assert_invariant(original, table_ids(pg), archived_ids(S3Storage(s3_client, bucket)))
        if guard != "legal hold on some rows":  # there the batches before the first held row move
            assert_nothing_moved(pg, original, s3_client, bucket)


def test_an_after_delete_trigger_is_no_obstacle(tmp_path: Path, pg_dsn: str, pg: psycopg.Connection[Any]) -> None:
    """A history table filled on delete: the rows move, and the trigger sees each of them once."""
    seed_audit(pg, rows=300, days=130)
    pg.execute("CREATE TABLE audit_history (LIKE audit_logs)")
    pg.execute("""CREATE FUNCTION keep_old() RETURNS trigger LANGUAGE plpgsql AS
                  $$ BEGIN INSERT INTO audit_history SELECT OLD.*; RETURN OLD; END $$""")
    pg.execute("CREATE TRIGGER audit_logs_history AFTER DELETE ON audit_logs FOR EACH ROW EXECUTE FUNCTION keep_old()")
    expired = {r[0] for r in pg.execute(f"SELECT id FROM audit_logs WHERE {EXPIRED}")}
    done = archiver(make_config(tmp_path, dsn=pg_dsn, defaults={"batch_size": 20}))
    assert done.returncode == ExitCode.OK, done.stderr
    assert table_ids(pg, "audit_history") == expired


def test_a_role_without_delete_is_refused_before_anything_is_exported(
        tmp_path: Path, pg_dsn: str, pg: psycopg.Connection[Any], s3_client: Any, bucket: str, moto_server: str,
        role: str) -> None:
    seed_audit(pg, rows=300, days=130)
    pg.execute(sql.SQL("GRANT SELECT ON audit_logs TO {}").format(sql.Identifier(role)))
    original = table_ids(pg)
    config = make_config(tmp_path, dsn=as_role(pg_dsn, role), bucket=bucket, endpoint=moto_server)
    done = archiver(config)
    assert done.returncode == ExitCode.FAILURE, done.stderr
    assert f"role {role} has no DELETE right on it (GRANT DELETE ON public.audit_logs TO {role})" in done.stderr
    assert_nothing_moved(pg, original, s3_client, bucket)
    dry = archiver(config, "--dry-run")
    assert dry.returncode == ExitCode.FAILURE and "has no DELETE right" in dry.stdout, dry.stdout + dry.stderr


def test_a_read_only_session_is_refused_before_anything_is_exported(
        tmp_path: Path, pg_dsn: str, pg: psycopg.Connection[Any], s3_client: Any, bucket: str, moto_server: str) -> None:
    """A dsn pointing at a read-only endpoint (here: default_transaction_read_only, as a standby's)."""
    seed_audit(pg, rows=300, days=130)
    original = table_ids(pg)
    read_only = make_conninfo(pg_dsn, options="-c default_transaction_read_only=on")
    done = archiver(make_config(tmp_path, dsn=read_only, bucket=bucket, endpoint=moto_server))
    assert done.returncode == ExitCode.FAILURE, done.stderr
    assert "the database session is read-only (default_transaction_read_only)" in done.stderr
    assert_nothing_moved(pg, original, s3_client, bucket)


@pytest.mark.parametrize("mode", ["detach", "drop"])
def test_retiring_partitions_needs_the_owner_and_says_so(
        tmp_path: Path, pg_dsn: str, pg: psycopg.Connection[Any], s3_client: Any, bucket: str, moto_server: str,
        role: str, mode: str) -> None:
    seed_partitioned(pg)
    pg.execute(sql.SQL("GRANT SELECT, DELETE ON audit_logs TO {}").format(sql.Identifier(role)))
    original = table_ids(pg)
    table = {"name": "audit_logs", "timestamp_column": "created_at", "expired_partitions": mode}
    config = make_config(tmp_path, dsn=as_role(pg_dsn, role), bucket=bucket, endpoint=moto_server, tables=[table])
    done = archiver(config)
    assert done.returncode == ExitCode.FAILURE, done.stderr
    assert "which PostgreSQL allows the table's owner" in done.stderr and "expired_partitions: keep" in done.stderr
    assert_nothing_moved(pg, original, s3_client, bucket)
    # row by row, the same role moves them (through the parent, its rights are all that count)
    keep = make_config(tmp_path, dsn=as_role(pg_dsn, role), bucket=bucket, endpoint=moto_server,
                       tables=[{**table, "expired_partitions": "keep"}])
    assert archiver(keep).returncode == ExitCode.OK
    assert pg.execute(f"SELECT count(*) FROM audit_logs WHERE {EXPIRED}").fetchone() == (0,)


@pytest.mark.parametrize("on", ["audit_logs", "audit_logs_m01"], ids=["on the table", "on one leaf"])
def test_a_partition_with_a_delete_trigger_goes_row_by_row_so_the_trigger_fires(
        tmp_path: Path, pg_dsn: str, pg: psycopg.Connection[Any], bucket: str, moto_server: str, on: str) -> None:
    """A leaf dropped whole fires no DELETE trigger: a history table filled AFTER DELETE got 11 of
    379 archived rows with expired_partitions: drop."""
    leaves = seed_partitioned(pg, default=False)
    pg.execute("CREATE TABLE audit_history (LIKE audit_logs)")
    pg.execute("""CREATE FUNCTION keep_old() RETURNS trigger LANGUAGE plpgsql AS
                  $$ BEGIN INSERT INTO audit_history SELECT OLD.*; RETURN OLD; END $$""")
    pg.execute(sql.SQL("CREATE TRIGGER audit_history AFTER DELETE ON {} FOR EACH ROW EXECUTE FUNCTION keep_old()")
               .format(sql.Identifier(on)))
    watched = "audit_logs" if on == "audit_logs" else on
    expired = {r[0] for r in pg.execute(sql.SQL("SELECT id FROM {} WHERE " + EXPIRED).format(sql.Identifier(watched)))}
    table = {"name": "audit_logs", "timestamp_column": "created_at", "expired_partitions": "drop"}
    config = make_config(tmp_path, dsn=pg_dsn, bucket=bucket, endpoint=moto_server, tables=[table])
    dry = archiver(config, "--dry-run")
    assert f"partition public.{leaves[1]} (" in dry.stdout and "its DELETE trigger audit_history would not fire" in dry.stdout
    done = archiver(config)
    assert done.returncode == ExitCode.OK, done.stderr
    assert {r[0] for r in pg.execute("SELECT id FROM audit_history")} == expired
    left = {r[0] for r in pg.execute("SELECT relname FROM pg_class WHERE relname LIKE 'audit_logs_m%' AND relkind = 'r'")}
    assert leaves[1] in left  # the watched leaf is still there, emptied row by row
    if on != "audit_logs":
        assert leaves[0] not in left  # the others still retire whole
