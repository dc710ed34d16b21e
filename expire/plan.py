"""What one table's expiry deletes and what it keeps, and why (issue 29).

An object is due when its newest row (its manifest's max_ts) is older than the table's
archive_retention_days by the database's clock. A due object is kept when an active legal hold
holds it (common/lifecycle/hold_scope.py), when S3 reports a legal hold on it, or while its Object Lock
retention has not ended (the date is reported). Objects still in the fallback directory are left to
the drain: expiry deletes from the archive store only."""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from botocore.exceptions import ClientError

from common.archive.catalog import ArchiveObject, Catalog, TableRef
from common.lifecycle.hold_scope import holding
from common.lifecycle.holds import Hold
from common.lifecycle.legal_hold import bucket_locked
from common.lock import head_lock
from common.archive.storage import S3Storage

log = logging.getLogger("expire")


@dataclass(frozen=True)
class Kept:
    obj: ArchiveObject
    reason: str  # legal_hold | s3_legal_hold | object_lock
    detail: str
    hold_id: str | None = None
    retain_until: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return {"key": self.obj.key, "rows": self.obj.rows, "reason": self.reason, "detail": self.detail,
                "hold_id": self.hold_id, "retain_until": self.retain_until.isoformat() if self.retain_until else None}


@dataclass
class Plan:
    cutoff: datetime
    now: datetime
    retention_days: int
    objects: int = 0  # the table's archived objects looked at
    due: list[ArchiveObject] = field(default_factory=list)  # to delete
    kept: list[Kept] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(o.rows or 0 for o in self.due)

    @property
    def bytes(self) -> int:
        return sum(o.size for o in self.due)


@dataclass(frozen=True)
class Bucket:
    """What the archive bucket is, asked once per run: Object Lock (so each due object's lock is
    read back) and versioning (so a delete removes every version, not just hides the bytes)."""

    locked: bool
    versioned: bool

    @classmethod
    def of(cls, store: Any) -> Bucket:
        if not isinstance(store, S3Storage):
            return cls(False, False)
        locked = bucket_locked(store.client, store.bucket)
        if locked:
            return cls(True, True)
        try:
            status = store.client.get_bucket_versioning(Bucket=store.bucket).get("Status")
        except ClientError:
            return cls(False, True)  # not allowed to ask: deleting every version is right either way
        return cls(False, status in ("Enabled", "Suspended"))


def due(obj: ArchiveObject, cutoff: datetime) -> bool:
    """Its newest row is older than the cutoff. An object without a readable time (no manifest yet,
    an out-of-range timestamp) is never due: nothing is deleted on a guess."""
    end = obj.end
    return end is not None and end < cutoff


def make_plan(catalog: Catalog, ref: TableRef, *, retention_days: int, now: datetime, holds: Sequence[Hold],
              bucket: Bucket) -> Plan:
    cutoff = now - timedelta(days=retention_days)
    objects = [o for o in catalog.list_objects(ref) if o.location == catalog.primary.location]
    plan = Plan(cutoff, now, retention_days, objects=len(objects))
    for obj in objects:
        if not due(obj, cutoff):
            continue
        held = holding(catalog, holds, obj)
        if held:
            h = held[0]
            plan.kept.append(Kept(obj, "legal_hold", f"legal hold {h.hold_id}: {h.reason}", hold_id=h.hold_id))
            continue
        if bucket.locked and (kept := _locked(catalog.primary, obj, now)) is not None:
            plan.kept.append(kept)
            continue
        plan.due.append(obj)
    return plan


def _locked(store: Any, obj: ArchiveObject, now: datetime) -> Kept | None:
    """An S3 legal hold, or a retention that has not ended, keeps the object (one HEAD)."""
    state = head_lock(store.client, store.bucket, obj.key)
    if state.legal_hold:
        return Kept(obj, "s3_legal_hold", "S3 legal hold is ON (placed outside `hold`, or by s3.object_lock.legal_hold)")
    if state.retain_until is not None and state.retain_until > now:
        return Kept(obj, "object_lock", f"Object Lock ({state.mode}) retention until {state.retain_until:%Y-%m-%d %H:%M} UTC",
                    retain_until=state.retain_until)
    return None
