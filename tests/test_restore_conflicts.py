"""--conflict-strategy (issue 4): skip keeps existing rows, overwrite replaces them with the archived
version, fail (the default) restores nothing at all when any archived row already exists."""
from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from common.pg.db import LOCK_CLASS
from common.config import load_config
from common.errors import ArchiverError
from conftest import make_config
from restore.engine import restore
from restore.loader import RestoreConflict
from restore_support import Archived, shared_archive

#: An archived row that comes back into the table before the restore, with a different email.
LIVE_ID = 14


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, moto_server: str) -> Iterator[Archived]:
    yield from shared_archive(tmp_path_factory, moto_server)


@pytest.fixture()
def clash(shared: Archived) -> Iterator[Archived]:
    shared.conn.execute("""INSERT INTO audit_logs (id, created_at, user_id, email, action, payload, ok, amount)
                  VALUES (%s, '2024-01-04 06:00:00+00', 0, 'live@example.com', 'edit', '{}', true, 0)""", (LIVE_ID,))
    yield shared
    shared.reset()


def email_of(arch: Archived, pk: int) -> str:
    row = arch.conn.execute("SELECT email FROM audit_logs WHERE id = %s", (pk,)).fetchone()
    assert row is not None
    return str(row[0])


def test_skip_keeps_the_existing_row_and_restores_the_rest(clash: Archived, s3_client: Any) -> None:
    report = restore(clash.cfg, database="production_db", table="audit_logs", restore_all=True,
                     conflict_strategy="skip", s3_client=s3_client)

    assert (report.total("inserted"), report.total("skipped"), report.total("overwritten")) == (15, 1, 0)
    assert email_of(clash, LIVE_ID) == "live@example.com"
    assert clash.ids() == list(range(1, 17))
    skipped_in = [o.key for o in report.objects if o.skipped]
    assert len(skipped_in) == 1 and clash.manifest(skipped_in[0]).min_pk <= LIVE_ID <= clash.manifest(skipped_in[0]).max_pk


def test_overwrite_replaces_the_existing_row_with_the_archived_version(clash: Archived, s3_client: Any) -> None:
    report = restore(clash.cfg, database="production_db", table="audit_logs", restore_all=True,
                     conflict_strategy="overwrite", s3_client=s3_client)

    assert (report.total("inserted"), report.total("skipped"), report.total("overwritten")) == (15, 0, 1)
    assert email_of(clash, LIVE_ID) == f"user{LIVE_ID}@example.com"
    assert clash.dump() == clash.before


def test_fail_restores_nothing_when_any_row_exists(clash: Archived, s3_client: Any) -> None:
    # The clashing row is in the last day's objects: earlier objects were loaded when it is found,
    # and must be rolled back with it.
    with pytest.raises(RestoreConflict) as err:
        restore(clash.cfg, database="production_db", table="audit_logs", restore_all=True, s3_client=s3_client)

    assert f"(id)=({LIVE_ID}) already exists" in str(err.value) and "day=04" in str(err.value)
    assert "nothing was restored" in str(err.value)
    assert clash.ids() == [LIVE_ID]
    assert err.value.exit_code == 1


def test_fail_is_the_default_and_works_when_nothing_clashes(clash: Archived, s3_client: Any) -> None:
    clash.conn.execute("DELETE FROM audit_logs")
    report = restore(clash.cfg, database="production_db", table="audit_logs", restore_all=True, s3_client=s3_client)
    assert report.strategy == "fail" and report.total("inserted") == 16
    assert clash.dump() == clash.before


def test_restoring_twice_with_skip_changes_nothing_the_second_time(clash: Archived, s3_client: Any) -> None:
    kwargs: dict[str, Any] = dict(database="production_db", table="audit_logs", restore_all=True,
                                  conflict_strategy="skip", s3_client=s3_client)
    restore(clash.cfg, **kwargs)
    first = clash.dump()
    again = restore(clash.cfg, **kwargs)
    assert again.total("inserted") == 0 and again.total("skipped") == 16
    assert clash.dump() == first


def test_overwriting_every_row_counts_each_object_once(clash: Archived, s3_client: Any) -> None:
    """Every object takes the staging path, several in one transaction (restore/commits.py CommitBatch): the
    staging table holds only the object being moved, so no object counts another's rows."""
    kwargs: dict[str, Any] = dict(database="production_db", table="audit_logs", restore_all=True,
                                  conflict_strategy="overwrite", s3_client=s3_client)
    restore(clash.cfg, **kwargs)
    again = restore(clash.cfg, **kwargs)
    assert len(again.objects) > 1
    assert [(o.inserted, o.overwritten, o.skipped) for o in again.objects] == [(0, o.rows, 0) for o in again.objects]
    assert clash.dump() == clash.before


def test_unknown_strategy_is_a_usage_error(clash: Archived, s3_client: Any) -> None:
    with pytest.raises(ArchiverError) as err:
        restore(clash.cfg, database="production_db", table="audit_logs", restore_all=True,
                conflict_strategy="merge", s3_client=s3_client)
    assert err.value.exit_code == 2


@pytest.mark.parametrize("strategy", ["fail", "skip", "overwrite"])
def test_row_level_security_tables_are_restored_through_insert(shared: Archived, strategy: str,
                                                               tmp_path: Path) -> None:
    # COPY FROM refuses a table whose row-level security applies to the session; INSERT applies the
    # policies. Superusers bypass RLS, so the restore runs as a plain role.
    role = f"restore_rls_{uuid.uuid4().hex[:8]}"
    conn = shared.conn
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        conn.execute("CREATE TABLE audit_copy (LIKE audit_logs INCLUDING ALL)")
        conn.execute("ALTER TABLE audit_copy ENABLE ROW LEVEL SECURITY")
        conn.execute("CREATE POLICY everyone ON audit_copy USING (true) WITH CHECK (user_id <> 13)")
        conn.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE ON audit_copy, audit_logs TO {}").format(sql.Identifier(role)))
        params = conninfo_to_dict(conn.info.dsn)
        params["user"] = role
        cfg = load_config(make_config(tmp_path, dsn=make_conninfo("", **params), bucket=shared.bucket,
                                      endpoint=shared.s3.meta.endpoint_url))

        with pytest.raises(ArchiverError, match="row-level security"):
            restore(cfg, database="production_db", table="audit_logs", restore_all=True,
                    conflict_strategy=strategy, target_table="audit_copy", s3_client=shared.s3)
        left = conn.execute("SELECT count(*) FROM audit_copy").fetchone()
        assert left is not None
        assert left == (0,) if strategy == "fail" else 0 < left[0] < 13  # objects before row 13's stay restored
        conn.execute("ALTER POLICY everyone ON audit_copy WITH CHECK (true)")
        report = restore(cfg, database="production_db", table="audit_logs", restore_all=True,
                         conflict_strategy=strategy, target_table="audit_copy", s3_client=shared.s3)

        assert report.rows == 16 and report.total("inserted") == 16 - left[0]
        assert shared.dump("audit_copy") == shared.before
    finally:
        shared.reset()
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_restore_refuses_a_table_the_archiver_is_working_on(shared: Archived) -> None:
    # The archiver's per-table advisory lock: a restore must not bring rows back under its feet.
    oid = shared.conn.execute("SELECT 'audit_logs'::regclass::oid").fetchone()
    assert oid is not None
    with psycopg.connect(shared.conn.info.dsn, autocommit=True) as archiver_session:
        archiver_session.execute("SELECT pg_advisory_lock(%s)", ((LOCK_CLASS << 32) | oid[0],))
        with pytest.raises(ArchiverError, match="being archived right now"):
            restore(shared.cfg, database="production_db", table="audit_logs", restore_all=True, s3_client=shared.s3)
    assert shared.ids() == []
