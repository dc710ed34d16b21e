"""Service mode (`--daemon`, issue 6): archive at once, then every `schedule.interval`, keeping the
health and metrics endpoints up between runs.

Signals: SIGTERM finishes the current batch (archiver/controls.py) and exits 0, at once when it
arrives between runs; SIGINT does the same with exit 130. SIGHUP reopens the log file (logrotate)
and reloads the config for the next run; a bad new config is logged and the old one kept. The
stop file (`<checkpoint_dir>/STOP` or --stop-file) ends the daemon after the current batch too."""
from __future__ import annotations

import logging
import re
import signal
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from types import FrameType

from archiver.controls import RunControls
from archiver.ops.hup import HupWatcher
from archiver.ops.surface import OpsSurface
from common.config import Config
from common.errors import ArchiverError, ConfigError, classify
from common.exit_codes import ExitCode
from common.logging_setup import reopen_log_files, setup_logging

log = logging.getLogger("archiver.daemon")

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)")


def parse_interval(text: str) -> float:
    """'15m', '1h', '1h30m', '90s', '1d' or plain seconds -> seconds; anything else is a ConfigError."""
    s = text.strip().lower()
    pos, total = 0, 0.0
    for m in _PART.finditer(s):
        if s[pos:m.start()].strip():
            break
        total += float(m.group(1)) * _UNITS[m.group(2) or "s"]
        pos = m.end()
    if not s or s[pos:].strip() or total <= 0:
        raise ConfigError(f"schedule.interval: {text!r} is not a duration like 15m, 1h, 1h30m or 1d")
    return total


class Daemon:
    """The service loop. It is handed what one run is, so it knows nothing of how archiving works:
    `load_config` reads and checks the config file (raising ArchiverError), `new_controls` builds a
    run's stop/slow-down controls, and `run_once` does one archival run under the ops surface."""

    def __init__(self, *, cfg: Config, ops: OpsSurface, config_path: Path, verbose: bool,
                 load_config: Callable[[], Config], new_controls: Callable[[Config], RunControls],
                 run_once: Callable[[Config, RunControls], int]) -> None:
        self.cfg, self.ops, self.config_path, self.verbose = cfg, ops, config_path, verbose
        self._load_config, self._new_controls, self._run_once = load_config, new_controls, run_once
        self.interval = parse_interval(cfg.schedule.interval)
        self._wake = threading.Event()
        self._stop_signal: int | None = None
        self._pending: Config | None = None
        self._pending_lock = threading.Lock()

    # -- signals -----------------------------------------------------------------------------
    def _on_stop_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._stop_signal = signum
        self._wake.set()

    def _install_stop_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)

    def _on_hup(self) -> None:
        """In the SIGHUP thread: reopen the log at once; check the new config and queue it."""
        reopen_log_files()
        try:
            cfg = self._load_config()
            parse_interval(cfg.schedule.interval)
            self.ops.reconfigure(cfg)
        except ArchiverError as exc:
            log.error("config reload failed: %s; keeping the previous configuration", exc)
            return
        with self._pending_lock:
            self._pending = cfg
        log.info("configuration reloaded from %s (SIGHUP); it applies from the next run", self.config_path)
        self._wake.set()

    def _apply_reload(self) -> None:
        with self._pending_lock:
            cfg, self._pending = self._pending, None
        if cfg is None:
            return
        if cfg.logging != self.cfg.logging:
            try:
                setup_logging(cfg.logging, verbose=self.verbose)
            except ConfigError as exc:
                setup_logging(self.cfg.logging, verbose=self.verbose)
                log.error("config reload: %s; keeping the previous logging settings", exc)
                cfg = cfg.model_copy(update={"logging": self.cfg.logging})
        self.cfg, self.interval = cfg, parse_interval(cfg.schedule.interval)

    # -- the loop ----------------------------------------------------------------------------
    def serve(self) -> int:
        with self.ops, HupWatcher(self._on_hup):
            self._install_stop_handlers()
            log.info("daemon started: archiving now and then every %s (%gs); SIGTERM stops, SIGHUP reloads",
                     self.cfg.schedule.interval, self.interval)
            while True:
                started = time.monotonic()
                self._apply_reload()
                controls = self._one_run()
                if controls.stop_file is not None and controls.stop_file.exists():
                    log.info("stop file %s exists; daemon stopping", controls.stop_file)
                    return int(ExitCode.OK)
                if controls.signal_received in (signal.SIGTERM, signal.SIGINT):
                    self._stop_signal = controls.signal_received
                if self._wait_until(started + self.interval):
                    return self._exit_code()

    def _one_run(self) -> RunControls:
        controls = self._new_controls(self.cfg)
        controls.install_signal_handlers()
        if self._stop_signal is not None:  # arrived just before the handlers changed hands
            controls.signal_received = self._stop_signal
        try:
            code = self._run_once(self.cfg, controls)
            log.info("run finished with exit code %d", code)
        except Exception as exc:  # noqa: BLE001 - the daemon outlives a failed run; the next one may succeed
            code, _kind, message = classify(exc)
            log.error("run failed: %s", message, exc_info=self.verbose)
        finally:
            self._install_stop_handlers()
        return controls

    def _wait_until(self, deadline: float) -> bool:
        """Sleep until the next run is due; True when a stop signal ended the wait."""
        announced = False
        while self._stop_signal is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if not announced:
                at = datetime.now() + timedelta(seconds=remaining)
                log.info("next run at %s", at.strftime("%Y-%m-%d %H:%M:%S"))
                announced = True
            self._wake.wait(remaining)
            self._wake.clear()
            if self._pending is not None:  # a reload may change the interval
                old = self.interval
                self._apply_reload()
                deadline += self.interval - old
                announced = announced and self.interval == old
        return True

    def _exit_code(self) -> int:
        name = signal.Signals(self._stop_signal).name if self._stop_signal else "stop"
        log.info("%s received; daemon stopping", name)
        return int(ExitCode.INTERRUPTED if self._stop_signal == signal.SIGINT else ExitCode.OK)
