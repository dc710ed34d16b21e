"""Step 4 without a bucket: `storage: local`, the archives in a directory (a first try on a laptop,
no S3 needed), in the same key layout as on S3, so they can move there later as they are."""
from __future__ import annotations

import shlex
from pathlib import Path

from common.errors import UsageError
from wizard.extras import note_dir
from wizard.model import Flags
from wizard.prompts import Prompter, nonempty_check

#: Answers that only mean something for a bucket: given without one, they are a mistake to report,
#: not a wish to drop silently.
_S3_FLAGS = {"--prefix": "prefix", "--region": "region", "--endpoint-url": "endpoint_url",
             "--storage-class": "storage_class", "--sse": "sse", "--kms-key-id": "kms_key_id"}


def local_dir_step(p: Prompter, flags: Flags, *, beside: Path) -> str:
    """The archive directory, absolute: the archiver may run from another directory (cron)."""
    if flags.bucket is not None and flags.local_dir is not None:
        raise UsageError("--bucket and --local-dir: archives go to S3 or to a local directory, not both")
    s3_only = [flag for flag, value in _S3_FLAGS.items() if getattr(flags, value) is not None]
    if s3_only:
        raise UsageError(f"{', '.join(s3_only)}: S3 answers without a bucket; give --bucket too, or leave them out"
                         " for storage: local")
    value = p.ask("Directory for the archives (storage: local)", flag="--local-dir", given=flags.local_dir,
                  default=str(beside / "archive"), check=nonempty_check)
    path = str(Path(str(value)).expanduser().absolute())
    if not p.interactive and flags.local_dir is None:
        p.info(f"No --bucket given: the archives go to {path} (storage: local).")
    note_dir(p, path)
    if flags.fallback_dir is not None:
        p.warn("--fallback-dir is not used with storage: local (it takes batches while S3 is down)")
    return path


def move_to_s3(local_dir: str, config: Path) -> list[str]:
    """How to move a local archive to S3 later. The keys are the same, so the files are copied as
    they are; validate then checks every object in the bucket against its manifest."""
    cfg = shlex.quote(str(config))
    return [f"  The archives stay in {local_dir}. To move them to S3 later (same key layout):",
            f"    aws s3 sync {shlex.quote(local_dir)} s3://BUCKET/",
            f"    then in {cfg} set storage: s3 and s3.bucket: BUCKET, and check them there:",
            f"    python -m validate.main --config {cfg}"]
