"""The archiver's work behind the CLI: load config, set up logging, dry run, one run or the daemon,
with the operations surface around it (health and metrics endpoints, textfile/Pushgateway output,
notifications; issue 6)."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from archiver.controls import RunControls
from archiver.daemon import Daemon
from archiver.ops.hup import HupWatcher
from archiver.ops.surface import OpsSurface
from archiver.runner import dry_run, run_archive
from common.cli import Environment, check_configured_tables, table_matches
from common.config import Config, load_config
from common.iceberg import require as require_iceberg
from common.exit_codes import ExitCode
from common.logging_setup import setup_logging
from common.archive.s3client import fallback_storage, primary_storage

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
    migrate_layout: bool = False
    withdraw: str | None = None
    verbose: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def only(self, db: str, schema: str, table: str) -> bool:
        """--database / --table, once check_filters accepted them: the tables they name."""
        return (not self.databases or db in self.databases) and (
            not self.tables or any(table_matches(name, schema, table) for name in self.tables))


def check_filters(cfg: Config, opts: ArchiverOptions) -> None:
    """Every --database is configured and every --table names one configured table (common.cli's
    rule): a usage error (exit 2) otherwise, before anything connects."""
    for name in opts.databases:
        cfg.database(name)
    check_configured_tables(cfg, opts.tables, databases=opts.databases)


def load_checked(opts: ArchiverOptions) -> Config:
    """The config file, loaded and checked against --database/--table (ArchiverError if unusable)."""
    cfg = load_config(opts.config_path)
    check_filters(cfg, opts)
    return cfg


def make_controls(cfg: Config, opts: ArchiverOptions, *, env: Environment | None = None) -> RunControls:
    d, env = cfg.defaults, env or Environment()
    return RunControls(
        stop_file=opts.stop_file or Path(cfg.checkpoint_dir) / "STOP",
        max_rows=opts.max_rows,
        max_runtime_seconds=d.max_runtime_minutes * 60 if d.max_runtime_minutes else None,
        wait_for_lock=opts.wait_for_lock,
        replica_dsns=[dsn for db in cfg.databases for dsn in db.replica_dsns],
        progress_to=env.stderr if env.stderr_isatty else None,
    )


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


def run(opts: ArchiverOptions, *, env: Environment | None = None) -> int:
    env = env or Environment()
    cfg = load_checked(opts)
    require_iceberg(cfg)  # an iceberg: section without pyiceberg: exit 2 whatever the mode
    if opts.migrate_layout:
        return _migrate(cfg, opts, env)
    if opts.withdraw:
        return _withdraw(cfg, opts, env)
    if opts.dry_run:
        setup_logging(None, verbose=opts.verbose)
        lines, code = dry_run(cfg, only=opts.only)
        env.stdout.write("\n".join(lines) + "\n")
        return int(code)
    setup_logging(cfg.logging, verbose=opts.verbose)
    ops = OpsSurface(cfg, config_path=str(opts.config_path), daemon=opts.daemon)
    if opts.daemon:
        return Daemon(cfg=cfg, ops=ops, config_path=opts.config_path, verbose=opts.verbose,
                      load_config=lambda: load_checked(opts), new_controls=lambda c: make_controls(c, opts, env=env),
                      run_once=lambda c, controls: run_once(c, opts, ops, controls)).serve()
    controls = make_controls(cfg, opts, env=env)
    # SIGHUP only reopens the log file here: logrotate may signal a one-shot run, which must not die.
    with ops, HupWatcher(lambda: _reopen_logs()):
        controls.install_signal_handlers()
        return run_once(cfg, opts, ops, controls)


def _migrate(cfg: Config, opts: ArchiverOptions, env: Environment) -> int:
    """The one-off move of an archive to the current layout (archiver/migration/layout.py); archives nothing."""
    from archiver.migration.layout import migrate_layout

    setup_logging(None if opts.dry_run else cfg.logging, verbose=opts.verbose)
    fallback = fallback_storage(cfg)
    result = migrate_layout(cfg, [primary_storage(cfg), *([fallback] if fallback is not None else [])],
                            dry_run=opts.dry_run)
    env.stdout.write(result.summary() + "\n")
    return int(ExitCode.FAILURE if result.failed else ExitCode.OK)


def _withdraw(cfg: Config, opts: ArchiverOptions, env: Environment) -> int:
    """--withdraw KEY (archiver/migration/layout.py's neighbour in the runbook's repair of a damaged object)."""
    from archiver.migration.layout import withdraw_by_hand

    setup_logging(cfg.logging, verbose=opts.verbose)
    fallback = fallback_storage(cfg)
    assert opts.withdraw is not None
    env.stdout.write(withdraw_by_hand(cfg, [primary_storage(cfg), *([fallback] if fallback is not None else [])],
                                      opts.withdraw) + "\n")
    return int(ExitCode.OK)


def _reopen_logs() -> None:
    from common.logging_setup import reopen_log_files

    reopen_log_files()
    log.info("log file reopened (SIGHUP)")
