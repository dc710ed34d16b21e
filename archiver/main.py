"""`python -m archiver.main`: move expired rows to verified archives. A thin click entrypoint."""
from __future__ import annotations

from pathlib import Path

import click

from common.cli import command, config_option, exit_with, verbose_option
from common.exit_codes import ExitCode


@command()
@config_option()
@click.option("--dry-run", is_flag=True, help="Check config, connections and tables; show what would be archived. Changes nothing.")
@click.option("--database", "databases", multiple=True, help="Only these configured databases (repeatable).")
@click.option("--table", "tables", multiple=True, help="Only these configured tables (repeatable).")
@click.option("--max-rows", type=click.IntRange(min=1), help="Stop after archiving this many rows in this run.")
@click.option("--stop-file", type=click.Path(path_type=Path), help="Finish the current batch and exit 0 when this file exists [default: <checkpoint_dir>/STOP].")
@click.option("--wait-for-lock", type=click.FloatRange(min=0), default=0, show_default=True,
              help="Seconds to wait for a table another archiver is working on (default: skip it).")
@click.option("--daemon", is_flag=True, help="Run now and then every schedule.interval until SIGTERM.")
@click.option("--migrate-layout", is_flag=True,
              help="Move an archive of the legacy layout (manifests, digests and withdrawal records inside the "
                   "table folders) to the tables' control folders, verified, then exit. With --dry-run: only count. "
                   "Archives nothing.")
@click.option("--migrate-manifests", "migrate_manifests", is_flag=True, hidden=True,
              help="The former name of --migrate-layout.")
@click.option("--withdraw", "withdraw", metavar="KEY",
              help="Take back one archived object (a withdrawal record: its manifest no longer counts), then "
                   "exit. For a damaged object whose rows are back in the table. Archives nothing.")
@verbose_option()
def cli(config_path: Path, dry_run: bool, databases: tuple[str, ...], tables: tuple[str, ...], max_rows: int | None,
        stop_file: Path | None, wait_for_lock: float, daemon: bool, migrate_layout: bool, migrate_manifests: bool,
        withdraw: str | None, verbose: bool) -> None:
    """Archive rows older than each table's retention to S3 (or a local directory), verify every
    object, then delete exactly the archived rows."""
    from archiver.app import ArchiverOptions, run

    options = ArchiverOptions(config_path=config_path, dry_run=dry_run, databases=databases, tables=tables,
                              max_rows=max_rows, stop_file=stop_file, wait_for_lock=wait_for_lock,
                              daemon=daemon, migrate_layout=migrate_layout or migrate_manifests, withdraw=withdraw,
                              verbose=verbose)
    exit_with("archiver", lambda: run(options), verbose=verbose)


def main() -> None:
    from common.memory import quiet_process, settle_heap, use_system_allocator

    use_system_allocator()
    quiet_process()
    import archiver.app  # noqa: F401 - the run's modules are loaded before the heap is settled

    settle_heap()
    cli()


if __name__ == "__main__":
    main()

__all__ = ["cli", "main", "ExitCode"]
