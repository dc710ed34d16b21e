"""What a real S3 server answers that moto does not (issue 31), and what the tools do with it,
against SeaweedFS (tests/seaweedfs.py) where moto cannot say it."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest

from archive_checks import archived_ids, assert_invariant, table_ids
from archiver.runner import run_archive
from common.config import load_config
from common.errors import ErrorKind
from common.exit_codes import ExitCode
from common.archive.s3client import make_client
from common.archive.storage import S3Storage
from conftest import make_config
from validate.checks import validate


class ChangedOnTheWay:
    """Flips a byte of the first `times` bodies sent for one data object, after the archiver took
    their SHA-256: the bytes change on the way to S3, as a faulty network card or proxy changes
    them. The client is the archiver's own; only its outgoing bytes are touched."""

    def __init__(self, client: Any, *, times: int) -> None:
        self.key: str | None = None
        self.left = times
        client.meta.events.register("before-parameter-build.s3.PutObject", self._flip)

    def _flip(self, params: dict[str, Any], **_: Any) -> None:
        if not params["Key"].endswith(".parquet") or self.key not in (None, params["Key"]) or not self.left:
            return
        self.key, self.left = params["Key"], self.left - 1
        body = bytearray(params["Body"])
        body[len(body) // 2] ^= 0xFF
        params["Body"] = bytes(body)


# Moto stores a body that does not match the checksum sent with it, and echoes that checksum.
@pytest.mark.s3_servers("seaweedfs")
def test_a_body_changed_on_the_way_is_refused_by_s3_and_sent_again(
        tmp_path: Path, pg_dsn: str, small_audit: psycopg.Connection[Any], bucket: str, s3_endpoint: str,
        s3_client: Any, caplog: pytest.LogCaptureFixture) -> None:
    cfg = load_config(make_config(tmp_path, dsn=pg_dsn, bucket=bucket, endpoint=s3_endpoint))
    original = table_ids(small_audit)
    client = make_client(cfg)
    changed = ChangedOnTheWay(client, times=1)
    results, code = run_archive(cfg, s3_client=client)
    assert code == ExitCode.OK and results[0].status == "completed", results
    assert changed.key is not None and f"S3 refused the upload of {changed.key} (BadDigest)" in caplog.text
    assert_invariant(original, table_ids(small_audit), archived_ids(S3Storage(s3_client, bucket)))
    assert validate(cfg, s3_client=s3_client).ok


@pytest.mark.s3_servers("seaweedfs")
def test_a_body_refused_every_time_fails_the_table_and_deletes_none_of_its_rows(
        tmp_path: Path, pg_dsn: str, small_audit: psycopg.Connection[Any], bucket: str, s3_endpoint: str,
        s3_client: Any) -> None:
    cfg = load_config(make_config(tmp_path, dsn=pg_dsn, bucket=bucket, endpoint=s3_endpoint))
    original = table_ids(small_audit)
    client = make_client(cfg)
    changed = ChangedOnTheWay(client, times=2)
    results, code = run_archive(cfg, s3_client=client)
    assert code == ExitCode.FAILURE and results[0].error_kind == ErrorKind.INTEGRITY, results
    assert changed.key is not None and f"s3://{bucket}/{changed.key}: S3 refused the upload 2 times" in str(results[0].error)
    stored = S3Storage(s3_client, bucket)
    assert stored.head(changed.key) is None
    assert_invariant(original, table_ids(small_audit), archived_ids(stored))
    _results, code = run_archive(cfg)  # the next run, its bytes intact, moves them
    assert code == ExitCode.OK
    assert_invariant(original, table_ids(small_audit), archived_ids(stored))
    assert validate(cfg, s3_client=s3_client).ok


# Moto accepts any keys.
@pytest.mark.s3_servers("seaweedfs")
def test_keys_s3_refuses_fail_the_table_with_its_answer_and_delete_nothing(
        tmp_path: Path, pg_dsn: str, small_audit: psycopg.Connection[Any], bucket: str, s3_endpoint: str,
        s3_client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_config(make_config(tmp_path, dsn=pg_dsn, bucket=bucket, endpoint=s3_endpoint,
                                  s3={"local_fallback_dir": None}))
    original = table_ids(small_audit)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    results, code = run_archive(cfg)
    assert code == ExitCode.FAILURE and results[0].error_kind == ErrorKind.CONFIG, results
    assert str(results[0].error).startswith("S3 refused the request (SignatureDoesNotMatch): ")
    assert "check the S3 credentials" in str(results[0].error) and "--verbose" not in str(results[0].error)
    assert table_ids(small_audit) == original and list(S3Storage(s3_client, bucket).list("")) == []
