"""Exceptions the tools raise on purpose, the kinds of error they are filed under, and the one place
that turns any exception into an exit code, a kind and a one-line, actionable message (tracebacks
only with --verbose)."""
from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Callable
from enum import StrEnum
from typing import Any, NamedTuple, TextIO

from common.exit_codes import ExitCode

log = logging.getLogger("archiver")


class ErrorKind(StrEnum):
    """What failed, for operators: the values are metric label values (archiver_errors_total{kind}),
    notification keys (archiver.ops.notify.NEXT_STEPS) and documented in docs/runbooks.md, so they
    never change spelling."""

    DATABASE_UNREACHABLE = "database_unreachable"  # no connection could be made
    DATABASE = "database"  # a statement failed or the session was lost mid-run
    S3_UNREACHABLE = "s3_unreachable"  # S3 down and no fallback directory to hold the batch
    S3 = "s3"  # botocore could not reach S3 mid-run
    FALLBACK = "fallback"  # the local fallback directory is full or unwritable
    STATE = "state"  # a tool's own state (checkpoint, digest journal) could not be written durably
    CONFIG = "config"  # the config or the command line is unusable
    INTEGRITY = "integrity"  # an archive differs from its manifest (checksum, size, rows)
    CONFLICT = "conflict"  # a batch rolled back because its rows changed (a batch kind, never a failure)
    OTHER = "other"


#: A service could not be reached at all: a run with a table failed so ends with exit 3.
UNREACHABLE = frozenset({ErrorKind.DATABASE_UNREACHABLE, ErrorKind.S3_UNREACHABLE})


class ArchiverError(Exception):
    """Base class: carries the exit code the tool should end with and the kind it is filed under."""

    exit_code: ExitCode = ExitCode.FAILURE
    kind: ErrorKind = ErrorKind.OTHER


class ConfigError(ArchiverError):
    exit_code = ExitCode.USAGE
    kind = ErrorKind.CONFIG


class UsageError(ArchiverError):
    exit_code = ExitCode.USAGE
    kind = ErrorKind.CONFIG


class ServiceUnavailable(ArchiverError):
    """The database or S3 cannot be reached (exit 3). Raise one of the subclasses, which say which."""

    exit_code = ExitCode.UNAVAILABLE


class DatabaseUnavailable(ServiceUnavailable):
    """No connection to a database could be made."""

    kind = ErrorKind.DATABASE_UNREACHABLE


class S3Unavailable(ServiceUnavailable):
    """S3 cannot be reached (or refuses every request), and nothing can stand in for it."""

    kind = ErrorKind.S3_UNREACHABLE


class SessionLost(ArchiverError):
    """A database session answered, then was lost mid-run, and the tool says what it left behind:
    exit 3 and kind database, as classify() files a raw driver error of that sort."""

    exit_code = ExitCode.UNAVAILABLE
    kind = ErrorKind.DATABASE


class DatabaseSilent(SessionLost):
    """The server stopped answering a session (common/pg/watchdog.py gave up on it): exit 3, kind
    database; a run ends with exit 3 on it (psycopg sessions raise pg_watchdog.ServerSilent, which
    carries the same `silent` mark)."""

    silent = True


def is_silence(exc: BaseException) -> bool:
    """Whether a service stopped answering (rather than answering with an error, or refusing)."""
    return bool(getattr(exc, "silent", False))


class DatabaseError(ArchiverError):
    """A statement failed or the session was lost mid-run (the server is otherwise reachable)."""

    kind = ErrorKind.DATABASE


class DataIntegrityError(ArchiverError):
    """An archive does not match its manifest: a checksum or size differs, or similar."""

    kind = ErrorKind.INTEGRITY


class Interrupted(ArchiverError):
    exit_code = ExitCode.INTERRUPTED


class StateNotSaved(ArchiverError):
    """A checkpoint or journal could not be written and fsynced (EIO, ENOSPC, EROFS, ...): the step
    it was to record did not happen, and the next run goes on from the last state that was saved.
    A failed table (exit 1), not an unreachable service: nothing outside this host is at fault."""

    kind = ErrorKind.STATE

    @classmethod
    def of(cls, what: str, path: object, exc: OSError) -> StateNotSaved:
        reason = exc.strerror or type(exc).__name__
        return cls(f"{what} {path} could not be saved durably ({reason}, errno {exc.errno}); the table stopped "
                   "there and the next run resumes from the last saved state: check the disk under checkpoint_dir")


class Classified(NamedTuple):
    code: ExitCode
    kind: ErrorKind
    message: str  # one line, no secrets: libpq and botocore never echo a password


def classify(exc: BaseException) -> Classified:
    """Map any exception to (exit code, kind, one-line message): by type only, never by its text."""
    if isinstance(exc, ArchiverError):
        return Classified(exc.exit_code, exc.kind, str(exc))
    if isinstance(exc, KeyboardInterrupt):
        return Classified(ExitCode.INTERRUPTED, ErrorKind.OTHER, "interrupted")
    # Imported lazily: the cost tool must not pay for psycopg/botocore imports.
    import botocore.exceptions as bex
    import psycopg

    # The server answered in a live session (statement_timeout, lock_timeout, a deadlock): a
    # failed statement, whatever class psycopg files it under.
    if is_silence(exc):  # pg_watchdog.ServerSilent: its message says what went silent, and the limit
        return Classified(ExitCode.UNAVAILABLE, ErrorKind.DATABASE, first_line(exc))
    if isinstance(exc, psycopg.errors.InsufficientPrivilege):
        return Classified(ExitCode.FAILURE, ErrorKind.CONFIG,
                          f"the database role lacks a right: {first_line(exc)} (docs/runbooks.md: Database Roles)")
    if isinstance(exc, psycopg.OperationalError) and not session_lost(exc):
        what = "transaction rolled back" if isinstance(exc, psycopg.errors.TransactionRollback) else "statement canceled"
        return Classified(ExitCode.FAILURE, ErrorKind.DATABASE, f"{what} by the server: {first_line(exc)}")
    # A raw driver error escaped the wrappers that raise DatabaseUnavailable/S3Unavailable at
    # connect time, so the service answered once and was lost mid-run: kind database/s3 (a failed
    # table), while a tool ending on one still exits 3 as it always has.
    if isinstance(exc, psycopg.OperationalError):
        return Classified(ExitCode.UNAVAILABLE, ErrorKind.DATABASE, f"database unreachable: {first_line(exc)}")
    if isinstance(exc, (bex.EndpointConnectionError, bex.ConnectTimeoutError, bex.NoCredentialsError)):
        return Classified(ExitCode.UNAVAILABLE, ErrorKind.S3, f"S3 unreachable: {first_line(exc)}")
    if isinstance(exc, bex.ReadTimeoutError):  # connected, then silent: after s3.max_attempts tries
        return Classified(ExitCode.UNAVAILABLE, ErrorKind.S3, f"S3 stopped answering: {first_line(exc)}"
                          " (s3.read_timeout, s3.max_attempts)")
    if isinstance(exc, (bex.ConnectionError, bex.HTTPClientError)):  # reset, closed mid-answer
        return Classified(ExitCode.UNAVAILABLE, ErrorKind.S3, f"S3 connection lost: {first_line(exc)}")
    if isinstance(exc, bex.ClientError):
        return _s3_answer(exc)
    if isinstance(exc, OSError):
        return Classified(ExitCode.FAILURE, ErrorKind.OTHER, f"{type(exc).__name__}: {exc}")
    return Classified(ExitCode.FAILURE, ErrorKind.OTHER,
                      f"unexpected error ({type(exc).__name__}): {first_line(exc)}; rerun with --verbose for details")


def _s3_answer(exc: Any) -> Classified:
    """S3 answered a request with an error (botocore's ClientError), by the answer's status. A
    refusal (403: the keys, the role, the bucket's policy; moto accepts any keys, SeaweedFS and S3
    do not) was an "unexpected error" with a traceback hint; it is configuration to fix, like a
    database right the role lacks. A 5xx is S3 failing (exit 3)."""
    error = exc.response.get("Error", {})
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    message = " ".join(str(error.get("Message") or first_line(exc)).split())[:300]
    answer = f"({error.get('Code') or status}): {message}"
    if status == 403:
        return Classified(ExitCode.FAILURE, ErrorKind.CONFIG, f"S3 refused the request {answer}; check the S3 "
                          "credentials and the bucket's policy")
    if status >= 500:
        return Classified(ExitCode.UNAVAILABLE, ErrorKind.S3, f"S3 failed the request {answer}")
    return Classified(ExitCode.FAILURE, ErrorKind.S3, f"S3 refused the request {answer}")


def session_lost(exc: BaseException) -> bool:
    """Whether a driver error means the session is gone (or never came). psycopg files under
    OperationalError also what the server raises in a live session: a statement canceled
    (statement_timeout, lock_timeout, a cancel) and a transaction rolled back (a deadlock, a
    serialization failure). Those are a failed statement, not an unreachable database."""
    import psycopg

    answered = (psycopg.errors.QueryCanceled, psycopg.errors.LockNotAvailable, psycopg.errors.TransactionRollback)
    return isinstance(exc, psycopg.OperationalError) and not isinstance(exc, answered)


def message_lines(exc: BaseException, *, skip: tuple[str, ...] = ()) -> list[str]:
    """The non-empty lines of an exception's message, without those starting with `skip` (generic
    hints such as libpq's "Is the server running ...") unless nothing else is left."""
    lines = [s.strip() for s in str(exc).strip().splitlines() if s.strip()]
    if not skip:
        return lines
    return [ln for ln in lines if not ln.startswith(skip)] or lines


def first_line(exc: BaseException, *, limit: int = 300) -> str:
    """The first non-empty line of an exception's message (bounded), or its class name."""
    lines = message_lines(exc)
    return lines[0][:limit] if lines else type(exc).__name__


def run_tool(func: Callable[..., int], *, verbose: bool, tool: str, stderr: TextIO | None = None) -> int:
    """Run a tool body; print a one-line error (on `stderr`, default the process's) and return its
    exit code on failure."""
    err = stderr or sys.stderr
    try:
        return int(func())
    except BaseException as exc:  # noqa: BLE001 - this is the one place that maps them all
        if isinstance(exc, SystemExit):
            raise
        code, _kind, message = classify(exc)
        if verbose:
            traceback.print_exc(file=err)
        level = logging.WARNING if code == ExitCode.INTERRUPTED else logging.ERROR
        if log.handlers:  # only when a tool gave its logger handlers of its own; else print alone
            log.log(level, "%s failed: %s", tool, message)
        print(f"{tool}: error: {message}", file=err)
        return int(code)
