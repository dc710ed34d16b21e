"""`python -m expire.main`: delete the archive objects past each table's archive_retention_days, by
the database's clock, except those under legal hold or Object Lock. A thin click entrypoint; the
work is in expire.app."""
from __future__ import annotations

from pathlib import Path

import click

from common.cli import command, config_option, exit_with, output_format_option, verbose_option


@command()
@config_option()
@click.option("--database", help="Only this configured database.")
@click.option("--table", help="Only this configured table, TABLE or SCHEMA.TABLE.")
@click.option("--dry-run", is_flag=True, help="List what would be deleted and what is kept, and why; change nothing.")
@output_format_option(help="Output on stdout (logs go to stderr).")
@click.option("--textfile", type=click.Path(dir_okay=False, path_type=Path), metavar="PATH",
              help="Also write what went, what was kept and the legal holds in force to PATH (a node_exporter textfile).")
@verbose_option()
def cli(config_path: Path, database: str | None, table: str | None, dry_run: bool, output_format: str,
        textfile: Path | None, verbose: bool) -> None:
    """Delete the archived objects whose newest row is older than the table's archive_retention_days
    (unset: kept forever), with their control records, recording each expiry in the table's digest
    chain. Objects under a legal hold, or whose Object Lock retention has not ended, are kept and
    reported. Exit 0: done; 1: a delete failed (retried by the next run); 2: usage or config error;
    3: S3 or the database unreachable."""
    from expire.app import ExpireOptions, run

    def work() -> int:
        return run(ExpireOptions(config_path=config_path, database=database, table=table, dry_run=dry_run,
                                 output_format=output_format, verbose=verbose, textfile=textfile))

    exit_with("expire", work, verbose=verbose)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
