"""`python -m query.main`: search a table's archived rows in place with DuckDB, without restoring
them. A thin click entrypoint; the work is in query.app."""
from __future__ import annotations

from pathlib import Path

import click

from common.cli import command, config_option, exit_with, output_format_option, verbose_option
from query.output import FORMATS


@command()
@config_option()
@click.option("--database", required=True, help="Configured database name.")
@click.option("--table", required=True, help="Table, TABLE or SCHEMA.TABLE.")
@click.option("--start-date", help="First UTC day to search (YYYY-MM-DD, inclusive).")
@click.option("--end-date", help="Last UTC day to search (YYYY-MM-DD, inclusive).")
@click.option("--where", help="A DuckDB SQL condition on the archived columns, e.g. \"user_id = 42\".")
@click.option("--columns", help="Columns to show, comma-separated [default: all].")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many rows.")
@output_format_option(FORMATS, help="table for a person; csv, jsonl (one object per line) or parquet (needs --output).")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the rows to this file (it appears once the query has finished) instead of stdout.")
@verbose_option()
def cli(config_path: Path, database: str, table: str, start_date: str | None, end_date: str | None,
        where: str | None, columns: str | None, limit: int | None, output_format: str, output: Path | None,
        verbose: bool) -> None:
    """Rows of the archive matching --where, in (timestamp, key) order, read straight from S3 (or
    local_dir and the fallback directory): only the objects whose days overlap the dates."""
    from query.app import QueryOptions, parse_columns, run

    def work() -> int:
        options = QueryOptions(config_path=config_path, database=database, table=table, start_date=start_date,
                               end_date=end_date, where=where, columns=parse_columns(columns), limit=limit,
                               output_format=output_format, output=output, verbose=verbose)
        return run(options)

    exit_with("query", work, verbose=verbose)


def main() -> None:
    from common.memory import use_system_allocator

    use_system_allocator()  # download threads make the Arrow buffers the main thread frees
    cli()


if __name__ == "__main__":
    main()
