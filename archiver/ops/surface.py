"""OpsSurface: everything that watches a run (run state for /health, Prometheus metrics,
notifications) and the HTTP endpoints serving them while it is open (issue 6)."""
from __future__ import annotations

import logging
from contextlib import ExitStack

from archiver.ops.events import Observers
from archiver.ops.health import HealthChecker, RunState
from archiver.ops.http_server import EndpointServer, serve_endpoints
from archiver.ops.metrics import ArchiverMetrics
from archiver.ops.notify import Notifications
from common.config import Config
from common.errors import classify, first_line
from common.s3client import fallback_storage

log = logging.getLogger("archiver")


class OpsSurface:
    """Everything that watches a run: run state for /health, Prometheus metrics, notifications, and
    the HTTP endpoints serving them while the context is open (issue 6)."""

    def __init__(self, cfg: Config, *, config_path: str) -> None:
        self.cfg, self.config_path = cfg, config_path
        self.state = RunState()
        self.metrics = ArchiverMetrics(pending_fallback=self._pending_fallback)
        self.health = HealthChecker(cfg, state=self.state)
        self.notifications = Notifications.from_config(cfg, config_path=config_path)
        self.servers: list[EndpointServer] = []
        self._stack = ExitStack()
        m = cfg.monitoring
        if m.enabled and m.textfile_path:
            self.metrics.seed_from_textfile(m.textfile_path)

    def _pending_fallback(self) -> tuple[int, int]:
        fallback = fallback_storage(self.cfg)
        return fallback.pending() if fallback is not None else (0, 0)

    def __enter__(self) -> OpsSurface:
        m = self.cfg.monitoring
        if m.enabled:
            self.servers = self._stack.enter_context(serve_endpoints(bind=m.bind, endpoints=[
                ("monitoring.health_port", m.health_port, "/health", self.health.route),
                ("monitoring.metrics_port", m.metrics_port, "/metrics", self.metrics.route),
            ]))
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def observer(self) -> Observers:
        return Observers(self.state, self.metrics, self.notifications)

    def run_crashed(self, exc: BaseException) -> None:
        """The run raised instead of finishing: record and report it like a failed run."""
        code, kind, message = classify(exc)
        for o in (self.state, self.metrics):
            o.run_crashed(kind, int(code))
        self.notifications.run_crashed(message, kind)

    def after_run(self) -> None:
        """Textfile and Pushgateway output: failures are logged, never change the run's result."""
        m = self.cfg.monitoring
        if not m.enabled:
            return
        if m.textfile_path:
            try:
                self.metrics.write_textfile(m.textfile_path)
            except OSError as exc:
                log.error("cannot write the metrics textfile %s: %s", m.textfile_path, exc.strerror or exc)
        if m.pushgateway_url:
            try:
                self.metrics.push(m.pushgateway_url)
            except Exception as exc:  # noqa: BLE001 - monitoring must not fail archiving
                log.warning("pushing metrics to the Pushgateway failed: %s", first_line(exc))

    def reconfigure(self, cfg: Config) -> None:
        """Use a reloaded config from now on (raises ConfigError, changing nothing, if it is unusable)."""
        notifications = Notifications.from_config(cfg, config_path=self.config_path)
        old = self.cfg.monitoring
        if (old.enabled, old.bind, old.health_port, old.metrics_port) != (
                cfg.monitoring.enabled, cfg.monitoring.bind, cfg.monitoring.health_port, cfg.monitoring.metrics_port):
            log.warning("monitoring.enabled/bind/ports changed: the endpoints keep their old settings until a restart")
        self.cfg, self.notifications = cfg, notifications
        self.health.set_config(cfg)
