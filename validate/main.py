"""`python -m validate.main`: prove the archives are whole. A thin click entrypoint; the work is in
validate.app / validate.checks."""
from __future__ import annotations

from datetime import datetime
from pathlib import Path

import click

from common.cli import command, config_option, exit_with, output_format_option, verbose_option
from validate.checks import DEFAULT_PARALLEL

_DATE_FORMATS = ["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"]


@command()
@config_option()
@click.option("--database", help="Only this configured database.")
@click.option("--table", help="Only this configured table (name or schema.name).")
@output_format_option(help="text: one line per problem and a summary; json: one document on stdout.")
@click.option("--quick", is_flag=True,
              help="Manifests, sizes and S3's stored checksums only: no downloads, no database cross-check.")
@click.option("--since", type=click.DateTime(_DATE_FORMATS), metavar="DATE",
              help="Only objects archived at or after DATE (UTC), e.g. 2026-01-31.")
# At most botocore's 10 pooled connections per client: more workers would only queue for them.
@click.option("--parallel", type=click.IntRange(min=1, max=10), default=DEFAULT_PARALLEL, show_default=True,
              help="Objects downloaded and checked at once (1-10).")
@click.option("--textfile", type=click.Path(dir_okay=False, path_type=Path), metavar="PATH",
              help="Also write the problem counts to PATH (a node_exporter textfile, *.prom), atomically.")
@verbose_option(help="List every object checked; debug logging and tracebacks.")
def cli(config_path: Path, database: str | None, table: str | None, output_format: str, quick: bool,
        since: datetime | None, parallel: int, textfile: Path | None, verbose: bool) -> None:
    """Check every archive object against its manifest (checksum, size, rows, partition), find
    orphans, overlaps, unfinished moves, pending fallback batches and open uploads. Changes nothing.
    Exit 0: no problems; 1: problems found; 2: usage/config error; 3: S3 or database unreachable."""
    from validate.app import ValidateOptions, run

    options = ValidateOptions(config_path=config_path, database=database, table=table, output_format=output_format,
                              verbose=verbose, quick=quick, since=since, parallel=parallel, textfile=textfile)
    exit_with("validate", lambda: run(options), verbose=verbose)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
