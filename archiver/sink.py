"""Puts verified batches somewhere safe: S3 first; when S3 fails after botocore's retries, the local
fallback directory with the same key layout (issue 3), behind a circuit breaker so one outage does
not cost botocore's retries on every batch. Also drains the fallback directory back to S3."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from botocore.exceptions import BotoCoreError, ClientError

from archiver.hooks import Hook, no_hook
from common.errors import ArchiverError, DataIntegrityError, ErrorKind, S3Unavailable, first_line
from common.layout import data_key, is_legacy_manifest, is_manifest, manifest_key, manifest_keys
from common.manifest import Manifest, sha256_hex
from common.fallback import FallbackDir
from common.storage import ObjectInfo, Storage, is_disk_full
from common.withdrawals import withdraw as record_withdrawal

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


@dataclass
class DrainResult:
    drained: int = 0
    quarantined: int = 0
    remaining: int = 0


class ArchiveSink:
    def __init__(self, primary: Storage, fallback: FallbackDir | None, *, probe_interval: float = 60.0,
                 clock: Callable[[], float] = time.monotonic, hook: Hook = no_hook) -> None:
        self.primary = primary
        self.fallback = fallback
        self.probe_interval = probe_interval
        self.clock = clock
        self.hook = hook  # between_object_and_manifest (archiver/hooks.py)
        self.opened_at: float | None = None  # circuit open since

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
        """Store object then manifest, both verified; returns the location ('s3', 'local', 'fallback')."""
        if self._circuit_allows_primary():
            try:
                self._put_pair(self.primary, manifest, data)
                return self.primary.location
            except (BotoCoreError, ClientError) as exc:
                if not is_outage(exc):
                    raise
                # No clean-up call to an S3 that is down: an object stored before the outage hit
                # its manifest is overwritten by the same key when the fallback copy is drained.
                if self.fallback is None:
                    raise S3Unavailable(f"S3 upload of {manifest.key} failed and no s3.local_fallback_dir is configured: {exc}") from None
                log.warning("S3 upload failed (%s); S3 marked down, batches go to the fallback directory %s",
                            first_line(exc, limit=200), self.fallback.root)
                self.opened_at = self.clock()
        assert self.fallback is not None
        try:
            self._put_pair(self.fallback, manifest, data)
        except OSError as exc:
            self._cleanup(self.fallback, (manifest_key(manifest.key), manifest.key))
            if is_disk_full(exc):
                raise FallbackFull(f"fallback directory {self.fallback.root} is full (ENOSPC); no rows deleted for this batch") from None
            raise FallbackFull(f"cannot write to fallback directory {self.fallback.root}: {exc.strerror}") from None
        return self.fallback.location

    def _store(self, location: str) -> Storage:
        return self.fallback if location == "fallback" and self.fallback else self.primary

    def remove(self, key: str, location: str) -> None:
        store = self._store(location)
        if _locked(store):
            record_withdrawal(store, key, reason="incomplete upload")
            return
        self._cleanup(store, (*manifest_keys(key), key))

    def withdraw(self, key: str, location: str) -> None:
        """Take back a stored batch whose rows stay in the table: its manifest must go (an error
        propagates, and the batch stays pending for the next run), or the rows would count as
        archived twice once archived again; the object without it is only an orphan. Under
        Object Lock neither can go: a withdrawal record (common/withdrawals.py) says instead that
        this version does not count, and every reader skips it."""
        store = self._store(location)
        if _locked(store):
            record_withdrawal(store, key, reason="rows changed since export")
            return
        for mkey in manifest_keys(key):  # an older archive's batch may carry the legacy sidecar
            store.delete(mkey)
        self._cleanup(store, (key,))

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
        manifests = _one_manifest_per_batch(o for o in fallback.list("") if is_manifest(o.key))
        for info in manifests:
            key = data_key(info.key)
            try:
                manifest = Manifest.from_bytes(fallback.get(info.key), key=info.key)
                data = fallback.get(key)
                manifest.check(data)
            except (DataIntegrityError, OSError) as exc:
                fallback.quarantine(info.key, key)
                log.error("fallback batch %s failed its checksum and was quarantined, not uploaded: %s", key, exc)
                result.quarantined += 1
                continue
            try:
                self._put_pair(self.primary, manifest, data)
            except (BotoCoreError, ClientError) as exc:
                log.warning("S3 still unavailable while draining the fallback directory: %s", first_line(exc, limit=200))
                self.opened_at = self.clock()
                result.remaining = len(manifests) - result.drained - result.quarantined
                break
            for mkey in manifest_keys(key):
                fallback.delete(mkey)
            fallback.delete(key)
            result.drained += 1
        if result.drained or result.quarantined:
            log.info("Drained %d fallback batches to S3 (%d quarantined, %d remaining)",
                     result.drained, result.quarantined, result.remaining)
        return result

    def _put_pair(self, store: Storage, manifest: Manifest, data: bytes) -> None:
        store.put(manifest.key, data, sha256=manifest.sha256)
        self.hook("between_object_and_manifest")
        mbytes = manifest.to_bytes()
        # The manifest is small and carries its own checksum header; the data object, which rows are
        # deleted on the strength of, is the one read back.
        store.put(manifest_key(manifest.key), mbytes, sha256=sha256_hex(mbytes), verify=False)


def _locked(store: Storage) -> bool:
    return getattr(store, "object_lock", None) is not None


def _one_manifest_per_batch(infos: Iterable[ObjectInfo]) -> list[ObjectInfo]:
    """Fallback manifests oldest first, one per batch: where a legacy sidecar was left beside its
    hidden copy (an interrupted --migrate-manifests), the hidden one stands for the batch."""
    chosen: dict[str, ObjectInfo] = {}
    for info in infos:
        if data_key(info.key) not in chosen or not is_legacy_manifest(info.key):
            chosen[data_key(info.key)] = info
    return sorted(chosen.values(), key=lambda o: (o.last_modified or 0, o.key))
