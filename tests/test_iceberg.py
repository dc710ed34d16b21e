"""The Iceberg table over each archived table (issue 27, the `iceberg:` section; common/iceberg):
the archiver registers the archive's own Parquet objects with pyiceberg, in a real SQL catalog (a
throwaway database on the local PostgreSQL) and in the Iceberg REST catalog SeaweedFS serves. A
pyiceberg scan and polars.scan_iceberg of the current snapshot return exactly the rows restore
would bring back (common/archive/catalog.py, as restore reads the archive): after a run, after erase,
after a kill -9 between the upload and the Iceberg commit, each row once. validate compares the
snapshot's files with the manifests, and the dry run names the table and what it would register."""
from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import yaml
from psycopg.conninfo import conninfo_to_dict

from archiver.app import ArchiverOptions, run as archiver_run
from archiver.runner import run_archive
from common.cli import Environment
from common.config import Config, load_config
from common.exit_codes import ExitCode
from common.iceberg import catalog as iceberg_catalog
from common.iceberg.sync import current_files
from compliance_support import catalog_ids
from conftest import make_config, throwaway_database
from erase.app import EraseOptions, run as erase
from expire.app import ExpireOptions, run as expire

#: Polars plans an Iceberg scan with pyiceberg unless the polars_iceberg plugin is installed, and says so.
pytestmark = pytest.mark.filterwarnings("ignore:Iceberg scan planning:Warning")

ROOT = Path(__file__).resolve().parents[1]
#: `infinity` of a timestamp column, as the archive stores it (common/arrow_types.py).
INFINITY = 2**63 - 1
DDL = """
CREATE TABLE history (
  id bigint PRIMARY KEY, created_at timestamptz NOT NULL, valid_until timestamptz, payload jsonb,
  amount numeric(12,2), at_time time, note text);
INSERT INTO history
SELECT g, now() - interval '12 days' + g * interval '3 hours',
       CASE WHEN g % 5 = 0 THEN 'infinity' ELSE now() + g * interval '1 day' END,
       jsonb_build_object('g', g), g * 1.25, '12:00'::time + g * interval '1 second',
       CASE WHEN g > 8 THEN 'n' || g END                 -- the first day: all NULL
FROM generate_series(1, 80) g;
"""
TABLE = [{"name": "history", "timestamp_column": "created_at", "primary_key": "id"}]


@dataclass
class Scenario:
    config: Path
    pg: psycopg.Connection[Any]
    s3: Any

    @property
    def cfg(self) -> Config:
        return load_config(self.config)


def catalog_uri(dsn: str) -> str:
    """SQLAlchemy's URL of a database on the test server (psycopg 3's driver)."""
    d = conninfo_to_dict(dsn)
    return (f"postgresql+psycopg://{d.get('user', 'root')}@{d.get('host', '127.0.0.1')}:{d.get('port', 5432)}"
            f"/{d['dbname']}")


@pytest.fixture(scope="module")
def catalog_db() -> Iterator[str]:
    """The SQL catalog's database, shared by the module's tests: each has a namespace of its own."""
    with throwaway_database("iceberg_catalog") as dsn:
        yield catalog_uri(dsn)


@pytest.fixture()
def scenario(tmp_path: Path, pg_dsn: str, pg: psycopg.Connection[Any], s3_client: Any, bucket: str,
             s3_endpoint: str, catalog_db: str) -> Scenario:
    """`history` (80 rows over 10 days) on moto S3 and an SQL catalog; the archiver not yet run."""
    pg.execute(DDL)
    config = make_config(tmp_path, dsn=pg_dsn, bucket=bucket, endpoint=s3_endpoint, tables=TABLE,
                         defaults={"retention_days": 5, "batch_size": 20},
                         iceberg={"catalog": {"name": "archive", "type": "sql", "uri": catalog_db},
                                  "namespace": f"ns_{bucket.replace('-', '_')}"})
    return Scenario(config, pg, s3_client)


def ident(cfg: Config, table: str = "history") -> str:
    assert cfg.iceberg is not None and cfg.iceberg.namespace
    return f"{cfg.iceberg.namespace}.{table}"


def set_retention(s: Scenario, days: int) -> None:
    doc = yaml.safe_load(s.config.read_text())
    doc["defaults"]["retention_days"] = days
    s.config.write_text(yaml.safe_dump(doc, sort_keys=False))


def iceberg_table(cfg: Config) -> Any:
    return iceberg_catalog.load(cfg).load_table(ident(cfg))


def rows_of(table: pa.Table) -> Counter[tuple[Any, ...]]:
    """(id, valid_until is infinity, amount, payload, note) of each row, each as often as it comes."""
    micros = pc.cast(table.column("valid_until"), pa.int64()).to_pylist()
    values = zip(table.column("id").to_pylist(), micros, table.column("amount").to_pylist(),
                 table.column("payload").to_pylist(), table.column("note").to_pylist())
    return Counter((i, m == INFINITY, str(a), str(p), n) for i, m, a, p, n in values)


def held_by_postgres(s: Scenario, ids: set[int]) -> Counter[tuple[Any, ...]]:
    rows = s.pg.execute("SELECT id, valid_until = 'infinity', amount::text, payload::text, note FROM orig "
                        "WHERE id = ANY(%s)", (list(ids),)).fetchall()
    return Counter(tuple(r) for r in rows)


def scanned(cfg: Config) -> Counter[tuple[Any, ...]]:
    return rows_of(iceberg_table(cfg).scan().to_arrow())


def polars_scanned(cfg: Config) -> Counter[tuple[Any, ...]]:
    """Polars reads the files itself: it is told the S3 endpoint, as the runbook says."""
    import polars as pl

    options = {"aws_endpoint_url": str(cfg.s3.endpoint_url), "aws_region": cfg.s3.region, "aws_allow_http": "true"}
    frame = pl.scan_iceberg(iceberg_table(cfg), storage_options=options).collect()
    return rows_of(frame.to_arrow())


def assert_matches_restore(s: Scenario) -> Counter[Any]:
    """The snapshot's rows are exactly those restore would bring back, each once, as PostgreSQL held them."""
    cfg = s.cfg
    restored = catalog_ids(cfg, s.s3, table="history")
    assert restored and set(restored.values()) == {1}
    got = scanned(cfg)
    assert got == held_by_postgres(s, set(restored))
    assert polars_scanned(cfg) == got
    return restored


def archive(s: Scenario) -> None:
    s.pg.execute("CREATE TABLE IF NOT EXISTS orig AS SELECT * FROM history")
    _results, code = run_archive(s.cfg)
    assert code == ExitCode.OK


def test_a_run_registers_exactly_the_rows_restore_brings_back(scenario: Scenario) -> None:
    archive(scenario)
    restored = assert_matches_restore(scenario)
    assert 30 < len(restored) < 80  # some days archived, the rest still in the table
    tbl = iceberg_table(scenario.cfg)
    assert set(current_files(tbl)) == {f"s3://{scenario.cfg.s3.bucket}/{k}" for k in listing_keys(scenario)}
    assert tbl.spec().fields[0].name == "created_at_day"



def test_each_run_adds_its_objects_and_a_run_with_nothing_new_commits_nothing(scenario: Scenario) -> None:
    """The second run's objects have a column the first run's lack, and a widened one: the Iceberg
    schema evolves, and the older objects read NULL in the new column."""
    archive(scenario)
    first = set(catalog_ids(scenario.cfg, scenario.s3, table="history"))
    scenario.pg.execute("ALTER TABLE history ADD COLUMN extra int; UPDATE history SET extra = id;"
                        "ALTER TABLE history ALTER COLUMN amount TYPE numeric(14,2)")
    set_retention(scenario, 2)
    archive(scenario)
    restored = assert_matches_restore(scenario)
    assert len(restored) > len(first)
    tbl = iceberg_table(scenario.cfg)
    assert str(tbl.schema().find_field("amount").field_type) == "decimal(14, 2)"
    got = tbl.scan(selected_fields=("id", "extra")).to_arrow()
    assert {i: e for i, e in zip(got.column("id").to_pylist(), got.column("extra").to_pylist())} == \
        {i: None if i in first else i for i in restored}
    snapshot = tbl.current_snapshot().snapshot_id
    archive(scenario)  # nothing left to archive: the listing is as the last sync saw it
    assert iceberg_table(scenario.cfg).current_snapshot().snapshot_id == snapshot


def run_erase(config: Path, where: str) -> int:
    return erase(EraseOptions(config_path=config, database="production_db", table="history", where=where),
                 env=Environment(stdout=io.StringIO(), stderr=io.StringIO()))


def test_erase_leaves_exactly_the_rows_restore_brings_back(scenario: Scenario) -> None:
    archive(scenario)
    before = assert_matches_restore(scenario)
    assert run_erase(scenario.config, "id % 4 = 0") == ExitCode.OK
    after = assert_matches_restore(scenario)
    assert set(after) == {i for i in before if i % 4}
    # No erased value stays in the table's metadata: only the time column keeps bounds.
    for f in current_files(iceberg_table(scenario.cfg)).values():
        assert set(f.lower_bounds) == set(f.upper_bounds) == {2}  # created_at's field id


def test_expiry_leaves_exactly_the_rows_restore_brings_back(scenario: Scenario) -> None:
    archive(scenario)
    before = assert_matches_restore(scenario)
    doc = yaml.safe_load(scenario.config.read_text())
    doc["defaults"]["archive_retention_days"] = 8
    scenario.config.write_text(yaml.safe_dump(doc, sort_keys=False))
    out = io.StringIO()
    assert expire(ExpireOptions(config_path=scenario.config), env=Environment(stdout=out, stderr=io.StringIO()),
                  s3_client=scenario.s3) == ExitCode.OK
    after = assert_matches_restore(scenario)
    assert 0 < len(after) < len(before) and set(after) < set(before)
    assert not validate_problems(scenario.cfg)


def archiver_process(config: Path, *extra: str, kill_at: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **({"ARCHIVER_TEST_KILL_AT": kill_at} if kill_at else {})}
    return subprocess.run([sys.executable, "-m", "archiver.main", "--config", str(config), *extra], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)


def validate_problems(cfg: Config) -> list[tuple[str, str]]:
    from validate.checks import validate

    return sorted((p.type, p.key) for p in validate(cfg, quick=True).problems)


def test_kill_between_upload_and_iceberg_commit_is_repaired_by_the_next_run(scenario: Scenario) -> None:
    archive(scenario)
    registered = set(current_files(iceberg_table(scenario.cfg)))
    set_retention(scenario, 2)
    killed = archiver_process(scenario.config, kill_at="before_iceberg:1")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    new = {f"s3://{scenario.cfg.s3.bucket}/{k}" for k in listing_keys(scenario)} - registered
    assert new and set(current_files(iceberg_table(scenario.cfg))) == registered
    problems = validate_problems(scenario.cfg)
    assert {t for t, _k in problems} == {"iceberg_missing_file"}
    assert {f"s3://{scenario.cfg.s3.bucket}/{k}" for _t, k in problems} == new
    archive(scenario)  # nothing new to archive: the run registers what the killed one stored
    assert_matches_restore(scenario)
    assert validate_problems(scenario.cfg) == []


def test_a_file_that_does_not_count_is_reported_and_removed(scenario: Scenario) -> None:
    """An engine's compaction (or anything else) put a file in the Iceberg table: validate reports
    it, and the next run takes it out, though the archive did not change."""
    archive(scenario)
    cfg = scenario.cfg
    key = listing_keys(scenario)[0]
    stray = f"elsewhere/{key.rpartition('/')[2]}"
    scenario.s3.copy_object(Bucket=cfg.s3.bucket, Key=stray, CopySource={"Bucket": cfg.s3.bucket, "Key": key})
    iceberg_table(cfg).add_files([f"s3://{cfg.s3.bucket}/{stray}"])
    orphan = ("orphaned_file", stray)  # validate's own finding about a file outside the layout
    assert validate_problems(cfg) == [("iceberg_extra_file", f"s3://{cfg.s3.bucket}/{stray}"), orphan]
    archive(scenario)  # the table's listing is unchanged: the snapshot, not its fingerprint, says to look
    assert_matches_restore(scenario)
    assert validate_problems(cfg) == [orphan]


def test_withdraw_takes_the_object_out_of_the_iceberg_table(scenario: Scenario) -> None:
    archive(scenario)
    key = listing_keys(scenario)[0]
    assert archiver_run(ArchiverOptions(config_path=scenario.config, withdraw=key),
                        env=Environment(stdout=io.StringIO(), stderr=io.StringIO())) == ExitCode.OK
    assert f"s3://{scenario.cfg.s3.bucket}/{key}" not in current_files(iceberg_table(scenario.cfg))
    assert_matches_restore(scenario)


def test_dry_run_names_the_table_and_what_it_would_register_and_no_secret(scenario: Scenario,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    doc = yaml.safe_load(scenario.config.read_text())
    uri = doc["iceberg"]["catalog"]["uri"]
    doc["iceberg"]["catalog"]["uri"] = uri.replace("://root@", "://root:${ICEBERG_PASSWORD}@")  # trust: unused
    scenario.config.write_text(yaml.safe_dump(doc, sort_keys=False))
    monkeypatch.setenv("ICEBERG_PASSWORD", "hunter2-secret")
    archive(scenario)
    objects = len(current_files(iceberg_table(scenario.cfg)))
    iceberg_catalog.load(scenario.cfg).drop_table(ident(scenario.cfg))  # as if the catalog had been lost
    out = io.StringIO()
    code = archiver_run(ArchiverOptions(config_path=scenario.config, dry_run=True),
                        env=Environment(stdout=out, stderr=io.StringIO()))
    text = out.getvalue()
    assert code == ExitCode.OK, text
    assert "hunter2" not in text and "root:***@" in text
    line = next(line for line in text.splitlines() if "iceberg: Iceberg table" in line)
    assert f"{ident(scenario.cfg)} (to be created): would register {objects} objects and remove 0 files" in line
    assert not iceberg_catalog.load(scenario.cfg).table_exists(ident(scenario.cfg))  # the dry run wrote nothing


def test_without_pyiceberg_the_section_is_a_config_error(scenario: Scenario) -> None:
    code = ("import sys; sys.modules['pyiceberg'] = None; sys.argv = ['archiver', '--config', sys.argv[1]];"
            "from archiver.main import main; main()")
    done = subprocess.run([sys.executable, "-c", code, str(scenario.config)], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == ExitCode.USAGE, done.stderr
    assert "iceberg: needs pyiceberg" in done.stderr and "pg-archiver[iceberg]" in done.stderr



@pytest.mark.s3_servers("seaweedfs")
def test_the_rest_catalog_seaweedfs_serves_gets_the_same_rows_before_and_after_erase(
        scenario: Scenario, seaweedfs_server: Any) -> None:
    """SeaweedFS's Iceberg REST catalog (its table buckets are catalogs; SigV4 with the archive's
    credentials). It keeps each table's metadata in its own warehouse; the data files are the
    archive's objects all the same."""
    warehouse = f"lake-{scenario.cfg.s3.bucket[-8:]}"
    boto3.client("s3tables", endpoint_url=seaweedfs_server.endpoint, region_name="us-east-1") \
        .create_table_bucket(name=warehouse)
    doc = yaml.safe_load(scenario.config.read_text())
    doc["iceberg"]["catalog"] = {"name": "archive", "type": "rest", "uri": seaweedfs_server.iceberg_url,
                                 "warehouse": f"s3://{warehouse}/", "rest.sigv4-enabled": "true",
                                 "rest.signing-region": "us-east-1", "rest.signing-name": "s3"}
    scenario.config.write_text(yaml.safe_dump(doc, sort_keys=False))
    archive(scenario)
    before = assert_matches_restore(scenario)
    assert iceberg_table(scenario.cfg).location().startswith(f"s3://{warehouse}/")
    assert run_erase(scenario.config, "id % 3 = 0") == ExitCode.OK
    assert set(assert_matches_restore(scenario)) == {i for i in before if i % 3}



def test_batches_held_while_s3_was_down_are_registered_once_drained(scenario: Scenario, free_tcp_port: int) -> None:
    """S3 unreachable: the run keeps its batches in the fallback directory and leaves the Iceberg
    table alone (nothing of them is in S3); the next run drains them and registers them."""
    doc = yaml.safe_load(scenario.config.read_text())
    endpoint = doc["s3"]["endpoint_url"]
    doc["s3"]["endpoint_url"] = f"http://127.0.0.1:{free_tcp_port}"  # nothing listens there
    scenario.config.write_text(yaml.safe_dump(doc, sort_keys=False))
    scenario.pg.execute("CREATE TABLE orig AS SELECT * FROM history")
    results, code = run_archive(scenario.cfg)
    assert code == ExitCode.OK and results[0].fallback_objects == results[0].objects > 0
    assert not iceberg_catalog.load(scenario.cfg).table_exists(ident(scenario.cfg))
    doc["s3"]["endpoint_url"] = endpoint
    scenario.config.write_text(yaml.safe_dump(doc, sort_keys=False))
    archive(scenario)
    assert len(assert_matches_restore(scenario)) == results[0].rows


@pytest.fixture()
def epoch_scenario(tmp_path: Path, pg_dsn: str, pg: psycopg.Connection[Any], catalog_db: str) -> Scenario:
    """A Keycloak-like table timed by bigint milliseconds, archived to a local directory."""
    pg.execute("CREATE TABLE event (id bigint PRIMARY KEY, event_time bigint NOT NULL, note text);"
               "INSERT INTO event SELECT g, (extract(epoch FROM now() - interval '9 days') * 1000)::bigint"
               " + g * 3600000 * 3, 'e' || g FROM generate_series(1, 60) g")
    config = make_config(tmp_path, dsn=pg_dsn, defaults={"retention_days": 4, "batch_size": 50},
                         tables=[{"name": "event", "timestamp_column": "event_time", "timestamp_unit": "ms",
                                  "primary_key": "id"}],
                         iceberg={"catalog": {"type": "sql", "uri": catalog_db}, "namespace": f"ns_{tmp_path.name}"})
    return Scenario(config, pg, None)


def test_a_unix_time_column_partitions_by_the_day_in_its_unit(epoch_scenario: Scenario) -> None:
    s = epoch_scenario
    held = {r[0]: r[1:] for r in s.pg.execute("SELECT id, event_time, note FROM event")}
    _results, code = run_archive(s.cfg)
    assert code == ExitCode.OK
    tbl = iceberg_catalog.load(s.cfg).load_table(ident(s.cfg, "event"))
    assert str(tbl.spec().fields[0].transform) == "truncate[86400000]"
    got = tbl.scan().to_arrow()
    restored = catalog_ids(s.cfg, None, table="event")
    assert sorted(got.column("id").to_pylist()) == sorted(restored)
    assert all(held[i] == (t, n) for i, t, n in zip(*(got.column(c).to_pylist() for c in ("id", "event_time", "note"))))
    last_day = max(got.column("event_time").to_pylist()) // 86_400_000 * 86_400_000
    files = list(tbl.scan(row_filter=f"event_time >= {last_day}").plan_files())
    assert 0 < len(files) < len(current_files(tbl))  # the filter prunes the other days' partitions



def test_a_catalog_that_is_down_fails_the_table_and_the_next_run_catches_up(
        scenario: Scenario, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The rows are archived all the same (the archive is the truth); the table is failed with the
    catalog's reason, without its password, and the next run registers what this one archived."""
    doc = yaml.safe_load(scenario.config.read_text())
    uri = doc["iceberg"]["catalog"]["uri"]
    doc["iceberg"]["catalog"]["uri"] = uri.rpartition("/")[0].replace("://root@", "://root:${ICEBERG_PASSWORD}@") \
        + "/no_such_database"
    scenario.config.write_text(yaml.safe_dump(doc, sort_keys=False))
    monkeypatch.setenv("ICEBERG_PASSWORD", "hunter2-secret")
    scenario.pg.execute("CREATE TABLE orig AS SELECT * FROM history")
    results, code = run_archive(scenario.cfg)
    assert code == ExitCode.FAILURE and results[0].status == "failed" and results[0].rows > 0
    assert "Iceberg table of production_db/public.history not updated" in str(results[0].error)
    assert "no_such_database" in str(results[0].error)
    assert "not updated" in caplog.text and "hunter2" not in caplog.text
    from validate.checks import validate

    (unreadable,) = [p for p in validate(scenario.cfg, quick=True).problems if p.type.startswith("iceberg")]
    assert unreadable.type == "iceberg_unreadable" and unreadable.key == ident(scenario.cfg) and "hunter2" not in unreadable.message
    doc["iceberg"]["catalog"]["uri"] = uri
    scenario.config.write_text(yaml.safe_dump(doc, sort_keys=False))
    archive(scenario)
    assert len(assert_matches_restore(scenario)) == results[0].rows



def test_migrate_layout_registers_what_it_moves(scenario: Scenario) -> None:
    """An archive of the legacy layout (manifests beside their objects), archived before the section
    was there: --migrate-layout names what it would register, then moves and registers it."""
    from common.archive.storage import S3Storage
    from test_layout import to_legacy

    doc = yaml.safe_load(scenario.config.read_text())
    section = doc.pop("iceberg")
    scenario.config.write_text(yaml.safe_dump(doc, sort_keys=False))
    archive(scenario)
    assert to_legacy(S3Storage(scenario.s3, scenario.cfg.s3.bucket)) > 0
    doc["iceberg"] = section
    scenario.config.write_text(yaml.safe_dump(doc, sort_keys=False))
    out = io.StringIO()
    options = ArchiverOptions(config_path=scenario.config, migrate_layout=True, dry_run=True)
    assert archiver_run(options, env=Environment(stdout=out, stderr=io.StringIO())) == ExitCode.OK
    objects = len(listing_keys(scenario))
    assert f"{ident(scenario.cfg)} (to be created): would register {objects} objects" in out.getvalue()
    options = ArchiverOptions(config_path=scenario.config, migrate_layout=True)
    assert archiver_run(options, env=Environment(stdout=out, stderr=io.StringIO())) == ExitCode.OK
    assert_matches_restore(scenario)



def test_the_dry_run_and_validate_write_nothing_to_the_catalog(scenario: Scenario) -> None:
    """Not even the SQL catalog's own tables, in a database that has none yet."""
    archive(scenario)
    with throwaway_database("iceberg_empty") as empty:
        doc = yaml.safe_load(scenario.config.read_text())
        doc["iceberg"]["catalog"]["uri"] = catalog_uri(empty)
        scenario.config.write_text(yaml.safe_dump(doc, sort_keys=False))
        out = io.StringIO()
        assert archiver_run(ArchiverOptions(config_path=scenario.config, dry_run=True),
                            env=Environment(stdout=out, stderr=io.StringIO())) == ExitCode.OK
        assert "(to be created): would register" in out.getvalue()
        assert {t for t, _k in validate_problems(scenario.cfg)} == {"iceberg_missing_file"}
        with psycopg.connect(empty) as conn:
            assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone() == (0,)


def listing_keys(s: Scenario) -> list[str]:
    """The table's data objects in the bucket."""
    cfg = s.cfg
    keys = [o["Key"] for page in s.s3.get_paginator("list_objects_v2").paginate(Bucket=cfg.s3.bucket)
            for o in page.get("Contents", [])]
    return [k for k in keys if k.endswith(".parquet") and "/public.history/" in k and "_control" not in k]


CHILD_DDL = """
CREATE TABLE history_notes (id bigint PRIMARY KEY, history_id bigint NOT NULL REFERENCES history ON DELETE CASCADE,
                            note text);
INSERT INTO history_notes SELECT g * 10 + k, g, 'note ' || g || '/' || k FROM generate_series(1, 80) g,
                                                                          generate_series(1, 2) k;
"""


def test_children_archived_with_their_parents_have_an_iceberg_table_each(scenario: Scenario) -> None:
    """A child's objects (issue 28) are cut by their parents' days and have no time column of
    their own: its Iceberg table is unpartitioned, and holds exactly the child rows archived."""
    scenario.pg.execute(CHILD_DDL)
    doc = yaml.safe_load(scenario.config.read_text())
    doc["databases"][0]["tables"][0]["children"] = "archive"
    scenario.config.write_text(yaml.safe_dump(doc, sort_keys=False))
    archive(scenario)
    parents = assert_matches_restore(scenario)
    cfg = scenario.cfg
    notes = iceberg_catalog.load(cfg).load_table(ident(cfg, "history_notes"))
    assert not notes.spec().fields
    scanned_notes = Counter(notes.scan().to_arrow().column("history_id").to_pylist())
    assert scanned_notes == Counter({i: 2 for i in parents})
    assert scanned_notes == Counter(i // 10 for i in catalog_ids(cfg, scenario.s3, table="history_notes").elements())
    assert not validate_problems(cfg)
