"""`python -m wizard.main`: not implemented yet (see the open issue for the wizard tool)."""
from __future__ import annotations

import sys

import click


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def cli() -> None:
    """Not implemented yet."""
    click.echo("wizard: not implemented yet", err=True)
    sys.exit(1)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
