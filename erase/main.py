"""`python -m erase.main`: remove the archived rows matching --where (an erasure request) by
rewriting each object that holds them. A thin click entrypoint; the work is in erase.app."""
from __future__ import annotations

from pathlib import Path

import click

from common.cli import command, config_option, exit_with, output_format_option, verbose_option


@command()
@config_option()
@click.option("--database", required=True, help="Configured database name.")
@click.option("--table", required=True, help="Table, TABLE or SCHEMA.TABLE.")
@click.option("--where", required=True, help="A DuckDB SQL condition selecting the rows to erase, e.g. \"user_id = 42\".")
@click.option("--dry-run", is_flag=True, help="List the objects holding matching rows and how many; change nothing.")
@output_format_option(help="Output on stdout (logs go to stderr).")
@verbose_option()
def cli(config_path: Path, database: str, table: str, where: str, dry_run: bool, output_format: str, verbose: bool) -> None:
    """Erase the archived rows of --table matching --where: each object holding some is replaced by
    one without them (verified before the old one is removed), and the erasure is recorded in the
    table's digest chain (objects, rows, when, the predicate's sha256; never the values)."""
    from erase.app import EraseOptions, run

    def work() -> int:
        return run(EraseOptions(config_path=config_path, database=database, table=table, where=where,
                                dry_run=dry_run, output_format=output_format, verbose=verbose))

    exit_with("erase", work, verbose=verbose)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
