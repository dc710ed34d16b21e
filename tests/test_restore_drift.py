"""Schema drift (issue 4): columns the live table gained take their defaults; a column it lost or
retyped stops the restore with a clear message, unless --allow-drop-columns; generated columns are
recomputed by PostgreSQL, never copied from the archive."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest

from restore.drift import SchemaDrift
from restore.engine import restore
from restore_support import Archived, archive, arch, shared  # noqa: F401 - fixtures



def drifted(arch: Archived, *alterations: str) -> str:
    arch.conn.execute("CREATE TABLE drifted (LIKE audit_logs INCLUDING ALL)")
    for alteration in alterations:
        arch.conn.execute(f"ALTER TABLE drifted {alteration}")
    return "drifted"


def run(arch: Archived, target: str, **kwargs: Any) -> Any:
    return restore(arch.cfg, database="production_db", table="audit_logs", restore_all=True, target_table=target,
                   s3_client=arch.s3, **kwargs)


def test_gained_columns_take_their_defaults(arch: Archived) -> None:
    target = drifted(arch, "ADD COLUMN region text NOT NULL DEFAULT 'eu'", "ADD COLUMN note text")

    report = run(arch, target)

    assert report.total("inserted") == 16 and report.defaulted_columns == ["note", "region"]
    rows = arch.conn.execute("SELECT DISTINCT region, note FROM drifted").fetchall()
    assert rows == [("eu", None)]
    original = arch.conn.execute("SELECT email FROM drifted WHERE id = 5").fetchone()
    assert original == ("user5@example.com",)


@pytest.mark.parametrize(("alteration", "named"), [
    ("DROP COLUMN email", "email"),
    ("ALTER COLUMN amount TYPE numeric(14,4)", "amount (numeric(12,2) -> numeric(14,4))"),
])
def test_lost_or_retyped_column_stops_the_restore(arch: Archived, alteration: str, named: str) -> None:
    target = drifted(arch, alteration)

    with pytest.raises(SchemaDrift) as err:
        run(arch, target, conflict_strategy="skip")

    assert named in str(err.value) and "--allow-drop-columns" in str(err.value)
    assert err.value.exit_code == 1
    assert arch.ids("drifted") == []


def test_allow_drop_columns_restores_the_other_columns(arch: Archived) -> None:
    target = drifted(arch, "DROP COLUMN email", "ALTER COLUMN amount TYPE numeric(14,4)")

    report = run(arch, target, allow_drop_columns=True)

    assert report.total("inserted") == 16 and report.dropped_columns == ["amount", "email"]
    row = arch.conn.execute("SELECT user_id, action, amount FROM drifted WHERE id = 3").fetchone()
    assert row == (3, "login", None)


def test_dropped_primary_key_column_is_never_allowed(arch: Archived) -> None:
    arch.conn.execute("CREATE TABLE drifted (uid bigint PRIMARY KEY, created_at timestamptz, email text)")
    with pytest.raises(SchemaDrift) as err:
        run(arch, "drifted", allow_drop_columns=True)
    assert "primary key" in str(err.value)


def test_generated_columns_are_recomputed_not_copied(tmp_path: Path, pg: psycopg.Connection[Any], pg_dsn: str,
                                                     bucket: str, moto_server: str, s3_client: Any) -> None:
    pg.execute("""CREATE TABLE events (id bigint PRIMARY KEY, created_at timestamptz NOT NULL, n integer,
                                       doubled integer GENERATED ALWAYS AS (n * 2) STORED)""")
    pg.execute("INSERT INTO events (id, created_at, n) SELECT g, '2024-01-01'::timestamptz + g * interval '1 hour', g"
               " FROM generate_series(1, 5) g")
    arch = archive(tmp_path, pg, dsn=pg_dsn, bucket=bucket, endpoint=moto_server, client=s3_client, table="events")
    # Since archiving, the expression changed: restored rows must follow the live definition.
    pg.execute("ALTER TABLE events DROP COLUMN doubled")
    pg.execute("ALTER TABLE events ADD COLUMN doubled integer GENERATED ALWAYS AS (n * 3) STORED")

    restore(arch.cfg, database="production_db", table="events", restore_all=True, s3_client=s3_client)

    rows = pg.execute("SELECT n, doubled FROM events ORDER BY id").fetchall()
    assert rows == [(n, n * 3) for n in range(1, 6)]
