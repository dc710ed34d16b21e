"""`children: archive` (issue 28), against a real PostgreSQL and moto S3 over HTTP, the archiver in
subprocesses: a three-generation family (audit_logs <- audit_details <- audit_notes, with a
composite key, and audit_tags, partitioned, ON DELETE SET NULL) is archived together; kill -9 at
random points (several seeds) leaves every row of every table of the family in exactly one place;
restore --with-children brings it back byte for byte under each conflict strategy; a child alone
needs its parents; validate reports orphaned children; query and erase take a child table."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

import psycopg
import pyarrow.compute as pc
import pytest
from psycopg import sql

from archive_checks import OnceAt, archived
from archiver.runner import dry_run, run_archive
from restore.children import restore_family
from restore.engine import restore
from validate.checks import validate
from common import batch_writer
from common.archive import layout
from common.config import load_config
from common.archive.storage import S3Storage
from conftest import make_config

ROOT = Path(__file__).resolve().parent.parent

FAMILY_DDL = """
CREATE TABLE audit_logs (id bigserial PRIMARY KEY, created_at timestamptz NOT NULL, action text, payload jsonb);
CREATE INDEX ON audit_logs (created_at);
CREATE TABLE audit_details (id bigserial PRIMARY KEY,
                            log_id bigint NOT NULL REFERENCES audit_logs ON DELETE CASCADE, detail text);
CREATE TABLE audit_notes (detail_id bigint NOT NULL REFERENCES audit_details ON DELETE CASCADE, n int NOT NULL,
                          note text, at timestamptz, PRIMARY KEY (detail_id, n));
CREATE TABLE audit_tags (id bigint NOT NULL, tag text NOT NULL, log_id bigint REFERENCES audit_logs ON DELETE SET NULL,
                         PRIMARY KEY (id, tag)) PARTITION BY LIST (tag);
CREATE TABLE audit_tags_a PARTITION OF audit_tags FOR VALUES IN ('a');
CREATE TABLE audit_tags_rest PARTITION OF audit_tags DEFAULT;
"""
#: 3 rows a day over 30 days, 5 of them past retention (25 days); children for most rows.
SEED = """
INSERT INTO audit_logs (created_at, action, payload)
SELECT now() - interval '12 hours' - (g * interval '8 hours'), 'a' || g, jsonb_build_object('g', g)
FROM generate_series(0, 89) g;
INSERT INTO audit_details (log_id, detail) SELECT l.id, 'd' || k FROM audit_logs l, generate_series(1, 2) k
WHERE l.id % 3 <> 0;
INSERT INTO audit_notes SELECT d.id, k, 'note ' || d.id || '/' || k, now() - d.id * interval '1 minute'
FROM audit_details d, generate_series(1, 2) k WHERE d.id % 2 = 0;
INSERT INTO audit_tags SELECT l.id, t, l.id FROM audit_logs l, unnest(ARRAY['a', 'b']) t WHERE l.id % 4 = 0;
"""
#: Each table of the family and its key.
KEYS = {"audit_logs": ("id",), "audit_details": ("id",), "audit_notes": ("detail_id", "n"), "audit_tags": ("id", "tag")}
TABLE = {"name": "audit_logs", "timestamp_column": "created_at", "retention_days": 25, "children": "archive"}


def archiver(config: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "archiver.main", "--config", str(config), *extra], cwd=ROOT,
                          env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=120)


def tool(name: str, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", f"{name}.main", "--config", str(config), *args], cwd=ROOT,
                          env=dict(os.environ), capture_output=True, text=True, timeout=120)


def rows(conn: psycopg.Connection[Any]) -> dict[str, dict[tuple[Any, ...], str]]:
    """Every row of every table of the family, by key, as its text (the checksum of the row)."""
    out = {}
    for table, keys in KEYS.items():
        q = sql.SQL("SELECT {}, t::text FROM {} t").format(sql.SQL(", ").join(map(sql.Identifier, keys)), sql.Identifier(table))
        out[table] = {tuple(r[:-1]): r[-1] for r in conn.execute(q).fetchall()}
    return out


def archived_keys(store: S3Storage, table: str) -> Counter[tuple[Any, ...]]:
    """The keys of the table's rows in objects that count as archived (a row twice counts twice)."""
    keys: Counter[tuple[Any, ...]] = Counter()
    for key in archived(store, layout.table_prefix("", "production_db", "public", table)):
        data, schema, _enc, _doc = batch_writer.decode(store.get(key), fmt=batch_writer.format_of(key), columns=list(KEYS[table]))
        cols = []
        for k in KEYS[table]:
            col, natural = data.column(k), schema.column(k).natural_type()
            cols.append((pc.cast(col, natural) if natural is not None and col.type != natural else col).to_pylist())
        keys.update(zip(*cols))
    return keys


class Family:
    """The seeded family in a throwaway database, archived to a moto bucket."""

    def __init__(self, tmp_path: Path, dsn: str, conn: psycopg.Connection[Any], s3_client: Any, bucket: str,
                 endpoint: str, **table: Any) -> None:
        conn.execute(FAMILY_DDL)
        conn.execute(SEED)
        self.conn, self.tmp, self.dsn = conn, tmp_path, dsn
        self.original = rows(conn)
        self.notes: list[str] = []
        self.store = S3Storage(s3_client, bucket)
        self.args = {"dsn": dsn, "bucket": bucket, "endpoint": endpoint}
        self.config = make_config(tmp_path, **self.args, defaults={"batch_size": 2}, tables=[{**TABLE, **table}])

    def expired(self) -> int:
        return int(self.conn.execute("SELECT count(*) FROM audit_logs WHERE created_at < now() - interval '25 days'").fetchone()[0])

    def check_one_place(self) -> None:
        """Every original row of every table is in its table or in exactly one archived object."""
        now = rows(self.conn)
        for table in KEYS:
            in_table, in_archive = set(now[table]), archived_keys(self.store, table)
            twice = [k for k, n in in_archive.items() if n > 1]
            assert not twice, f"{table}: archived twice: {twice[:5]}"
            assert not in_table & set(in_archive), f"{table}: in table and archive: {sorted(in_table & set(in_archive))[:5]}"
            lost = set(self.original[table]) - in_table - set(in_archive)
            assert not lost, f"{table}: lost: {sorted(lost)[:5]}"
            assert in_table | set(in_archive) == set(self.original[table])

    @property
    def log(self) -> str:
        return (self.tmp / "archiver.log").read_text()


@pytest.fixture()
def family(tmp_path: Path, pg_dsn: str, pg: psycopg.Connection[Any], s3_client: Any, bucket: str, s3_endpoint: str) -> Family:
    return Family(tmp_path, pg_dsn, pg, s3_client, bucket, s3_endpoint)


@pytest.fixture()
def archived_family(family: Family) -> Family:
    """The family after one complete run (in this process: the subprocess runs are the kill tests')."""
    results, code = run_archive(load_config(family.config))
    assert code == 0, results[0].error
    family.notes = results[0].notes
    return family


# -- archive ----------------------------------------------------------------------------------------
def test_children_move_with_their_parents_into_their_own_table_folders(archived_family: Family) -> None:
    f = archived_family
    f.check_one_place()
    assert f.expired() == 0
    now = rows(f.conn)
    for table in KEYS:
        gone = set(f.original[table]) - set(now[table])
        assert gone, f"no row of {table} moved"
    # nothing references a row that is gone: no child row was left behind, none was cascaded away
    assert not f.conn.execute("SELECT 1 FROM audit_tags WHERE log_id IS NULL").fetchall()
    root_objects = archived(f.store, layout.table_prefix("", "production_db", "public", "audit_logs"))
    for m in archived(f.store, layout.table_prefix("", "production_db", "public", "audit_notes")).values():
        assert m.parent is not None and m.parent["table"] == "audit_details" and m.parent["root"]["table"] == "audit_logs"
        assert m.timestamp_column == "" and m.primary_key == ["detail_id", "n"]
        assert m.parent["batch"] in root_objects
        # the day folder of its parent rows
        assert m.key.split("/year=")[1][:20] == m.parent["batch"].split("/year=")[1][:20]
    moved = {t: len(set(f.original[t]) - set(now[t])) for t in KEYS}
    assert [n for n in f.notes if n.startswith("child ")] == [
        f"child public.{t}: {moved[t]} rows archived in {len(archived(f.store, layout.table_prefix('', 'production_db', 'public', t)))} objects"
        for t in ("audit_details", "audit_notes", "audit_tags")]


def test_dry_run_lists_each_child_its_foreign_key_and_the_rows_that_would_move(family: Family) -> None:
    lines, code = dry_run(load_config(family.config))
    text = "\n".join(lines)
    assert code == 0, text
    expected = {
        "audit_details": "SELECT count(*) FROM audit_details d JOIN audit_logs l ON l.id = d.log_id WHERE l.created_at < now() - interval '25 days'",
        "audit_tags": "SELECT count(*) FROM audit_tags t JOIN audit_logs l ON l.id = t.log_id WHERE l.created_at < now() - interval '25 days'",
        "audit_notes": "SELECT count(*) FROM audit_notes n JOIN audit_details d ON d.id = n.detail_id JOIN audit_logs l"
                       " ON l.id = d.log_id WHERE l.created_at < now() - interval '25 days'",
    }
    for table, query in expected.items():
        count = family.conn.execute(query).fetchone()[0]
        assert count > 0
        line = next(x for x in lines if f"child public.{table} " in x)
        assert line.endswith(f": {count} rows would move with their parents"), line
    assert ("child public.audit_notes (generation 2): foreign key audit_notes_detail_id_fkey (detail_id) references"
            " public.audit_details (id), ON DELETE CASCADE") in text
    assert "ON DELETE SET NULL" in text
    assert rows(family.conn) == family.original  # a dry run moves nothing


REFUSED = {
    "self-reference through a child": ("ALTER TABLE audit_details ADD COLUMN up bigint REFERENCES audit_details",
                                       "makes a cycle (the child references itself)"),
    "cycle back to the parent": ("ALTER TABLE audit_logs ADD COLUMN detail bigint REFERENCES audit_details",
                                 "makes a cycle"),
    "two archived parents": ("ALTER TABLE audit_notes ADD COLUMN log bigint REFERENCES audit_logs",
                             "references two archived tables"),
    "a child without a key": ("CREATE TABLE audit_refs (log_id bigint REFERENCES audit_logs ON DELETE CASCADE)",
                              "its child public.audit_refs has no primary key"),
}


@pytest.mark.parametrize("ddl, why", REFUSED.values(), ids=list(REFUSED))
def test_a_family_that_cannot_move_together_is_refused_before_anything_moves(family: Family, ddl: str, why: str) -> None:
    family.conn.execute(ddl)
    before = rows(family.conn)
    lines, code = dry_run(load_config(family.config))
    assert code == 1 and any(why in x for x in lines), "\n".join(lines)
    results, code = run_archive(load_config(family.config))
    assert code == 1 and results[0].error_kind == "config"
    assert why in str(results[0].error) and "nothing was exported or deleted" in str(results[0].error)
    assert rows(family.conn) == before and archived(family.store) == {}


def test_without_the_option_the_refusal_names_children_archive(family: Family) -> None:
    config = make_config(family.tmp, **family.args, tables=[{k: v for k, v in TABLE.items() if k != "children"}])
    results, code = run_archive(load_config(config))
    assert code == 1
    assert "Set `children: archive` on the table" in str(results[0].error)
    assert rows(family.conn) == family.original


def test_a_self_referencing_parent_keeps_referenced_rows_as_without_children(family: Family) -> None:
    family.conn.execute("ALTER TABLE audit_logs ADD COLUMN up bigint REFERENCES audit_logs")
    oldest = family.conn.execute("SELECT max(id) FROM audit_logs").fetchone()[0]  # ids count back in time
    family.conn.execute("UPDATE audit_logs SET up = %s WHERE id = %s", (oldest, oldest - 1))
    family.original = rows(family.conn)
    results, code = run_archive(load_config(family.config))
    assert code == 0, results[0].error
    # the referenced row stays, with its children; the one referencing it moved (with its own)
    assert family.conn.execute("SELECT count(*) FROM audit_logs WHERE id = %s", (oldest,)).fetchone()[0] == 1
    assert family.conn.execute("SELECT count(*) FROM audit_logs WHERE id = %s", (oldest - 1,)).fetchone()[0] == 0
    family.check_one_place()


def test_a_child_added_after_the_export_is_never_cascaded_away(family: Family) -> None:
    """A note inserted for an exported detail while its batch is being uploaded: the delete would
    cascade to it, so the batch's move is taken back; the next run archives it with the rest."""
    cfg = load_config(family.config)
    youngest_expired = family.conn.execute(
        "SELECT max(d.id) FROM audit_details d JOIN audit_logs l ON l.id = d.log_id"
        " WHERE l.created_at < now() - interval '25 days'").fetchone()[0]

    def add_note() -> None:
        with psycopg.connect(family.dsn, autocommit=True) as other:
            other.execute("INSERT INTO audit_notes VALUES (%s, 99, 'late', now())", (youngest_expired,))

    # the first batch read holds the oldest rows; the note goes to an exported detail of a later
    # batch, added once that batch is stored (its children were exported before)
    hook = OnceAt("after_upload", add_note)
    results, code = run_archive(cfg, hook=hook)
    assert hook.done and code == 0
    assert results[0].rolled_back_batches >= 1
    family.original["audit_notes"][(youngest_expired, 99)] = "late"
    late = family.conn.execute("SELECT count(*) FROM audit_notes WHERE n = 99").fetchone()[0]
    in_archive = archived_keys(family.store, "audit_notes")[(youngest_expired, 99)]
    assert late + in_archive == 1
    results, code = run_archive(cfg)
    assert code == 0
    family.check_one_place()
    assert archived_keys(family.store, "audit_notes")[(youngest_expired, 99)] == 1


def test_a_child_whose_deletes_a_trigger_suppresses_fails_the_table_and_loses_nothing(family: Family) -> None:
    """A legal hold on the grandchildren (BEFORE DELETE returning NULL): the family's delete comes
    short though nothing changed, so the table fails at once instead of taking the batch back run
    after run; what was stored and not deleted is taken back."""
    family.conn.execute("CREATE FUNCTION hold() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NULL; END'")
    family.conn.execute("CREATE TRIGGER hold BEFORE DELETE ON audit_notes FOR EACH ROW EXECUTE FUNCTION hold()")
    results, code = run_archive(load_config(family.config))
    assert code == 1 and results[0].error_kind == "config"
    assert "though no row of the family changed since the export" in str(results[0].error)
    assert "public.audit_notes: 0 of its" in str(results[0].error)
    family.check_one_place()
    assert family.conn.execute("SELECT count(*) FROM audit_notes").fetchone()[0] == len(family.original["audit_notes"])


# -- kill -9 ---------------------------------------------------------------------------------------
POINTS = ["after_read", "after_checkpoint", "between_object_and_manifest", "after_upload", "after_manifest_set",
          "before_commit", "after_delete"]


#: Seeds whose two kills each cover six of the seven points between them (before_commit is the same
#: moment as after_manifest_set, a step later).
@pytest.mark.parametrize("seed", [1, 2, 7])
def test_kill_at_random_points_leaves_every_row_of_the_family_in_one_place(family: Family, seed: int) -> None:
    rng = random.Random(seed)
    kills = []
    for _ in range(2):  # two crashes in a row: the second may hit the first one's recovery
        point = rng.choice(POINTS)
        # after_checkpoint comes once per group of batches started together: a few times a run
        nth = 1 if point == "after_checkpoint" else rng.randint(1, 3)
        r = archiver(family.config, env={"ARCHIVER_TEST_KILL_AT": f"{point}:{nth}"})
        assert r.returncode in (-9, 0), r.stderr
        if r.returncode == -9:
            kills.append(f"{point}:{nth}")
    assert kills, "no run was killed: the seed picked points past the last batch"
    r = archiver(family.config)
    assert r.returncode == 0, r.stderr
    family.check_one_place()
    assert family.expired() == 0
    assert validate_problems(family.config) == []


def test_a_corrupt_checkpoint_after_a_kill_scans_the_childrens_archives_too(family: Family) -> None:
    """Killed with a batch's manifest sets stored (its table's and its children's) but its delete
    not committed, then the checkpoint is lost: the rerun scans every table of the family and takes
    back each object whose rows are still in its table."""
    r = archiver(family.config, env={"ARCHIVER_TEST_KILL_AT": "after_manifest_set:2"})
    assert r.returncode == -9, r.stderr
    checkpoint = family.tmp / "checkpoints" / "production_db" / "public.audit_logs.json"
    checkpoint.write_text("{not json")
    results, code = run_archive(load_config(family.config))
    assert code == 0, results[0].error
    family.check_one_place()
    assert family.expired() == 0


def validate_problems(config: Path) -> list[dict[str, Any]]:
    """validate's findings, in this process (a subprocess costs its start-up)."""
    return [asdict(p) for p in validate(load_config(config)).problems]


# -- restore ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", ["fail", "skip", "overwrite"])
def test_restore_with_children_brings_the_family_back_exactly(archived_family: Family, strategy: str) -> None:
    f = archived_family
    if strategy != "fail":  # one parent and one grandchild are back already, one of them changed
        parent = min(k for k in f.original["audit_logs"] if k not in rows(f.conn)["audit_logs"])
        note = min(k for k in f.original["audit_notes"] if k not in rows(f.conn)["audit_notes"])
        f.conn.execute("INSERT INTO audit_logs (id, created_at, action) SELECT id, created_at, 'changed' FROM"
                       " (VALUES (%s::bigint, now())) v(id, created_at)", parent)
        f.conn.execute("INSERT INTO audit_details (id, log_id, detail) VALUES (%s, %s, 'x')", (note[0], parent[0]))
        f.conn.execute("INSERT INTO audit_notes VALUES (%s, %s, 'changed', NULL)", note)
    reports = [r.to_json() for r in restore_family(load_config(f.config), database="production_db", table="audit_logs",
                                                   restore_all=True, conflict_strategy=strategy)]
    assert [x["source"] for x in reports] == ["public.audit_logs", "public.audit_details", "public.audit_tags",
                                               "public.audit_notes"]
    now = rows(f.conn)
    if strategy == "skip":  # the rows that were there stay as they were
        assert now["audit_logs"][parent].endswith(",changed,)") and "changed" in now["audit_notes"][note]
        now["audit_logs"][parent] = f.original["audit_logs"][parent]
        now["audit_notes"][note] = f.original["audit_notes"][note]
        if (note[0],) in f.original["audit_details"]:
            now["audit_details"][(note[0],)] = f.original["audit_details"][(note[0],)]
    assert now == f.original


def test_restore_with_children_of_one_object_restores_its_batch(archived_family: Family) -> None:
    f = archived_family
    roots = archived(f.store, layout.table_prefix("", "production_db", "public", "audit_logs"))
    key = max(roots, key=lambda k: (roots[k].rows, k))  # a batch with all three of its rows
    r = tool("restore", f.config, "--database", "production_db", "--table", "audit_logs", "--s3-key", key,
             "--with-children", "--output-format", "json")  # the CLI, once
    assert r.returncode == 0, r.stderr
    back = {x["source"]: x["rows"] for x in json.loads(r.stdout)["tables"]}
    batch = {table: [m for m in archived(f.store, layout.table_prefix("", "production_db", "public", table)).values()
                     if table == "audit_logs" and m.key == key or (m.parent or {}).get("batch") == key]
             for table in KEYS}
    assert back == {f"public.{t}": sum(m.rows for m in ms) for t, ms in batch.items()}
    assert back["public.audit_details"] > 0


def test_a_child_restored_alone_needs_its_parents_and_writes_nothing_otherwise(archived_family: Family) -> None:
    f = archived_family
    before = rows(f.conn)
    r = tool("restore", f.config, "--database", "production_db", "--table", "audit_notes", "--restore-all",
             "--conflict-strategy", "skip")
    assert r.returncode == 1
    assert "its archived rows reference rows that are not in public.audit_details" in r.stderr
    assert "nothing was restored" in r.stderr
    assert rows(f.conn) == before
    # with the parents back, the child alone restores
    cfg = load_config(f.config)
    for table in ("audit_logs", "audit_details", "audit_notes"):
        restore(cfg, database="production_db", table=table, restore_all=True)
    assert rows(f.conn)["audit_notes"] == f.original["audit_notes"]


# -- validate, query, erase ------------------------------------------------------------------------
def test_validate_reports_a_child_whose_parent_is_nowhere(archived_family: Family) -> None:
    f = archived_family  # clean before: the kill tests' last check
    detail = min(k for k in f.original["audit_details"] if k not in rows(f.conn)["audit_details"]
                 if any(n[0] == k[0] for n in f.original["audit_notes"]))
    r = tool("erase", f.config, "--database", "production_db", "--table", "audit_details", "--where", f"id = {detail[0]}")
    assert r.returncode == 0, r.stderr
    problems = validate_problems(f.config)
    assert {p["type"] for p in problems} == {"orphaned_child"}
    assert all(p["table"] == "public.audit_notes" and f"(id = {detail[0]})" in p["message"] for p in problems)


def test_query_and_erase_take_a_child_table(archived_family: Family) -> None:
    f = archived_family
    moved = sorted(k for k in f.original["audit_tags"] if k not in rows(f.conn)["audit_tags"])
    r = tool("query", f.config, "--database", "production_db", "--table", "audit_tags", "--where", "tag = 'a'",
             "--output-format", "jsonl")
    assert r.returncode == 0, r.stderr
    found = [json.loads(line) for line in r.stdout.splitlines()]
    assert [(x["id"], x["tag"]) for x in found] == [k for k in moved if k[1] == "a"]
    victim = moved[0]
    r = tool("erase", f.config, "--database", "production_db", "--table", "audit_tags", "--where",
             f"id = {victim[0]} AND tag = '{victim[1]}'")
    assert r.returncode == 0, r.stderr
    assert victim not in archived_keys(f.store, "audit_tags")
    assert archived_keys(f.store, "audit_tags") == Counter(k for k in moved if k != victim)
