"""Which objects a restore takes (issue 4): all of them, the UTC days between two dates inclusive, or
one key; and which it refuses: unknown keys, other tables' keys, corrupted objects, objects still
in GLACIER."""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from archive_checks import copy_archived

from common.archive.storage import S3Storage
from common.errors import ArchiverError, DataIntegrityError
from common.archive.catalog import ArchiveNotFound
from restore.engine import list_archives, request_s3_restore, restore
from restore.main import cli
from restore_support import Archived, archive, seed_days, arch, shared  # noqa: F401 - fixtures



@pytest.fixture()
def own(tmp_path: Path, pg: psycopg.Connection[Any], pg_dsn: str, bucket: str, moto_server: str,
        s3_client: Any) -> Archived:
    """An archive of the test's own, for tests that damage objects."""
    seed_days(pg)
    return archive(tmp_path, pg, dsn=pg_dsn, bucket=bucket, endpoint=moto_server, client=s3_client, table="audit_logs")


def restored_stamps(arch: Archived) -> list[datetime]:
    return [r[0] for r in arch.conn.execute("SELECT created_at FROM audit_logs ORDER BY created_at").fetchall()]


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


def test_listing_is_ordered_by_time_and_covers_every_row(arch: Archived, s3_client: Any) -> None:
    objects = list_archives(arch.cfg, database="production_db", table="audit_logs", s3_client=s3_client)

    assert sorted(o.key for o in objects) == arch.keys()
    starts = [o.start for o in objects]
    assert starts == sorted(starts)  # type: ignore[type-var]
    assert sum(o.rows or 0 for o in objects) == 16
    assert objects[0].start == utc("2024-01-01 00:00:00") and objects[-1].end == utc("2024-01-04 23:59:59.999999")


@pytest.mark.parametrize(("start", "end", "first", "last"), [
    ("2024-01-02", "2024-01-03", "2024-01-02 00:00:00", "2024-01-03 23:59:59.999999"),
    ("2024-01-04", None, "2024-01-04 00:00:00", "2024-01-04 23:59:59.999999"),
    (None, "2024-01-01", "2024-01-01 00:00:00", "2024-01-01 23:59:59.999999"),
    ("2024-01-03", "2024-01-03", "2024-01-03 00:00:00", "2024-01-03 23:59:59.999999"),
])
def test_date_range_takes_whole_utc_days_inclusive(arch: Archived, s3_client: Any, start: str | None, end: str | None,
                                                   first: str, last: str) -> None:
    restore(arch.cfg, database="production_db", table="audit_logs", restore_all=True, start_date=start,
            end_date=end, s3_client=s3_client)

    stamps = restored_stamps(arch)
    assert stamps[0] == utc(first) and stamps[-1] == utc(last)
    assert len(stamps) == 4 * (stamps[-1].date() - stamps[0].date()).days + 4


def test_date_range_with_no_objects_restores_nothing(arch: Archived, s3_client: Any) -> None:
    report = restore(arch.cfg, database="production_db", table="audit_logs", restore_all=True,
                     start_date="2023-12-01", end_date="2023-12-31", s3_client=s3_client)
    assert report.objects == [] and restored_stamps(arch) == []
    assert any("nothing to restore" in n for n in report.notes)


@pytest.mark.parametrize(("start", "end"), [("2024-1-2", None), ("yesterday", None), (None, "2024-02-30"),
                                            ("2024-01-03", "2024-01-02")])
def test_bad_dates_are_usage_errors(arch: Archived, s3_client: Any, start: str | None, end: str | None) -> None:
    with pytest.raises(ArchiverError) as err:
        restore(arch.cfg, database="production_db", table="audit_logs", restore_all=True, start_date=start,
                end_date=end, s3_client=s3_client)
    assert err.value.exit_code == 2


def test_single_key_restores_exactly_that_object(arch: Archived, s3_client: Any) -> None:
    key = arch.keys()[2]
    m = arch.manifest(key)

    report = restore(arch.cfg, database="production_db", table="audit_logs", s3_key=key, s3_client=s3_client)

    assert [o.key for o in report.objects] == [key]
    assert arch.ids() == list(range(m.min_pk, m.max_pk + 1)) and len(arch.ids()) == m.rows


def test_single_key_may_be_given_as_an_s3_url(arch: Archived, s3_client: Any) -> None:
    key = arch.keys()[0]
    report = restore(arch.cfg, database="production_db", table="audit_logs", s3_key=f"s3://{arch.bucket}/{key}",
                     s3_client=s3_client)
    assert [o.key for o in report.objects] == [key]


def test_unknown_key_is_an_error_naming_it(arch: Archived, s3_client: Any) -> None:
    key = arch.keys()[0].replace("part-", "part-missing-")
    with pytest.raises(ArchiveNotFound) as err:
        restore(arch.cfg, database="production_db", table="audit_logs", s3_key=key, s3_client=s3_client)
    assert key in str(err.value) and err.value.exit_code == 1


def test_key_of_another_table_is_refused_naming_it(arch: Archived, s3_client: Any) -> None:
    # A real object, stored under another table's prefix.
    own = arch.keys()[0]
    other = own.replace("public.audit_logs", "public.audit_logs_old")
    store = S3Storage(s3_client, arch.bucket)
    copy_archived(store, store, own, other)

    with pytest.raises(ArchiveNotFound) as err:
        restore(arch.cfg, database="production_db", table="audit_logs", s3_key=other, s3_client=s3_client)

    assert other in str(err.value) and "public.audit_logs_old" in str(err.value)
    assert arch.ids() == []


def corrupt(arch: Archived, key: str) -> None:
    body = bytearray(arch.s3.get_object(Bucket=arch.bucket, Key=key)["Body"].read())
    body[len(body) // 2] ^= 0xFF
    arch.s3.put_object(Bucket=arch.bucket, Key=key, Body=bytes(body))


def test_corrupted_object_is_refused_and_nothing_of_it_restored(own: Archived, s3_client: Any) -> None:
    arch = own
    keys = arch.keys_by_time()
    bad = keys[3]
    corrupt(arch, bad)
    m = arch.manifest(bad)

    with pytest.raises(DataIntegrityError) as err:
        restore(arch.cfg, database="production_db", table="audit_logs", restore_all=True, conflict_strategy="skip",
                s3_client=s3_client)

    assert bad in str(err.value) and "checksum" in str(err.value) and err.value.exit_code == 1
    restored = set(arch.ids())
    assert not restored & set(range(m.min_pk, m.max_pk + 1))
    # skip: each object is its own transaction, so the ones before the bad one stay restored.
    earlier = sum(arch.manifest(k).rows for k in keys[:3])
    assert len(restored) == earlier


def test_corrupted_object_in_a_fail_run_rolls_back_everything(own: Archived, s3_client: Any) -> None:
    arch = own
    corrupt(arch, arch.keys_by_time()[-1])
    with pytest.raises(DataIntegrityError):
        restore(arch.cfg, database="production_db", table="audit_logs", restore_all=True, s3_client=s3_client)
    assert arch.ids() == []


@pytest.fixture()
def glacier(tmp_path: Path, pg: psycopg.Connection[Any], pg_dsn: str, bucket: str, moto_server: str,
            s3_client: Any) -> Archived:
    seed_days(pg)
    return archive(tmp_path, pg, dsn=pg_dsn, bucket=bucket, endpoint=moto_server, client=s3_client, table="audit_logs",
                   s3={"storage_class": "GLACIER"})


def test_glacier_objects_are_marked_and_refused_with_the_way_out(glacier: Archived, s3_client: Any) -> None:
    objects = list_archives(glacier.cfg, database="production_db", table="audit_logs", s3_client=s3_client)
    assert objects and all(o.storage_class == "GLACIER" and o.needs_s3_restore for o in objects)

    with pytest.raises(ArchiverError) as err:
        restore(glacier.cfg, database="production_db", table="audit_logs", restore_all=True, s3_client=s3_client)

    assert "--request-glacier-restore" in str(err.value) and err.value.exit_code == 1
    assert glacier.ids() == []


def test_requested_glacier_restore_makes_objects_restorable(glacier: Archived, s3_client: Any) -> None:
    result = CliRunner().invoke(cli, ["--config", str(glacier.cfg_path), "--database", "production_db",
                                      "--table", "audit_logs", "--restore-all", "--request-glacier-restore", "2"])
    assert result.exit_code == 0, result.stderr
    assert f"of {len(glacier.keys())} objects" in result.stdout and all(k in result.stdout for k in glacier.keys())
    # Asked again: nothing left to request.
    assert request_s3_restore(glacier.cfg, database="production_db", table="audit_logs", days=2,
                              s3_client=s3_client) == []
    # moto completes restore requests at once; real S3 takes hours.
    objects = list_archives(glacier.cfg, database="production_db", table="audit_logs", s3_client=s3_client)
    assert not any(o.needs_s3_restore for o in objects) and sum(o.rows or 0 for o in objects) == 16

    restore(glacier.cfg, database="production_db", table="audit_logs", restore_all=True, s3_client=s3_client)

    assert glacier.dump() == glacier.before
