"""`python -m hold.main`: place, release or list the legal holds on a table's archived objects.
A thin click entrypoint; the work is in hold.app."""
from __future__ import annotations

from pathlib import Path

import click

from common.cli import command, config_option, exit_with, output_format_option, verbose_option


@command()
@config_option()
@click.option("--database", required=True, help="Configured database name.")
@click.option("--table", required=True, help="Table, TABLE or SCHEMA.TABLE.")
@click.option("--start-date", metavar="YYYY-MM-DD", help="Hold the objects of UTC days from this one on.")
@click.option("--end-date", metavar="YYYY-MM-DD", help="Hold the objects of UTC days up to this one.")
@click.option("--where", help="Hold every object holding a row that matches this DuckDB SQL condition, e.g. \"user_id = 42\".")
@click.option("--reason", help="Why the hold is placed or released (required; recorded with who and when).")
@click.option("--by", help="Who places or releases it (default: the OS user).")
@click.option("--release", "release", metavar="HOLD_ID", help="Release this hold (see --list).")
@click.option("--list", "list_holds", is_flag=True, help="List the table's holds, in force and released.")
@click.option("--dry-run", is_flag=True, help="Show what the hold would hold (or release); change nothing.")
@output_format_option(help="Output on stdout (logs go to stderr).")
@verbose_option()
def cli(config_path: Path, database: str, table: str, start_date: str | None, end_date: str | None, where: str | None,
        reason: str | None, by: str | None, release: str | None, list_holds: bool, dry_run: bool, output_format: str,
        verbose: bool) -> None:
    """Place a legal hold on --table's archived objects: by UTC days (--start-date/--end-date), by
    rows (--where), or on the whole table (neither). Held objects are never expired or erased until
    the hold is released; objects written later into its scope are held too. On a bucket with
    Object Lock each held object also gets S3's legal hold. Exit 0: done; 1: the table is busy;
    2: usage or config error; 3: S3 or the database unreachable."""
    from hold.app import HoldOptions, run

    def work() -> int:
        return run(HoldOptions(config_path=config_path, database=database, table=table, reason=reason, by=by,
                               start_date=start_date, end_date=end_date, where=where, release=release,
                               list_holds=list_holds, dry_run=dry_run, output_format=output_format, verbose=verbose))

    exit_with("hold", work, verbose=verbose)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
