"""Puts verified batches somewhere safe: S3 first; when S3 fails after botocore's retries, the local
fallback directory with the same key layout (issue 3), behind a circuit breaker so one outage does
not cost botocore's retries on every batch. Also drains the fallback directory back to S3.

A batch is its data object alone while it is stored (`put`, in the upload threads); what makes it
count as archived is its manifest in a manifest set (common/archive/manifest_sets.py), which the table job
has the sink `record` for a whole group of stored batches, once their rows' delete is done but not
yet committed (archiver/table_job.py): one request for the group instead of one per batch."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from archiver.hooks import Hook, no_hook
from common.errors import ArchiverError, DataIntegrityError, ErrorKind, S3Unavailable, first_line
from common.archive import manifest_sets
from common.archive.layout import data_key, is_manifest, table_root
from common.archive.manifest import Manifest, sha256_hex
from common.archive.fallback import FallbackDir
from common.archive.storage import Storage, is_disk_full
from common.archive.table_index import TableListing
from common.archive.withdrawals import withdraw as record_withdrawal

log = logging.getLogger("archiver.sink")


class FallbackFull(ArchiverError):
    kind = ErrorKind.FALLBACK


def is_outage(exc: BaseException) -> bool:
    """Connection refused, timeouts, 5xx: S3 is unavailable rather than refusing this request."""
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        code = exc.response.get("Error", {}).get("Code", "")
        return status >= 500 or code in ("SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout")
    return isinstance(exc, BotoCoreError)


def _upload_holds(primary: Storage, prefix: str) -> Any:
    """Only with Object Lock configured: its import (DuckDB, for --where holds) is not paid otherwise."""
    if getattr(primary, "object_lock", None) is None:
        return None
    from common.lifecycle.hold_scope import UploadHolds
    return UploadHolds.for_store(primary, prefix)


@dataclass
class DrainResult:
    drained: int = 0
    quarantined: int = 0
    remaining: int = 0
    #: (database, schema, table) of every batch drained: their Iceberg tables change too.
    tables: set[tuple[str, str, str]] = field(default_factory=set)


class ArchiveSink:
    def __init__(self, primary: Storage, fallback: FallbackDir | None, *, prefix: str = "",
                 probe_interval: float = 60.0, clock: Callable[[], float] = time.monotonic,
                 hook: Hook = no_hook) -> None:
        self.primary = primary
        self.prefix = prefix  # s3.prefix: where control folders are
        self.fallback = fallback
        self.probe_interval = probe_interval
        self.clock = clock
        self.hook = hook  # between_object_and_manifest (archiver/hooks.py)
        self.opened_at: float | None = None  # circuit open since
        self.holds = _upload_holds(primary, prefix)  # legal holds on what is written (issue 29)

    @property
    def s3_down(self) -> bool:
        return self.opened_at is not None

    def _circuit_allows_primary(self) -> bool:
        if self.opened_at is None:
            return True
        if self.clock() - self.opened_at < self.probe_interval:
            return False
        probe = getattr(self.primary, "probe", None)
        try:
            if probe is not None:
                probe()
        except Exception as exc:  # noqa: BLE001 - any failure keeps the circuit open
            log.debug("S3 probe failed: %s", exc)
            self.opened_at = self.clock()
            return False
        log.info("S3 reachable again; closing the circuit breaker")
        self.opened_at = None
        return True

    def put(self, manifest: Manifest, data: bytes) -> str:
        """Store a batch's data object, verified; returns where ('s3', 'local', 'fallback'). It does
        not count as archived until `record` stores its manifest."""
        where = self._to_primary_or_fallback(f"S3 upload of {manifest.key}",
                                             lambda store: self._put_object(store, manifest, data),
                                             cleanup=(manifest.key,))
        if self.holds is not None and where == self.primary.location:
            self.holds.after_put(manifest, data)
        return where

    def record(self, stored: Sequence[tuple[Manifest, str]]) -> None:
        """Store the manifests of these stored batches (one set per table and location): from
        here on they count as archived. A set for batches in S3 goes to the fallback directory
        while S3 is down (the drain takes it to S3 beside its objects); without one, S3Unavailable."""
        by_location: dict[tuple[str, str, str, str], list[Manifest]] = {}
        for m, location in stored:  # a set holds one table's manifests (a family's batches span tables)
            by_location.setdefault((location, m.database, m.schema, m.table), []).append(m)
        for (location, *_table), manifests in by_location.items():
            if location == "fallback":
                self._fallback_write(lambda store: self._put_set(store, manifests), cleanup=())
            else:
                self._to_primary_or_fallback(f"S3 upload of the manifests of {manifests[0].key}",
                                             lambda store: self._put_set(store, manifests), cleanup=())

    def _to_primary_or_fallback(self, what: str, write: Callable[[Storage], None], *, cleanup: tuple[str, ...]) -> str:
        if self._circuit_allows_primary():
            try:
                write(self.primary)
                return self.primary.location
            except (BotoCoreError, ClientError) as exc:
                if not is_outage(exc):
                    raise
                # No clean-up call to an S3 that is down: an object stored before the outage is
                # overwritten by the same key when the fallback copy is drained.
                if self.fallback is None:
                    raise S3Unavailable(f"{what} failed and no s3.local_fallback_dir is configured: {exc}") from None
                log.warning("S3 upload failed (%s); S3 marked down, batches go to the fallback directory %s",
                            first_line(exc, limit=200), self.fallback.root)
                self.opened_at = self.clock()
        return self._fallback_write(write, cleanup=cleanup)

    def _fallback_write(self, write: Callable[[Storage], None], *, cleanup: tuple[str, ...]) -> str:
        if self.fallback is None:
            raise S3Unavailable("S3 is down and no s3.local_fallback_dir is configured")
        try:
            write(self.fallback)
        except OSError as exc:
            self._cleanup(self.fallback, cleanup)
            if is_disk_full(exc):
                raise FallbackFull(f"fallback directory {self.fallback.root} is full (ENOSPC); no rows deleted for this batch") from None
            raise FallbackFull(f"cannot write to fallback directory {self.fallback.root}: {exc.strerror}") from None
        return self.fallback.location

    def _put_object(self, store: Storage, manifest: Manifest, data: bytes) -> None:
        store.put(manifest.key, data, sha256=manifest.sha256)
        self.hook("between_object_and_manifest")

    def _put_set(self, store: Storage, manifests: Sequence[Manifest]) -> None:
        manifest_sets.write(store, prefix=self.prefix, manifests=manifests)

    def store(self, location: str) -> Storage:
        return self.fallback if location == "fallback" and self.fallback else self.primary

    def take_back(self, manifest: Manifest, location: str, *, recorded: bool) -> None:
        """Take back a stored batch whose rows stay in the table (they will be archived again).
        `recorded`: a manifest set lists it, so it counts as archived until a withdrawal record
        (common/archive/withdrawals.py) says otherwise; that record must be stored (an error propagates,
        and the batch stays pending for the next run), or its rows would count twice once archived
        again. The data object goes too, where Object Lock allows: engines that read the table's
        folder as it lies would read its rows. Under Object Lock it stays, with a record even when
        no set lists it, so validate knows it for what it is."""
        store = self.store(location)
        locked = _locked(store)
        if recorded or locked:
            sha = manifest_sets.entry_sha256(manifest) if recorded else None
            record_withdrawal(store, prefix=self.prefix, manifest=manifest, manifest_sha256=sha,
                              reason="rows changed since export" if recorded else "taken back before its manifest")
        if not locked:
            self._cleanup(store, (manifest.key,))

    @staticmethod
    def _cleanup(store: Storage, keys: tuple[str, ...]) -> None:
        for k in keys:
            try:
                store.delete(k)
            except Exception as exc:  # noqa: BLE001 - best effort; validate reports what is left
                log.warning("could not remove %s from %s: %s", k, store.location, first_line(exc, limit=200))

    def drain(self) -> DrainResult:
        """Upload pending fallback batches to S3, oldest first; quarantine any that fail their checksum."""
        result = DrainResult()
        if self.fallback is None or not self._circuit_allows_primary():
            return result
        if not self.fallback.claim():
            log.info("another archiver is using the fallback directory %s; it is not drained in this run", self.fallback.root)
            return result
        try:
            return self._drain(self.fallback, result)
        finally:
            self.fallback.share()

    def close(self) -> None:
        """The run is over: other runs may drain the fallback directory now."""
        if self.fallback is not None:
            self.fallback.release()

    def _drain(self, fallback: FallbackDir, result: DrainResult) -> DrainResult:
        """Each manifest set waiting in the fallback directory, oldest first: its objects (those
        in the directory; the others went to S3 before the outage and are checked there), then the
        set itself, then its files here. A set whose objects fail their checksum is quarantined with
        them. Withdrawal records go to S3 first, so none is ever missing beside its batch."""
        listing = self._fallback_listing(fallback)
        if listing.sidecars:  # batches that waited here since before the control layout
            self._sidecars_to_sets(fallback, listing)
            listing = self._fallback_listing(fallback)
        sets = listing.sets
        try:
            self._drain_records(fallback, listing.records)
        except (BotoCoreError, ClientError) as exc:
            return self._still_down(exc, result, remaining=len(sets))
        for n, info in enumerate(sets):
            try:
                recorded = manifest_sets.read(fallback.get(info.key), key=info.key)
                objects = [(r.manifest, self._fallback_copy(fallback, r.manifest)) for r in recorded]
            except (DataIntegrityError, OSError) as exc:
                fallback.quarantine(info.key, *(k for k in _set_keys(fallback, info.key)))
                log.error("fallback batch %s failed its checksum and was quarantined, not uploaded: %s", info.key, exc)
                result.quarantined += 1
                continue
            try:
                for manifest, data in objects:
                    if data is not None:
                        self.primary.put(manifest.key, data, sha256=manifest.sha256)
                        if self.holds is not None:  # written into a hold's scope while S3 was down
                            self.holds.after_put(manifest, data)
                    elif not self._in_primary(manifest):
                        raise DataIntegrityError(f"{manifest.key} is in neither the fallback directory nor (whole) in S3")
                body = fallback.get(info.key)
                self.primary.put(info.key, body, sha256=sha256_hex(body))
            except DataIntegrityError as exc:
                # Its rows left the table with this set's promise: nothing to upload, a loss to look at.
                fallback.quarantine(info.key, *(k for k in _set_keys(fallback, info.key)))
                log.error("fallback manifest set %s names an object that is gone; quarantined, not uploaded: %s",
                          info.key, exc)
                result.quarantined += 1
                continue
            except (BotoCoreError, ClientError) as exc:
                self._still_down(exc, result, remaining=len(sets) - n)
                break
            fallback.delete(info.key)
            for manifest, data in objects:
                if data is not None:
                    fallback.delete(manifest.key)
            result.drained += len(objects)
            result.tables.update((m.database, m.schema, m.table) for m, _data in objects)
        if result.drained or result.quarantined:
            log.info("Drained %d fallback batches to S3 (%d quarantined, %d sets remaining)",
                     result.drained, result.quarantined, result.remaining)
        return result

    def _fallback_listing(self, fallback: FallbackDir) -> TableListing:
        listing = TableListing(self.prefix)
        for info in fallback.list(""):
            listing.add(info)
        return listing.finish()

    def _sidecars_to_sets(self, fallback: FallbackDir, listing: TableListing) -> None:
        """Legacy sidecar manifests here go into manifest sets here (one per table), keeping their
        identity, before the drain; then the sidecars go (the set was written and checked first)."""
        by_table: dict[str, list[bytes]] = {}
        for info in listing.sidecars.values():
            by_table.setdefault(table_root(data_key(info.key)), []).append(fallback.get(info.key))
        for manifests in by_table.values():
            manifest_sets.write(fallback, prefix=self.prefix, manifests=manifests)
        for info in listing.legacy:
            if is_manifest(info.key):
                fallback.delete(info.key)

    def _drain_records(self, fallback: FallbackDir, records: Sequence[Any]) -> None:
        for info in records:
            body = fallback.get(info.key)
            self.primary.put(info.key, body, sha256=sha256_hex(body))
            fallback.delete(info.key)

    @staticmethod
    def _fallback_copy(fallback: FallbackDir, manifest: Manifest) -> bytes | None:
        """The batch's bytes in the fallback directory, checked; None when it is not there (stored
        in S3 before the outage hit its set)."""
        if fallback.head(manifest.key) is None:
            return None
        data = fallback.get(manifest.key)
        manifest.check(data)
        return data

    def _in_primary(self, manifest: Manifest) -> bool:
        info = self.primary.head(manifest.key)
        return info is not None and info.size == manifest.size

    def _still_down(self, exc: BaseException, result: DrainResult, *, remaining: int) -> DrainResult:
        log.warning("S3 still unavailable while draining the fallback directory: %s", first_line(exc, limit=200))
        self.opened_at = self.clock()
        result.remaining = remaining
        return result


def _set_keys(fallback: FallbackDir, set_key: str) -> list[str]:
    """The data objects a (possibly unreadable) fallback set lists that are in the directory."""
    try:
        return [r.key for r in manifest_sets.read(fallback.get(set_key), key=set_key) if fallback.head(r.key) is not None]
    except (DataIntegrityError, OSError):
        return []


def _locked(store: Storage) -> bool:
    return getattr(store, "object_lock", None) is not None
