"""Builds the boto3 S3 client from config: the only place that does (clients are injected elsewhere)."""
from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import botocore.handlers
import botocore.session
from botocore.config import Config as BotoConfig

from common.config import Config
from common.archive.fallback import FallbackDir
from common.lock import check_bucket
from common.archive.storage import LocalStorage, S3Storage, Storage


def make_client(cfg: Config) -> Any:
    s3 = cfg.s3
    # botocore's own session: boto3 adds nothing used here and ~50 ms to every tool's start.
    client = botocore.session.get_session().create_client(
        "s3",
        region_name=s3.region,
        endpoint_url=s3.endpoint_url,
        config=BotoConfig(
            retries={"max_attempts": s3.max_attempts, "mode": "standard"},
            connect_timeout=s3.connect_timeout,
            read_timeout=s3.read_timeout,
            # Moto and MinIO accept the checksum headers; "when_required" avoids a second,
            # CRC-based checksum on top of the SHA-256 we send ourselves.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )
    # "Expect: 100-continue" on every PUT costs a round trip before the body is sent: one per
    # object and one per manifest. It spares sending a body S3 would refuse; ours are small.
    client.meta.events.unregister("before-call.s3", botocore.handlers.add_expect_header)
    client.meta.events.register("before-send.s3", _count_request)
    return client


#: S3 requests this process sent through clients make_client() built, by operation (PutObject,
#: GetObject, ...): each HTTP attempt, retries included, as S3 bills them. The archiver's metrics
#: show them (archiver_s3_requests_total) and the bench divides them by the objects archived.
_requests: Counter[str] = Counter()
_requests_lock = threading.Lock()


def _count_request(event_name: str = "", **_kwargs: Any) -> None:
    with _requests_lock:
        _requests[event_name.rpartition(".")[2]] += 1


def s3_requests() -> dict[str, int]:
    """The requests counted so far, by operation."""
    with _requests_lock:
        return dict(_requests)


def primary_storage(cfg: Config, client: Any | None = None) -> Storage:
    """The configured archive store: S3 or local_dir (same key layout)."""
    if cfg.storage == "local":
        assert cfg.local_dir is not None
        return LocalStorage(cfg.local_dir, location="local")
    return S3Storage(client if client is not None else make_client(cfg), cfg.s3.bucket,
                     storage_class=cfg.s3.storage_class, sse=cfg.s3.sse, kms_key_id=cfg.s3.kms_key_id,
                     object_lock=cfg.s3.object_lock)


def check_object_lock(cfg: Config, store: Storage) -> None:
    """With s3.object_lock configured, the bucket must have Object Lock enabled (exit 2 otherwise)."""
    if cfg.s3.object_lock is not None and isinstance(store, S3Storage):
        check_bucket(store.client, store.bucket)


def fallback_storage(cfg: Config) -> FallbackDir | None:
    """The S3-outage fallback directory, when one is configured (only with storage: s3)."""
    if cfg.storage == "s3" and cfg.s3.local_fallback_dir:
        return FallbackDir(cfg.s3.local_fallback_dir)
    return None
