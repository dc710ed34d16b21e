"""Named points of a move where tests step in (issue 3: "targeted points via a test-only
environment hook"). The sink, the pipeline and the table job are each handed one Hook and call it
with the point's name; production runs hand them the environment's, a no-op unless
ARCHIVER_TEST_KILL_AT is set.

The points, in a batch's order:
  after_read                   the reader thread has read a batch (not yet encoded)
  after_checkpoint             the batch is pending in the checkpoint, its upload not started
  between_object_and_manifest  the object is stored and verified, its manifest is not
  after_upload                 object and manifest stored, the rows not yet deleted
  before_commit                the DELETE ran, its transaction is not committed
  after_delete                 committed, the checkpoint not yet updated

A partition retired whole (archiver/retire.py) passes after_checkpoint, between_object_and_manifest
and after_upload per batch (no delete), then:
  after_partition_archived     every batch stored, the leaf re-counted, not yet detached
  after_detach                 DETACH committed, the batches still pending
  before_drop                  the batches finished, the detached leaf not yet dropped
"""
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
