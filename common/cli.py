"""The shared command-line harness of the five tools: the options every tool spells the same way
(--config, --verbose/-v, --output-format), the streams a tool's work writes to (injected, so tests
call the work directly with io.StringIO), the exit mapping around it, and the one rule for
naming a table as TABLE or SCHEMA.TABLE."""
from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TextIO, TypeVar

import click

from common.errors import UsageError, run_tool

if TYPE_CHECKING:
    from common.config import Config

F = TypeVar("F", bound=Callable[..., Any])


# -- streams -------------------------------------------------------------------------------------
def _isatty(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty()) if isatty is not None else False


@dataclass(frozen=True)
class Environment:
    """Where a tool's work reads and writes (modelled on httpie's Environment): the process's real
    streams unless a caller hands in others. The defaults are read when an Environment is made,
    not at import, so a CliRunner's or pytest's replaced sys.stdout is the one used."""

    stdout: TextIO = field(default_factory=lambda: sys.stdout)
    stderr: TextIO = field(default_factory=lambda: sys.stderr)
    stdin: TextIO = field(default_factory=lambda: sys.stdin)

    @property
    def stdout_isatty(self) -> bool:
        return _isatty(self.stdout)

    @property
    def stderr_isatty(self) -> bool:
        return _isatty(self.stderr)

    @property
    def stdin_isatty(self) -> bool:
        return _isatty(self.stdin)


# -- options -------------------------------------------------------------------------------------
def command() -> Callable[[F], click.Command]:
    """A tool's click command: -h as well as --help."""
    return click.command(context_settings={"help_option_names": ["-h", "--help"]})


def config_option(*, required: bool = True, help: str = "YAML config file.") -> Callable[[F], F]:
    return click.option("--config", "config_path", required=required, help=help,
                        type=click.Path(dir_okay=False, path_type=Path))


def verbose_option(*, help: str = "Debug logging and tracebacks.") -> Callable[[F], F]:
    return click.option("--verbose", "-v", is_flag=True, help=help)


def output_format_option(choices: Sequence[str] = ("text", "json"), *, help: str | None = None) -> Callable[[F], F]:
    return click.option("--output-format", type=click.Choice(list(choices)), default=choices[0], show_default=True,
                        help=help)


def exit_with(tool: str, work: Callable[[], int], *, verbose: bool, env: Environment | None = None) -> NoReturn:
    """End the process with the work's exit code, or the code and one-line error common.errors.classify
    gives what it raised (a traceback too with --verbose), on env's stderr."""
    env = env or Environment()
    sys.exit(run_tool(work, verbose=verbose, tool=tool, stderr=env.stderr))


# -- the table-selection rule -------------------------------------------------------------------
def table_matches(name: str, schema: str, table: str) -> bool:
    """SCHEMA.TABLE names exactly that table; TABLE names the table of that name in any schema.
    Once select_table has accepted a name it names one table, so this test alone filters by it."""
    return name in (table, f"{schema}.{table}")


def match_tables(name: str, tables: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The (schema, table) pairs among `tables` that `name` names: none, one, or (a bare name
    found in several schemas) more."""
    return [(s, t) for s, t in tables if table_matches(name, s, t)]


def ambiguous(name: str, found: Sequence[tuple[str, str]], *, flag: str = "--table") -> UsageError:
    listed = ", ".join(sorted(f"{s}.{t}" for s, t in found))
    return UsageError(f"{_what(name, flag)} is ambiguous ({listed}): give SCHEMA.TABLE")


def select_table(name: str, tables: Iterable[tuple[str, str]], *, where: str, flag: str = "--table") -> tuple[str, str]:
    """The one table `name` names among `tables` (those of one database); a usage error (exit 2)
    naming them when a bare name is in several schemas, and one naming `where` when it is in none."""
    found = match_tables(name, tables)
    if len(found) > 1:
        raise ambiguous(name, found, flag=flag)
    if not found:
        raise UsageError(f"{_what(name, flag)} not found in {where}")
    return found[0]


def check_configured_tables(cfg: Config, names: Iterable[str], *, databases: Sequence[str] = (),
                            flag: str = "--table") -> None:
    """Every name names one configured table in each of the databases (all when none given) that
    has it, and at least one in all: the rule of select_table applied per database, since the same
    SCHEMA.TABLE in two databases is two tables, not an ambiguity."""
    dbs = [cfg.database(d) for d in databases] if databases else list(cfg.databases)
    where = f"database {databases[0]!r}" if len(databases) == 1 else "the config"
    for name in names:
        found = 0
        for db in dbs:
            matches = match_tables(name, ((t.schema_, t.name) for t in db.tables))
            if len(matches) > 1:
                raise ambiguous(name, matches, flag=flag)
            found += len(matches)
        if not found:
            raise UsageError(f"{_what(name, flag)} not found in {where}")


def _what(name: str, flag: str) -> str:
    return f"{flag} {name}" if flag else f"table {name}"
