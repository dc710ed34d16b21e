"""Durable checkpoints and journals (issue 31, part 3): a checkpoint, a digest journal or a batch held
in the fallback directory counts only once the file and its directory are fsynced. Each test runs
the real archiver under strace, which makes the kernel's fsync() return EIO for the tool's own
files only (`-P <path>`: the journal's path, or a state directory, whose fsync is the last step of
every rename into it), from the Nth call on. The run must end with a one-line message, exit 1 and
the defined kind, and a following run without the fault must leave every row exactly once in
the table or the archive."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest

from archive_checks import archived_ids, assert_invariant, table_ids
from common.exit_codes import ExitCode
from common.archive.storage import LocalStorage, S3Storage
from conftest import make_config, seed_audit

ROOT = Path(__file__).resolve().parent.parent
STRACE = shutil.which("strace") or "/usr/bin/strace"


@pytest.fixture(scope="module")
def strace() -> list[str]:
    """strace and its options, when it may trace a child here (a container without
    CAP_SYS_PTRACE, or whose seccomp profile refuses ptrace, cannot inject anything: then these
    tests say so). --seccomp-bpf stops the child only at fsync, where the kernel supports it."""
    if not os.access(STRACE, os.X_OK):
        pytest.skip(f"strace is not installed ({STRACE}): cannot inject fsync errors")
    error = ""
    for options in (["--seccomp-bpf"], []):
        cmd = [STRACE, "-f", "-qq", *options, "-o", "/dev/null", "-e", "trace=fsync", "true"]
        probe = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        if probe.returncode == 0:
            return [STRACE, "-f", "-qq", *options]
        error = error or probe.stderr.strip()[:200]
    pytest.skip(f"strace cannot ptrace in this environment: {error}")


def archive_under_fault(strace: list[str], config: Path, path: Path, when: str) -> subprocess.CompletedProcess[str]:
    """One archiver run whose fsync() of `path` (a file, or a directory's own fsync) fails with EIO
    at the `when`-th call (strace syntax: "3" once, "3+" from then on); every other fsync is real."""
    cmd = [*strace, "-o", "/dev/null", "-P", str(path), "-e", "trace=fsync",
           "-e", f"inject=fsync:error=EIO:when={when}", sys.executable, "-m", "archiver.main", "--config", str(config)]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180)


def archive(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "archiver.main", "--config", str(config)], cwd=ROOT,
                          capture_output=True, text=True, timeout=180)


def error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if " ERROR " in ln]


FOLDER = "checkpoints/production_db"  # the database's checkpoint folder: checkpoints and journals
JOURNAL = f"{FOLDER}/public.audit_logs.undigested"

#: (id, the path whose fsync fails (under tmp_path), when, the one ERROR line expected, mid-run).
#: In the folder, the journal's creation is the 1st directory fsync and each checkpoint save one more.
CASES = [
    ("journal_append", JOURNAL, "1",
     r"table public\.audit_logs failed: digest journal \S+/public\.audit_logs\.undigested could not be saved "
     r"durably \(Input/output error, errno 5\); the table stopped there", False),
    ("first_checkpoint", FOLDER, "2",
     r"table public\.audit_logs failed: checkpoint \S+/public\.audit_logs\.json could not be saved durably "
     r"\(Input/output error, errno 5\)", False),
    ("checkpoint_mid_run_once", FOLDER, "6",
     r"table public\.audit_logs failed: checkpoint \S+ could not be saved durably \(Input/output error", True),
    ("checkpoint_disk_gone_bad_mid_run", FOLDER, "6+",
     r"table public\.audit_logs failed: checkpoint \S+ could not be saved durably \(Input/output error", True),
]


@pytest.mark.parametrize(("where", "when", "message", "mid_run"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_fsync_eio_on_state_fails_the_table_and_loses_no_rows(
        strace: list[str], tmp_path: Path, pg_dsn: str, pg: psycopg.Connection[Any], s3_client: Any, bucket: str,
        s3_endpoint: str, where: str, when: str, message: str, mid_run: bool) -> None:
    seed_audit(pg, rows=400, days=130)  # ~120 expired rows: ~40 batches of 3, one checkpoint save each
    original = table_ids(pg)
    config = make_config(tmp_path, dsn=pg_dsn, bucket=bucket, endpoint=s3_endpoint, defaults={"batch_size": 3})

    failed = archive_under_fault(strace, config, tmp_path / where, when)

    assert failed.returncode == ExitCode.FAILURE, failed.stderr[-2000:]
    errors = error_lines(failed.stderr)
    assert len(errors) == 1 and re.search(message, errors[0]), errors
    assert re.search(r"summary production_db\.public\.audit_logs: failed, .*, kind state, error: ", failed.stderr)
    assert "Traceback" not in failed.stderr
    moved = len(original) - len(table_ids(pg))
    assert (moved > 0) == mid_run, f"{moved} rows left the table before the fault"

    again = archive(config)

    assert again.returncode == ExitCode.OK, again.stderr[-2000:]
    s3 = S3Storage(s3_client, bucket)
    assert_invariant(original, table_ids(pg), archived_ids(s3, LocalStorage(tmp_path / "fallback")))
    assert pg.execute("SELECT count(*) FROM audit_logs WHERE created_at < now() - interval '90 days'").fetchone() == (0,)


def test_fsync_eio_in_the_fallback_directory_deletes_no_rows(
        strace: list[str], tmp_path: Path, pg_dsn: str, pg: psycopg.Connection[Any], s3_client: Any, bucket: str,
        s3_endpoint: str, free_tcp_port: int) -> None:
    """S3 is down, and the first batch held in the fallback directory cannot be made durable (the
    fsync of the directory its folder was created in fails): its rows stay in the table."""
    seed_audit(pg, rows=400, days=130)
    original = table_ids(pg)

    def down(endpoint: str) -> Path:
        return make_config(tmp_path, dsn=pg_dsn, bucket=bucket, endpoint=endpoint, defaults={"batch_size": 3})

    failed = archive_under_fault(strace, down(f"http://127.0.0.1:{free_tcp_port}"), tmp_path / "fallback", "1")

    assert failed.returncode == ExitCode.FAILURE, failed.stderr[-2000:]
    errors = error_lines(failed.stderr)
    assert len(errors) == 1 and re.search(r"table public\.audit_logs failed: cannot write to fallback directory "
                                          r"\S+: Input/output error", errors[0]), errors
    assert "kind fallback" in failed.stderr and "Traceback" not in failed.stderr
    assert table_ids(pg) == original

    again = archive(down(s3_endpoint))

    assert again.returncode == ExitCode.OK, again.stderr[-2000:]
    assert_invariant(original, table_ids(pg), archived_ids(S3Storage(s3_client, bucket), LocalStorage(tmp_path / "fallback")))
