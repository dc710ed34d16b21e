"""The plain-tools baselines the issues measure against: psql \\copy piped through zstd, a boto3
upload/download loop, and range deletes by primary key."""
from __future__ import annotations

import hashlib
import subprocess
import time
from pathlib import Path
from typing import Any

import psycopg

from bench.env import list_keys

DELETE_RANGE = 50_000


def _psql(dsn: str, command: str) -> list[str]:
    # -X: no ~/.psqlrc; -q: no "COPY n" status line mixed into the data on stdout.
    return ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", dsn, "-c", command]


def _pipe(first: list[str], second: list[str], *, stdin: Path | None = None, stdout: Path | None = None) -> None:
    """first | second, like the shell, failing loudly if either side fails."""
    with open(stdin or "/dev/null", "rb") as inp, open(stdout or "/dev/null", "wb") as out:
        left = subprocess.Popen(first, stdin=inp, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        right = subprocess.Popen(second, stdin=left.stdout, stdout=out, stderr=subprocess.PIPE)
        assert left.stdout is not None
        left.stdout.close()  # so `first` sees EPIPE if `second` dies
        right_err = right.communicate()[1]
        left_err = left.communicate()[1]
    for cmd, proc, err in ((first, left, left_err), (second, right, right_err)):
        if proc.returncode != 0:
            raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}): {err.decode(errors='replace').strip()}")


def export(dsn: str, cutoff: str, path: Path) -> float:
    """`psql \\copy (SELECT ... WHERE created_at < cutoff) TO STDOUT | zstd -3 > path`; seconds."""
    started = time.monotonic()
    query = f"\\copy (SELECT * FROM audit_logs WHERE created_at < '{cutoff}') TO STDOUT"
    _pipe(_psql(dsn, query), ["zstd", "-3", "-q", "-c"], stdout=path)
    return time.monotonic() - started


def upload(client: Any, bucket: str, key: str, path: Path) -> float:
    started = time.monotonic()
    client.upload_file(str(path), bucket, key)
    return time.monotonic() - started


def delete_ranges(dsn: str, cutoff: str, *, step: int = DELETE_RANGE) -> tuple[float, int]:
    """DELETE the eligible rows in primary-key ranges of `step`, one commit each; (seconds, rows)."""
    started = time.monotonic()
    deleted = 0
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT min(id), max(id) FROM audit_logs WHERE created_at < %s", (cutoff,)).fetchone()
        conn.commit()
        low, high = row if row else (None, None)
        if low is not None:
            for start in range(low, high + 1, step):
                cur = conn.execute("DELETE FROM audit_logs WHERE id >= %s AND id < %s AND created_at < %s",
                                   (start, start + step, cutoff))
                deleted += cur.rowcount
                conn.commit()
    return time.monotonic() - started, deleted


def load(dsn: str, path: Path) -> float:
    """`zstd -d < path | psql \\copy audit_logs FROM STDIN`; seconds."""
    started = time.monotonic()
    # pstdin: psql's own standard input (plain "stdin" with -c is the same stream, spelled explicitly).
    _pipe(["zstd", "-d", "-q", "-c"], _psql(dsn, "\\copy audit_logs FROM pstdin"), stdin=path)
    return time.monotonic() - started


def download_and_hash(client: Any, bucket: str, prefix: str = "") -> tuple[float, int, int]:
    """List the objects and sha256 each one in a plain loop; (seconds, objects, bytes)."""
    started = time.monotonic()
    objects = nbytes = 0
    for key, _ in list_keys(client, bucket, prefix):
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        hashlib.sha256(body).hexdigest()
        objects += 1
        nbytes += len(body)
    return time.monotonic() - started, objects, nbytes


def checkpoint(dsn: str) -> None:
    """Flush dirty buffers before a timed phase, so no run pays for the previous one's writes."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CHECKPOINT")
