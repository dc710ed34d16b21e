"""Per-object manifests (issue 2): sha256 and size of the object, row count, pk and timestamp
ranges, schema fingerprint, format version, created-at. Stored as a sidecar `<key>.manifest.json`;
the manifest is written after its object and is what makes the object count as archived."""
from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from common.errors import DataIntegrityError

MANIFEST_VERSION = 1


@dataclass
class Manifest:
    key: str
    sha256: str
    size: int
    rows: int
    database: str
    schema: str
    table: str
    #: The key's column, or the list of a composite key's columns (issue 15); then min_pk and
    #: max_pk are lists too: the lexicographically first and last key of the object's rows.
    primary_key: str | list[str]
    timestamp_column: str
    min_pk: Any
    max_pk: Any
    min_ts: str
    max_ts: str
    schema_fingerprint: str
    format: str
    format_version: int
    archiver_version: str
    created_at: str
    #: Uncompressed bytes of the rows (their Arrow size; CSV bytes in older manifests), for the compression ratio.
    source_bytes: int = 0
    columns: list[dict[str, Any]] = field(default_factory=list)
    manifest_version: int = MANIFEST_VERSION

    #: The unit of an integer timestamp_column's Unix time (s, ms, us; issue 28), None for a
    #: timestamp or date column. min_ts and max_ts are ISO timestamps either way.
    timestamp_unit: str | None = None

    #: The leaf partition the rows were retired with, {"name", "schema", "bound"} (issue 15;
    #: archiver/partitions.py): restore recreates it from the bound when it is gone.
    partition: dict[str, Any] | None = None

    #: A child's rows, archived with their parent's (issue 28, `children: archive`): the foreign
    #: key they follow, {"schema", "table", "constraint", "columns", "referenced", "root", "batch" (the key of
    #: the archived table's object the rows moved with)}. Such an
    #: object's timestamp_column is "" (the rows need not have one); it lies in the day folder of
    #: its parent rows, and min_ts/max_ts are their parents' batch's.
    parent: dict[str, Any] | None = None

    @property
    def key_columns(self) -> list[str]:
        """The key's columns, from either shape of primary_key."""
        return [self.primary_key] if isinstance(self.primary_key, str) else list(self.primary_key)

    def key_of(self, values: Any) -> tuple[Any, ...]:
        """min_pk / max_pk as a tuple of column values, from either shape."""
        return tuple(values) if isinstance(self.primary_key, list) else (values,)

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), indent=1, sort_keys=True, default=str).encode()

    @classmethod
    def from_bytes(cls, data: bytes, *, key: str = "?") -> Manifest:
        return read_manifest(data, key=key)[0]

    def check(self, data: bytes) -> None:
        """Raise unless data is exactly the object this manifest describes."""
        if len(data) != self.size:
            raise DataIntegrityError(f"{self.key}: size {len(data)} differs from manifest size {self.size}")
        digest = hashlib.sha256(data).hexdigest()
        if digest != self.sha256:
            raise DataIntegrityError(f"{self.key}: checksum mismatch (sha256 {digest[:12]}… vs manifest {self.sha256[:12]}…)")


def read_manifest(data: bytes, *, key: str = "?") -> tuple[Manifest, dict[str, Any] | None]:
    """The manifest, and what it says it replaces when it is an erasure's replacement ({key,
    manifest_sha256, ...}, erase/rewrite.py; None for every other manifest), from one parse of the
    document: that field is not part of the Manifest every archiver run writes."""
    try:
        doc = json.loads(data)
        known = {f for f in Manifest.__dataclass_fields__}
        manifest = Manifest(**{k: v for k, v in doc.items() if k in known})
    except (ValueError, TypeError, AttributeError) as exc:
        raise DataIntegrityError(f"manifest {key} is unreadable: {exc}") from None
    replaces = doc.get("replaces")
    return manifest, replaces if isinstance(replaces, dict) else None


def replaced(objects: Iterable[tuple[str, str | None, dict[str, Any] | None]]) -> dict[str, str]:
    """Which objects an erasure has replaced, from each object's (key, sha256 of its manifest's
    bytes, what its manifest says it replaces): {old key: replacement key}. A replacement names
    the old object and the exact manifest it replaced, so an object archived again under the same
    key later is not taken for it (common/archive/catalog.py, validate/erasures.py)."""
    items = list(objects)
    named = {(r.get("key"), r.get("manifest_sha256")): key for key, _sha, r in items if r}
    return {key: named[(key, sha)] for key, sha, _r in items if sha is not None and (key, sha) in named}


def replaces_of(raw: bytes) -> dict[str, Any] | None:
    """What a manifest says it replaces (read_manifest), or None, also for an unreadable one."""
    try:
        return read_manifest(raw)[1]
    except DataIntegrityError:
        return None


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def hex_to_b64(hex_digest: str) -> str:
    """S3's ChecksumSHA256 is the base64 of the raw digest."""
    return base64.b64encode(bytes.fromhex(hex_digest)).decode()
