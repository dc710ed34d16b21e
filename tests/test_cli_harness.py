"""common.cli: one table-selection rule for every tool (qualified names exact, a bare name in
several schemas an error naming them, an unknown name an error), the shared options, and tool
work run with injected streams."""
from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import archiver.main
import cost.main
import restore.main
import validate.main
from archiver.app import ArchiverOptions, check_filters
from archiver.app import run as run_archiver
from common.cli import Environment, exit_with
from common.config import Config, load_config
from common.errors import ConfigError, UsageError
from common.exit_codes import ExitCode
from cost.app import CostOptions
from cost.app import run as run_cost
from common.archive.catalog import resolve_table
from validate.inventory import build_scope
from wizard.introspect import TableInfo, resolve_table as wizard_resolve_table

from conftest import make_config

EVENTS = [{"name": "events", "schema": s, "timestamp_column": "created_at", "primary_key": "id"} for s in ("public", "audit")]
UNREACHABLE_DSN = "postgresql://x@127.0.0.1:1/x"  # never connected to: the names are checked first


@pytest.fixture()
def two_schemas(tmp_path: Path) -> Config:
    return load_config(make_config(tmp_path, dsn=UNREACHABLE_DSN, tables=[*EVENTS, {"name": "audit_logs"}]))


def archiver_pick(cfg: Config, name: str) -> list[str]:
    opts = ArchiverOptions(config_path=Path("x"), tables=(name,))
    check_filters(cfg, opts)
    return [f"{t.schema_}.{t.name}" for db in cfg.databases for t in db.tables if opts.only(db.name, t.schema_, t.name)]


def validate_pick(cfg: Config, name: str) -> list[str]:
    return [f"{t.schema_}.{t.name}" for _db, t in build_scope(cfg, table=name).tables]


def restore_pick(cfg: Config, name: str) -> list[str]:
    ref = resolve_table(cfg, "production_db", name)
    if ref.unconfigured:
        raise UsageError(ref.unconfigured)  # restore says so once it finds no archives (exit 2 too)
    return [ref.name]


def wizard_pick(cfg: Config, name: str) -> list[str]:
    tables = [TableInfo(t.schema_, t.name, 0, 0) for t in cfg.databases[0].tables]
    return [wizard_resolve_table(tables, name).qualified]


PICKERS: dict[str, Callable[[Config, str], list[str]]] = {
    "archiver": archiver_pick, "validate": validate_pick, "restore": restore_pick, "wizard": wizard_pick}


@pytest.mark.parametrize("tool", PICKERS)
def test_a_qualified_name_selects_exactly_that_table(tool: str, two_schemas: Config) -> None:
    assert PICKERS[tool](two_schemas, "audit.events") == ["audit.events"]


@pytest.mark.parametrize("tool", PICKERS)
def test_an_unqualified_name_in_one_schema_selects_it(tool: str, two_schemas: Config) -> None:
    assert PICKERS[tool](two_schemas, "audit_logs") == ["public.audit_logs"]


@pytest.mark.parametrize("tool", PICKERS)
def test_an_unqualified_name_in_several_schemas_is_an_error_naming_them(tool: str, two_schemas: Config) -> None:
    with pytest.raises(UsageError, match=r"events is ambiguous \(audit\.events, public\.events\): give SCHEMA\.TABLE"):
        PICKERS[tool](two_schemas, "events")


@pytest.mark.parametrize("tool", PICKERS)
def test_an_unknown_name_is_a_usage_error(tool: str, two_schemas: Config) -> None:
    with pytest.raises((UsageError, ConfigError), match="nope") as info:
        PICKERS[tool](two_schemas, "other.nope")
    assert info.value.exit_code == ExitCode.USAGE


def test_the_same_table_in_two_databases_is_not_ambiguous(tmp_path: Path) -> None:
    cfg = load_config(make_config(tmp_path, dsn=UNREACHABLE_DSN, tables=[EVENTS[0]]))
    cfg.databases.append(cfg.databases[0].model_copy(update={"name": "db_two"}))
    assert archiver_pick(cfg, "events") == ["public.events", "public.events"]


@pytest.mark.parametrize(("tool", "args"), [
    ("archiver", ["--table", "events", "--dry-run"]),
    ("validate", ["--table", "events"]),
    ("restore", ["--database", "production_db", "--table", "events"]),
])
def test_an_ambiguous_table_exits_2_naming_both(tool: str, args: list[str], tmp_path: Path) -> None:
    path = make_config(tmp_path, dsn=UNREACHABLE_DSN, tables=EVENTS)
    cli = {"archiver": archiver.main.cli, "validate": validate.main.cli, "restore": restore.main.cli}[tool]
    result = CliRunner().invoke(cli, ["--config", str(path), *args])
    assert result.exit_code == ExitCode.USAGE, result.output + result.stderr
    assert f"{tool}: error: --table events is ambiguous (audit.events, public.events)" in result.stderr


@pytest.mark.parametrize(("cli", "output_format"), [(archiver.main.cli, False), (restore.main.cli, True),
                                                   (validate.main.cli, True), (cost.main.cli, True)],
                         ids=["archiver", "restore", "validate", "cost"])
def test_shared_options_are_spelled_the_same_in_every_tool(cli: Any, output_format: bool) -> None:
    names = {opt for p in cli.params for opt in p.opts + p.secondary_opts}
    assert {"--config", "--verbose", "-v"} <= names
    assert ("--output-format" in names) is output_format


def test_cost_json_goes_to_the_injected_stdout_indented_2_with_a_newline() -> None:
    env = Environment(stdout=io.StringIO(), stderr=io.StringIO(), stdin=io.StringIO())
    assert run_cost(CostOptions(size_gb="500", output_format="json"), env=env) == ExitCode.OK
    text = env.stdout.getvalue()  # type: ignore[attr-defined]
    assert text.endswith("}\n") and text.startswith('{\n  "region": "us-east-1"')
    assert json.loads(text)["region"] == "us-east-1"
    assert env.stderr.getvalue() == ""  # type: ignore[attr-defined]
    assert not env.stdout_isatty


def test_archiver_dry_run_writes_its_plan_to_the_injected_stdout(tmp_path: Path, pg_dsn: str, small_audit: Any) -> None:
    out = io.StringIO()
    code = run_archiver(ArchiverOptions(config_path=make_config(tmp_path, dsn=pg_dsn), dry_run=True),
                        env=Environment(stdout=out, stderr=io.StringIO()))
    assert code == ExitCode.OK
    assert "audit_logs" in out.getvalue() and out.getvalue().endswith("\n")


def test_a_failure_is_one_line_on_the_injected_stderr() -> None:
    err = io.StringIO()

    def work() -> int:
        raise UsageError("--months: must be between 1 and 1200 (got 0)")

    with pytest.raises(SystemExit) as info:
        exit_with("cost", work, verbose=False, env=Environment(stdout=io.StringIO(), stderr=err))
    assert info.value.code == ExitCode.USAGE
    assert err.getvalue() == "cost: error: --months: must be between 1 and 1200 (got 0)\n"
