"""`python -m cost.main`: what the archives cost on S3, per storage class. A thin click entrypoint;
the work is in cost.app (tests call it directly)."""
from __future__ import annotations

from pathlib import Path

import click

from common.cli import command, config_option, exit_with, output_format_option, verbose_option

# Numbers are taken as text and checked by cost.app, so a bad one is a one-line error with exit 2.


@command()
@config_option(required=False, help="Archiver config: measure the bucket/prefix and fallback directory instead of guessing.")
@click.option("--size-gb", metavar="GB", help="Archived size in GB (default with --config: the measured size).")
@click.option("--compare", is_flag=True, help="Every storage class side by side, cheapest first.")
@click.option("--storage-class", metavar="CLASS", help="Class to price [default: the config's, else STANDARD].")
@click.option("--region", metavar="REGION", help="AWS region [default: the config's, else us-east-1].")
@click.option("--months", default="12", show_default=True, metavar="N", help="Period to project the total over.")
@click.option("--growth-gb-per-month", metavar="GB",
              help="GB added each month [default with --config: the measured rate, else 0].")
@click.option("--objects", metavar="N", help="Archive objects holding the size (each also has a manifest).")
@click.option("--avg-object-mb", metavar="MB", help="Average archive object size [default: measured, else 4 MB].")
@click.option("--retrieval-gb-per-month", metavar="GB", help="GB read back each month [default: 0].")
@click.option("--archive-retention-days", metavar="DAYS",
              help="Days archives stay before deletion, for early-deletion notes [default: kept].")
@click.option("--prices", "prices_path", type=click.Path(dir_okay=False, path_type=Path),
              help="YAML price table replacing the built-in one (same layout as cost/prices.yaml).")
@output_format_option()
@verbose_option(help="Progress on stderr and tracebacks on errors.")
def cli(config_path: Path | None, size_gb: str | None, compare: bool, storage_class: str | None,
        region: str | None, months: str, growth_gb_per_month: str | None, objects: str | None,
        avg_object_mb: str | None, retrieval_gb_per_month: str | None, archive_retention_days: str | None,
        prices_path: Path | None, output_format: str, verbose: bool) -> None:
    """Estimate and compare what the archives cost on S3: storage (tiered), requests, retrieval,
    per-object charges, over a period with growth. Prices come from a dated YAML table."""
    from cost.app import CostOptions, run

    options = CostOptions(config_path=config_path, size_gb=size_gb, compare=compare, storage_class=storage_class,
                          region=region, months=months, growth_gb_per_month=growth_gb_per_month, objects=objects,
                          avg_object_mb=avg_object_mb, retrieval_gb_per_month=retrieval_gb_per_month,
                          archive_retention_days=archive_retention_days, prices_path=prices_path,
                          output_format=output_format, verbose=verbose)
    if verbose:
        from common.logging_setup import setup_logging

        setup_logging(None, verbose=True)
    exit_with("cost", lambda: run(options), verbose=verbose)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
