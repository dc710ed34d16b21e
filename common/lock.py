"""S3 Object Lock (WORM, issue 17): what every PUT carries when `s3.object_lock` is configured, the
bucket check every tool that writes makes before it writes anything, and reading an object's lock
back (validate's object_lock_missing, erase's COMPLIANCE refusal).

A locked object version cannot be deleted until its retain-until date (COMPLIANCE: by nobody;
GOVERNANCE: only with s3:BypassGovernanceRetention). A DELETE without a version id still
"succeeds" in a locked (always versioned) bucket: it only lays a delete marker over the version,
and anyone allowed to delete the marker brings the object back. So the archiver never relies on a
delete of a locked object: it takes a batch back with a withdrawal record (common/archive/withdrawals.py)."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from common.config import ObjectLockConfig
from common.errors import ConfigError, S3Unavailable, first_line

#: Clock skew tolerated between our upload time and S3's LastModified when checking retention.
SLACK = timedelta(minutes=5)


def put_arguments(lock: ObjectLockConfig | None, *, now: datetime | None = None) -> dict[str, Any]:
    """The PutObject arguments that store an object under `lock` (none without one)."""
    if lock is None:
        return {}
    now = now or datetime.now(timezone.utc)
    args: dict[str, Any] = {"ObjectLockMode": lock.mode,
                            "ObjectLockRetainUntilDate": now + timedelta(days=lock.retain_days)}
    if lock.legal_hold:
        args["ObjectLockLegalHoldStatus"] = "ON"
    return args


def check_bucket(client: Any, bucket: str) -> None:
    """ConfigError (exit 2) unless the bucket has Object Lock enabled: with s3.object_lock set,
    storing into a bucket without it would silently give no WORM protection at all."""
    try:
        answer = client.get_object_lock_configuration(Bucket=bucket)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code == "ObjectLockConfigurationNotFoundError":
            raise ConfigError(f"s3.object_lock is configured but bucket {bucket!r} does not have Object Lock enabled: "
                              "create the bucket with Object Lock (it cannot be added later by this tool) "
                              "or remove s3.object_lock") from None
        if code == "NoSuchBucket":
            raise ConfigError(f"s3.bucket: bucket {bucket!r} does not exist") from None
        raise S3Unavailable(f"cannot read the Object Lock configuration of bucket {bucket!r}: {first_line(exc)}") from None
    except BotoCoreError as exc:
        raise S3Unavailable(f"S3 unreachable while checking Object Lock on {bucket!r}: {first_line(exc)}") from None
    if answer.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") != "Enabled":
        raise ConfigError(f"s3.object_lock is configured but bucket {bucket!r} does not have Object Lock enabled")


@dataclass(frozen=True)
class LockState:
    """An object version's lock as S3 reports it (HEAD)."""

    mode: str | None
    retain_until: datetime | None
    legal_hold: bool
    last_modified: datetime | None

    @classmethod
    def from_head(cls, head: dict[str, Any]) -> LockState:
        until = head.get("ObjectLockRetainUntilDate")
        modified = head.get("LastModified")
        return cls(head.get("ObjectLockMode"), _utc(until), head.get("ObjectLockLegalHoldStatus") == "ON", _utc(modified))

    def compliance_locked(self, now: datetime) -> bool:
        """Nobody, not even the root account, can delete or overwrite this version before its date."""
        return self.mode == "COMPLIANCE" and self.retain_until is not None and self.retain_until > now

    def governance_locked(self, now: datetime) -> bool:
        return self.mode == "GOVERNANCE" and self.retain_until is not None and self.retain_until > now


def head_lock(client: Any, bucket: str, key: str) -> LockState:
    return LockState.from_head(client.head_object(Bucket=bucket, Key=key))


def shortfall(state: LockState, lock: ObjectLockConfig) -> str | None:
    """Why an object is not protected as configured (None when it is): no lock, a weaker mode
    than COMPLIANCE when that is configured, a retention shorter than retain_days from its upload,
    or a legal hold asked for and missing."""
    if state.mode is None or state.retain_until is None:
        return "stored without Object Lock"
    if lock.mode == "COMPLIANCE" and state.mode != "COMPLIANCE":
        return f"locked in {state.mode} mode, configured COMPLIANCE"
    if state.last_modified is not None:
        wanted = state.last_modified + timedelta(days=lock.retain_days) - SLACK
        if state.retain_until < wanted:
            return (f"retained until {state.retain_until:%Y-%m-%d %H:%M} UTC, shorter than {lock.retain_days} days "
                    f"after its upload ({state.last_modified:%Y-%m-%d})")
    if lock.legal_hold and not state.legal_hold:
        return "no legal hold, configured legal_hold: true"
    return None


def _utc(value: Any) -> datetime | None:
    if not isinstance(value, datetime):
        return None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
