"""Issue 5: a full `validate` of the archiver's bucket against listing, downloading and sha256-ing
the same objects with boto3 in a plain loop."""
from __future__ import annotations

import json

from bench import baseline
from bench.context import Context
from bench.env import PYTHON, implemented, measure
from bench.report import PartResult

#: Issue 19: no slower than the plain download-and-hash loop (was 1.5x, issue 5).
TARGET_RATIO = 1.0


def run(ctx: Context, *, repeat: int = 1) -> PartResult:
    """Baseline then validate, `repeat` times on the same (read-only) archives; the best time of
    each counts, as in the archive part (single runs of either varied by a third)."""
    part = PartResult("validate", TARGET_RATIO, rows=ctx.seeded.eligible)
    if not implemented("validate"):
        part.status, part.note = "skipped", "not implemented yet"
        return part
    archived = ctx.archived
    assert archived is not None, "the validate part needs the archiver's archives"
    for _ in range(repeat):
        seconds, objects, nbytes = baseline.download_and_hash(ctx.client, archived.bucket)
        part.baseline_seconds = min(seconds, part.baseline_seconds or seconds)
        part.extra.update(objects=objects, bytes=nbytes)
        run = measure([PYTHON, "-m", "validate.main", "--config", str(archived.config), "--output-format", "json"],
                      log=ctx.work / "validate")
        part.peak_rss_mb = max(run.peak_rss_mb, part.peak_rss_mb or 0.0)
        part.tool_seconds = min(run.seconds, part.tool_seconds or run.seconds)
        if run.returncode != 0:
            break
    if run.returncode != 0:
        part.fail(f"validate exited {run.returncode}: {run.tail(3)}")
        return part
    try:
        doc = json.loads(run.stdout)
    except json.JSONDecodeError:
        part.fail("validate --output-format json did not print one JSON document")
        return part
    if not doc.get("ok") or doc.get("problems"):
        part.fail(f"validate found problems in a clean archive: {doc.get('problems')}")
    if doc.get("summary", {}).get("rows") != ctx.seeded.eligible:
        part.fail(f"validate checked {doc.get('summary', {}).get('rows')} rows, expected {ctx.seeded.eligible}")
    return part
