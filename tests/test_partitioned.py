"""Partitioned tables (issue 15 item 3): a table entry names the partitioned parent; rows are
archived through it, objects keep the parent's name, restore targets the parent; multi-level
partitioning works through the leaves. expired_partitions: keep (the default) deletes rows."""
from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from archive_checks import OnceAt, archived_ids, assert_invariant, manifests, table_ids
from archiver.controls import RunControls
from archiver.partitions import leaves
from archiver.runner import run_archive
from common import batch_writer
from common.config import load_config
from common.exit_codes import ExitCode
from common.archive.storage import LocalStorage
from conftest import make_config, seed_audit
from restore.engine import restore
from schema_support import partitions_of, seed_partitioned

EXPIRED = "SELECT count(*) FROM audit_logs WHERE created_at < now() - interval '90 days'"
TABLES = [{"name": "audit_logs", "timestamp_column": "created_at"}]


@pytest.mark.parametrize("multi_level", [False, True], ids=["monthly", "quarters-of-halves"])
def test_partitioned_table_with_keep_archives_through_the_parent_and_restores_into_it(
        tmp_path: Path, pg_dsn: str, pg: psycopg.Connection[Any], multi_level: bool) -> None:
    leaves = seed_partitioned(pg, multi_level=multi_level)
    original = table_ids(pg)
    cfg = load_config(make_config(tmp_path, dsn=pg_dsn, tables=TABLES, defaults={"batch_size": 50}))
    results, code = run_archive(cfg)
    assert code == ExitCode.OK and results[0].status == "completed", results
    store = LocalStorage(tmp_path / "archive")
    archived = archived_ids(store)
    assert_invariant(original, table_ids(pg), archived)
    assert pg.execute(EXPIRED).fetchone() == (0,) and len(archived) > 300
    assert partitions_of(pg) == {*leaves}  # keep: every partition stays
    found = manifests(store)
    assert {m.table for m in found} == {"audit_logs"} and all("/public.audit_logs/" in m.key for m in found)
    assert all(m.primary_key == ["id", "created_at"] for m in found)
    report = restore(cfg, database="production_db", table="audit_logs", restore_all=True)
    assert report.total("inserted") == len(archived)
    assert table_ids(pg) == original


def run_with(tmp_path: Path, dsn: str, mode: str, **defaults: Any) -> Any:
    cfg = load_config(make_config(tmp_path, dsn=dsn, tables=TABLES,
                                  defaults={"batch_size": 50, "expired_partitions": mode, **defaults}))
    results, code = run_archive(cfg)
    assert code == ExitCode.OK and results[0].status == "completed", results
    return cfg


def dead_tuples(pg: psycopg.Connection[Any], names: set[str]) -> int:
    pg.execute("SELECT pg_stat_force_next_flush()")
    row = pg.execute("SELECT coalesce(sum(n_dead_tup), 0) FROM pg_stat_user_tables WHERE relname = ANY(%s)",
                     (sorted(names),)).fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.parametrize("mode", ["detach", "drop"])
@pytest.mark.parametrize("multi_level", [False, True], ids=["monthly", "quarters-of-halves"])
def test_expired_partitions_are_retired_whole_without_row_deletes(tmp_path: Path, pg_dsn: str, pg: psycopg.Connection[Any],
                                                                 mode: str, multi_level: bool,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="archiver")
    leaves = seed_partitioned(pg, multi_level=multi_level)
    original = table_ids(pg)
    whole = [name for name in leaves if name != "audit_logs_default" and pg.execute(
        f"SELECT max(created_at) < now() - interval '90 days' AND count(*) > 0 FROM {name}").fetchone() == (True,)]
    # the leaves whose bound ends by the cutoff (rows end at the bound or before it)
    assert len(whole) >= 2
    cfg = run_with(tmp_path, pg_dsn, mode)
    store = LocalStorage(tmp_path / "archive")
    archived = archived_ids(store)
    remaining = partitions_of(pg)
    detached = {name for name in whole if pg.execute("SELECT to_regclass(%s)", (name,)).fetchone() != (None,)}
    # the bounds decide, not the rows: a leaf whose range ends after the cutoff stays
    retired = set(leaves) - remaining
    assert retired and retired <= set(whole) and "audit_logs_default" in remaining
    assert detached == (retired if mode == "detach" else set())
    assert dead_tuples(pg, detached) == 0  # no row of a retired partition was deleted
    in_detached = set().union(*(set(table_ids(pg, name)) for name in detached)) if detached else set()
    assert_invariant(original - in_detached, table_ids(pg), archived - Counter(in_detached))
    assert pg.execute(EXPIRED).fetchone() == (0,)
    by_partition = [m for m in manifests(store) if m.partition]
    assert {m.partition["name"] for m in by_partition} == retired  # type: ignore[index]
    assert all(m.partition["bound"].startswith("FOR VALUES FROM") for m in by_partition)  # type: ignore[index]
    said = [r.getMessage() for r in caplog.records if "retired:" in r.getMessage()]
    assert len(said) == len(retired) and all(("dropped" in line) == (mode == "drop") for line in said), said


def test_dry_run_shows_the_key_and_which_partitions_would_be_retired(tmp_path: Path, pg_dsn: str,
                                                                      pg: psycopg.Connection[Any]) -> None:
    from schema_support import archiver
    leaves = seed_partitioned(pg)
    before = table_ids(pg)
    config = make_config(tmp_path, dsn=pg_dsn, tables=TABLES, defaults={"expired_partitions": "drop"})
    proc = archiver(config, "--dry-run")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "key (id, created_at)" in out
    retired = [line for line in out.splitlines() if "would be archived whole, detached and dropped" in line]
    assert len(retired) >= 2 and all("FOR VALUES FROM" in line for line in retired)
    assert "partition public.audit_logs_default (DEFAULT): default partition" in out
    assert out.count("    partition public.") == len(leaves)
    assert table_ids(pg) == before and partitions_of(pg) == set(leaves)


def test_a_where_that_keeps_whole_partitions_is_named_in_the_dry_run(tmp_path: Path, pg_dsn: str,
                                                                     pg: psycopg.Connection[Any]) -> None:
    from schema_support import archiver
    seed_partitioned(pg)
    tables = [{**TABLES[0], "where": "email NOT LIKE 'old%'"}]
    proc = archiver(make_config(tmp_path, dsn=pg_dsn, tables=tables, defaults={"expired_partitions": "drop"}), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    held = [line for line in proc.stdout.splitlines() if "wholly before the cutoff, but the table's `where` keeps it" in line]
    assert len(held) >= 2 and "would be archived whole" not in proc.stdout


@pytest.mark.parametrize("where", ["table", "defaults"])
def test_expired_partitions_on_a_plain_table_says_it_has_no_effect(tmp_path: Path, pg_dsn: str,
                                                                   pg: psycopg.Connection[Any],
                                                                   caplog: pytest.LogCaptureFixture, where: str) -> None:
    from schema_support import archiver
    seed_audit(pg, rows=200, days=130)
    original = table_ids(pg)
    option = {"expired_partitions": "drop"}
    config = make_config(tmp_path, dsn=pg_dsn, tables=[{**TABLES[0], **option}] if where == "table" else TABLES,
                         defaults=option if where == "defaults" else {})
    said = "expired_partitions: drop has no effect: public.audit_logs is not partitioned"
    proc = archiver(config, "--dry-run")
    assert proc.returncode == 0 and said in proc.stdout, proc.stdout + proc.stderr
    caplog.set_level(logging.INFO, logger="archiver")
    results, code = run_archive(load_config(config))
    assert code == ExitCode.OK and results[0].status == "completed"
    # a warning only when the table itself asks for it: `defaults` are meant for partitioned tables
    level = logging.WARNING if where == "table" else logging.INFO
    assert [r.levelno for r in caplog.records if said in r.getMessage()] == [level]
    assert_invariant(original, table_ids(pg), archived_ids(LocalStorage(tmp_path / "archive")))  # row by row


def test_a_stop_file_stops_retirement_and_the_leaves_wait(tmp_path: Path, pg_dsn: str, pg: psycopg.Connection[Any]) -> None:
    """The stop file holds for whole partitions as for rows: nothing is retired, the leaves are
    counted as waiting (archiver_partitions_pending_retirement), and the next run retires them."""
    leaves = seed_partitioned(pg, multi_level=False)
    original = table_ids(pg)
    cfg = load_config(make_config(tmp_path, dsn=pg_dsn, tables=TABLES,
                                  defaults={"batch_size": 50, "expired_partitions": "drop"}))
    stop = Path(cfg.checkpoint_dir) / "STOP"
    stop.parent.mkdir(parents=True, exist_ok=True)
    stop.touch()
    results, code = run_archive(cfg, controls=RunControls(stop_file=stop))
    assert code == ExitCode.OK and results[0].status == "stopped"
    assert results[0].partitions_pending >= 2 and results[0].rows == 0
    assert partitions_of(pg) == set(leaves) and table_ids(pg) == original
    stop.unlink()
    results, code = run_archive(cfg, controls=RunControls(stop_file=stop))
    assert code == ExitCode.OK and results[0].partitions_pending == 0 and len(partitions_of(pg)) < len(leaves)


def test_a_limit_reached_between_leaves_takes_back_the_leaf_being_read(tmp_path: Path, pg_dsn: str,
                                                                       pg: psycopg.Connection[Any],
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    """One pipeline reads leaf after leaf (archiver/retire.py): a --max-rows reached once the first
    leaf is retired stops the reading; the next leaf's batches already stored are taken back, its
    rows stay in the table, and the next run retires it. Every row ends up exactly once."""
    leaves = seed_partitioned(pg, multi_level=False)
    original = table_ids(pg)
    cfg = load_config(make_config(tmp_path, dsn=pg_dsn, tables=TABLES,
                                  defaults={"batch_size": 50, "expired_partitions": "drop"}))
    caplog.set_level(logging.INFO, logger="archiver")
    results, code = run_archive(cfg, controls=RunControls(max_rows=1))
    assert code == ExitCode.OK and results[0].status == "stopped"
    assert any("not retired (the run is stopping)" in r.getMessage() for r in caplog.records)
    assert len(partitions_of(pg)) == len(leaves) - 1 and results[0].partitions_pending >= 1
    store = LocalStorage(tmp_path / "archive")
    assert_invariant(original, table_ids(pg), archived_ids(store))
    results, code = run_archive(cfg, controls=RunControls())
    assert code == ExitCode.OK and results[0].partitions_pending == 0
    assert_invariant(original, table_ids(pg), archived_ids(store))
    assert pg.execute(EXPIRED).fetchone() == (0,)


@pytest.mark.parametrize("multi_level", [False, True], ids=["monthly", "quarters-of-halves"])
def test_one_leaf_is_read_from_the_catalog_as_the_whole_tree_describes_it(pg: psycopg.Connection[Any],
                                                                         multi_level: bool) -> None:
    seed_partitioned(pg, multi_level=multi_level)
    oid = pg.execute("SELECT 'audit_logs'::regclass::oid").fetchone()[0]  # type: ignore[index]
    tree = leaves(pg, oid, "created_at")
    assert len(tree) > 3
    assert [leaves(pg, oid, "created_at", only=leaf.oid) for leaf in tree] == [[leaf] for leaf in tree]
    first = tree[0]
    pg.execute(sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(first.parent_relation, first.relation))
    assert leaves(pg, oid, "created_at", only=first.oid) == []  # detached: no longer under the table


def _update_first_row(dsn: str) -> tuple[set[int], set[int]]:
    with psycopg.connect(dsn, autocommit=True) as other:
        other.execute("UPDATE audit_logs SET email = 'changed' WHERE id = (SELECT min(id) FROM audit_logs_m00)")
    return set(), set()


def _replace_first_row(dsn: str) -> tuple[set[int], set[int]]:
    """A delete and an insert in one transaction: the leaf's count stays the same."""
    with psycopg.connect(dsn) as other:
        gone = other.execute("DELETE FROM audit_logs WHERE id = (SELECT min(id) FROM audit_logs_m00) RETURNING id").fetchall()
        new = other.execute("INSERT INTO audit_logs (created_at, email) SELECT min(created_at), 'changed'"
                            " FROM audit_logs_m00 RETURNING id").fetchall()
    return {r[0] for r in gone}, {r[0] for r in new}


@pytest.mark.parametrize("change", [_update_first_row, _replace_first_row], ids=["update", "delete-and-insert"])
@pytest.mark.parametrize("point", ["after_upload", "after_partition_archived"])
@pytest.mark.parametrize("default", [False, True], ids=["concurrently", "next-to-a-default"])
def test_a_row_written_to_a_leaf_after_its_export_is_archived_as_written(
        tmp_path: Path, pg_dsn: str, pg: psycopg.Connection[Any], change: Any, point: str, default: bool) -> None:
    # The leaf's count alone let both changes through: the leaf was dropped holding the new row (or
    # the row's new value) while the archive held the old one.
    seed_partitioned(pg, default=default)
    original = table_ids(pg)
    done: list[tuple[set[int], set[int]]] = []
    cfg = load_config(make_config(tmp_path, dsn=pg_dsn, tables=TABLES,
                                  defaults={"batch_size": 50, "expired_partitions": "drop"}))
    results, code = run_archive(cfg, hook=OnceAt(point, lambda: done.append(change(pg_dsn))))
    assert code == ExitCode.OK and results[0].status == "completed", results
    (gone, new), = done
    store = LocalStorage(tmp_path / "archive")
    assert_invariant(original - gone | new, table_ids(pg), archived_ids(store))
    assert not [m for m in manifests(store) if m.partition and m.partition["name"] == "audit_logs_m00"]
    assert "audit_logs_m00" in partitions_of(pg)  # changed since its export: emptied row by row, not dropped
    emails: Counter[str] = Counter()
    for info in store.list(""):
        if info.key.endswith(".parquet"):
            emails.update(batch_writer.decode(store.get(info.key), fmt="parquet", columns=["email"])[0]
                          .column("email").to_pylist())
    assert emails["changed"] == 1  # the row as written, archived once


def test_a_leaf_attached_again_takes_back_the_rows_its_range_sent_to_the_default(
        tmp_path: Path, pg_dsn: str, pg: psycopg.Connection[Any], caplog: pytest.LogCaptureFixture) -> None:
    # After the plain DETACH (next to a default partition), a row written into the detached table
    # fails its check, and a row written to its range through the table lands in the default: the
    # ATTACH refused that default, the leaf stayed detached with a row never archived, and every
    # later run failed the same way.
    caplog.set_level(logging.INFO, logger="archiver")
    seed_partitioned(pg, default=True)
    original = table_ids(pg)
    new: set[int] = set()

    def write_twice() -> None:
        with psycopg.connect(pg_dsn, autocommit=True) as other:
            ts = other.execute("SELECT min(created_at) FROM audit_logs_m00").fetchone()[0]
            # the detached table has no identity of its own: the id is given
            new.add(other.execute("INSERT INTO audit_logs_m00 (id, created_at, email) VALUES (9000001, %s, 'late')"
                                  " RETURNING id", (ts,)).fetchone()[0])
            new.add(other.execute("INSERT INTO audit_logs (created_at, email) VALUES (%s, 'late') RETURNING id",
                                  (ts,)).fetchone()[0])

    cfg = load_config(make_config(tmp_path, dsn=pg_dsn, tables=TABLES,
                                  defaults={"batch_size": 50, "expired_partitions": "drop"}))
    results, code = run_archive(cfg, hook=OnceAt("after_detach", write_twice))
    assert code == ExitCode.OK and results[0].status == "completed", results
    assert len(new) == 2 and "moved into it, and it is attached again" in caplog.text
    assert "audit_logs_m00" in partitions_of(pg)
    assert_invariant(original | new, table_ids(pg), archived_ids(LocalStorage(tmp_path / "archive")))
    assert pg.execute(EXPIRED).fetchone() == (0,)


def test_dry_run_says_why_leaves_partitioned_by_another_column_go_row_by_row(tmp_path: Path, pg_dsn: str,
                                                                              pg: psycopg.Connection[Any]) -> None:
    from schema_support import archiver
    pg.execute("CREATE TABLE audit_logs (id bigint, created_at timestamptz NOT NULL, PRIMARY KEY (id))"
               " PARTITION BY RANGE (id)")
    pg.execute("CREATE TABLE audit_logs_low PARTITION OF audit_logs FOR VALUES FROM (0) TO (1000)")
    pg.execute("INSERT INTO audit_logs SELECT g, now() - interval '200 days' FROM generate_series(1, 10) g")
    proc = archiver(make_config(tmp_path, dsn=pg_dsn, tables=TABLES, defaults={"expired_partitions": "drop"}), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert ("partition public.audit_logs_low (FOR VALUES FROM ('0') TO ('1000')): its bounds are not a range of"
            " created_at alone" in proc.stdout), proc.stdout
