"""Where the archiver's wall time goes: one more archiver run under py-spy (wall-clock samples of
every thread, idle ones included), each sample put in the innermost activity it belongs to."""
from __future__ import annotations

import shutil
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from bench.context import Context
from bench.env import PYTHON, measure

RATE = 100  # samples per second per thread
#: (activity, substrings of a frame "function (file:line)"); a sample counts for the activity of
#: its innermost matching frame, so "sha256 inside the upload" shows up as sha256.
RULES: list[tuple[str, tuple[str, ...]]] = [
    ("sha256", ("sha256",)),
    ("fsync (checkpoint file and directory)", ("fsync",)),
    ("checkpoint write", ("archiver/checkpoint.py",)),
    ("read from PostgreSQL (ADBC binary COPY)", ("archiver/arrow_source.py", "read_window (")),
    ("Parquet/JSONL encode", ("common/batch_writer.py",)),
    ("day split + batching", ("archiver/reader.py",)),
    ("upload + verify (S3)", ("archiver/sink.py", "common/archive/storage.py", "botocore/", "boto3/", "urllib3/")),
    ("DELETE + commit", ("._delete (", "Connection.commit (psycopg")),
    ("reader waits for uploader (queue full)", ("Queue.put (",)),
    ("uploader waits for reader (queue empty)", ("._next (", "Queue.get (")),
    ("startup: imports, config, connect", ("_find_and_load", "load_config", "psycopg_pool/pool.py", "Connection.connect (")),
    ("table job other", ("archiver/table_job.py", "archiver/pipeline.py", "archiver/ledger.py", "archiver/mover.py")),
]
#: Threads spending more than this share in one waiting/unknown activity are left out (idle helpers).
IDLE_SHARE = 0.95


def classify(frames: list[str]) -> str:
    for frame in reversed(frames):
        for label, needles in RULES:
            if any(n in frame for n in needles):
                return label
    return "other"


def summarise(raw: Path) -> dict[str, Any]:
    """{thread: {activity: seconds}} from py-spy's raw (collapsed-stack) output."""
    per_thread: dict[str, Counter[str]] = defaultdict(Counter)
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        thread = frames[0].split(": ", 1)[-1] if frames[0].startswith("thread") else "?"
        per_thread[thread][classify(frames[1:])] += int(count)
    return {thread: {k: v / RATE for k, v in c.most_common()} for thread, c in per_thread.items()}


def profile_archiver(ctx: Context) -> dict[str, Any]:
    spy = shutil.which("py-spy", path=str(Path(PYTHON).parent)) or shutil.which("py-spy")
    if spy is None:
        return {"skipped": "py-spy is not installed (pip install py-spy into the venv)"}
    dsn = ctx.fresh_copy("profile")
    bucket = ctx.bucket("profile")
    cfg = ctx.config("profile", dsn, bucket)
    raw = ctx.work / "pyspy.txt"
    run = measure([spy, "record", "--format", "raw", "--threads", "--idle", "--rate", str(RATE), "-o", str(raw),
                   "--", PYTHON, "-m", "archiver.main", "--config", str(cfg)], log=ctx.work / "profile")
    ctx.dbs.drop(dsn)
    if run.returncode != 0 or not raw.exists():
        return {"skipped": f"py-spy run failed ({run.returncode}): {run.tail(2)}"}
    return {"seconds": run.seconds, "threads": summarise(raw)}


def render(doc: dict[str, Any]) -> str:
    if "skipped" in doc:
        return f"profile skipped: {doc['skipped']}"
    lines = [f"where the archiver's time goes (py-spy, wall clock, {doc['seconds']:.1f}s run under the profiler):"]
    for thread, activities in doc["threads"].items():
        total = sum(activities.values()) or 1.0
        top, top_seconds = next(iter(activities.items()))
        if top_seconds / total > IDLE_SHARE and ("waits" in top or top == "other"):
            continue
        lines.append(f"  thread {thread} ({total:.1f}s sampled)")
        for label, seconds in activities.items():
            if seconds / total >= 0.01:
                lines.append(f"    {seconds:7.1f}s {100 * seconds / total:5.1f}%  {label}")
    return "\n".join(lines)
