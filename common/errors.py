"""Exceptions the tools raise on purpose, and the one place that turns any exception into an
exit code and a one-line, actionable message (tracebacks only with --verbose)."""
from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Callable

from common.exit_codes import ExitCode

log = logging.getLogger("archiver")


class ArchiverError(Exception):
    """Base class: carries the exit code the tool should end with."""

    exit_code: ExitCode = ExitCode.FAILURE


class ConfigError(ArchiverError):
    exit_code = ExitCode.USAGE


class UsageError(ArchiverError):
    exit_code = ExitCode.USAGE


class ServiceUnavailable(ArchiverError):
    """The database or S3 cannot be reached (exit 3)."""

    exit_code = ExitCode.UNAVAILABLE


class DatabaseError(ArchiverError):
    """A statement failed or the session was lost mid-run (the server is otherwise reachable)."""


class DataIntegrityError(ArchiverError):
    """An archive does not match its manifest, a checksum differs, or similar."""


class Interrupted(ArchiverError):
    exit_code = ExitCode.INTERRUPTED


def describe(exc: BaseException) -> tuple[ExitCode, str]:
    """Map any exception to (exit code, one-line message)."""
    if isinstance(exc, ArchiverError):
        return exc.exit_code, str(exc)
    if isinstance(exc, KeyboardInterrupt):
        return ExitCode.INTERRUPTED, "interrupted"
    # Imported lazily: the cost tool must not pay for psycopg/botocore imports.
    import botocore.exceptions as bex
    import psycopg

    if isinstance(exc, psycopg.OperationalError):
        return ExitCode.UNAVAILABLE, f"database unreachable: {first_line(exc)}"
    if isinstance(exc, (bex.EndpointConnectionError, bex.ConnectTimeoutError, bex.NoCredentialsError)):
        return ExitCode.UNAVAILABLE, f"S3 unreachable: {first_line(exc)}"
    if isinstance(exc, OSError):
        return ExitCode.FAILURE, f"{type(exc).__name__}: {exc}"
    return ExitCode.FAILURE, f"unexpected error ({type(exc).__name__}): {first_line(exc)}; rerun with --verbose for details"


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


def run_tool(func: Callable[..., int], *, verbose: bool, tool: str) -> int:
    """Run a tool body; print a one-line error and return its exit code on failure."""
    try:
        return int(func())
    except BaseException as exc:  # noqa: BLE001 - this is the one place that maps them all
        if isinstance(exc, SystemExit):
            raise
        code, message = describe(exc)
        if verbose:
            traceback.print_exc(file=sys.stderr)
        level = logging.WARNING if code == ExitCode.INTERRUPTED else logging.ERROR
        if log.handlers:  # only when a tool gave its logger handlers of its own; else print alone
            log.log(level, "%s failed: %s", tool, message)
        print(f"{tool}: error: {message}", file=sys.stderr)
        return int(code)
