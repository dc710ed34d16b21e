"""How an upload is verified before rows are deleted on its strength (issue 2, common/archive/storage.py):
by the checksum S3 returns for the PUT, else by a HEAD. Against a local HTTP endpoint that answers
like S3 but can be made to lie (moto echoes whatever checksum it is sent)."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from pytest_httpserver import HTTPServer

from common.config import load_config
from common.errors import DataIntegrityError
from common.archive.manifest import hex_to_b64
from common.archive.s3client import make_client
from common.archive.storage import S3Storage
from conftest import make_config

BODY = b"archive bytes"
GOOD = hex_to_b64(hashlib.sha256(BODY).hexdigest())
BAD = hex_to_b64(hashlib.sha256(b"something else").hexdigest())
KEY = "db/public.t/year=2024/month=01/day=01/part.parquet"


@pytest.fixture()
def store(httpserver: HTTPServer, tmp_path: Path) -> S3Storage:
    cfg = load_config(make_config(tmp_path, dsn="host=127.0.0.1", bucket="lying-bucket",
                                  endpoint=httpserver.url_for("/").rstrip("/")))
    return S3Storage(make_client(cfg), "lying-bucket")


def answer(httpserver: HTTPServer, method: str, headers: dict[str, str]) -> None:
    httpserver.expect_oneshot_request(f"/lying-bucket/{KEY}", method=method).respond_with_data(
        "", headers={"ETag": '"x"', **headers})


def test_checksum_returned_by_the_put_verifies_the_upload(httpserver: HTTPServer, store: S3Storage) -> None:
    answer(httpserver, "PUT", {"x-amz-checksum-sha256": GOOD})
    store.put(KEY, BODY, sha256=hashlib.sha256(BODY).hexdigest())
    assert [r.method for r, _ in httpserver.log] == ["PUT"]  # no HEAD needed
    assert httpserver.log[0][0].headers["x-amz-checksum-sha256"] == GOOD
    assert "Expect" not in httpserver.log[0][0].headers  # no 100-continue round trip before each body


def test_a_put_answered_with_another_checksum_fails(httpserver: HTTPServer, store: S3Storage) -> None:
    answer(httpserver, "PUT", {"x-amz-checksum-sha256": BAD})
    with pytest.raises(DataIntegrityError, match="does not match upload"):
        store.put(KEY, BODY, sha256=hashlib.sha256(BODY).hexdigest())


@pytest.mark.parametrize("head,error", [
    ({"Content-Length": str(len(BODY)), "x-amz-checksum-sha256": GOOD}, None),
    ({"Content-Length": str(len(BODY)), "x-amz-checksum-sha256": BAD}, "does not match upload"),
    ({"Content-Length": str(len(BODY) + 1), "x-amz-checksum-sha256": GOOD}, "stored size"),
], ids=["head-agrees", "head-other-checksum", "head-other-size"])
def test_an_endpoint_without_checksum_in_the_put_answer_is_asked_with_head(
        httpserver: HTTPServer, store: S3Storage, head: dict[str, str], error: str | None) -> None:
    answer(httpserver, "PUT", {})
    httpserver.expect_oneshot_request(f"/lying-bucket/{KEY}", method="HEAD").respond_with_response(
        _head_response(head))
    if error is None:
        store.put(KEY, BODY, sha256=hashlib.sha256(BODY).hexdigest())
    else:
        with pytest.raises(DataIntegrityError, match=error):
            store.put(KEY, BODY, sha256=hashlib.sha256(BODY).hexdigest())
    assert [r.method for r, _ in httpserver.log] == ["PUT", "HEAD"]


def _head_response(headers: dict[str, str]) -> Any:
    from werkzeug import Response

    response = Response(b"")
    response.headers.update({"ETag": '"x"', **headers})  # after the body: a HEAD's length is the object's
    return response
