"""Step 4: bucket, prefix, region, endpoint, storage class (with the monthly cost of the eligible
data per class, from the cost tool) and encryption; then a put+delete probe of the bucket. No
bucket: storage: local instead (wizard/local.py)."""
from __future__ import annotations

import re
from decimal import Decimal
from typing import Any, Callable

from common.config import S3Config
from common.errors import S3Unavailable
from wizard.model import Flags
from wizard.probe import ProbeResult, probe_bucket, probe_client
from wizard.prompts import Prompter, human_bytes, nonempty_check

#: The classes S3 accepts for a PUT that the archiver can later read back (directly or after a thaw).
STORAGE_CLASSES = ("STANDARD", "INTELLIGENT_TIERING", "STANDARD_IA", "ONEZONE_IA", "GLACIER_IR",
                   "GLACIER", "DEEP_ARCHIVE")
NEEDS_THAW = ("GLACIER", "DEEP_ARCHIVE")
SSE_CHOICES = ("none", "AES256", "aws:kms")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
GIB = Decimal(1024**3)

Prober = Callable[[S3Config], ProbeResult]


def default_prober(s3: S3Config) -> ProbeResult:
    return probe_bucket(probe_client(s3), s3)


def bucket_check(value: Any) -> str | None:
    return None if _BUCKET.match(str(value)) else "not a valid S3 bucket name (3-63 of a-z, 0-9, '.', '-')"


def class_check(value: Any) -> str | None:
    return None if str(value).upper() in STORAGE_CLASSES else f"one of {', '.join(STORAGE_CLASSES)}"


def sse_check(value: Any) -> str | None:
    return None if str(value) in SSE_CHOICES else f"one of {', '.join(SSE_CHOICES)}"


def monthly_costs(size_bytes: int, region: str) -> tuple[dict[str, Decimal] | None, str | None]:
    """Per-class monthly cost of `size_bytes` from the cost tool, or (None, why not)."""
    try:
        # Imported lazily: the cost tool is optional for the wizard and may be absent or older.
        from cost.estimate import monthly_cost_by_class
    except ImportError:
        return None, "the cost tool's estimator (cost.estimate) is not available"
    try:
        return dict(monthly_cost_by_class(Decimal(size_bytes) / GIB, region)), None
    except Exception as exc:  # noqa: BLE001 - a pricing problem must not stop the wizard
        return None, f"the cost tool could not price region {region}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"


def show_costs(p: Prompter, size_bytes: int, region: str) -> None:
    costs, why = monthly_costs(size_bytes, region)
    p.info(f"Storage classes (monthly cost of the {human_bytes(size_bytes)} eligible now, as table data;"
           " the compressed archive is usually smaller):")
    if costs is None:
        p.info(f"  {', '.join(STORAGE_CLASSES)}")
        p.info(f"  (no cost column: {why})")
        return
    for cls in STORAGE_CLASSES:
        price = f"${costs[cls]:,.2f}/month" if cls in costs else "(not priced)"
        thaw = "  needs a restore (thaw) before it can be read" if cls in NEEDS_THAW else ""
        p.info(f"  {cls:<20} {price:>16}{thaw}")


def storage_step(p: Prompter, flags: Flags, *, eligible_bytes: int,
                 prober: Prober = default_prober) -> S3Config | None:
    """The S3 answers, checked; None when no bucket is given (storage: local)."""
    prev: dict[str, Any] = {}
    given = flags
    while True:
        s3 = _ask_storage(p, given, prev, eligible_bytes)
        if s3 is None:
            return None
        if flags.skip_bucket_check:
            p.warn(f"bucket s3://{s3.bucket} not checked (--skip-bucket-check)")
            return s3
        result = prober(s3)
        if result.ok:
            p.info(result.message)
            return s3
        p.error(result.message)
        if not p.interactive:
            raise S3Unavailable(f"{result.message}; fix the storage answers or pass --skip-bucket-check")
        if p.confirm("Write the config with this bucket anyway (archiving will fail or use the fallback"
                     " directory until it is fixed)?", default=False):
            return s3
        prev = s3.model_dump()
        given = Flags(output=flags.output)  # ask everything again, previous answers as defaults


def _ask_storage(p: Prompter, flags: Flags, prev: dict[str, Any], eligible_bytes: int) -> S3Config | None:
    bucket = p.ask("S3 bucket (Enter for none: the archives go to a local directory, for a first try)",
                   flag="--bucket", given=flags.bucket, default=prev.get("bucket"), optional=True, check=bucket_check)
    if bucket is None:
        return None
    prefix = p.ask("Key prefix inside the bucket (optional)", flag="--prefix", given=flags.prefix,
                   default=prev.get("prefix") or None, optional=True) or ""
    region = p.ask("AWS region", flag="--region", given=flags.region, default=prev.get("region", "us-east-1"),
                   check=nonempty_check)
    endpoint = p.ask("S3 endpoint URL (optional; Enter for AWS itself)", flag="--endpoint-url",
                     given=flags.endpoint_url, default=prev.get("endpoint_url"), optional=True,
                     check=lambda v: None if not v or re.match(r"^https?://", str(v)) else "must start with http:// or https://")
    if flags.storage_class is None:
        show_costs(p, eligible_bytes, region)
    storage_class = str(p.ask("Storage class", flag="--storage-class", given=flags.storage_class,
                              default=prev.get("storage_class", "STANDARD"), check=class_check)).upper()
    if storage_class in NEEDS_THAW:
        p.warn(f"{storage_class} objects must be restored (thawed, hours) before validate or restore can read them")
    sse = p.ask("Server-side encryption (none, AES256, aws:kms)", flag="--sse", given=flags.sse,
                default=prev.get("sse") or "none", check=sse_check)
    kms = None
    if sse == "aws:kms":
        kms = p.ask("KMS key id or ARN", flag="--kms-key-id", given=flags.kms_key_id,
                    default=prev.get("kms_key_id"), check=nonempty_check)
    return S3Config(bucket=bucket, prefix=prefix.strip("/"), region=region, endpoint_url=endpoint or None,
                    storage_class=storage_class, sse=None if sse == "none" else sse, kms_key_id=kms)
