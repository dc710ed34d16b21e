"""Named points where tests step in (issue 3): a tool hands its components one Hook and they call
it with the point's name; production runs hand them the environment's, a no-op unless
ARCHIVER_TEST_KILL_AT is set. The archiver's points are listed in archiver/hooks.py, the erase
tool's in common/archive/replace.py."""
from __future__ import annotations

import os
import signal
import threading
from collections.abc import Mapping
from functools import lru_cache
from typing import Protocol

#: "after_upload:3" SIGKILLs this process the 3rd time it reaches that point. Unset in production;
#: tests/test_faults.py drives it.
HOOK_ENV = "ARCHIVER_TEST_KILL_AT"


class Hook(Protocol):
    def __call__(self, point: str) -> None: ...


def no_hook(point: str) -> None:
    """The hook of a component nobody steps into."""


class KillAt:
    """SIGKILL this process the n-th time any thread reaches `point`: the crash a kill -9 causes,
    at a moment a test chooses."""

    def __init__(self, point: str, nth: int) -> None:
        self.point, self.nth = point, nth
        self.seen = 0
        self._lock = threading.Lock()  # the reader, upload and mover threads all reach points

    def __call__(self, point: str) -> None:
        if point != self.point:
            return
        with self._lock:
            self.seen += 1
            if self.seen >= self.nth:
                os.kill(os.getpid(), signal.SIGKILL)


def env_hook(environ: Mapping[str, str] | None = None) -> Hook:
    """The hook ARCHIVER_TEST_KILL_AT asks for (a no-op when unset). One per process and spec: the
    n-th time counts across runs, tables and threads, as a daemon's kill -9 would."""
    return _hook_for((os.environ if environ is None else environ).get(HOOK_ENV, ""))


@lru_cache(maxsize=None)
def _hook_for(spec: str) -> Hook:
    if not spec:
        return no_hook
    point, _, nth = spec.partition(":")
    return KillAt(point, int(nth or 1))
