"""One taxonomy: classify() files every exception by its type (never its text) under an exit code,
an ErrorKind and a one-line message; the kinds are the documented metric labels and notification keys."""
from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import boto3
import psycopg
import pytest
from botocore.config import Config as BotoConfig

from archiver.ops.notify import NEXT_STEPS
from archiver.runner import run_archive
from archiver.sink import FallbackFull
from common.config import load_config
from common.pg.db import connect
from common.errors import (ArchiverError, ConfigError, DatabaseError, DatabaseUnavailable, DataIntegrityError, ErrorKind,
                           Interrupted, S3Unavailable, StateNotSaved, UsageError, classify)
from common.exit_codes import ExitCode
from common.archive.manifest import Manifest, sha256_hex

from conftest import ADMIN_DSN, make_config

RUNBOOK = Path(__file__).resolve().parent.parent / "docs" / "runbooks.md"


def raised(make: Callable[[], object]) -> BaseException:
    try:
        make()
    except BaseException as exc:  # noqa: BLE001 - the test wants whatever it raises
        return exc
    raise AssertionError("expected an exception")


def manifest_for(data: bytes) -> Manifest:
    return Manifest(key="archives/t/part-1.parquet", sha256=sha256_hex(data), size=len(data), rows=1, database="db",
                    schema="public", table="t", primary_key="id", timestamp_column="created_at", min_pk=1, max_pk=1,
                    min_ts="2024-01-01", max_ts="2024-01-01", schema_fingerprint="f", format="parquet", format_version=1,
                    archiver_version="test", created_at="2024-01-01T00:00:00Z")


def refused_pg(port: int) -> BaseException:
    return raised(lambda: psycopg.connect(f"host=127.0.0.1 port={port} dbname=x user=x password=hunter2", connect_timeout=2))


def refused_s3(port: int) -> BaseException:
    client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                          config=BotoConfig(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=1))
    return raised(lambda: client.put_object(Bucket="b", Key="k", Body=b"x"))


def from_server(statement: str) -> BaseException:
    """What the server raises in a live session (psycopg files these under OperationalError)."""
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        return raised(lambda: conn.execute(statement))


CASES: list[tuple[str, Callable[[int], BaseException], ExitCode, ErrorKind, str]] = [
    # The server answered: a statement ran or waited too long, not an unreachable database.
    ("statement_timeout", lambda _: from_server("SET statement_timeout = '10ms'; SELECT pg_sleep(5)"), ExitCode.FAILURE,
     ErrorKind.DATABASE, r"^statement canceled by the server: canceling statement due to statement timeout$"),
    ("session terminated", lambda _: from_server("SELECT pg_terminate_backend(pg_backend_pid())"), ExitCode.UNAVAILABLE,
     ErrorKind.DATABASE, r"^database unreachable: terminating connection due to administrator command"),
    ("a right the role lacks", lambda _: from_server("SET ROLE pg_read_all_stats; SELECT * FROM pg_authid"), ExitCode.FAILURE,
     ErrorKind.CONFIG, r"^the database role lacks a right: permission denied for table pg_authid \(docs/runbooks\.md"),
    ("libpq refused (raw)", refused_pg, ExitCode.UNAVAILABLE, ErrorKind.DATABASE, r"^database unreachable: connection .*refused"),
    ("common.pg.db.connect refused", lambda port: raised(lambda: connect(f"host=127.0.0.1 port={port} dbname=x user=x", {})),
     ExitCode.UNAVAILABLE, ErrorKind.DATABASE_UNREACHABLE, r"^cannot connect to database 127\.0\.0\.1:\d+/x: .*refused"),
    ("botocore endpoint refused", refused_s3, ExitCode.UNAVAILABLE, ErrorKind.S3, r"^S3 unreachable: Could not connect"),
    ("S3Unavailable", lambda _: S3Unavailable("S3 upload of k failed and no s3.local_fallback_dir is configured"),
     ExitCode.UNAVAILABLE, ErrorKind.S3_UNREACHABLE, r"^S3 upload of k failed"),
    ("fallback full", lambda _: FallbackFull("fallback directory /f is full (ENOSPC)"), ExitCode.FAILURE, ErrorKind.FALLBACK,
     r"is full \(ENOSPC\)"),
    ("size mismatch", lambda _: raised(lambda: manifest_for(b"abcd").check(b"abc")), ExitCode.FAILURE, ErrorKind.INTEGRITY,
     r"size 3 differs from manifest size 4$"),
    ("checksum mismatch", lambda _: raised(lambda: manifest_for(b"abcd").check(b"abce")), ExitCode.FAILURE,
     ErrorKind.INTEGRITY, r"checksum mismatch"),
    ("state not saved", lambda _: StateNotSaved.of("checkpoint", "/c/db/t.json", OSError(5, "Input/output error")),
     ExitCode.FAILURE, ErrorKind.STATE, r"^checkpoint /c/db/t\.json could not be saved durably \(Input/output error, errno 5\)"),
    ("config", lambda _: ConfigError("config.yaml: s3.bucket: required"), ExitCode.USAGE, ErrorKind.CONFIG, r"^config\.yaml"),
    ("usage", lambda _: UsageError("--table x: not a configured table"), ExitCode.USAGE, ErrorKind.CONFIG, r"^--table x"),
    ("statement failed", lambda _: DatabaseError("reading from database h:5432/x failed: boom"), ExitCode.FAILURE,
     ErrorKind.DATABASE, r"failed: boom$"),
    ("ctrl-c", lambda _: KeyboardInterrupt(), ExitCode.INTERRUPTED, ErrorKind.OTHER, r"^interrupted$"),
    ("interrupted", lambda _: Interrupted("interrupted; nothing was written"), ExitCode.INTERRUPTED, ErrorKind.OTHER,
     r"nothing was written$"),
    ("file not found", lambda _: raised(lambda: open("/nonexistent-dir/x", "rb")), ExitCode.FAILURE, ErrorKind.OTHER,
     r"^FileNotFoundError: .*/nonexistent-dir/x"),
    ("a bug", lambda _: ValueError("bad\nsecond line"), ExitCode.FAILURE, ErrorKind.OTHER,
     r"^unexpected error \(ValueError\): bad; rerun with --verbose for details$"),
    # The words in a message decide nothing: only the type does.
    ("S3 and checksum in a database error", lambda _: DatabaseUnavailable("S3 checksum"), ExitCode.UNAVAILABLE,
     ErrorKind.DATABASE_UNREACHABLE, r"^S3 checksum$"),
    ("checksum in a plain error", lambda _: ArchiverError("checksum of the S3 object"), ExitCode.FAILURE, ErrorKind.OTHER,
     r"^checksum"),
]


@pytest.mark.parametrize(("make", "code", "kind", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_classify_files_an_exception_by_its_type(make: Callable[[int], BaseException], code: ExitCode, kind: ErrorKind,
                                                 message: str, free_tcp_port: int) -> None:
    got = classify(make(free_tcp_port))
    assert (got.code, got.kind) == (code, kind)
    assert re.search(message, got.message), got.message
    assert "\n" not in got.message and "hunter2" not in got.message


def test_every_failure_kind_has_a_next_step_and_is_documented() -> None:
    documented = re.search(r"`archiver_errors_total\{kind=\.\.\.\}` names the kind: (.+?)\.\n", RUNBOOK.read_text(), re.S)
    assert documented is not None
    names = set(re.findall(r"`([a-z0-9_]+)`", documented.group(1)))
    failures = set(ErrorKind) - {ErrorKind.CONFLICT}  # conflict is a rolled-back batch, never a failure
    assert names == {str(k) for k in failures}
    assert failures <= set(NEXT_STEPS)


def test_kinds_are_their_label_strings() -> None:
    assert str(ErrorKind.S3_UNREACHABLE) == "s3_unreachable" and f"{ErrorKind.INTEGRITY}" == "integrity"


def test_a_failed_tables_summary_line_names_its_kind(tmp_path: Path, pg_dsn: str, small_audit: object,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    path = make_config(tmp_path, dsn=pg_dsn, tables=[{"name": "audit_logs"}, {"name": "missing_table"}])
    with caplog.at_level("INFO", logger="archiver"):
        results, code = run_archive(load_config(path))
    assert code == ExitCode.FAILURE
    assert [(r.name, r.status, r.error_kind) for r in results] == [
        ("public.audit_logs", "completed", None), ("public.missing_table", "failed", ErrorKind.CONFIG)]
    summary = [m for m in caplog.messages if m.startswith("summary production_db.public.missing_table")]
    assert summary and summary[0].endswith(", kind config, error: table public.missing_table does not exist")
