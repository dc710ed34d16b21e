"""Withdrawal records (issue 17): how a stored batch is taken back when Object Lock forbids
deleting it (its rows changed since export, or its upload was interrupted).

Why a record and not a delete: a locked version cannot be deleted, and a DELETE without a version
id only lays a delete marker over it, which anyone allowed to delete markers can remove, bringing
the batch back as archived, beside the copy its rows get when archived again: a restore would
then insert them twice. A record is itself stored under the lock, so the withdrawal is as
permanent as the object. It names the object key and the SHA-256 of the manifest bytes it
withdraws: the manifest (and so the record) of a later batch under the same key (the same rows
archived again give the same object name) differs by its created_at, so only the withdrawn
version is ever skipped.

Records live in the table's control folder, `withdrawn/` (common/archive/layout.py); archives of the legacy
layout keep theirs in `<table location>/_withdrawn/`. Every reader consults both
(common/archive/table_index.py).

Why records and not a rewrite of the manifest set that lists the batch: a set is one commit of
several batches, stored under Object Lock like the rest, and may not be changed; a record names
exactly one manifest of one key.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

from common.archive import layout
from common.errors import DataIntegrityError
from common.archive.manifest import Manifest, sha256_hex

log = logging.getLogger("archiver")


@dataclass(frozen=True)
class Withdrawal:
    key: str
    #: SHA-256 of the withdrawn manifest's bytes; None: the object had no manifest yet.
    manifest_sha256: str | None
    sha256: str | None  # the object's, per its manifest
    rows: int | None
    withdrawn_at: str
    reason: str

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), indent=1, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes, *, key: str) -> Withdrawal:
        try:
            doc = json.loads(data)
            return cls(**{k: doc.get(k) for k in cls.__dataclass_fields__})
        except (ValueError, TypeError, AttributeError) as exc:
            raise DataIntegrityError(f"withdrawal record {key} is unreadable: {exc}") from None


def record_key(prefix: str, key: str, manifest_sha256: str | None) -> str:
    name = key.rpartition("/")[2]
    return f"{layout.control_of(prefix, key)}{layout.WITHDRAWN}{name}.{(manifest_sha256 or 'no-manifest')[:16]}.json"


def is_record(key: str) -> bool:
    """A withdrawal record, in a control folder or in the legacy layout's `_withdrawn/`."""
    return key.endswith(".json") and ((layout.in_control(key) and f"/{layout.WITHDRAWN}" in key)
                                      or layout.is_legacy_record(key))


def withdraw(store: Any, *, prefix: str, manifest: Manifest, manifest_sha256: str | None, reason: str) -> Withdrawal:
    """Record that this manifest of the object does not count as archived; idempotent (the same
    record, under the same key). `manifest_sha256` None: no manifest of it was ever stored (an
    object left under Object Lock by a batch taken back before its manifest)."""
    record = Withdrawal(manifest.key, manifest_sha256, manifest.sha256, manifest.rows,
                        datetime.now(timezone.utc).isoformat(), reason)
    data = record.to_bytes()
    store.put(record_key(prefix, manifest.key, manifest_sha256), data, sha256=sha256_hex(data))
    log.info("batch %s taken back (%s): a withdrawal record says it does not count as archived", manifest.key, reason)
    return record


class Withdrawn:
    """The withdrawal records of some tables, to ask of an object whether it counts."""

    def __init__(self, records: Iterable[Withdrawal] = ()) -> None:
        self._by_key: dict[str, set[str | None]] = {}
        for r in records:
            self.add(r)

    def add(self, record: Withdrawal) -> None:
        self._by_key.setdefault(record.key, set()).add(record.manifest_sha256)

    def names(self, key: str) -> bool:
        """Some version of this key was withdrawn (its current manifest decides whether this one was)."""
        return key in self._by_key

    def covers(self, key: str, manifest_sha256: str | None) -> bool:
        return manifest_sha256 in self._by_key.get(key, set())

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_key.values())


def read(store: Any, rkey: str) -> Withdrawal:
    return Withdrawal.from_bytes(store.get(rkey), key=rkey)
