"""Is the bucket reachable and writable? A put and a delete of a tiny object under the prefix,
with the same client settings and encryption the archiver will use."""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import NoCredentialsError

from common.config import S3Config, parse_config
from common.archive.manifest import sha256_hex
from common.archive.s3client import make_client
from common.archive.storage import S3Storage

PROBE_BODY = b"pg-archiver wizard write probe; safe to delete\n"


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    message: str


def probe_client(s3: S3Config) -> Any:
    """A client like the archiver's, but quick to give up: the wizard asks a person, not a queue."""
    quick = s3.model_copy(update={"max_attempts": 1, "connect_timeout": 3.0, "read_timeout": 10.0})
    return make_client(parse_config({"s3": quick.model_dump(exclude_none=True)}))


def probe_key(prefix: str) -> str:
    name = f".pg-archiver-wizard-probe-{uuid.uuid4().hex}"
    return f"{prefix.strip('/')}/{name}" if prefix.strip("/") else name


def probe_bucket(client: Any, s3: S3Config) -> ProbeResult:
    """Put then delete one object. STANDARD class on purpose: a probe in GLACIER or DEEP_ARCHIVE
    would be billed for the class's minimum storage duration after its delete."""
    store = S3Storage(client, s3.bucket, storage_class="STANDARD", sse=s3.sse, kms_key_id=s3.kms_key_id)
    key = probe_key(s3.prefix)
    target = f"s3://{s3.bucket}/{key}"
    try:
        store.put(key, PROBE_BODY, sha256=sha256_hex(PROBE_BODY))
    except Exception as exc:  # noqa: BLE001 - any failure is the answer to "is it writable?"
        return ProbeResult(False, f"cannot write {target}: {_reason(exc)}")
    try:
        store.delete(key)
    except Exception as exc:  # noqa: BLE001
        return ProbeResult(False, f"wrote {target} but cannot delete it ({_reason(exc)}); remove it by hand")
    return ProbeResult(True, f"s3://{s3.bucket}/{s3.prefix} is writable (put and delete of a probe object)")


def _reason(exc: Exception) -> str:
    if isinstance(exc, NoCredentialsError):
        return "no AWS credentials found (environment, shared profile or instance role)"
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and response.get("Error"):
        err = response["Error"]
        code = err.get("Code", "")
        msg = err.get("Message", "")
        return f"{code} {msg}".strip() or type(exc).__name__
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]
