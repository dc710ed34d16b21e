"""Keycloak's event tables (issue 28), with the DDL Keycloak 26 creates: `event_time` and
`admin_event_time` are nullable bigint Unix milliseconds, the keys varchar(36) UUIDs, and the only
index on the time is Keycloak's own (realm_id, event_time). Dry-run and archived to moto S3 over HTTP
by `python -m archiver.main`, then queried by date, erased from, validated and restored by date
range, each through its click command."""
from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import boto3
import click
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result

from archive_checks import archived_ids, assert_invariant, manifests, table_ids
from archiver.main import cli as archiver_cli
from common.archive import layout
from common.archive.table_index import load_table
from common.archive.storage import S3Storage
from conftest import make_config, throwaway_database
from erase.main import cli as erase_cli
from query.main import cli as query_cli
from restore.main import cli as restore_cli
from schema_support import archiver
from validate.main import cli as validate_cli

#: The two tables as `pg_dump` shows them in a Keycloak 26 database (its Liquibase changelogs made them).
KEYCLOAK_DDL = """
CREATE TABLE public.event_entity (
    id character varying(36) NOT NULL,
    client_id character varying(255),
    details_json character varying(2550),
    error character varying(255),
    ip_address character varying(255),
    realm_id character varying(255),
    session_id character varying(255),
    event_time bigint,
    type character varying(255),
    user_id character varying(255),
    details_json_long_value text,
    CONSTRAINT constraint_4 PRIMARY KEY (id)
);
CREATE INDEX idx_event_time ON public.event_entity USING btree (realm_id, event_time);

CREATE TABLE public.admin_event_entity (
    id character varying(36) NOT NULL,
    admin_event_time bigint,
    realm_id character varying(255),
    operation_type character varying(255),
    auth_realm_id character varying(255),
    auth_client_id character varying(255),
    auth_user_id character varying(255),
    ip_address character varying(255),
    resource_path character varying(2550),
    representation text,
    error character varying(255),
    resource_type character varying(64),
    details_json text,
    CONSTRAINT constraint_admin_event_entity PRIMARY KEY (id)
);
CREATE INDEX idx_admin_event_time ON public.admin_event_entity USING btree (realm_id, admin_event_time);
"""

#: Events every 8 hours (admin events every 16) back ~133 days, an hour off the day's 90-day
#: cutoff so that no row straddles it between the dry run and the run; a few have no time at all.
SEED = """
INSERT INTO event_entity
SELECT gen_random_uuid()::text, (ARRAY['account-console', 'admin-cli', 'security-admin-console'])[1 + g % 3],
       json_build_object('auth_method', 'openid-connect', 'username', 'user' || g % 40,
                         'redirect_uri', 'https://app.example.com/cb?n=' || g)::text,
       CASE WHEN g % 7 = 0 THEN 'invalid_user_credentials' END, '10.0.' || g % 250 || '.' || g % 200,
       (ARRAY['master', 'acme'])[1 + g % 2], gen_random_uuid()::text,
       CASE WHEN g % 50 = 0 THEN NULL
            ELSE (extract(epoch FROM now() - interval '1 hour' - g * interval '8 hours') * 1000)::bigint + g % 1000 END,
       (ARRAY['LOGIN', 'LOGIN_ERROR', 'CODE_TO_TOKEN', 'LOGOUT'])[1 + g % 4], gen_random_uuid()::text,
       CASE WHEN g % 11 = 0 THEN repeat('{"claims":"é✓ ', 40) || g || '"}' END
FROM generate_series(1, 400) g;
INSERT INTO admin_event_entity
SELECT gen_random_uuid()::text,
       CASE WHEN g % 40 = 0 THEN NULL
            ELSE (extract(epoch FROM now() - interval '1 hour' - g * interval '16 hours') * 1000)::bigint + g % 1000 END,
       'acme', (ARRAY['CREATE', 'UPDATE', 'DELETE', 'ACTION'])[1 + g % 4], 'master', 'security-admin-console',
       gen_random_uuid()::text, '192.168.1.' || g % 250, 'users/' || gen_random_uuid(),
       json_build_object('username', 'user' || g, 'enabled', g % 2 = 0, 'note', E'tab\\there "q"\\nline')::text,
       NULL, 'USER', json_build_object('n', g)::text
FROM generate_series(1, 200) g;
CREATE TABLE orig_events AS SELECT * FROM event_entity;
CREATE TABLE orig_admin AS SELECT * FROM admin_event_entity;
"""

TABLES = [{"name": "event_entity", "timestamp_column": "event_time", "timestamp_unit": "ms"},
          {"name": "admin_event_entity", "timestamp_column": "admin_event_time", "timestamp_unit": "ms"}]
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
EXPIRED_MS = "(extract(epoch FROM now() - interval '90 days') * 1000)::bigint"


@dataclass
class Keycloak:
    dsn: str
    pg: psycopg.Connection[Any]
    config: Path
    store: S3Storage
    dry_run: subprocess.CompletedProcess[str]
    run: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def keycloak(tmp_path_factory: pytest.TempPathFactory, moto_server: str) -> Iterator[Keycloak]:
    """Both tables seeded, dry-run, then archived once by `python -m archiver.main`."""
    tmp = tmp_path_factory.mktemp("keycloak")
    s3 = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    with throwaway_database() as dsn, psycopg.connect(dsn, autocommit=True) as pg:
        pg.execute(KEYCLOAK_DDL)
        pg.execute(SEED)
        config = make_config(tmp, dsn=dsn, bucket=bucket, endpoint=moto_server, tables=TABLES,
                             defaults={"retention_days": 90, "batch_size": 1000})
        dry = archiver(config, "--dry-run")
        run = archiver(config)
        yield Keycloak(dsn, pg, config, S3Storage(s3, bucket), dry, run)


def day_ms(day: date) -> int:
    """Midnight UTC of a day in Unix milliseconds."""
    return (datetime(day.year, day.month, day.day, tzinfo=timezone.utc) - EPOCH) // timedelta(milliseconds=1)


def expired(pg: psycopg.Connection[Any], table: str, column: str) -> set[str]:
    return {r[0] for r in pg.execute(f"SELECT id FROM {table} WHERE {column} < {EXPIRED_MS}").fetchall()}


def count(pg: psycopg.Connection[Any], query: str) -> int:
    row = pg.execute(query).fetchone()
    assert row is not None
    return int(row[0])


def tool(cli: click.Command, config: Path, *args: str) -> Result:
    """A tool's own click command, in this process (a subprocess's start costs seconds a tool)."""
    return CliRunner().invoke(cli, ["--config", str(config), *args], catch_exceptions=False)


def test_dry_run_counts_the_expired_events_and_those_without_a_time(keycloak: Keycloak) -> None:
    assert keycloak.dry_run.returncode == 0, keycloak.dry_run.stdout + keycloak.dry_run.stderr
    lines = {line.split(":")[0].strip(): line for line in keycloak.dry_run.stdout.splitlines() if "eligible rows" in line}
    events, admin = lines["public.event_entity"], lines["public.admin_event_entity"]
    assert f"eligible rows {len(expired(keycloak.pg, 'orig_events', 'event_time'))}," in events
    assert f"eligible rows {len(expired(keycloak.pg, 'orig_admin', 'admin_event_time'))}," in admin
    assert "8 rows have no event_time and stay in the table" in events
    assert "5 rows have no admin_event_time and stay in the table" in admin
    assert "expired: event_time < 1" in events and "(Unix time in ms)" in events


def test_the_run_moves_each_expired_event_once_and_keeps_those_without_a_time(keycloak: Keycloak) -> None:
    pg, run = keycloak.pg, keycloak.run
    assert run.returncode == 0, run.stderr
    for table, orig, column in (("event_entity", "orig_events", "event_time"),
                                ("admin_event_entity", "orig_admin", "admin_event_time")):
        archived = archived_ids(keycloak.store, prefix=f"production_db/public.{table}/")
        assert set(archived) == expired(pg, orig, column)
        assert_invariant(table_ids(pg, orig), table_ids(pg, table), archived)
        assert count(pg, f"SELECT count(*) FROM {table} WHERE {column} IS NULL") == \
            count(pg, f"SELECT count(*) FROM {orig} WHERE {column} IS NULL") > 0
    assert "summary production_db.public.event_entity: completed" in run.stderr
    assert "8 rows have no event_time and stay in the table" in run.stderr


def test_archives_keep_event_time_bigint_and_manifests_give_utc_times(keycloak: Keycloak) -> None:
    found = manifests(keycloak.store, "production_db/public.event_entity/")
    assert found and all(m.timestamp_unit == "ms" for m in found)
    for m in found[:10]:
        rows = pq.read_table(pa.BufferReader(keycloak.store.get(m.key)))
        assert rows.schema.field("event_time").type == pa.int64()
        times = sorted(rows.column("event_time").to_pylist())
        first, last = datetime.fromisoformat(m.min_ts), datetime.fromisoformat(m.max_ts)
        assert (first, last) == (EPOCH + timedelta(milliseconds=times[0]), EPOCH + timedelta(milliseconds=times[-1]))
        assert f"/year={first:%Y}/month={first:%m}/day={first:%d}/" in m.key and first.date() == last.date()


def test_query_by_date_finds_the_events_of_those_days(keycloak: Keycloak) -> None:
    start = date.today() - timedelta(days=120)
    end = start + timedelta(days=9)
    proc = tool(query_cli, keycloak.config, "--database", "production_db", "--table", "event_entity",
                "--start-date", start.isoformat(), "--end-date", end.isoformat(), "--columns", "id,event_time",
                "--output-format", "jsonl")
    assert proc.exit_code == 0, proc.stderr
    got = [json.loads(line) for line in proc.stdout.splitlines()]
    lo, hi = day_ms(start), day_ms(end + timedelta(days=1))
    want = {r[0] for r in keycloak.pg.execute("SELECT id FROM orig_events WHERE event_time >= %s AND event_time < %s",
                                              (lo, hi)).fetchall()}
    assert want and {r["id"] for r in got} == want
    assert [r["event_time"] for r in got] == sorted(r["event_time"] for r in got)


def test_an_erasure_recomputes_the_replacements_utc_times(keycloak: Keycloak) -> None:
    days = [(date.today() - timedelta(days=n) - date(1970, 1, 1)).days for n in (101, 110)]
    latest = ("SELECT DISTINCT ON (event_time / 86400000) id FROM orig_events WHERE event_time / 86400000 = ANY(%s)"
              " ORDER BY event_time / 86400000, event_time DESC")  # each the last row of its object: max_ts moves
    erased = {r[0] for r in keycloak.pg.execute(latest, (days,))}
    where = f"id IN ({', '.join(repr(i) for i in sorted(erased))})"
    proc = tool(erase_cli, keycloak.config, "--database", "production_db", "--table", "event_entity", "--where", where)
    assert proc.exit_code == 0 and f"erased {len(erased)} rows" in proc.stdout, proc.output
    index = load_table(keycloak.store, "", "production_db", "public", "event_entity")[1]
    replacements = [r.manifest for r in index.objects.values() if r.replaces]
    assert len(erased) == len(replacements) == 2 and all(m.timestamp_unit == "ms" and m.rows > 0 for m in replacements)
    for m in replacements:
        rows = pq.read_table(pa.BufferReader(keycloak.store.get(m.key)), columns=["event_time"]).column(0).to_pylist()
        assert (m.min_ts, m.max_ts) == tuple((EPOCH + timedelta(milliseconds=t)).isoformat() for t in (min(rows), max(rows)))
    assert not set(archived_ids(keycloak.store, prefix="production_db/public.event_entity/")) & erased


def test_validate_finds_every_object_intact_and_on_its_day(keycloak: Keycloak) -> None:
    """After the erasure too: its replacements are on their days, and the digests record them."""
    proc = tool(validate_cli, keycloak.config, "--output-format", "json")
    assert proc.exit_code == 0, proc.output
    report = json.loads(proc.stdout)
    assert report["problems"] == [] and report["summary"]["objects"] >= 40


def test_a_missing_unit_is_a_config_error_naming_it(keycloak: Keycloak, tmp_path: Path) -> None:
    tables = [{"name": "event_entity", "timestamp_column": "event_time"}]
    config = make_config(tmp_path, dsn=keycloak.dsn, tables=tables)
    dry = tool(archiver_cli, config, "--dry-run")
    message = "public.event_entity: timestamp_column 'event_time' is bigint: give the unit of its Unix time, timestamp_unit: s, ms or us"
    assert dry.exit_code == 1 and f"error: {message}" in dry.stdout
    run = tool(archiver_cli, config)
    assert run.exit_code == 1 and message in run.stderr and "kind config" in run.stderr
    assert not (tmp_path / "archive").exists()


def test_restore_by_date_range_brings_back_those_days_exactly(keycloak: Keycloak) -> None:
    start = date.today() - timedelta(days=110)
    end = start + timedelta(days=4)
    proc = tool(restore_cli, keycloak.config, "--database", "production_db", "--table", "admin_event_entity",
                "--restore-all", "--start-date", start.isoformat(), "--end-date", end.isoformat())
    assert proc.exit_code == 0, proc.output
    days = {"lo": day_ms(start), "hi": day_ms(end + timedelta(days=1))}
    back = "SELECT * FROM admin_event_entity WHERE admin_event_time >= %(lo)s AND admin_event_time < %(hi)s"
    orig = "SELECT * FROM orig_admin WHERE admin_event_time >= %(lo)s AND admin_event_time < %(hi)s"
    assert len(keycloak.pg.execute(back, days).fetchall()) >= 5
    for a, b in ((back, orig), (orig, back)):  # every column, byte for byte, and nothing else
        assert keycloak.pg.execute(f"{a} EXCEPT ALL {b}", days).fetchall() == []
    assert count(keycloak.pg, f"SELECT count(*) FROM admin_event_entity WHERE admin_event_time < {EXPIRED_MS}") == \
        len(keycloak.pg.execute(back, days).fetchall())
