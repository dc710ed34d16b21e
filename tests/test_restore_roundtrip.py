"""Restore brings back every archived value exactly (issue 4, "Restore semantics"): the dump of the
restored table is byte-identical to the dump taken before archiving, for every column type the
archiver supports, from S3 and from the fallback directory, into the table or a new one."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from common.config import load_config
from conftest import make_config
from restore.engine import list_archives, restore
from restore_support import Archived, archive, dump, seed_days, shared_archive


def _matrix(tmp_path_factory: pytest.TempPathFactory, moto_server: str, fmt: str) -> Iterator[Archived]:
    # batch_size 2: several objects per day, and text fallbacks ('infinity', NaN) in some only.
    yield from shared_archive(tmp_path_factory, moto_server, seed="type_matrix", batch_size=2, fmt=fmt)


@pytest.fixture(scope="module")
def matrix_parquet(tmp_path_factory: pytest.TempPathFactory, moto_server: str) -> Iterator[Archived]:
    yield from _matrix(tmp_path_factory, moto_server, "parquet")


@pytest.fixture(scope="module")
def matrix_jsonl(tmp_path_factory: pytest.TempPathFactory, moto_server: str) -> Iterator[Archived]:
    yield from _matrix(tmp_path_factory, moto_server, "jsonl")


@pytest.fixture()
def matrix(matrix_parquet: Archived) -> Iterator[Archived]:
    yield matrix_parquet
    matrix_parquet.reset()


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_type_matrix_round_trips_byte_for_byte(fmt: str, request: pytest.FixtureRequest) -> None:
    arch: Archived = request.getfixturevalue(f"matrix_{fmt}")
    assert arch.before.count(b"\n") == 7 and len(arch.keys()) >= 5

    report = restore(arch.cfg, database="production_db", table="type_matrix", restore_all=True, s3_client=arch.s3)

    assert report.total("inserted") == 7
    assert arch.dump() == arch.before
    arch.reset()


def test_type_matrix_into_a_new_target_table_created_with_its_primary_key(matrix: Archived) -> None:
    report = restore(matrix.cfg, database="production_db", table="type_matrix", restore_all=True,
                     target_table="matrix_copy", s3_client=matrix.s3)

    assert report.created_target and report.target == "public.matrix_copy"
    # The generated column becomes a plain one holding the archived values, so even it matches.
    assert dump(matrix.conn, "matrix_copy") == matrix.before
    pk = matrix.conn.execute("SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid"
                        " AND a.attnum = ANY(i.indkey) WHERE i.indrelid = 'matrix_copy'::regclass AND i.indisprimary").fetchall()
    assert pk == [("id",)]
    assert matrix.ids() == []


@pytest.mark.s3_servers
def test_existing_target_table_is_used_as_it_is(tmp_path: Path, pg: psycopg.Connection[Any], pg_dsn: str, bucket: str,
                                                s3_endpoint: str, s3_client: Any) -> None:
    seed_days(pg)
    arch = archive(tmp_path, pg, dsn=pg_dsn, bucket=bucket, endpoint=s3_endpoint, client=s3_client, table="audit_logs")
    pg.execute("CREATE TABLE audit_copy (LIKE audit_logs INCLUDING ALL)")

    report = restore(arch.cfg, database="production_db", table="audit_logs", restore_all=True,
                     target_table="public.audit_copy", s3_client=s3_client)

    assert not report.created_target
    assert dump(pg, "audit_copy") == arch.before


def test_objects_only_in_the_fallback_directory_restore_like_s3_ones(
        tmp_path: Path, pg: psycopg.Connection[Any], pg_dsn: str, bucket: str, moto_server: str, s3_client: Any,
        free_tcp_port: int) -> None:
    seed_days(pg)
    # S3 is down while archiving: every batch goes to the fallback directory...
    archive(tmp_path, pg, dsn=pg_dsn, bucket=bucket, endpoint=f"http://127.0.0.1:{free_tcp_port}", client=None,
            table="audit_logs")
    # ...then S3 is back, but the archiver has not drained the directory yet.
    cfg = load_config(make_config(tmp_path, dsn=pg_dsn, bucket=bucket, endpoint=moto_server))
    listed = list_archives(cfg, database="production_db", table="audit_logs", s3_client=s3_client)
    assert listed and {o.location for o in listed} == {"fallback"}

    report = restore(cfg, database="production_db", table="audit_logs", restore_all=True, s3_client=s3_client)

    assert report.total("inserted") == 16 and {o.location for o in report.objects} == {"fallback"}
    assert [r[0] for r in pg.execute("SELECT id FROM audit_logs ORDER BY id").fetchall()] == list(range(1, 17))


def test_identity_values_are_kept_and_new_rows_still_get_fresh_ones(matrix: Archived) -> None:
    restore(matrix.cfg, database="production_db", table="type_matrix", restore_all=True, s3_client=matrix.s3)
    assert matrix.ids() == [1, 2, 3, 4, 5, 6, 7]
    new = matrix.conn.execute("INSERT INTO type_matrix (created_at) VALUES (now()) RETURNING id").fetchone()
    assert new == (8,)


def test_hostile_target_table_name_is_quoted_not_executed(matrix: Archived) -> None:
    hostile = 'copy"; DROP TABLE type_matrix; --'
    report = restore(matrix.cfg, database="production_db", table="type_matrix", restore_all=True,
                     target_table=hostile, s3_client=matrix.s3)
    assert report.created_target
    assert dump(matrix.conn, '"copy""; DROP TABLE type_matrix; --"') == matrix.before
    assert matrix.conn.execute("SELECT to_regclass('public.type_matrix')").fetchone() != (None,)
