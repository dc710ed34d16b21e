"""S3's own legal hold (PutObjectLegalHold, issue 29) on the objects a legal hold holds, on a bucket
with Object Lock: with it ON, S3 refuses to delete the object version whatever its retention, so
a hold is kept even against a tool that knows nothing of the hold records. A bucket without
Object Lock has no such flag; there the records alone hold (common/lifecycle/holds.py)."""
from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from common.archive.storage import S3Storage

log = logging.getLogger("holds")


@dataclass(frozen=True)
class Legal:
    client: Any
    bucket: str
    locked: bool

    @classmethod
    def of(cls, catalog: Any) -> Legal:
        store = catalog.primary
        if not isinstance(store, S3Storage):
            return cls(None, "", False)
        return cls(store.client, store.bucket, bucket_locked(store.client, store.bucket))

    def set(self, keys: Iterable[str], *, on: bool) -> int:
        """Turn S3's legal hold ON (or OFF) on each key; how many were set (0 without Object Lock)."""
        if not self.locked:
            return 0
        n = 0
        for key in keys:
            self.client.put_object_legal_hold(Bucket=self.bucket, Key=key, LegalHold={"Status": "ON" if on else "OFF"})
            n += 1
        return n

    def is_on(self, key: str) -> bool:
        if not self.locked:
            return False
        try:
            answer = self.client.get_object_legal_hold(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchObjectLockConfiguration", "InvalidRequest"):
                return False
            raise
        return bool(answer.get("LegalHold", {}).get("Status") == "ON")


def bucket_locked(client: Any, bucket: str) -> bool:
    """Whether the bucket has Object Lock enabled (one request)."""
    try:
        answer = client.get_object_lock_configuration(Bucket=bucket)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "ObjectLockConfigurationNotFoundError":
            return False
        raise
    return bool(answer.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled")


def set_on(store: Any, key: str) -> None:
    """One object's S3 legal hold ON (the archiver's upload path, for an object written into a hold's scope)."""
    store.client.put_object_legal_hold(Bucket=store.bucket, Key=key, LegalHold={"Status": "ON"})
