"""validate (issue 5): every problem type produced on purpose in a real archive (archiver -> moto S3,
real PostgreSQL), then found with the right type and key; a clean archive set has no problems."""
from __future__ import annotations

import hashlib
import io
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import boto3
import psycopg
import pyarrow.parquet as pq
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from archiver.runner import run_archive
from archive_checks import archived, drop_manifest, edit_manifest, set_holding
from common import batch_writer
from common.archive import layout, manifest_sets
from common.archive.storage import S3Storage
from common.config import Config, load_config
from common.errors import ConfigError, ServiceUnavailable, UsageError
from common.archive.manifest import Manifest, hex_to_b64
from conftest import ADMIN_DSN, free_port, make_config, once_per_server, seed_audit
from validate.checks import validate
from validate.dbcheck import LiveRows
from validate.inventory import build_scope
from validate.report import Report

ROWS = 300  # over 5 days, 100+ days ago: 6 day-partitioned objects, all expired


@dataclass
class Archive:
    path: Path
    cfg: Config
    s3: Any
    bucket: str
    #: Only archives with a database of their own may change it (see own_archive).
    own_pg: psycopg.Connection[Any] | None = None

    @property
    def pg(self) -> psycopg.Connection[Any]:
        assert self.own_pg is not None, "this test changes the database: use own_archive"
        return self.own_pg

    def data_keys(self) -> list[str]:
        keys = [o["Key"] for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket)
                for o in page.get("Contents", [])]
        return sorted(k for k in keys if not layout.is_manifest(k) and not layout.is_control_key(k))  # digests: no rows

    def get(self, key: str) -> bytes:
        return bytes(self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read())

    def put(self, key: str, data: bytes, *, with_checksum: bool = False) -> None:
        extra = {"ChecksumAlgorithm": "SHA256", "ChecksumSHA256": hex_to_b64(hashlib.sha256(data).hexdigest())} if with_checksum else {}
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=data, **extra)

    def delete(self, key: str) -> None:
        self.s3.delete_object(Bucket=self.bucket, Key=key)

    @property
    def store(self) -> S3Storage:
        return S3Storage(self.s3, self.bucket)

    def manifest(self, key: str) -> Manifest:
        return archived(self.store)[key]

    def put_object_with_manifest(self, key: str, data: bytes, manifest: Manifest) -> None:
        """What an archiver would have written: the object and a manifest that matches it."""
        m = replace(manifest, key=key, sha256=hashlib.sha256(data).hexdigest(), size=len(data))
        self.put(key, data)
        manifest_sets.write(self.store, prefix="", manifests=[m])

    def drop_manifest(self, key: str) -> None:
        drop_manifest(self.store, key)

    def validate(self, **kw: Any) -> Report:
        return validate(self.cfg, s3_client=self.s3, **kw)


def archive_table(cfg_path: Path, s3: Any = None) -> Config:
    cfg = load_config(cfg_path)
    results, code = run_archive(cfg, s3_client=s3)
    assert int(code) == 0, results
    assert sum(r.rows for r in results) == ROWS * len(results)
    return cfg


@dataclass(frozen=True)
class Pristine:
    dsn: str
    bucket: str


@contextmanager
def archived_once(tmp_path: Path, endpoint: str) -> Iterator[Pristine]:
    """An archiver run into a bucket of its own, from a database of its own (left with its table
    emptied by the move)."""
    name = f"archiver_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = make_conninfo(ADMIN_DSN, dbname=name)
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    bucket = f"pristine-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            seed_audit(conn, rows=ROWS, days=5, end_days_ago=100)
        archive_table(make_config(tmp_path, dsn=dsn, bucket=bucket, endpoint=endpoint), s3)
        yield Pristine(dsn, bucket)
    finally:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="module")
def pristines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], Pristine]]:
    """One archiver run per module and S3 server, which each test copies into a fresh bucket: much
    cheaper than archiving again per test."""
    with once_per_server(lambda endpoint: archived_once(tmp_path_factory.mktemp("pristine"), endpoint)) as on:
        yield on


@pytest.fixture()
def pristine(pristines: Callable[[str], Pristine], s3_endpoint: str) -> Pristine:
    return pristines(s3_endpoint)


@pytest.fixture()
def archive(tmp_path: Path, pristine: Pristine, s3_endpoint: str, s3_client: Any, bucket: str) -> Archive:
    """The module's archive, copied into this test's bucket; the test may damage it at will but must
    not change the (shared) database."""
    for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=pristine.bucket):
        for o in page.get("Contents", []):
            s3_client.copy_object(Bucket=bucket, Key=o["Key"], CopySource={"Bucket": pristine.bucket, "Key": o["Key"]})
    path = make_config(tmp_path, dsn=pristine.dsn, bucket=bucket, endpoint=s3_endpoint)
    return Archive(path, load_config(path), s3_client, bucket)


@pytest.fixture()
def own_archive(tmp_path: Path, pg: psycopg.Connection[Any], pg_dsn: str, s3_endpoint: str, s3_client: Any,
                bucket: str) -> Archive:
    """A fresh database and archive, for tests that change the database."""
    seed_audit(pg, rows=ROWS, days=5, end_days_ago=100)
    path = make_config(tmp_path, dsn=pg_dsn, bucket=bucket, endpoint=s3_endpoint)
    return Archive(path, archive_table(path, s3_client), s3_client, bucket, pg)


def found(report: Report) -> set[tuple[str, str]]:
    return {(p.type, p.key) for p in report.problems}


def flip_byte(data: bytes, at: int | None = None) -> bytes:
    i = len(data) // 2 if at is None else at
    return data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:]


# -- clean -----------------------------------------------------------------------------------
@pytest.mark.s3_servers
@pytest.mark.parametrize("quick", [False, True], ids=["full", "quick"])
def test_clean_archive_set_has_no_problems(archive: Archive, quick: bool) -> None:
    report = archive.validate(quick=quick)
    assert report.problems == []
    assert report.ok
    assert report.summary.objects == len(archive.data_keys()) == 6
    assert report.summary.rows == ROWS
    assert report.summary.bytes == sum(archive.manifest(k).size for k in archive.data_keys())


def test_full_check_downloads_every_object_and_quick_check_none(archive: Archive) -> None:
    gets: list[str] = []
    archive.s3.meta.events.register("before-parameter-build.s3.GetObject", lambda params, **_: gets.append(params["Key"]))
    archive.validate(quick=True)
    assert [k for k in gets if not layout.is_manifest(k) and not layout.is_control_key(k)] == []  # sets, digests: a few KB
    gets.clear()
    archive.validate()
    assert sorted(k for k in gets if not layout.is_manifest(k) and not layout.is_control_key(k)) == archive.data_keys()


@pytest.fixture()
def jsonl_archive(tmp_path: Path, pg: psycopg.Connection[Any], pg_dsn: str, moto_server: str, s3_client: Any,
                  bucket: str) -> Archive:
    seed_audit(pg, rows=ROWS, days=5, end_days_ago=100)
    path = make_config(tmp_path, dsn=pg_dsn, bucket=bucket, endpoint=moto_server, defaults={"format": "jsonl"})
    return Archive(path, archive_table(path, s3_client), s3_client, bucket, pg)


def test_clean_jsonl_archive_has_no_problems(jsonl_archive: Archive) -> None:
    report = jsonl_archive.validate()
    assert report.problems == []
    assert (report.summary.objects, report.summary.rows) == (6, ROWS)
    assert all(k.endswith(".jsonl.zst") for k in jsonl_archive.data_keys())


def test_jsonl_row_put_back_is_found_although_its_keys_are_text(jsonl_archive: Archive) -> None:
    # JSONL keeps keys as text, so "100" < "99": a key range across 99/100 must not hide the row.
    holder = next(k for k in jsonl_archive.data_keys()
                  if 100 in [int(v) for v in batch_writer.decode(jsonl_archive.get(k), fmt="jsonl", columns=["id"])[0].column("id").to_pylist()])
    jsonl_archive.pg.execute("INSERT INTO audit_logs (id, created_at) VALUES (100, now() - interval '100 days')")
    assert found(jsonl_archive.validate()) == {("rows_still_in_database", holder)}


# -- integrity of one object -----------------------------------------------------------------
@pytest.mark.s3_servers
def test_flipped_byte_is_a_checksum_mismatch(archive: Archive) -> None:
    key = archive.data_keys()[2]
    archive.put(key, flip_byte(archive.get(key)))
    report = archive.validate()
    assert found(report) == {("checksum_mismatch", key)}
    p = report.problems[0]
    assert (p.database, p.table) == ("production_db", "public.audit_logs")


@pytest.mark.s3_servers
def test_quick_check_compares_the_checksum_s3_stored(archive: Archive) -> None:
    key = archive.data_keys()[0]
    archive.put(key, flip_byte(archive.get(key)), with_checksum=True)
    assert found(archive.validate(quick=True)) == {("checksum_mismatch", key)}


@pytest.mark.s3_servers
def test_quick_check_says_when_it_could_compare_only_sizes(archive: Archive) -> None:
    key = archive.data_keys()[0]
    archive.put(key, flip_byte(archive.get(key)))  # same size, and no checksum stored with it
    report = archive.validate(quick=True)
    assert report.ok  # the limit of --quick: a full check is what reads the bytes
    assert "1 objects have no checksum stored with them; --quick compared only their sizes" in report.notes
    assert found(archive.validate()) == {("checksum_mismatch", key)}


@pytest.mark.parametrize("quick", [False, True], ids=["full", "quick"])
def test_truncated_object_is_a_size_mismatch(archive: Archive, quick: bool) -> None:
    key = archive.data_keys()[1]
    archive.put(key, archive.get(key)[:-100])
    assert found(archive.validate(quick=quick)) == {("size_mismatch", key)}


@pytest.mark.parametrize("quick", [False, True], ids=["full", "quick"])
def test_deleted_object_is_missing(archive: Archive, quick: bool) -> None:
    key = archive.data_keys()[3]
    archive.delete(key)
    report = archive.validate(quick=quick)
    assert found(report) == {("missing_object", key)}
    assert "gone" in report.problems[0].message


def test_dropped_manifest_leaves_an_orphaned_file(archive: Archive) -> None:
    key = archive.data_keys()[4]
    archive.drop_manifest(key)
    assert found(archive.validate()) == {("orphaned_file", key)}


@pytest.mark.parametrize("stray", [
    "notes.txt",
    "production_db/public.audit_logs/README.md",
    "production_db/public.audit_logs/year=2026/month=01/day=01/copy-of-something.csv",
])
def test_stray_file_under_the_prefix_is_orphaned(archive: Archive, stray: str) -> None:
    archive.put(stray, b"not an archive")
    report = archive.validate()
    assert found(report) == {("orphaned_file", stray)}
    assert "stray" in report.problems[0].message


@pytest.mark.parametrize("payload", ["garbage", "parquet_without_metadata"])
def test_object_that_is_not_a_valid_archive_is_unreadable(archive: Archive, payload: str) -> None:
    key = archive.data_keys()[0]
    if payload == "garbage":
        data = b"PAR1" + b"\x00" * 64
    else:
        buf = io.BytesIO()
        rows = pq.read_table(io.BytesIO(archive.get(key)))
        pq.write_table(rows.replace_schema_metadata(None), buf)
        data = buf.getvalue()
    archive.put_object_with_manifest(key, data, archive.manifest(key))
    report = archive.validate()
    assert found(report) == {("unreadable_archive", key)}
    assert "invalid" in report.problems[0].message


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b'{"entries": [{"manifest": {"key": "only a key"}}]}'])
def test_unreadable_manifest_set_is_reported_not_fatal(archive: Archive, content: bytes) -> None:
    """Its objects have no manifest that counts: orphaned, beside the set's own finding."""
    key = archive.data_keys()[5]
    skey = set_holding(archive.store, key)
    listed = [k for k in archive.data_keys() if set_holding(archive.store, k) == skey]
    archive.put(skey, content)
    report = archive.validate()
    assert found(report) == {("unreadable_archive", skey)} | {("orphaned_file", k) for k in listed}
    assert "manifest set" in next(p for p in report.problems if p.type == "unreadable_archive").message


def test_edited_manifest_count_is_a_row_count_mismatch(archive: Archive) -> None:
    key = archive.data_keys()[2]
    m = archive.manifest(key)
    edit_manifest(archive.store, key, rows=m.rows + 7)
    report = archive.validate()
    assert found(report) == {("row_count_mismatch", key)}
    assert f"holds {m.rows} rows" in report.problems[0].message


def test_object_under_the_wrong_day_is_a_partition_mismatch(archive: Archive) -> None:
    key = archive.data_keys()[0]
    parsed = layout.parse_key("", key)
    assert parsed is not None
    moved = layout.object_key("", parsed.database, parsed.schema, parsed.table, parsed.day + timedelta(days=40), parsed.name)
    archive.put_object_with_manifest(moved, archive.get(key), archive.manifest(key))
    archive.delete(key)
    archive.drop_manifest(key)
    report = archive.validate()
    # The run digest recorded the object under its old key: the move breaks the chain there too.
    assert found(report) == {("partition_mismatch", moved), ("digest_chain_broken", key)}
    assert parsed.day.isoformat() in report.problems[0].message


# -- across objects --------------------------------------------------------------------------
@pytest.mark.parametrize("quick", [False, True], ids=["full", "quick"])
def test_copied_object_overlaps_its_original(archive: Archive, quick: bool) -> None:
    key = archive.data_keys()[1]
    copy = key.rsplit("/", 1)[0] + "/part-copy.parquet"  # sorts after part-2026...
    archive.put_object_with_manifest(copy, archive.get(key), archive.manifest(key))
    report = archive.validate(quick=quick)
    assert found(report) == {("overlapping_archives", copy)}
    assert key in report.problems[0].message


def test_object_sharing_some_keys_overlaps(archive: Archive) -> None:
    key = archive.data_keys()[3]
    rows = pq.read_table(io.BytesIO(archive.get(key))).slice(0, 5)  # keeps the pg_archiver metadata
    buf = io.BytesIO()
    pq.write_table(rows, buf, compression="zstd")
    ids = rows.column("id").to_pylist()
    extra = key.rsplit("/", 1)[0] + "/part-extra.parquet"
    archive.put_object_with_manifest(extra, buf.getvalue(),
                                     replace(archive.manifest(key), rows=5, min_pk=min(ids), max_pk=max(ids)))
    report = archive.validate()
    assert found(report) == {("overlapping_archives", extra)}
    assert "shares 5 primary keys" in report.problems[0].message


def test_archived_row_put_back_is_still_in_the_database(own_archive: Archive) -> None:
    key = own_archive.data_keys()[2]
    m = own_archive.manifest(key)
    own_archive.pg.execute("INSERT INTO audit_logs (id, created_at) VALUES (%s, %s)", (m.max_pk, m.max_ts))
    report = own_archive.validate()
    assert found(report) == {("rows_still_in_database", key)}
    assert "rerun the archiver to finish the move" in report.problems[0].message
    assert f"id {m.max_pk}" in report.problems[0].message


def test_row_put_back_is_found_with_a_text_primary_key(tmp_path: Path, pg: psycopg.Connection[Any], pg_dsn: str,
                                                      moto_server: str, s3_client: Any, bucket: str) -> None:
    # Text keys get no range probe (a collation orders them unlike Arrow); the key set decides.
    pg.execute("CREATE TABLE codes (code text PRIMARY KEY, created_at timestamptz NOT NULL)")
    pg.execute("INSERT INTO codes SELECT chr(65 + g % 3) || '-' || g || CASE WHEN g % 2 = 0 THEN 'a' ELSE 'B' END,"
               " now() - interval '100 days' - g * interval '1 hour' FROM generate_series(1, 60) g")
    path = make_config(tmp_path, dsn=pg_dsn, bucket=bucket, endpoint=moto_server,
                       tables=[{"name": "codes", "primary_key": "code"}])
    cfg = load_config(path)
    assert int(run_archive(cfg, s3_client=s3_client)[1]) == 0
    arch = Archive(path, cfg, s3_client, bucket, pg)
    assert arch.validate().ok
    key = arch.data_keys()[0]
    code = pq.read_table(io.BytesIO(arch.get(key))).column("code")[0].as_py()
    pg.execute("INSERT INTO codes VALUES (%s, now() - interval '100 days')", (code,))
    assert found(arch.validate()) == {("rows_still_in_database", key)}


def test_rows_kept_on_purpose_are_not_an_unfinished_move(tmp_path: Path, pg: psycopg.Connection[Any], pg_dsn: str,
                                                         moto_server: str, s3_client: Any, bucket: str) -> None:
    seed_audit(pg, rows=ROWS, days=5, end_days_ago=100)
    path = make_config(tmp_path, dsn=pg_dsn, bucket=bucket, endpoint=moto_server,
                       defaults={"delete_after_archive": False})
    cfg = archive_table(path, s3_client)
    assert pg.execute("SELECT count(*) FROM audit_logs").fetchone() == (ROWS,)
    report = validate(cfg, s3_client=s3_client)
    assert report.ok, report.problems
    assert any("delete_after_archive" in n for n in report.notes)


def test_batch_left_in_the_fallback_directory_is_pending(own_archive: Archive) -> None:
    own_archive.pg.execute("INSERT INTO audit_logs (created_at) SELECT now() - interval '200 days' FROM generate_series(1, 10)")
    s3_down = own_archive.cfg.model_copy(deep=True)
    s3_down.s3.endpoint_url = f"http://127.0.0.1:{free_port()}"
    results, _code = run_archive(s3_down)
    assert results[0].fallback_objects == 1
    report = own_archive.validate()
    [(kind, key)] = found(report)
    assert kind == "pending_fallback"
    assert Path(own_archive.cfg.s3.local_fallback_dir or "", key).is_file()
    assert "run the archiver with S3 reachable" in report.problems[0].message


@pytest.mark.s3_servers
def test_open_multipart_upload_is_incomplete(archive: Archive) -> None:
    key = layout.object_key("", "production_db", "public", "audit_logs", date(2026, 1, 2), "part-big.parquet")
    archive.s3.create_multipart_upload(Bucket=archive.bucket, Key=key)
    report = archive.validate()
    assert found(report) == {("incomplete_upload", key)}
    assert "abort" in report.problems[0].message


@pytest.mark.s3_servers
def test_validation_changes_nothing(own_archive: Archive) -> None:
    key = own_archive.data_keys()[0]
    own_archive.put(key, flip_byte(own_archive.get(key)))
    own_archive.drop_manifest(own_archive.data_keys()[1])
    own_archive.pg.execute("INSERT INTO audit_logs (id, created_at) VALUES (1, now() - interval '100 days')")

    def snapshot() -> tuple[Any, ...]:
        objects = sorted((o["Key"], o["ETag"]) for o in own_archive.s3.list_objects_v2(Bucket=own_archive.bucket)["Contents"])
        return objects, own_archive.pg.execute("SELECT count(*), sum(id) FROM audit_logs").fetchone()

    before = snapshot()
    assert not own_archive.validate().ok
    assert snapshot() == before


def test_database_sessions_of_the_cross_check_refuse_writes(archive: Archive) -> None:
    with LiveRows(archive.cfg, build_scope(archive.cfg).tables, size=1) as live:
        table = live.lookup("production_db", "public", "audit_logs")
        assert table is not None
        with table.pool.connection() as conn, pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("DELETE FROM audit_logs")


# -- scope and filters -----------------------------------------------------------------------
def test_since_limits_the_check_to_recent_archives(archive: Archive) -> None:
    now = datetime.now(timezone.utc)
    assert archive.validate(since=now - timedelta(hours=1)).summary.objects == 6
    assert archive.validate(since=now + timedelta(days=1)).summary.objects == 0
    assert archive.validate(since=datetime(2000, 1, 1)).summary.objects == 6  # naive: read as UTC


def test_table_filter_checks_only_that_table(tmp_path: Path, pg: psycopg.Connection[Any], pg_dsn: str,
                                             moto_server: str, s3_client: Any, bucket: str) -> None:
    seed_audit(pg, rows=ROWS, days=5, end_days_ago=100)
    pg.execute("CREATE TABLE other_logs (LIKE audit_logs INCLUDING ALL); INSERT INTO other_logs SELECT * FROM audit_logs")
    tables = [{"name": "audit_logs"}, {"name": "other_logs"}]
    cfg = archive_table(make_config(tmp_path, dsn=pg_dsn, bucket=bucket, endpoint=moto_server, tables=tables), s3_client)
    arch = Archive(tmp_path / "config.yaml", cfg, s3_client, bucket)
    broken = next(k for k in arch.data_keys() if "/public.audit_logs/" in k)
    arch.delete(broken)
    assert arch.validate(table="other_logs").ok
    assert arch.validate(table="public.other_logs", database="production_db").summary.objects == 6
    assert found(arch.validate(table="audit_logs")) == {("missing_object", broken)}
    assert found(arch.validate(database="production_db")) == {("missing_object", broken)}


@pytest.mark.parametrize("filters, error", [
    ({"table": "no_such_table"}, UsageError),
    ({"database": "no_such_db"}, ConfigError),
])
def test_unknown_filter_is_a_usage_error(archive: Archive, filters: dict[str, str], error: type[Exception]) -> None:
    with pytest.raises(error):
        archive.validate(**filters)


# -- unreachable services ----------------------------------------------------------------------
def test_unreachable_s3_is_service_unavailable(archive: Archive) -> None:
    cfg = archive.cfg.model_copy(deep=True)
    cfg.s3.endpoint_url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ServiceUnavailable, match="S3"):
        validate(cfg, quick=True)


def test_unreachable_database_is_service_unavailable(archive: Archive) -> None:
    cfg = archive.cfg.model_copy(deep=True)
    cfg.databases[0].dsn = f"host=127.0.0.1 port={free_port()} user=root dbname=postgres"
    with pytest.raises(ServiceUnavailable, match="database"):
        validate(cfg, s3_client=archive.s3)


@pytest.mark.s3_servers
def test_missing_bucket_is_a_config_error(archive: Archive) -> None:
    cfg = archive.cfg.model_copy(deep=True)
    cfg.s3.bucket = "no-such-bucket-here"
    with pytest.raises(ConfigError, match="no-such-bucket-here"):
        validate(cfg, s3_client=archive.s3, quick=True)


# -- storage: local ----------------------------------------------------------------------------
def test_local_storage_archives_are_checked_the_same_way(tmp_path: Path, pg: psycopg.Connection[Any], pg_dsn: str) -> None:
    seed_audit(pg, rows=ROWS, days=5, end_days_ago=100)
    cfg = archive_table(make_config(tmp_path, dsn=pg_dsn))
    assert cfg.storage == "local"
    assert validate(cfg).ok
    root = Path(cfg.local_dir or "")
    files = sorted(p for p in root.rglob("*.parquet"))
    assert len(files) == 6
    files[0].write_bytes(flip_byte(files[0].read_bytes()))
    (root / "stray.txt").write_text("left behind")
    report = validate(cfg)
    assert found(report) == {("checksum_mismatch", files[0].relative_to(root).as_posix()),
                             ("orphaned_file", "stray.txt")}
    assert report.summary.objects == 7
