"""Composite keys (issue 15 item 2): a table keyed (tenant_id, id), where no single column is
unique and rows share timestamps, through archive (keyset reads cut inside a day, range and key
deletes), kill -9 and resume, restore with each conflict strategy, and validate."""
from __future__ import annotations

import signal
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
import pytest

from archive_checks import assert_invariant, manifests
from archiver import reader
from archiver.runner import run_archive
from common.config import load_config
from common.exit_codes import ExitCode
from common.archive.storage import LocalStorage, S3Storage
from conftest import make_config
from restore.engine import restore
from restore.loader import RestoreConflict
from schema_support import KEY, archived_keys, archiver, seed_composite, table_keys
from validate.checks import validate

EXPIRED = "SELECT count(*) FROM audit_logs WHERE created_at < now() - interval '90 days'"


def table_entry(primary_key: Any = None) -> list[dict[str, Any]]:
    entry: dict[str, Any] = {"name": "audit_logs", "timestamp_column": "created_at"}
    if primary_key is not None:
        entry["primary_key"] = primary_key
    return [entry]


@pytest.mark.parametrize("primary_key", [None, ["tenant_id", "id"], ["id", "tenant_id"]],
                         ids=["omitted", "as-declared", "reordered"])
def test_composite_key_table_archives_every_row_exactly_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, pg_dsn: str,
                                                             pg: psycopg.Connection[Any], primary_key: Any) -> None:
    monkeypatch.setattr(reader, "WINDOW_ROWS", 7)  # 9 rows a day, batches of 4: days are cut by key
    seed_composite(pg)
    original = table_keys(pg)
    config = make_config(tmp_path, dsn=pg_dsn, tables=table_entry(primary_key), defaults={"batch_size": 4})
    results, code = run_archive(load_config(config))
    assert code == ExitCode.OK and results[0].status == "completed", results
    store = LocalStorage(tmp_path / "archive")
    archived = archived_keys(store)
    assert_invariant(original, table_keys(pg), archived)
    assert pg.execute(EXPIRED).fetchone() == (0,) and results[0].rows == sum(archived.values()) > 300
    order = primary_key or list(KEY)
    for m in manifests(store):
        assert m.primary_key == order and m.key_columns == order
        assert isinstance(m.min_pk, list) and len(m.min_pk) == 2 and m.min_pk <= m.max_pk or m.rows == 1


def test_a_named_not_null_unique_index_serves_a_table_without_primary_key(tmp_path: Path, pg_dsn: str,
                                                                         pg: psycopg.Connection[Any]) -> None:
    seed_composite(pg, primary_key=False)
    pg.execute("CREATE UNIQUE INDEX audit_logs_key ON audit_logs (tenant_id, id)")
    original = table_keys(pg)
    config = make_config(tmp_path, dsn=pg_dsn, tables=table_entry(["tenant_id", "id"]), defaults={"batch_size": 50})
    results, code = run_archive(load_config(config))
    assert code == ExitCode.OK, results
    assert_invariant(original, table_keys(pg), archived_keys(LocalStorage(tmp_path / "archive")))


@pytest.mark.parametrize(("setup", "primary_key", "message"), [
    ("", None, "has no primary key and no unique index whose columns are all NOT NULL"),
    ("CREATE UNIQUE INDEX ON audit_logs (tenant_id, id)", None,
     "has no primary key; name the columns of one of its unique indexes in primary_key: (tenant_id, id)"),
    ("ALTER TABLE audit_logs ADD COLUMN n int UNIQUE", ["n"], "is a unique index with a nullable column"),
    ("CREATE UNIQUE INDEX ON audit_logs (tenant_id, id)", ["id"], "is neither the table's primary key nor a unique index"),
], ids=["no-key-at-all", "unique-index-not-named", "nullable-unique", "not-a-key"])
def test_a_table_without_a_usable_key_is_refused_saying_why(tmp_path: Path, pg_dsn: str, pg: psycopg.Connection[Any],
                                                            setup: str, primary_key: Any, message: str) -> None:
    seed_composite(pg, primary_key=False)
    if setup:
        pg.execute(setup)
    before = table_keys(pg)
    proc = archiver(make_config(tmp_path, dsn=pg_dsn, tables=table_entry(primary_key)))
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr
    assert table_keys(pg) == before


@pytest.mark.parametrize(("point", "nth"), [("after_checkpoint", 3), ("between_object_and_manifest", 3),
                                            ("after_upload", 3), ("before_commit", 3), ("after_delete", 3)])
def test_kill_during_a_composite_key_move_loses_no_rows(tmp_path: Path, pg_dsn: str, pg: psycopg.Connection[Any],
                                                        s3_client: Any, bucket: str, moto_server: str, point: str,
                                                        nth: int) -> None:
    seed_composite(pg)
    original = table_keys(pg)
    config = make_config(tmp_path, dsn=pg_dsn, bucket=bucket, endpoint=moto_server, tables=table_entry(),
                         defaults={"batch_size": 4})
    killed = archiver(config, env={"ARCHIVER_TEST_KILL_AT": f"{point}:{nth}"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    rerun = archiver(config)
    assert rerun.returncode == 0, rerun.stderr
    assert "Resuming from checkpoint" in (tmp_path / "archiver.log").read_text()
    assert_invariant(original, table_keys(pg), archived_keys(S3Storage(s3_client, bucket), LocalStorage(tmp_path / "fallback")))
    assert pg.execute(EXPIRED).fetchone() == (0,)


@pytest.fixture()
def archived(tmp_path: Path, pg_dsn: str, pg: psycopg.Connection[Any], s3_client: Any, bucket: str,
             moto_server: str) -> tuple[Any, set[tuple[Any, ...]]]:
    """The composite table archived to moto S3; one archived row (t1, 300) is back in the table
    with another email, and every other archived row is gone from it."""
    seed_composite(pg, ids=320)  # ids above 270 are expired
    config = make_config(tmp_path, dsn=pg_dsn, bucket=bucket, endpoint=moto_server, tables=table_entry(),
                         defaults={"batch_size": 20})
    cfg = load_config(config)
    _results, code = run_archive(cfg, s3_client=s3_client)
    assert code == ExitCode.OK
    keys = set(archived_keys(S3Storage(s3_client, bucket)))
    assert ("t1", 300) in keys
    pg.execute("INSERT INTO audit_logs VALUES ('t1', 300, now() - interval '100 days', 'live@example.com')")
    return cfg, keys


def email(pg: psycopg.Connection[Any], tenant: str, pk: int) -> str | None:
    row = pg.execute("SELECT email FROM audit_logs WHERE tenant_id = %s AND id = %s", (tenant, pk)).fetchone()
    return None if row is None else str(row[0])


@pytest.mark.parametrize(("strategy", "kept_email"), [("skip", "live@example.com"), ("overwrite", "user901@example.com")])
def test_restore_of_a_composite_key_table_resolves_conflicts_by_the_whole_key(archived: Any, pg: psycopg.Connection[Any],
                                                                             s3_client: Any, strategy: str,
                                                                             kept_email: str) -> None:
    cfg, keys = archived
    report = restore(cfg, database="production_db", table="audit_logs", restore_all=True, conflict_strategy=strategy,
                     s3_client=s3_client)
    assert report.total("inserted") == len(keys) - 1
    assert report.total("skipped" if strategy == "skip" else "overwritten") == 1
    assert keys <= table_keys(pg)
    # ('t0', 300) and ('t2', 300) share the id: only ('t1', 300) clashed; g = 300 * 3 + 1 wrote its email
    assert email(pg, "t1", 300) == kept_email and email(pg, "t0", 300) == "user900@example.com"


def test_restore_fail_names_the_composite_key_and_restores_nothing(archived: Any, pg: psycopg.Connection[Any],
                                                                   s3_client: Any) -> None:
    cfg, keys = archived
    before = table_keys(pg)
    with pytest.raises(RestoreConflict) as err:
        restore(cfg, database="production_db", table="audit_logs", restore_all=True, s3_client=s3_client)
    assert "(tenant_id, id)=(t1, 300) already exists" in str(err.value)
    assert table_keys(pg) == before


def test_validate_finds_a_composite_key_still_in_the_table_and_a_duplicated_object(archived: Any, s3_client: Any,
                                                                                    bucket: str) -> None:
    cfg, _keys = archived
    found = validate(cfg, s3_client=s3_client)
    live = [p for p in found.problems if p.type == "rows_still_in_database"]
    assert len(live) == 1 and "(tenant_id,id) (t1,300)" in live[0].message, found.problems


def test_validate_reports_composite_keys_archived_twice_in_different_objects(archived: Any, pg: psycopg.Connection[Any],
                                                                            s3_client: Any, tmp_path: Path) -> None:
    cfg, keys = archived
    restore(cfg, database="production_db", table="audit_logs", restore_all=True, conflict_strategy="skip",
            s3_client=s3_client)
    # the same rows archived again, cut differently (other bytes, other object names)
    (tmp_path / "again").mkdir()
    again = make_config(tmp_path / "again", dsn=cfg.databases[0].dsn or "", bucket=cfg.s3.bucket,
                        endpoint=cfg.s3.endpoint_url, tables=table_entry(),
                        defaults={"batch_size": 7, "delete_after_archive": False})
    _results, code = run_archive(load_config(again), s3_client=s3_client)
    assert code == ExitCode.OK
    overlap = [p for p in validate(cfg, s3_client=s3_client).problems if p.type == "overlapping_archives"]
    assert overlap and all("primary keys (e.g. (tenant_id,id)=" in p.message for p in overlap), overlap


def test_kill_after_upload_of_a_jsonl_composite_key_batch_resumes_exactly(tmp_path: Path, pg_dsn: str,
                                                                          pg: psycopg.Connection[Any]) -> None:
    # JSONL keeps every key column as text: the resume's count must type each one back
    seed_composite(pg, ids=320)
    original = table_keys(pg)
    config = make_config(tmp_path, dsn=pg_dsn, tables=table_entry(), defaults={"batch_size": 5, "format": "jsonl"})
    killed = archiver(config, env={"ARCHIVER_TEST_KILL_AT": "after_upload:2"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert archiver(config).returncode == 0
    store = LocalStorage(tmp_path / "archive")
    archived = archived_keys(store)
    typed = Counter({(t, int(i)): n for (t, i), n in archived.items()})
    assert_invariant(original, table_keys(pg), typed)
    assert "interrupted move of" in (tmp_path / "archiver.log").read_text()
