"""The one exit-code table shared by all five tools (issue 2: "Exit codes (all five tools)")."""
from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    #: The run finished but something failed (a table, a check).
    FAILURE = 1
    #: Usage or configuration error.
    USAGE = 2
    #: A required service (database, S3 with no fallback) cannot be reached.
    UNAVAILABLE = 3
    #: Interrupted by SIGINT.
    INTERRUPTED = 130
