"""Rewriting one object without the erased rows, crash-safely.

The steps for each object, and the named points tests kill the process at
(ARCHIVER_TEST_KILL_AT, common/hooks.py):
  1. the replacement (the rows that stay; same folder, a new name) is stored and verified, then its
     manifest, in a manifest set of its own, which names the object it replaces: from that PUT on
     every reader counts the replacement instead of the old object (common/catalog.py), so no row
     is counted twice and the erased rows are gone from every answer -> after_replacement
  2. once per table: a digest records the replacements, the objects they remove and the erasure
     (rows, when, the predicate's sha256)                           -> after_erase_digest
  3. the old object goes, every version (and a legacy sidecar manifest of it, if it has one); the
     set that lists its manifest stays: the replacement supersedes it for good -> after_old_removed
A rerun finds a replacement whose old object is still there (catalog.superseded), records it in the
digest if no digest does yet, and removes the old object: it never erases or counts rows twice."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from common import batch_writer, layout, manifest_sets
from common.archive_sql import Engine
from common.catalog import ArchiveObject, Catalog
from common.digest import DigestEntry, Erasure
from common.errors import DataIntegrityError
from common.hooks import Hook
from common.epoch import time_iso
from common.key_range import key_range, natural_column
from common.manifest import Manifest, sha256_hex
from common.conform import conform
from common.arrow_types import exceptions_of, split_exceptions, with_exceptions
from common.pgtypes import arrow_schema, column_docs, encodings_of
from common.storage import Storage

_META_KEYS = ("format_version", "schema_fingerprint", "columns", "exceptions")


@dataclass(frozen=True)
class Replaced:
    old: ArchiveObject
    new_key: str
    entry: DigestEntry
    erasure: Erasure


def rewrite(catalog: Catalog, engine: Engine, obj: ArchiveObject, *, predicate_sha256: str, erased_at: str,
            level: int, hook: Hook) -> Replaced:
    """Store and verify the object's replacement without the matching rows (step 1)."""
    assert obj.manifest is not None
    data = catalog.read(obj)
    obj.manifest.check(data)
    fmt = batch_writer.format_of(obj.key)
    rows, schema, encodings, doc = batch_writer.decode(data, fmt=fmt)
    exceptions = exceptions_of(doc)
    stays = pc.invert(engine.matching(rows, exceptions))
    if fmt == "parquet":
        # The replacement in the table's one schema (common/conform.py), whatever version wrote the
        # object (a column kept as text before format version 2 is typed again); the exceptions
        # follow the rows kept.
        conformed = conform(rows, arrow_schema(schema), exceptions=exceptions, fill_missing=False)
        keep, exceptions = split_exceptions(with_exceptions(conformed.table, conformed.exceptions).filter(stays))
        encodings = encodings_of(schema)
    else:
        keep = rows.filter(stays)
    new_data = batch_writer.encode(keep, fmt=fmt, level=level, schema=schema, encodings=encodings,
                                   extra_meta={k: v for k, v in doc.items() if k not in _META_KEYS},
                                   exceptions=exceptions)
    new_key = replacement_key(obj.key, new_data, fmt)
    removed = rows.num_rows - keep.num_rows
    replaces = {"key": obj.key, "sha256": obj.manifest.sha256, "manifest_sha256": obj.manifest_sha256,
                "rows_removed": removed, "erased_at": erased_at, "predicate_sha256": predicate_sha256}
    mbytes = manifest_bytes(obj.manifest, key=new_key, data=new_data, rows=keep, schema=schema, replaces=replaces,
                            encodings=encodings)
    store = catalog.store_for(obj)
    store.put(new_key, new_data, sha256=sha256_hex(new_data))
    verify(store, engine, new_key, new_data, fmt=fmt, rows=keep.num_rows)
    manifest_sets.write(store, prefix=catalog.prefix, manifests=[mbytes])
    hook("after_replacement")
    m = Manifest.from_bytes(mbytes, key=new_key)
    return Replaced(obj, new_key, DigestEntry.of(m, mbytes), erasure(obj, new_key, replaces))


def erasure(obj: ArchiveObject, new_key: str, replaces: dict[str, Any]) -> Erasure:
    assert obj.manifest is not None
    return Erasure(obj.key, obj.manifest.sha256, int(replaces.get("rows_removed") or 0), new_key,
                   str(replaces.get("erased_at")), str(replaces.get("predicate_sha256")))


def replacement_key(key: str, data: bytes, fmt: str) -> str:
    folder, _, name = key.rpartition("/")
    day = name.split("-")[1] if name.startswith("part-") else "erased"
    return f"{folder}/part-{day}-{sha256_hex(data)[:20]}{batch_writer.EXTENSIONS[fmt]}"


def verify(store: Storage, engine: Engine, key: str, data: bytes, *, fmt: str, rows: int) -> None:
    """Read the stored replacement back: the bytes we made, the rows we kept, none that matches."""
    stored = bytes(store.get(key))
    if stored != data:
        raise DataIntegrityError(f"{key}: the stored replacement differs from the bytes written")
    table = batch_writer.decode(stored, fmt=fmt)[0]
    if table.num_rows != rows or (rows and int(pc.sum(engine.matching(table)).as_py() or 0)):
        raise DataIntegrityError(f"{key}: the replacement does not hold exactly the rows kept; nothing removed")


def manifest_bytes(old: Manifest, *, key: str, data: bytes, rows: pa.Table, schema: Any,
                   replaces: dict[str, Any], encodings: dict[str, str]) -> bytes:
    doc = asdict(old)
    doc["columns"] = column_docs(schema, encodings)  # as the replacement stores them
    ratio = rows.num_rows / old.rows if old.rows else 0
    doc.update(key=key, sha256=sha256_hex(data), size=len(data), rows=rows.num_rows,
               created_at=datetime.now(timezone.utc).isoformat(), source_bytes=int(old.source_bytes * ratio),
               replaces=replaces)
    # Recomputed, never kept from the old manifest: an erased row may have been the first or last.
    doc["min_pk"], doc["max_pk"] = (key_range(pa.table({k: natural_column(rows, k, schema) for k in old.key_columns}))
                                    if rows.num_rows else (None, None))
    doc["min_ts"], doc["max_ts"] = _ts_range(rows, old.timestamp_column, schema, old.timestamp_unit,
                                             (old.min_ts, old.max_ts))
    return json.dumps(doc, indent=1, sort_keys=True, default=str).encode()


def _ts_range(rows: pa.Table, name: str, schema: Any, unit: str | None, old: tuple[Any, Any] = (None, None)) -> tuple[Any, Any]:
    if rows.num_rows == 0:
        return None, None
    if not name:  # a child's rows (issue 28): the range is their parents', as archived
        return old
    mm = pc.min_max(natural_column(rows, name, schema))
    return time_iso(mm["min"].as_py(), unit), time_iso(mm["max"].as_py(), unit)


def remove_old(catalog: Catalog, obj: ArchiveObject, *, bypass_governance: bool, hook: Hook) -> None:
    """Step 3: the replaced object, every version, and a legacy sidecar manifest of it (the object
    first: a sidecar alone is reported, an object without a manifest would be an orphan)."""
    store = catalog.store_for(obj)
    _delete_versions(store, obj.key, bypass_governance)
    if layout.is_manifest(obj.manifest_key):
        for mkey in layout.manifest_keys(obj.key):
            _delete_versions(store, mkey, bypass_governance)
    hook("after_old_removed")


def _delete_versions(store: Storage, key: str, bypass_governance: bool) -> None:
    delete_versions = getattr(store, "delete_versions", None)
    if delete_versions is None:
        store.delete(key)
    else:
        delete_versions(key, bypass_governance=bypass_governance)
