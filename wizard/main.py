"""`python -m wizard.main`: a first working config in two minutes, interactive or scripted."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from common.cli import command, exit_with, verbose_option

_PORT = click.IntRange(0, 65535)


@command()
@click.option("--output", "-o", default="config.yaml", show_default=True, type=click.Path(path_type=Path),
              help="Config file to write (mode 0600).")
@click.option("--non-interactive", is_flag=True, help="Prompt for nothing: flags, else detected or default values; a missing required answer is exit 2.")
@click.option("--force", is_flag=True, help="Overwrite --output if it exists.")
@click.option("--dsn", help="PostgreSQL DSN (a password in it is used to connect, never written).")
@click.option("--host", help="Database host, when no --dsn.")
@click.option("--port", type=click.IntRange(1, 65535), help="Database port, when no --dsn.")
@click.option("--dbname", help="Database name, when no --dsn.")
@click.option("--user", help="Database user, when no --dsn.")
@click.option("--database-name", help="Name of the database in the config [default: its dbname].")
@click.option("--password-env", help="Environment variable the archiver reads the password from [default: ARCHIVER_DB_PASSWORD].")
@click.option("--table", "tables", multiple=True, help="Table to archive, TABLE or SCHEMA.TABLE (repeatable).")
@click.option("--timestamp-column", "timestamp_columns", multiple=True, metavar="[TABLE=]COLUMN",
              help="Timestamp column, for all tables or one (repeatable) [default: detected].")
@click.option("--primary-key", "primary_keys", multiple=True, metavar="[TABLE=]COLUMN[,COLUMN...]",
              help="Key columns (a composite key comma-separated), for all tables or one (repeatable)"
                   " [default: the primary key from the catalog].")
@click.option("--retention-days", multiple=True, metavar="[TABLE=]DAYS",
              help="Days rows stay in the table, for all tables or one (repeatable) [default: 90].")
@click.option("--bucket", help="S3 bucket [default: none, the archives go to --local-dir].")
@click.option("--local-dir", help="Keep the archives in this directory (storage: local), not S3"
                                  " [default without --bucket: archive/ beside --output].")
@click.option("--prefix", help="Key prefix inside the bucket [default: none].")
@click.option("--region", help="AWS region [default: us-east-1].")
@click.option("--endpoint-url", help="S3 endpoint URL for S3-compatible stores [default: AWS].")
@click.option("--storage-class", help="S3 storage class [default: STANDARD].")
@click.option("--sse", type=click.Choice(["none", "AES256", "aws:kms"]), help="Server-side encryption [default: none].")
@click.option("--kms-key-id", help="KMS key for --sse aws:kms.")
@click.option("--skip-bucket-check", is_flag=True, help="Do not probe the bucket with a put and delete.")
@click.option("--fallback-dir", help="Local fallback directory, or 'none' [default: /var/archiver/fallback].")
@click.option("--checkpoint-dir", help="Checkpoint directory [default: /var/lib/archiver/checkpoints].")
@click.option("--log-file", help="Log file, or 'none' [default: /var/log/archiver.log].")
@click.option("--health-port", type=_PORT, help="Health endpoint port [default: 8001].")
@click.option("--metrics-port", type=_PORT, help="Metrics endpoint port [default: 8000].")
@click.option("--notify-on", help="Events to notify about: failure,success,fallback [default: failure].")
@click.option("--slack-webhook-env", help="Env var holding the Slack webhook URL.")
@click.option("--pagerduty-key-env", help="Env var holding the PagerDuty routing key.")
@click.option("--smtp-host", help="SMTP host for email notifications.")
@click.option("--smtp-port", type=click.IntRange(1, 65535), help="SMTP port [default: 587].")
@click.option("--smtp-user", help="SMTP user.")
@click.option("--smtp-password-env", help="Env var holding the SMTP password [default: ARCHIVER_SMTP_PASSWORD].")
@click.option("--email-from", help="Sender address of email notifications.")
@click.option("--email-to", multiple=True, help="Recipient of email notifications (repeatable).")
@verbose_option(help="Tracebacks on errors.")
def cli(**kwargs: Any) -> None:
    """Ask (or take from flags) everything a first config needs, check the database and the
    bucket, and write a commented config file the archiver accepts. The password is never written."""
    from wizard.app import run
    from wizard.model import Flags

    flags = Flags(**kwargs)
    exit_with("wizard", lambda: run(flags), verbose=flags.verbose)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
