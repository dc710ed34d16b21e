"""The archiver's work behind the CLI: load config, set up logging, dry run or real run."""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from archiver.controls import RunControls
from archiver.runner import dry_run, run_archive
from common.config import Config, load_config
from common.errors import UsageError
from common.logging_setup import setup_logging


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


def _check_filters(cfg: Config, opts: ArchiverOptions) -> None:
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


def run(opts: ArchiverOptions) -> int:
    cfg = load_config(opts.config_path)
    _check_filters(cfg, opts)
    if opts.dry_run:
        setup_logging(None, verbose=opts.verbose)
        lines, code = dry_run(cfg)
        print("\n".join(lines))
        return int(code)
    setup_logging(cfg.logging, verbose=opts.verbose)
    if opts.daemon:
        raise UsageError("--daemon is not implemented yet (issue 6); use a systemd timer or cron")
    controls = make_controls(cfg, opts)
    controls.install_signal_handlers()

    def only(db: str, table: str) -> bool:
        return (not opts.databases or db in opts.databases) and (
            not opts.tables or table in opts.tables or any(t.endswith("." + table) for t in opts.tables))

    _results, code = run_archive(cfg, controls=controls, only=only)
    return int(code)
