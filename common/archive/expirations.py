"""Expiry records (issue 29): which archived objects `expire` deleted once their rows were past the
table's archive retention.

One record per expiry run and table, `<control folder>/expired/<UTC time>-<sha256[:12]>.json`,
written BEFORE any object it names is deleted. From then on every reader (common/archive/table_index.py)
counts those manifests as gone on purpose, not as archived: a kill -9 between the record and the
deletes leaves objects that no reader counts and that the next `expire` deletes (it finishes what
a record names first). Like a withdrawal record, an entry names the exact manifest (its bytes'
SHA-256): the same rows archived again later under the same key are not taken for it.

The table's digest chain records the expiry too (common/archive/digest.py, kind `expire`), so validate
tells an expired object from a lost one and the chain stays whole."""
from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from common.archive import layout
from common.errors import DataIntegrityError
from common.archive.manifest import sha256_hex

RECORD_VERSION = 1


@dataclass(frozen=True)
class ExpiredObject:
    key: str
    manifest_sha256: str
    sha256: str
    rows: int
    max_ts: str


@dataclass
class ExpiryRecord:
    database: str
    schema: str
    table: str
    expired_at: str  # the database's clock when expiry decided
    retention_days: int
    cutoff: str
    objects: list[ExpiredObject] = field(default_factory=list)
    record_version: int = RECORD_VERSION

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), indent=1, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes, *, key: str) -> ExpiryRecord:
        try:
            doc = json.loads(data)
            doc["objects"] = [ExpiredObject(**o) for o in doc.get("objects", [])]
            return cls(**{k: v for k, v in doc.items() if k in cls.__dataclass_fields__})
        except (ValueError, TypeError, AttributeError, KeyError) as exc:
            raise DataIntegrityError(f"expiry record {key} is unreadable: {exc}") from None


def folder(prefix: str, database: str, schema: str, table: str) -> str:
    return f"{layout.control_prefix(prefix, database, schema, table)}{layout.EXPIRED}"


def is_record(key: str) -> bool:
    return layout.in_control(key) and f"/{layout.EXPIRED}" in key and key.endswith(".json")


def write(store: Any, *, prefix: str, record: ExpiryRecord, now: datetime | None = None) -> str:
    data = record.to_bytes()
    created = now or datetime.now(timezone.utc)
    key = f"{folder(prefix, record.database, record.schema, record.table)}{created:%Y%m%dT%H%M%S%fZ}-{sha256_hex(data)[:12]}.json"
    store.put(key, data, sha256=sha256_hex(data))
    return key


def read(store: Any, key: str) -> ExpiryRecord:
    return ExpiryRecord.from_bytes(bytes(store.get(key)), key=key)


class ExpiredSet:
    """The manifests expiry records name, to ask of a manifest whether it was expired."""

    def __init__(self, records: Iterable[ExpiryRecord] = ()) -> None:
        self._by_key: dict[str, set[str]] = {}
        for r in records:
            for o in r.objects:
                self._by_key.setdefault(o.key, set()).add(o.manifest_sha256)

    def names(self, key: str) -> bool:
        return key in self._by_key

    def covers(self, key: str, manifest_sha256: str | None) -> bool:
        return manifest_sha256 is not None and manifest_sha256 in self._by_key.get(key, set())

    def keys(self) -> set[str]:
        return set(self._by_key)

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_key.values())
