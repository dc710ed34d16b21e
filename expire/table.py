"""One table's expiry (issue 29), in the order that makes a kill -9 at any point safe:

1. finish what an interrupted expiry left: objects its record names that the chain still lists,
   or that are still stored;
2. the expiry record (common/archive/expirations.py): from here on no reader counts the objects;
3. the digest (kind `expire`): the chain says which objects went, how many rows, when;
4. the deletes: the data objects (every version in a versioned bucket), legacy sidecars, and the
   manifest sets none of whose manifests counts any more (also those a run killed before this
   cleanup left);
   (the Iceberg table, where one is configured, drops them first: `before_deletes`, as erase does).

A rerun after a kill at any step does the rest: step 1 redoes 3 and 4 for the record of step 2."""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from common.archive import digest, layout
from common.archive import expirations
from common.archive.catalog import ArchiveObject, Catalog, TableRef
from common.errors import first_line
from common.hooks import Hook
from common.archive.manifest_sets import read as read_set, read_sidecar
from common.archive.table_index import TableIndex, TableListing, load_table
from expire.plan import Bucket, Plan

log = logging.getLogger("expire")


@dataclass
class Done:
    """What an expiry did to one table."""

    expired: list[expirations.ExpiredObject] = field(default_factory=list)  # recorded by this run
    finished: int = 0  # objects of an interrupted expiry this run finished
    deleted: int = 0  # data objects deleted
    sets_deleted: int = 0
    record_key: str | None = None
    digest_key: str | None = None
    failed: list[tuple[str, str]] = field(default_factory=list)  # (key, why) a delete was refused


def expire_table(catalog: Catalog, ref: TableRef, plan: Plan, *, bucket: Bucket, key_secret: bytes | None,
                 hook: Hook, before_deletes: Callable[[], object] | None = None) -> Done:
    store, prefix = catalog.primary, catalog.prefix
    ctx = {"database": ref.database, "table": ref.name}
    done = Done()
    listing, index = load_table(store, prefix, ref.database, ref.schema, ref.table)
    chain_head = digest.head(store, prefix, ref.database, ref.schema, ref.table)
    live = digest.replay(store, prefix, ref.database, ref.schema, ref.table) if chain_head else {}
    pending, leftover = _unfinished(store, listing, index, live)
    done.finished = len(pending)
    if plan.due:
        record = expirations.ExpiryRecord(ref.database, ref.schema, ref.table, plan.now.isoformat(),
                                          plan.retention_days, plan.cutoff.isoformat(),
                                          [_entry(o) for o in plan.due])
        done.record_key = expirations.write(store, prefix=prefix, record=record)
        done.expired = record.objects
        log.info("expiry record %s names %d objects (%d rows) past %d days", done.record_key, len(record.objects),
                 plan.rows, plan.retention_days, extra=ctx)
        hook("after_expiry_record")
        pending.update((o.key, (o, plan.now.isoformat(), plan.retention_days)) for o in done.expired)
    done.digest_key = _record_in_chain(store, prefix, ref, pending, live, chain_head, key_secret=key_secret)
    hook("after_expiry_digest")
    this_run = {o.key for o in done.expired}
    try:
        # The Iceberg table lets go of the objects before they go, so a scan never meets a missing
        # file; when it cannot, they go all the same and the next sync (any tool's) catches up.
        if before_deletes is not None and pending:
            before_deletes()
    finally:
        # An earlier expiry's key counted again (archived anew since) is not that expiry's object.
        for key in sorted(k for k in pending if k in listing.data and (k in this_run or k not in index.objects)):
            _delete(store, key, bucket=bucket, done=done, hook=hook)
        hook("before_expiry_sets")
        done.sets_deleted = _delete_sets(store, index, {**leftover, **pending}, bucket=bucket)
    return done


Pending = dict[str, tuple[expirations.ExpiredObject, str, int]]


def _entry(obj: ArchiveObject) -> expirations.ExpiredObject:
    assert obj.manifest is not None and obj.manifest_sha256 is not None
    return expirations.ExpiredObject(obj.key, obj.manifest_sha256, obj.manifest.sha256, obj.manifest.rows,
                                     obj.manifest.max_ts)


def _unfinished(store: Any, listing: TableListing, index: TableIndex,
                live: dict[str, digest.DigestEntry]) -> tuple[Pending, Pending]:
    """What earlier expiry records name and a kill -9 left undone: objects still stored that no
    manifest that counts names (the same key archived again later would have one), and objects the
    chain still lists, each with its expiry's time and setting; then those whose only remains are
    their manifests in sets (killed between the deletes and the sets' cleanup)."""
    out: Pending = {}
    leftover: Pending = {}
    for info in listing.expiries:
        record = expirations.read(store, info.key)
        for o in record.objects:
            stored = o.key in listing.data and o.key not in index.objects
            chained = o.key in live and live[o.key].manifest_sha256 == o.manifest_sha256
            if stored or chained:
                out[o.key] = (o, record.expired_at, record.retention_days)
            elif any(r.sha256 == o.manifest_sha256 for r in index.recorded(o.key)):
                leftover[o.key] = (o, record.expired_at, record.retention_days)
    return out, leftover


def _record_in_chain(store: Any, prefix: str, ref: TableRef, pending: Pending, live: dict[str, digest.DigestEntry],
                     chain_head: digest.Head | None, *, key_secret: bytes | None) -> str | None:
    """The digest of the expired objects the chain still lists as archived (none: no digest)."""
    entries = [digest.Expired(o.key, o.sha256, o.rows, o.manifest_sha256, o.max_ts, when, days)
               for key, (o, when, days) in sorted(pending.items())
               if key in live and live[key].manifest_sha256 == o.manifest_sha256]
    if not entries:
        return None
    key = digest.write(store, prefix=prefix, database=ref.database, schema=ref.schema, table=ref.table, objects=[],
                       removed=[e.key for e in entries], expired=entries, kind="expire", key_secret=key_secret,
                       previous=chain_head)
    log.info("digest %s records the expiry of %d objects (%d rows)", key, len(entries), sum(e.rows for e in entries),
             extra={"database": ref.database, "table": ref.name})
    return key


def _delete(store: Any, key: str, *, bucket: Bucket, done: Done, hook: Hook) -> None:
    try:
        if bucket.versioned:
            store.delete_versions(key)  # a plain DELETE would only hide the bytes behind a marker
        else:
            store.delete(key)
    except ClientError as exc:
        # Its record stands: it no longer counts, and the next run tries the delete again.
        done.failed.append((key, first_line(exc)))
        log.error("cannot delete expired object %s: %s (the next expire run tries again)", key, first_line(exc))
        return
    done.deleted += 1
    log.info("expired %s", key)
    hook("after_expiry_delete")


def _delete_sets(store: Any, index: TableIndex, pending: Pending, *, bucket: Bucket) -> int:
    """Manifest sets (and legacy sidecars) of the expired objects of which no manifest counts any
    more: every entry expired (by a record, this run's included) or withdrawn. A set under a
    retention that has not ended stays; it counts for nothing."""
    expired = {(o.key, o.manifest_sha256) for o, _w, _d in pending.values()}
    sources = {r.source for key in pending for r in index.recorded(key)}
    removed = 0
    for source in sorted(sources):
        members = _members(store, source)
        if all((k, s) in expired or index.expired.covers(k, s) or index.withdrawn.covers(k, s) for k, s in members):
            try:
                if bucket.versioned:
                    store.delete_versions(source)
                else:
                    store.delete(source)
                removed += 1
            except ClientError as exc:
                log.debug("manifest set %s stays: %s", source, first_line(exc))
    return removed


def _members(store: Any, source: str) -> list[tuple[str, str]]:
    """(key, manifest sha256) of every manifest a set (or a legacy sidecar) holds."""
    data = bytes(store.get(source))
    if layout.is_manifest_set(source):
        return [(r.key, r.sha256) for r in read_set(data, key=source)]
    r = read_sidecar(data, key=source)
    return [(r.key, r.sha256)]
