"""Replacing an archived object by a rewrite of it, crash-safely: what the erase tool (issue 17,
erase/rewrite.py: the object without the erased rows) and `archiver --migrate-layout` (issue 27,
archiver/migration/schema.py: the object in its table's one schema) share.

The steps for each object, and the named points tests kill the process at (ARCHIVER_TEST_KILL_AT,
common/hooks.py):
  1. store(): the replacement (same folder, a new name) has its rows checked by the caller, is
     stored and verified by the store's checksum, then its manifest, in a manifest set of its own, which
     names the object it replaces: from that PUT on every reader counts the replacement instead of
     the old object (common/archive/catalog.py), so no row is counted twice or lost -> after_replacement
  2. finish(), once per table: a digest records the replacements and the objects they remove
     (`kind` erase or migrate)                -> after_erase_digest / after_migration_digest
  3. the old object goes, every version (and a legacy sidecar manifest of it, if it has one); the
     set that lists its manifest stays: the replacement supersedes it for good -> after_old_removed
A rerun finds a replacement whose old object is still there (Catalog.superseded), records it in the
digest if no digest does yet, and removes the old object: nothing is rewritten or counted twice."""
from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from common import batch_writer
from common.archive import digest, layout, manifest_sets
from common.archive.catalog import ArchiveObject, Catalog, TableRef
from common.config import Config
from common.pg.db import application_name, connect, conninfo, find_table_oid, session_settings, table_unlock, try_table_lock
from common.archive.digest import DigestEntry, Erasure
from common.epoch import time_iso
from common.errors import DataIntegrityError
from common.hooks import Hook
from common.key_range import key_range, natural_column
from common.lock import head_lock
from common.archive.manifest import Manifest, sha256_hex
from common.archive.storage import S3Storage, Storage

#: The Parquet metadata a rewrite writes anew (the rest of the old object's is kept).
META_KEYS = ("format_version", "schema_fingerprint", "columns", "exceptions")


@dataclass(frozen=True)
class Replaced:
    old: ArchiveObject
    new_key: str
    entry: DigestEntry
    replaces: dict[str, Any]


def replacement_key(key: str, data: bytes, fmt: str) -> str:
    folder, _, name = key.rpartition("/")
    day = name.split("-")[1] if name.startswith("part-") else "erased"
    return f"{folder}/part-{day}-{sha256_hex(data)[:20]}{batch_writer.EXTENSIONS[fmt]}"


def store(catalog: Catalog, obj: ArchiveObject, *, new_key: str, data: bytes, manifest: bytes,
          check: Callable[[bytes], None], hook: Hook) -> DigestEntry:
    """Step 1: the replacement judged (`check` raises DataIntegrityError when its rows are not what
    they must be: nothing is stored then), stored and verified, then its manifest. The store
    verifies what it stored (S3's SHA-256 of the object, or a re-read where S3 gives none;
    common/archive/storage.py), so the bytes are not read back here."""
    target = catalog.store_for(obj)
    check(data)
    target.put(new_key, data, sha256=sha256_hex(data))
    manifest_sets.write(target, prefix=catalog.prefix, manifests=[manifest])
    hook("after_replacement")
    return DigestEntry.of(Manifest.from_bytes(manifest, key=new_key), manifest)


def manifest_bytes(old: Manifest, *, key: str, data: bytes, rows: pa.Table, schema: Any,
                   replaces: dict[str, Any], columns: list[dict[str, Any]]) -> bytes:
    """The replacement's manifest: the old one's, with the new object's facts and `replaces`."""
    doc = asdict(old)
    doc["columns"] = columns  # as the replacement stores them
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


def _ts_range(rows: pa.Table, name: str, schema: Any, unit: str | None,
              old: tuple[Any, Any] = (None, None)) -> tuple[Any, Any]:
    if rows.num_rows == 0:
        return None, None
    if not name:  # a child's rows (issue 28): the range is their parents', as archived
        return old
    mm = pc.min_max(natural_column(rows, name, schema))
    return time_iso(mm["min"].as_py(), unit), time_iso(mm["max"].as_py(), unit)


def replaces_doc(obj: ArchiveObject, **fields: Any) -> dict[str, Any]:
    """What a replacement's manifest says it replaces: the object and the exact manifest (so an
    object archived again under the same key later is not taken for it), and the caller's facts."""
    assert obj.manifest is not None
    return {"key": obj.key, "sha256": obj.manifest.sha256, "manifest_sha256": obj.manifest_sha256, **fields}


# -- steps 2 and 3 -----------------------------------------------------------------------------------
def finish(catalog: Catalog, ref: TableRef, done: Sequence[Replaced],
           pending: Sequence[tuple[ArchiveObject, ArchiveObject]], *, kind: str, key_secret: bytes | None,
           hook: Hook, erasure: Callable[[ArchiveObject, str, dict[str, Any]], Erasure | None] | None = None,
           before_removal: Callable[[], object] | None = None) -> str | None:
    """The digest of these replacements (and of those an interrupted run stored and no digest
    records yet: `pending`, (old, replacement)), then the old objects removed. `erasure` gives
    each one's erasure record (erase; None for a replacement that erased nothing); returns the digest's key (None: nothing to record).
    `before_removal` runs between the two (erase's Iceberg sync); the old objects go even when it fails."""
    store = catalog.primary
    live = digest.replay(store, catalog.prefix, ref.database, ref.schema, ref.table)
    entries = [r.entry for r in done]
    olds = [(r.old, r.new_key, r.replaces) for r in done]
    for old, new in pending:
        assert new.manifest is not None and new.manifest_sha256 is not None and new.replaces is not None
        if new.key not in live or live[new.key].manifest_sha256 != new.manifest_sha256:
            entries.append(DigestEntry(new.key, new.manifest.sha256, new.manifest.size, new.manifest.rows,
                                       new.manifest_sha256))
            olds.append((old, new.key, new.replaces))
    key = None
    if entries:
        records = [erasure(old, new_key, r) for old, new_key, r in olds] if erasure else []
        erasures = [e for e in records if e is not None]
        key = digest.write(store, prefix=catalog.prefix, database=ref.database, schema=ref.schema, table=ref.table,
                           objects=entries, removed=[old.key for old, _k, _r in olds], erasures=erasures, kind=kind,
                           key_secret=key_secret)
    hook(f"after_{'erase' if kind == 'erase' else 'migration'}_digest")
    try:
        if before_removal is not None:
            before_removal()
    finally:
        for old in [r.old for r in done] + [old for old, _new in pending]:
            remove_old(catalog, old, bypass_governance=governance_locked(catalog, old), hook=hook)
    return key


def remove_old(catalog: Catalog, obj: ArchiveObject, *, bypass_governance: bool, hook: Hook) -> None:
    """Step 3: the replaced object, every version, and a legacy sidecar manifest of it (the object
    first: a sidecar alone is reported, an object without a manifest would be an orphan)."""
    target = catalog.store_for(obj)
    _delete_versions(target, obj.key, bypass_governance)
    if layout.is_manifest(obj.manifest_key):
        for mkey in layout.manifest_keys(obj.key):
            _delete_versions(target, mkey, bypass_governance)
    hook("after_old_removed")


def _delete_versions(target: Storage, key: str, bypass_governance: bool) -> None:
    delete_versions = getattr(target, "delete_versions", None)
    if delete_versions is None:
        target.delete(key)
    else:
        delete_versions(key, bypass_governance=bypass_governance)


def governance_locked(catalog: Catalog, obj: ArchiveObject) -> bool:
    """A GOVERNANCE-locked version is removed with s3:BypassGovernanceRetention (erase's role needs it)."""
    primary = catalog.primary
    if obj.location != "s3" or not isinstance(primary, S3Storage) or primary.object_lock is None:
        return False
    return head_lock(primary.client, primary.bucket, obj.key).mode == "GOVERNANCE"


def deleted_keys(obj: ArchiveObject) -> list[str]:
    """What step 3 deletes: the object, and a legacy sidecar manifest of it (a manifest set stays)."""
    return [obj.key] + ([obj.manifest_key] if layout.is_manifest(obj.manifest_key) else [])


# -- the table -------------------------------------------------------------------------------------
@contextmanager
def table_lock(cfg: Config, ref: TableRef, *, role: str) -> Iterator[bool]:
    """The archiver's advisory lock on the table, taken without waiting: a rewrite and a run never
    write one digest chain at once. Yields False when another session holds it (the table is busy)."""
    db = cfg.database(ref.database)
    with connect(conninfo(db), session_settings(application_name=application_name(cfg.defaults.application_name, role=role),
                                                statement_timeout=None, lock_timeout=None)) as conn:
        oid = find_table_oid(conn, ref.schema, ref.table)
        if oid is not None and not try_table_lock(conn, oid):
            yield False
            return
        conn.commit()
        try:
            yield True
        finally:
            if oid is not None:
                table_unlock(conn, oid)
