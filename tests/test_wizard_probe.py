"""The wizard's bucket probe: a put and a delete of a small object, against a moto S3 server over
HTTP, with the archiver's client settings (issue 8)."""
from __future__ import annotations

from typing import Any

import pytest

from common.config import S3Config
from conftest import free_port
from wizard.probe import probe_bucket, probe_client


def _keys(s3_client: Any, bucket: str) -> list[str]:
    return [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", [])]


@pytest.mark.parametrize("prefix", ["", "archives/prod", "/leading/and/trailing/"])
def test_writable_bucket_passes_and_keeps_nothing(moto_server: str, s3_client: Any, bucket: str, prefix: str) -> None:
    s3 = S3Config(bucket=bucket, prefix=prefix, endpoint_url=moto_server, storage_class="DEEP_ARCHIVE")
    result = probe_bucket(probe_client(s3), s3)
    assert result.ok, result.message
    assert f"s3://{bucket}/" in result.message
    assert _keys(s3_client, bucket) == []


def test_probe_object_is_real_standard_and_under_the_prefix(moto_server: str, s3_client: Any, bucket: str) -> None:
    """Looked at from outside while it exists: a GLACIER probe would be billed 90 days after its delete."""
    s3 = S3Config(bucket=bucket, prefix="archives", endpoint_url=moto_server, storage_class="GLACIER", sse="AES256")
    client = probe_client(s3)
    seen: list[dict[str, Any]] = []

    def look(params: dict[str, Any], **_: Any) -> None:
        seen.append({"key": params["Key"], "sent_class": params.get("StorageClass")})

    def head(**_: Any) -> None:
        h = s3_client.head_object(Bucket=bucket, Key=seen[-1]["key"])
        seen[-1].update(stored_class=h.get("StorageClass", "STANDARD"), sse=h.get("ServerSideEncryption"))

    client.meta.events.register("before-parameter-build.s3.PutObject", look)
    client.meta.events.register("after-call.s3.PutObject", head)
    assert probe_bucket(client, s3).ok
    assert len(seen) == 1
    assert seen[0]["key"].startswith("archives/.pg-archiver-wizard-probe-")
    assert seen[0]["stored_class"] == "STANDARD" and seen[0]["sse"] == "AES256"
    assert _keys(s3_client, bucket) == []


def test_missing_bucket_is_reported(moto_server: str) -> None:
    s3 = S3Config(bucket="no-such-bucket-here", endpoint_url=moto_server)
    result = probe_bucket(probe_client(s3), s3)
    assert not result.ok
    assert "cannot write s3://no-such-bucket-here/" in result.message and "NoSuchBucket" in result.message


def test_unreachable_endpoint_is_reported() -> None:
    s3 = S3Config(bucket="audit-archives", endpoint_url=f"http://127.0.0.1:{free_port()}")
    result = probe_bucket(probe_client(s3), s3)
    assert not result.ok
    assert "cannot write s3://audit-archives/" in result.message and "Could not connect" in result.message


def test_missing_credentials_are_named(moto_server: str, bucket: str, monkeypatch: pytest.MonkeyPatch,
                                       tmp_path: Any) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    s3 = S3Config(bucket=bucket, endpoint_url=moto_server)
    result = probe_bucket(probe_client(s3), s3)
    assert not result.ok and "no AWS credentials found" in result.message
