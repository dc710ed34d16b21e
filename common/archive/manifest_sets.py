"""Manifest sets (issue 27): the manifests of the objects one commit made part of a table's archive,
in one control object, `<control folder>/manifests/<UTC time>-<sha256[:12]>.json`.

Before, each data object had its own manifest sidecar beside it in the table's folder: two PUTs per
object, and a folder that engines read as a table only after skipping the sidecars. Now the
archiver stores a group's objects, deletes their rows in a transaction it has not committed, then
stores ONE set for the group and only then commits (archiver/table_job.py): about one request per
data object, and still no row leaves the table before the manifest that counts its object is
stored. Restore, query, validate and erase read a table's sets once (common/archive/table_index.py).

Each entry is a manifest exactly as a sidecar held it (common/archive/manifest.py, with `replaces` for an
erasure's replacement) and the SHA-256 of its bytes (`manifest_sha256`): that identity is what run
digests and withdrawal records name, so a batch archived again under the same key (same rows, same
bytes) is told from the one taken back. Set names sort in the order they were written."""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from common.archive import layout
from common.errors import DataIntegrityError
from common.archive.manifest import Manifest, read_manifest, sha256_hex

SET_VERSION = 1


def entry_bytes(doc: dict[str, Any]) -> bytes:
    """A manifest document's canonical bytes: what Manifest.to_bytes() writes, whose SHA-256 is the
    manifest's identity."""
    return json.dumps(doc, indent=1, sort_keys=True, default=str).encode()


def entry_sha256(manifest: Manifest) -> str:
    """The identity of a manifest the archiver wrote (its bytes are Manifest.to_bytes())."""
    return sha256_hex(manifest.to_bytes())


@dataclass(frozen=True)
class Recorded:
    """One manifest as a set (or a legacy sidecar) holds it."""

    manifest: Manifest
    #: SHA-256 of the manifest's bytes: what digests and withdrawal records name.
    sha256: str
    #: An erasure's replacement names the object it replaces (erase/rewrite.py): {key, manifest_sha256, ...}.
    replaces: dict[str, Any] | None
    #: The set (or legacy sidecar) it was read from.
    source: str

    @property
    def key(self) -> str:
        return self.manifest.key

    @property
    def legacy(self) -> bool:
        return not layout.in_control(self.source)


def set_key(control: str, created: datetime, body: bytes) -> str:
    return f"{control}{layout.MANIFESTS}{created:%Y%m%dT%H%M%S%fZ}-{sha256_hex(body)[:12]}.json"


def document(manifests: Sequence[bytes], *, created: datetime) -> dict[str, Any]:
    """The set of these manifests (each as its bytes, Manifest.to_bytes()): one table's."""
    docs = [json.loads(m) for m in manifests]
    tables = {(d.get("database"), d.get("schema"), d.get("table")) for d in docs}
    if len(tables) != 1:
        raise ValueError(f"a manifest set holds one table's manifests, not {sorted(map(str, tables))}")
    database, schema, table = tables.pop()
    return {"set_version": SET_VERSION, "database": database, "schema": schema, "table": table,
            "created_at": created.isoformat(),
            "entries": [{"manifest_sha256": sha256_hex(m), "manifest": d} for m, d in zip(manifests, docs)]}


def write(store: Any, *, prefix: str, manifests: Sequence[Manifest | bytes], now: datetime | None = None) -> str:
    """Store one set of these manifests (all of one table) in the table's control folder; returns
    its key. The store checks the bytes' checksum (S3 refuses a body that does not match)."""
    raw = [m.to_bytes() if isinstance(m, Manifest) else m for m in manifests]
    created = now or datetime.now(timezone.utc)
    doc = document(raw, created=created)
    data = json.dumps(doc, indent=1, sort_keys=True, default=str).encode()
    control = layout.control_prefix(prefix, doc["database"], doc["schema"], doc["table"])
    key = set_key(control, created, data)
    store.put(key, data, sha256=sha256_hex(data))
    return key


def read(data: bytes, *, key: str) -> list[Recorded]:
    """The manifests a set holds; DataIntegrityError when it cannot be trusted as a whole."""
    try:
        doc = json.loads(data)
        entries = doc["entries"]
        if not isinstance(entries, list):
            raise TypeError("entries is not a list")
        out = []
        for e in entries:
            raw = entry_bytes(e["manifest"])
            manifest, replaces = read_manifest(raw, key=key)
            out.append(Recorded(manifest, str(e.get("manifest_sha256") or sha256_hex(raw)), replaces, key))
        return out
    except (ValueError, TypeError, KeyError, AttributeError, DataIntegrityError) as exc:
        raise DataIntegrityError(f"manifest set {key} is unreadable: {exc}") from None


def read_sidecar(data: bytes, *, key: str) -> Recorded:
    """A legacy per-object manifest (common/archive/layout.py): its identity is the SHA-256 of its bytes."""
    manifest, replaces = read_manifest(data, key=key)
    return Recorded(manifest, sha256_hex(data), replaces, key)
