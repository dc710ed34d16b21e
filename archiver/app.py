"""The archiver's work behind the CLI: load config, set up logging, dry run, one run or the daemon,
with the operations surface around it (health and metrics endpoints, textfile/Pushgateway output,
notifications; issue 6)."""
from __future__ import annotations

import logging
import sys
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from archiver.controls import RunControls
from archiver.runner import dry_run, run_archive
from archiver.sink import pending_fallback
from common.config import Config, load_config
from common.errors import ConfigError, DataIntegrityError, UsageError, describe, first_line
from common.events import Observers
from common.exit_codes import ExitCode
from common.health import HealthChecker, RunState
from common.http_server import EndpointServer, serve_endpoints
from common.logging_setup import setup_logging
from common.metrics import ArchiverMetrics
from common.notify import Notifications
from common.s3client import fallback_storage

log = logging.getLogger("archiver")


@dataclass(frozen=True, kw_only=True)
class ArchiverOptions:
    config_path: Path
    dry_run: bool = False
    databases: tuple[str, ...] = ()
    tables: tuple[str, ...] = ()
    max_rows: int | None = None
    stop_file: Path | None = None
    wait_for_lock: float = 0.0
    daemon: bool = False
    verbose: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def only(self, db: str, schema: str, table: str) -> bool:
        """--database / --table: a table named TABLE in any schema, or exactly SCHEMA.TABLE."""
        return (not self.databases or db in self.databases) and (
            not self.tables or table in self.tables or f"{schema}.{table}" in self.tables)


def check_filters(cfg: Config, opts: ArchiverOptions) -> None:
    for name in opts.databases:
        cfg.database(name)
    known = {t.name for db in cfg.databases for t in db.tables} | {f"{t.schema_}.{t.name}" for db in cfg.databases for t in db.tables}
    for name in opts.tables:
        if name not in known:
            raise UsageError(f"--table {name}: not a configured table")


def make_controls(cfg: Config, opts: ArchiverOptions) -> RunControls:
    d = cfg.defaults
    return RunControls(
        stop_file=opts.stop_file or Path(cfg.checkpoint_dir) / "STOP",
        max_rows=opts.max_rows,
        max_runtime_seconds=d.max_runtime_minutes * 60 if d.max_runtime_minutes else None,
        wait_for_lock=opts.wait_for_lock,
        replica_dsns=[dsn for db in cfg.databases for dsn in db.replica_dsns],
        show_progress=sys.stderr.isatty(),
    )


class OpsSurface:
    """Everything that watches a run: run state for /health, Prometheus metrics, notifications, and
    the HTTP endpoints serving them while the context is open (issue 6)."""

    def __init__(self, cfg: Config, *, config_path: str) -> None:
        self.cfg, self.config_path = cfg, config_path
        self.state = RunState()
        self.metrics = ArchiverMetrics(pending_fallback=lambda: pending_fallback(fallback_storage(self.cfg)))
        self.health = HealthChecker(cfg, state=self.state)
        self.notifications = Notifications.from_config(cfg, config_path=config_path)
        self.servers: list[EndpointServer] = []
        self._stack = ExitStack()
        m = cfg.monitoring
        if m.enabled and m.textfile_path:
            self.metrics.seed_from_textfile(m.textfile_path)

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
        code, message = describe(exc)
        kind = ("config" if isinstance(exc, (ConfigError, UsageError)) else "integrity" if isinstance(exc, DataIntegrityError)
                else ("s3_unreachable" if "S3" in message else "database_unreachable") if code == ExitCode.UNAVAILABLE
                else "other")
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


def run_once(cfg: Config, opts: ArchiverOptions, ops: OpsSurface, controls: RunControls) -> int:
    """One archival run with the ops surface watching; signal handlers are the caller's."""
    try:
        _results, code = run_archive(cfg, controls=controls, observer=ops.observer(), only=opts.only)
    except Exception as exc:
        ops.run_crashed(exc)
        raise
    finally:
        ops.after_run()
    return int(code)


def run(opts: ArchiverOptions) -> int:
    cfg = load_config(opts.config_path)
    check_filters(cfg, opts)
    if opts.dry_run:
        setup_logging(None, verbose=opts.verbose)
        lines, code = dry_run(cfg, only=opts.only)
        print("\n".join(lines))
        return int(code)
    setup_logging(cfg.logging, verbose=opts.verbose)
    ops = OpsSurface(cfg, config_path=str(opts.config_path))
    from archiver.daemon import Daemon, HupWatcher

    if opts.daemon:
        return Daemon(opts=opts, cfg=cfg, ops=ops).serve()
    controls = make_controls(cfg, opts)
    # SIGHUP only reopens the log file here: logrotate may signal a one-shot run, which must not die.
    with ops, HupWatcher(lambda: _reopen_logs()):
        controls.install_signal_handlers()
        return run_once(cfg, opts, ops, controls)


def _reopen_logs() -> None:
    from common.logging_setup import reopen_log_files

    reopen_log_files()
    log.info("log file reopened (SIGHUP)")
