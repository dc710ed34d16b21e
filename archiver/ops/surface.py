"""OpsSurface: everything that watches a run (run state for /health, Prometheus metrics,
notifications) and the HTTP endpoints serving them while it is open (issue 6)."""
from __future__ import annotations

import logging
from contextlib import ExitStack

from archiver.ops.events import Observers
from archiver.ops.health import HealthChecker, RunState
from archiver.ops import identity
from archiver.ops.http_server import EndpointServer, PortInUse, serve_endpoints
from archiver.ops.metrics import ArchiverMetrics
from archiver.ops.notify import Notifications
from common.config import Config
from common.errors import ConfigError, classify, first_line
from common.archive.s3client import fallback_storage

log = logging.getLogger("archiver")


class OpsSurface:
    """Everything that watches a run: run state for /health, Prometheus metrics, notifications, and
    the HTTP endpoints serving them while the context is open (issue 6)."""

    def __init__(self, cfg: Config, *, config_path: str, daemon: bool = False) -> None:
        self.cfg, self.config_path, self.daemon = cfg, config_path, daemon
        self.identity = identity.identity(config_path=config_path, mode="daemon" if daemon else "one-shot")
        self.state = RunState()
        self.metrics = ArchiverMetrics(pending_fallback=self._pending_fallback)
        self.health = HealthChecker(cfg, state=self.state)
        self.health.identity = self.identity
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
        if not m.enabled:
            return self
        whoami = identity.route(self.identity)
        endpoints = [("monitoring.health_port", m.health_port, "/health", self.health.route),
                     ("monitoring.metrics_port", m.metrics_port, "/metrics", self.metrics.route),
                     ("monitoring.health_port", m.health_port, identity.PATH, whoami),
                     ("monitoring.metrics_port", m.metrics_port, identity.PATH, whoami)]
        try:
            self.servers = self._stack.enter_context(serve_endpoints(bind=m.bind, endpoints=endpoints))
        except PortInUse as exc:
            self._share_ports(exc)
        return self

    def _share_ports(self, exc: PortInUse) -> None:
        """A port is taken. By another archiver of this config, a one-shot run goes on without
        endpoints (cron fired while the last run still works: its advisory locks make this one skip
        the tables it holds); by anything else, or in daemon mode, it stays a config error (exit 2)."""
        holder = identity.probe_holder(exc.bind, exc.port)
        if holder is None:
            raise exc
        who = identity.describe(holder)
        if self.daemon or not identity.same_config(holder, self.config_path):
            hint = ("daemon mode needs its own ports" if identity.same_config(holder, self.config_path)
                    else "give each config its own monitoring ports")
            raise ConfigError(f"{exc.key}: cannot listen on {exc.bind}:{exc.port}: port {exc.port} is held by "
                              f"another archiver ({who}); {hint}") from None
        log.warning("monitoring ports are held by another archiver of this config (%s): running without health and "
                    "metrics endpoints; tables it is archiving are skipped", who)

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
                # An overlapping run may have written it meanwhile: keep its newer last-success times.
                self.metrics.seed_from_textfile(m.textfile_path)
                self.metrics.write_textfile(m.textfile_path)
            except OSError as exc:
                log.error("cannot write the metrics textfile %s: %s", m.textfile_path, exc.strerror or exc)
        if m.pushgateway_url:
            try:
                self.metrics.seed_from_pushgateway(m.pushgateway_url)
            except (OSError, ValueError) as exc:
                log.warning("cannot read the last-success times this host pushed to the Pushgateway (%s); "
                            "pushing without them", first_line(exc))
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
