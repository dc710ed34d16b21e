"""SIGHUP handling for both run modes: a one-shot run reopens its log file (logrotate), the daemon
also reloads its config."""
from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from common.errors import classify

log = logging.getLogger("archiver.daemon")


class HupWatcher:
    """Runs `on_hup` in a thread each time SIGHUP arrives. The handler only sets an event: reopening
    a log file from inside a signal handler could close a stream the interrupted code is writing."""

    def __init__(self, on_hup: Callable[[], None]) -> None:
        self.on_hup = on_hup
        self._event = threading.Event()
        self._closing = False
        self._previous: Any = None
        self._thread = threading.Thread(target=self._loop, name="sighup", daemon=True)

    def _handler(self, _signum: int, _frame: FrameType | None) -> None:
        self._event.set()

    def _loop(self) -> None:
        while True:
            self._event.wait()
            self._event.clear()
            if self._closing:
                return
            try:
                self.on_hup()
            except Exception as exc:  # noqa: BLE001 - a failed reload must not end the watcher
                log.error("handling SIGHUP failed: %s", classify(exc).message)

    def __enter__(self) -> HupWatcher:
        self._thread.start()
        self._previous = signal.signal(signal.SIGHUP, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGHUP, self._previous if self._previous is not None else signal.SIG_DFL)
        self._closing = True
        self._event.set()
        self._thread.join(timeout=5)
