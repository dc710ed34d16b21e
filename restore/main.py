"""`python -m restore.main`: list a table's archives, or restore all of them, a UTC date range, or one
object, exactly as archived. A thin click entrypoint; the work is in restore.app / restore.engine."""
from __future__ import annotations

from pathlib import Path

import click

from common.cli import command, config_option, exit_with, output_format_option, verbose_option


@command()
@config_option()
@click.option("--database", required=True, help="Configured database name.")
@click.option("--table", required=True, help="Table name as configured (schema.table also accepted).")
@click.option("--schema", help="Schema of the table, when it is not the configured/public one.")
@click.option("--restore-all", is_flag=True, help="Restore every archived object (or those within the dates).")
@click.option("--start-date", help="First UTC day to restore (YYYY-MM-DD, inclusive).")
@click.option("--end-date", help="Last UTC day to restore (YYYY-MM-DD, inclusive).")
@click.option("--s3-key", help="Restore this one archive object (its key as listed).")
@click.option("--conflict-strategy", type=click.Choice(["skip", "overwrite", "fail"]), default="fail", show_default=True,
              help="Rows whose primary key exists: keep them, replace them, or abort the whole restore.")
@click.option("--target-table", help="Restore into this table instead; created from the archived schema if missing.")
@click.option("--with-children", is_flag=True,
              help="Also restore the children archived with the table (children: archive), parents first.")
@click.option("--dry-run", is_flag=True, help="Show what would be restored (objects, rows, date span); change nothing.")
@output_format_option(help="Output on stdout (logs go to stderr).")
@click.option("--request-glacier-restore", "glacier_days", type=click.IntRange(min=1), metavar="DAYS",
              help="Ask S3 to make GLACIER/DEEP_ARCHIVE objects readable for DAYS days, then exit.")
@click.option("--allow-drop-columns", is_flag=True,
              help="Restore even if the table lost or retyped archived columns (their values are not restored).")
@verbose_option()
def cli(config_path: Path, database: str, table: str, schema: str | None, restore_all: bool, start_date: str | None,
        end_date: str | None, s3_key: str | None, conflict_strategy: str, target_table: str | None, with_children: bool, dry_run: bool,
        output_format: str, glacier_days: int | None, allow_drop_columns: bool, verbose: bool) -> None:
    """Without --restore-all or --s3-key: list the table's archives. With them: restore."""
    from restore.app import RestoreOptions, run

    options = RestoreOptions(config_path=config_path, database=database, table=table, schema=schema,
                             restore_all=restore_all, start_date=start_date, end_date=end_date, s3_key=s3_key,
                             conflict_strategy=conflict_strategy, target_table=target_table, dry_run=dry_run,
                             with_children=with_children,
                             output_format=output_format, request_glacier_restore=glacier_days,
                             allow_drop_columns=allow_drop_columns, verbose=verbose)
    exit_with("restore", lambda: run(options), verbose=verbose)


def main() -> None:
    from common.memory import use_system_allocator

    use_system_allocator()
    cli()


if __name__ == "__main__":
    main()
