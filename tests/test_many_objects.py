"""A table with more than 1,000 objects under its prefix (issue 31): S3 answers a listing 1,000 keys
at a time, and validate, restore --restore-all, query, erase and expire must each see every object, those
of the last page too.

On moto: the same tests pass on SeaweedFS (mark them s3_servers), but there they cost as much
again as here, for a listing its other tests already page through.

The archive is made cheaply, once per module and S3 server: the archiver moves the rows into one
object per day, then each object is split into one object per row with the project's own writer
(common.batch_writer, the manifest as erase writes a replacement's; one manifest set per day), so
that OBJECTS objects lie in the table's folder: its listing takes two pages. expire is tested with
--dry-run only: a real expiry would empty the archive the module's other tests share."""
from __future__ import annotations

import io
import json
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import boto3
import psycopg
import pyarrow as pa
import pytest
from psycopg import sql

from archive_checks import archived
from archiver.runner import run_archive
from common import batch_writer
from common.archive import layout, manifest_sets
from common.cli import Environment
from common.config import load_config
from common.key_range import iso, key_range, natural_column
from common.archive.manifest import Manifest, sha256_hex
from common.archive.storage import S3Storage
from conftest import make_config, once_per_server, seed_audit, throwaway_database
from erase.app import EraseOptions, run as erase
from expire.app import ExpireOptions, run as expire
from query.app import QueryOptions, run as query
from restore.app import RestoreOptions, run as restore
from validate.checks import validate

#: One row per object: 1,010 keys in the table's folder, two listing pages.
OBJECTS = 1010
PAGE = 1000


@dataclass(frozen=True)
class Many:
    dsn: str
    bucket: str
    ids: frozenset[int]  # the archived rows
    #: The objects S3 lists past the first 1,000 keys, by the id of their one row.
    last_page: dict[int, str]
    last_day: str  # the newest day partition (YYYY-MM-DD): some of its objects are on the last page
    last_day_ids: frozenset[int]


def one_object_per_row(store: S3Storage, key: str, manifest: Manifest) -> list[str]:
    """Split a stored object into one object per row, their manifests in one set (as a run's group
    of batches); remove it. Returns the new keys."""
    rows, schema, encodings, doc = batch_writer.decode(store.get(key), fmt="parquet")
    meta = {k: v for k, v in doc.items() if k not in ("format_version", "schema_fingerprint", "columns")}
    folder = key.rpartition("/")[0]
    new_keys: list[str] = []
    manifests: list[bytes] = []
    for i in range(rows.num_rows):
        row = rows.slice(i, 1)
        data = batch_writer.encode(row, fmt="parquet", level=3, schema=schema, encodings=encodings, extra_meta=meta)
        new_key = f"{folder}/part-{sha256_hex(data)[:20]}.parquet"
        m = asdict(manifest)
        m.update(key=new_key, sha256=sha256_hex(data), size=len(data), rows=1)
        m["min_pk"], m["max_pk"] = key_range(pa.table({"id": natural_column(row, "id", schema)}))
        m["min_ts"] = m["max_ts"] = iso(natural_column(row, "created_at", schema)[0].as_py())
        store.put(new_key, data, sha256=sha256_hex(data))
        manifests.append(json.dumps(m, indent=1, sort_keys=True, default=str).encode())
        new_keys.append(new_key)
    manifest_sets.write(store, prefix="", manifests=manifests)
    store.delete(key)
    return new_keys


@contextmanager
def many_objects(tmp_path: Path, endpoint: str) -> Iterator[Many]:
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    bucket = f"many-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    with throwaway_database("many_objects") as dsn, psycopg.connect(dsn, autocommit=True) as conn:
        seed_audit(conn, rows=OBJECTS, days=10, end_days_ago=100)
        ids = frozenset(r[0] for r in conn.execute("SELECT id FROM audit_logs"))
        _results, code = run_archive(load_config(make_config(tmp_path, dsn=dsn, bucket=bucket, endpoint=endpoint)))
        assert code == 0 and conn.execute("SELECT count(*) FROM audit_logs").fetchone() == (0,)
        store = S3Storage(client, bucket)
        day_objects = archived(store)
        for o in list(store.list("")):  # the run's manifest sets and digest record the day objects: they go with them
            if layout.is_control_key(o.key):
                store.delete(o.key)
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda km: one_object_per_row(store, *km), day_objects.items()))
        keys = sorted(o.key for o in store.list("") if not layout.is_control_key(o.key))
        assert len(keys) == OBJECTS > PAGE
        last_page = {row_ids(store, [k])[0]: k for k in keys[PAGE:]}
        days = sorted({parsed.day for k in keys if (parsed := layout.parse_key("", k)) is not None})
        last_day = f"year={days[-1]:%Y}/month={days[-1]:%m}/day={days[-1]:%d}/"
        yield Many(dsn, bucket, ids, last_page, days[-1].isoformat(),
                   frozenset(row_ids(store, [k for k in keys if last_day in k and k.endswith(".parquet")])))


def row_ids(store: S3Storage, keys: list[str]) -> list[int]:
    return [i for k in keys for i in batch_writer.decode(store.get(k), fmt="parquet", columns=["id"])[0]
            .column("id").to_pylist()]


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], Many]]:
    """The module's archive on each S3 server, made when a test first asks for it there."""
    with once_per_server(lambda endpoint: many_objects(tmp_path_factory.mktemp("many"), endpoint)) as on:
        yield on


@pytest.fixture()
def many(made: Callable[[str], Many], s3_endpoint: str) -> Many:
    return made(s3_endpoint)


@pytest.fixture()
def config(tmp_path: Path, many: Many, s3_endpoint: str) -> Path:
    return make_config(tmp_path, dsn=many.dsn, bucket=many.bucket, endpoint=s3_endpoint)


@pytest.fixture()
def victims(many: Many, s3_client: Any) -> Iterator[dict[int, str]]:
    """Three objects listed past the first page, by their row's id, for a test that erases them
    from the module's archive. Afterwards the keys it added go and these come back as they were
    (a copy of the archive per test cost a thousand requests)."""
    store = S3Storage(s3_client, many.bucket)
    chosen = {i: many.last_page[i] for i in sorted(many.last_page)[-3:]}
    saved = {key: store.get(key) for key in chosen.values()}
    before = {o.key for o in store.list("")}
    yield chosen
    for key in {o.key for o in store.list("")} - before:
        store.delete(key)
    for key, data in saved.items():
        store.put(key, data, sha256=sha256_hex(data), verify=False)


def test_validate_checks_every_object(config: Path, many: Many, s3_client: Any) -> None:
    report = validate(load_config(config), s3_client=s3_client)
    assert report.ok, report.text_lines()
    assert (report.summary.objects, report.summary.rows) == (OBJECTS, OBJECTS)


def test_restore_all_restores_every_object(config: Path, many: Many) -> None:
    target = f"copy_{uuid.uuid4().hex[:8]}"
    out = io.StringIO()
    code = restore(RestoreOptions(config_path=config, database="production_db", table="audit_logs", restore_all=True,
                                  target_table=f"public.{target}"), env=Environment(stdout=out, stderr=io.StringIO()))
    assert code == 0, out.getvalue()
    with psycopg.connect(many.dsn, autocommit=True) as conn:
        restored = [r[0] for r in conn.execute(sql.SQL("SELECT id FROM {}").format(sql.Identifier(target)))]
        conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(target)))
    assert sorted(restored) == sorted(many.ids)


def test_query_finds_the_objects_listed_past_the_first_page(config: Path, many: Many) -> None:
    out = io.StringIO()
    code = query(QueryOptions(config_path=config, database="production_db", table="audit_logs", columns=("id",),
                              start_date=many.last_day, output_format="jsonl"),
                 env=Environment(stdout=out, stderr=io.StringIO()))
    assert code == 0
    assert sorted(json.loads(line)["id"] for line in out.getvalue().splitlines()) == sorted(many.last_day_ids)


def test_erase_finds_rows_in_objects_past_the_first_page(config: Path, many: Many, s3_client: Any,
                                                         victims: dict[int, str]) -> None:
    store = S3Storage(s3_client, many.bucket)
    before = {o.key for o in store.list("")}
    out = io.StringIO()
    code = erase(EraseOptions(config_path=config, database="production_db", table="audit_logs",
                              where=f"id IN ({', '.join(map(str, victims))})"), env=Environment(stdout=out))
    assert code == 0 and f"erased {len(victims)} rows" in out.getvalue(), out.getvalue()
    after = {o.key for o in store.list("")}
    assert before - after == set(victims.values())  # their manifests stay in their sets, superseded
    replacements = [k for k in after - before if k.endswith(".parquet")]
    assert len(replacements) == len(victims) and row_ids(store, replacements) == []


def test_expire_plans_every_object_listed_past_the_first_page(tmp_path: Path, many: Many, s3_endpoint: str) -> None:
    config = make_config(tmp_path, dsn=many.dsn, bucket=many.bucket, endpoint=s3_endpoint,
                         tables=[{"name": "audit_logs", "timestamp_column": "created_at", "primary_key": "id",
                                  "archive_retention_days": 30}])
    out = io.StringIO()
    code = expire(ExpireOptions(config_path=config, dry_run=True, output_format="json"),
                  env=Environment(stdout=out, stderr=io.StringIO()))
    assert code == 0
    [table] = json.loads(out.getvalue())["tables"]
    expired = {e["key"] for e in table["expired"]}
    assert table["objects"] == len(expired) == OBJECTS and set(many.last_page.values()) <= expired


# -- a control folder past 1,000 keys --------------------------------------------------------
#: Run digests kept from earlier runs: a table archived daily for three years has this many. They
#: sort before the manifest sets (`digests/` < `manifests/`), so the sets are listed on page two.
EARLIER_DIGESTS = 1000


@dataclass(frozen=True)
class LongLived:
    dsn: str
    bucket: str
    ids: frozenset[int]


@pytest.fixture(scope="module")
def long_lived(tmp_path_factory: pytest.TempPathFactory, moto_server: str) -> Iterator[LongLived]:
    """A small archive whose table's control folder holds EARLIER_DIGESTS digests before its sets:
    copies of its own digest under earlier names (one listing page of digests costs only PUTs:
    restore and query never read them). Erase finds its objects through the same listing
    (common/archive/catalog.py) but replays every digest: a thousand GETs, too slow for what it adds."""
    client = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    bucket = f"long-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    tmp_path = tmp_path_factory.mktemp("long-lived")
    with throwaway_database("long_lived") as dsn, psycopg.connect(dsn, autocommit=True) as conn:
        seed_audit(conn, rows=30, days=3, end_days_ago=100)
        ids = frozenset(r[0] for r in conn.execute("SELECT id FROM audit_logs"))
        _results, code = run_archive(load_config(make_config(tmp_path, dsn=dsn, bucket=bucket, endpoint=moto_server)))
        assert code == 0
        store = S3Storage(client, bucket)
        control = layout.control_prefix("", "production_db", "public", "audit_logs")
        (digest_key,) = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=control + layout.DIGESTS)["Contents"]]
        body = store.get(digest_key)
        names = [f"{control}{layout.DIGESTS}2020{n:010d}T000000000000Z-{n:012x}.json" for n in range(EARLIER_DIGESTS)]
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda k: store.put(k, body, sha256=sha256_hex(body), verify=False), names))
        listed = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=control)
                  for o in page.get("Contents", [])]
        assert not any(map(layout.is_manifest_set, listed[:PAGE])) and any(map(layout.is_manifest_set, listed[PAGE:]))
        yield LongLived(dsn, bucket, ids)


@pytest.fixture()
def long_config(tmp_path: Path, long_lived: LongLived, moto_server: str) -> Path:
    return make_config(tmp_path, dsn=long_lived.dsn, bucket=long_lived.bucket, endpoint=moto_server)


def test_restore_all_reads_the_sets_listed_past_the_first_page(long_config: Path, long_lived: LongLived) -> None:
    target = f"copy_{uuid.uuid4().hex[:8]}"
    out = io.StringIO()
    code = restore(RestoreOptions(config_path=long_config, database="production_db", table="audit_logs",
                                  restore_all=True, target_table=f"public.{target}"),
                   env=Environment(stdout=out, stderr=io.StringIO()))
    assert code == 0, out.getvalue()
    with psycopg.connect(long_lived.dsn, autocommit=True) as conn:
        restored = sorted(r[0] for r in conn.execute(sql.SQL("SELECT id FROM {}").format(sql.Identifier(target))))
    assert restored == sorted(long_lived.ids)


def query_ids(config: Path) -> list[int]:
    out = io.StringIO()
    code = query(QueryOptions(config_path=config, database="production_db", table="audit_logs", columns=("id",),
                              output_format="jsonl"), env=Environment(stdout=out, stderr=io.StringIO()))
    assert code == 0
    return sorted(json.loads(line)["id"] for line in out.getvalue().splitlines())


def test_query_reads_the_sets_listed_past_the_first_page(long_config: Path, long_lived: LongLived) -> None:
    assert query_ids(long_config) == sorted(long_lived.ids)
