"""One way to get an answer: a flag wins; scripted mode takes the default (or stops with a usage
error when there is none); otherwise a click prompt that repeats until the answer is valid."""
from __future__ import annotations

import re
from typing import Any, Callable

import click

from common.cli import Environment
from common.errors import UsageError

Check = Callable[[Any], "str | None"]
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
NONE_WORDS = ("none", "-")


class Prompter:
    """Questions are click prompts (they need the terminal); what the wizard says goes to env's
    streams, so a scripted run is tested with io.StringIO."""

    def __init__(self, *, interactive: bool, env: Environment | None = None) -> None:
        self.interactive = interactive
        self.env = env or Environment()

    def ask(self, text: str, *, flag: str, given: Any = None, default: Any = None, type: Any = None,
            check: Check | None = None, optional: bool = False, may_hold_secret: bool = False) -> Any:
        """The answer to one question. `optional` answers may be empty (returned as None);
        `may_hold_secret` values (a DSN) are never repeated in an error message."""
        if given is not None:
            problem = check(given) if check else None
            if problem:
                raise UsageError(f"{flag}{'' if may_hold_secret else ' ' + str(given)}: {problem}")
            return given
        if not self.interactive:
            if default is None and not optional:
                raise UsageError(f"{flag} is required with --non-interactive")
            return default
        while True:
            shown = default if default is not None else ("" if optional else None)
            value = click.prompt(text, default=shown, type=type, show_default=shown not in (None, ""))
            if optional and (value == "" or value is None):
                return None
            problem = check(value) if check else None
            if not problem:
                return value
            self.error(problem)

    def secret(self, text: str) -> str | None:
        """Read hidden (no echo); never a default, never stored."""
        if not self.interactive:
            return None
        value = click.prompt(text, default="", hide_input=True, show_default=False)
        return value or None

    def confirm(self, text: str, *, default: bool, scripted: bool | None = None) -> bool:
        """Interactive yes/no; scripted runs take `scripted` (or the default)."""
        if not self.interactive:
            return default if scripted is None else scripted
        return bool(click.confirm(text, default=default))

    def info(self, text: str = "") -> None:
        click.echo(text, file=self.env.stdout)

    def warn(self, text: str) -> None:
        click.echo(f"warning: {text}", file=self.env.stderr)

    def error(self, text: str) -> None:
        click.echo(f"error: {text}", file=self.env.stderr)


def env_name_check(value: Any) -> str | None:
    return None if _ENV_NAME.match(str(value)) else "not a valid environment variable name"


def nonempty_check(value: Any) -> str | None:
    return None if str(value).strip() else "an answer is needed"


def path_or_none(value: str | None) -> str | None:
    """'none' or '-' switch an optional path off."""
    if value is None or value.strip().lower() in NONE_WORDS:
        return None
    return value.strip()


def human_bytes(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    size, unit = float(n), "B"
    for unit in ("kB", "MB", "GB", "TB"):
        size /= 1024
        if size < 1024:
            break
    return f"{size:.1f} {unit}"
