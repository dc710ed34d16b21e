"""The operators' documentation stays true (issue 9): every `python -m <tool>.main` command in the
runbook, README, deploy notes and example config parses with the tool's real flags; the example
config loads, names every key and states its defaults; every YAML snippet and config key the docs
mention is real; every word the runbook greps for is one the tools write, in their sources and in
real output; the health, metrics and exit-code references match what the code produces; and the
DuckDB queries answer over a real archive exactly what PostgreSQL held."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click
import duckdb
import psycopg
import pytest
import yaml
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families
from psycopg import sql
from psycopg.conninfo import make_conninfo

import archiver.main
import cost.main
import erase.main
import expire.main
import hold.main
import query.main
import restore.main
import validate.main
import wizard.main
from archiver.app import ArchiverOptions, check_filters, make_controls
from archiver.app import run as run_archiver_app
from archiver.runner import run_archive
from archive_checks import drop_manifest
from common.archive.storage import LocalStorage
from common.config import DatabaseConfig, load_config, parse_config
from common.exit_codes import ExitCode
from archiver.ops.health import HealthChecker, RunState
from archiver.ops.identity import identity
from archiver.ops.metrics import RESULTS, ArchiverMetrics
from validate.metrics import render as render_validate_textfile
from expire.app import ExpireOptions, tables as expire_tables
from expire.metrics import render as render_expire_textfile
from hold.app import HoldOptions, check_options as check_hold
from validate.report import Report
from archiver.ops.notify import NEXT_STEPS
from conftest import ADMIN_DSN, AUDIT_DDL, free_port, make_config, seed_audit
from cost.app import CostOptions, parse_request
from query.app import parse_columns
from demo_support import DEMO_CONFIG, demo_config
from docs_support import (DEPLOY, EXAMPLE, LOG_PATH, README, REPO, RUNBOOK, SOURCES, Command, Grep, all_key_paths,
                          backticked, example_keys, extract_commands, fenced_blocks, field_for, headings, package_strings,
                          rel, runbook_greps, section, slug, table_rows, uncommented_example)
from common.archive.catalog import resolve_table
from restore.engine import parse_range
from validate.inventory import build_scope
from validate.report import PROBLEM_TYPES
from wizard.model import Flags
from wizard.tables import TableFlags

COMMAND_DOCS = [RUNBOOK, README, DEPLOY, EXAMPLE, *sorted((REPO / "deploy").glob("systemd/*.service")),
                REPO / "deploy" / "cron" / "archiver"]
TOOLS: dict[str, click.Command] = {"archiver": archiver.main.cli, "restore": restore.main.cli,
                                   "validate": validate.main.cli, "cost": cost.main.cli, "wizard": wizard.main.cli,
                                   "query": query.main.cli, "erase": erase.main.cli, "expire": expire.main.cli,
                                   "hold": hold.main.cli}
#: The sections of the operators' reference runbook (its structure is a contract).
ORIGINAL_SECTIONS = [
    "Daily Operations", "Check Archival Status", "Monitor Notifications", "Review Logs", "Weekly Maintenance",
    "Validate Archives", "Review Costs", "Check S3 Storage", "Monthly Tasks", "Performance Review",
    "Configuration Review", "Cost Optimization", "Incident Response", "Archival Failure", "Data Loss Suspected",
    "S3 Outage", "Database Connection Issues", "Recovery Procedures", "Restore from Archive", "Recover from Checkpoint",
    "Fix Corrupted Archive", "Recover from Configuration Error", "Emergency Contacts", "Escalation Path"]


def all_commands() -> list[Command]:
    found = [c for doc in COMMAND_DOCS for c in extract_commands(doc.read_text(), rel(doc))]
    for kind, (_section, step) in NEXT_STEPS.items():  # what notifications tell people to run
        text = step.format(config="/etc/archiver/config.yaml", bucket="audit-archives", fallback="/var/archiver/fallback",
                           log=LOG_PATH, health="http://localhost:8001/health")
        found += extract_commands(text, f"archiver/ops/notify.py NEXT_STEPS[{kind}]")
    return found


# -- 1. commands parse with the real flags -------------------------------------------------------
COMMANDS = all_commands()


def test_the_runbook_keeps_the_reference_runbooks_sections() -> None:
    missing = [s for s in ORIGINAL_SECTIONS if s not in headings(RUNBOOK.read_text())]
    assert not missing


def test_the_docs_use_every_tool() -> None:
    in_runbook = {c.tool for c in COMMANDS if c.where.startswith("docs/")}
    assert in_runbook == set(TOOLS), f"runbook commands found for {sorted(in_runbook)}"
    assert len([c for c in COMMANDS if c.where.startswith("docs/")]) >= 25


@pytest.mark.parametrize("command", COMMANDS, ids=[f"{c.where} {c.tool}" for c in COMMANDS])
def test_documented_command_parses_with_the_tools_real_flags(command: Command) -> None:
    assert command.tool in TOOLS, f"{command.where}: no tool named {command.tool}"
    cli = TOOLS[command.tool]
    try:
        ctx = cli.make_context(f"{command.tool}.main", list(command.args), resilient_parsing=False)
    except click.ClickException as exc:
        pytest.fail(f"{command.where}: python -m {command.tool}.main {' '.join(command.args)}: {exc.format_message()}")
    check_meaning(command.tool, ctx.params)


def check_meaning(tool: str, params: dict[str, Any]) -> None:
    """What each tool checks about its arguments before touching a service, against the example
    config (the README's commands after the demo: the config the demo writes)."""
    example = demo_config() if params.get("config_path") == DEMO_CONFIG else load_config(EXAMPLE)
    if tool == "archiver":
        check_filters(example, ArchiverOptions(config_path=EXAMPLE, databases=params["databases"], tables=params["tables"]))
    elif tool == "validate":
        build_scope(example, database=params["database"], table=params["table"])
    elif tool == "restore":
        parse_range(params["start_date"], params["end_date"])
        resolve_table(example, params["database"], params["table"], params["schema"])
        assert not (params["s3_key"] and (params["restore_all"] or params["start_date"] or params["end_date"]))
    elif tool == "cost":
        parse_request(CostOptions(**{k: v for k, v in params.items() if k in CostOptions.__dataclass_fields__}))
    elif tool == "wizard":
        TableFlags.of(Flags(**params))
    elif tool == "erase":
        resolve_table(example, params["database"], params["table"])
        assert params["where"].strip()
    elif tool == "expire":
        expire_tables(example, ExpireOptions(config_path=EXAMPLE, database=params["database"], table=params["table"]))
    elif tool == "hold":
        check_hold(HoldOptions(**{k: v for k, v in params.items() if k in HoldOptions.__dataclass_fields__}))
        parse_range(params["start_date"], params["end_date"])
        resolve_table(example, params["database"], params["table"])
    elif tool == "query":
        parse_range(params["start_date"], params["end_date"])
        resolve_table(example, params["database"], params["table"])
        parse_columns(params["columns"])
        assert params["output"] is not None or params["output_format"] != "parquet"


# -- 2. config.example.yaml ----------------------------------------------------------------------
def test_example_config_loads_with_the_real_loader() -> None:
    cfg = load_config(EXAMPLE)
    assert cfg.table("production_db", "audit_logs").timestamp_column == "created_at"


def test_example_config_commented_keys_are_real(tmp_path: Path) -> None:
    path = tmp_path / "uncommented.yaml"
    path.write_text(uncommented_example())
    cfg = load_config(path)
    assert cfg.notifications.email is not None and cfg.notifications.slack is not None
    assert cfg.notifications.pagerduty is not None


def test_example_config_names_every_key_the_tools_accept() -> None:
    named = {p for p, _c, _n in example_keys(uncommented_example())}
    per_table = ("databases", "[]", "tables", "[]")
    # A table may override any key of `defaults`, which the example says once, there.
    named |= {per_table + p[1:] for p in named if p[0] == "defaults" and len(p) == 2}
    missing = sorted(".".join(p) for p in all_key_paths() if p not in named)
    assert not missing, f"config.example.yaml lacks: {missing}"


def test_example_config_values_are_the_defaults_or_the_comment_says_so() -> None:
    text = EXAMPLE.read_text()
    doc = yaml.safe_load(text)
    for path, comment, lineno in example_keys(text):
        model, name = field_for(path)
        f = model.model_fields[name]
        value: Any = doc
        for part in path:
            value = value[0] if part == "[]" else value[True if part == "on" else part]  # YAML 1.1: on is true
        if isinstance(value, (dict, list)) or f.is_required():
            continue
        default = f.get_default(call_default_factory=True)
        if value != default:
            assert "default" in comment.lower(), (
                f"config.example.yaml:{lineno}: {'.'.join(path)} is {value!r} but defaults to {default!r}; say so")


# -- 3. YAML snippets and config keys in the docs -------------------------------------------------
MINIMAL = {"databases": [{"name": "production_db", "tables": [{"name": "audit_logs"}]}]}


def merged(base: Any, snippet: Any) -> Any:
    if isinstance(base, dict) and isinstance(snippet, dict):
        return {**base, **{k: merged(base.get(k), v) for k, v in snippet.items()}}
    return snippet


SNIPPETS = [(f"{rel(doc)}:{n}", body) for doc in (RUNBOOK, README, DEPLOY) for n, body in fenced_blocks(doc.read_text(), "yaml")]


@pytest.mark.parametrize("where,body", SNIPPETS, ids=[w for w, _ in SNIPPETS])
def test_yaml_snippet_loads_with_the_real_loader(where: str, body: str) -> None:
    snippet = yaml.safe_load(body)
    assert isinstance(snippet, dict), f"{where}: not a mapping"
    parse_config(merged(MINIMAL, snippet), source=where)


def test_every_config_key_the_runbook_names_is_real() -> None:
    text = RUNBOOK.read_text()
    keys = set(re.findall(r"`((?:s3|defaults|databases|logging|monitoring|schedule|notifications)(?:\.|\[\]\.)[a-z_.\[\]]+)`", text))
    assert len(keys) >= 15
    for key in sorted(keys):
        field_for(tuple(p for p in re.split(r"\.|(\[\])", key) if p))


def test_runbook_max_runtime_and_stop_file_defaults_are_the_archivers(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(merged(MINIMAL, {"checkpoint_dir": str(tmp_path), "defaults": {"max_runtime_minutes": 120}})))
    controls = make_controls(load_config(path), ArchiverOptions(config_path=path))
    assert controls.stop_file == tmp_path / "STOP" and controls.max_runtime_seconds == 7200
    text = RUNBOOK.read_text()
    assert "`<checkpoint_dir>/STOP`" in text and "max_runtime_minutes: 120" in text


# -- 4. grep words: in the sources ---------------------------------------------------------------
GREPS = runbook_greps()


def test_the_runbook_greps_the_contracts_words() -> None:
    pipelines = {g.pipeline for g in GREPS}
    for expected in ('tail -n 100 /var/log/archiver.log | grep -E "(completed|error|failed)"',
                     "grep -i error /var/log/archiver.log | tail -20", "grep -i warning /var/log/archiver.log | tail -20",
                     "python -m validate.main --config config.yaml | grep -i orphaned",
                     'python -m validate.main --config config.yaml | grep -i "checksum\\|invalid"',
                     'grep "Resuming from checkpoint" /var/log/archiver.log | tail -5'):
        assert expected in pipelines


@pytest.mark.parametrize("grep", GREPS, ids=[f"{g.where} {g.pattern}" for g in GREPS])
def test_grepped_word_is_written_by_the_tools(grep: Grep) -> None:
    strings = SOURCES[grep.feed]()
    for alt in grep.alternatives():
        assert any(alt.search(s) for s in strings), f"{grep.where}: no {grep.feed} output of the tools matches {alt.pattern!r}"


def test_log_messages_the_runbook_explains_exist() -> None:
    rows = table_rows(section(RUNBOOK.read_text(), "Review Logs"))
    strings = package_strings("archiver", "common")
    assert len(rows) >= 10
    for row in rows:
        fragment = backticked(row[0])[0]
        pattern = ".*".join(re.escape(p) for p in re.split(r"<[^>]+>", fragment))
        assert any(re.search(pattern, s.replace("%s", "<>").replace("%d", "<>")) or re.search(pattern, s) for s in strings), \
            f"the runbook explains a log message the archiver never writes: {fragment!r}"


def test_validate_problem_table_names_every_problem_type() -> None:
    rows = table_rows(section(section(RUNBOOK.read_text(), "Weekly Maintenance"), "Validate Archives"))
    assert [backticked(r[0])[0] for r in rows] == list(PROBLEM_TYPES)


# -- 5. grep words: in real output -----------------------------------------------------------------
def run_pipeline(pipeline: str, *, stdin: str | None = None, replace: dict[str, str]) -> str:
    for old, new in replace.items():
        pipeline = pipeline.replace(old, new)
    return subprocess.run(["bash", "-c", pipeline], input=stdin, capture_output=True, text=True, timeout=30).stdout


def assert_finds(grep: Grep, output: str) -> None:
    assert output.strip(), f"{grep.where}: `{grep.pipeline}` finds nothing in real output"
    for alt in grep.alternatives():
        assert any(alt.search(ln) for ln in output.splitlines()), f"{grep.where}: nothing in real output matches {alt.pattern!r}"


@pytest.fixture()
def real_log(pg: psycopg.Connection[Any], pg_dsn: str, tmp_path: Path) -> tuple[Path, Path]:
    """An archiver log as an incident leaves it: a run killed between upload and delete, then the
    runbook's rerun, which resumes, completes one table, fails another and cannot notify."""
    seed_audit(pg, rows=600, days=130)
    textfile = tmp_path / "archiver.prom"
    path = make_config(tmp_path, dsn=pg_dsn, tables=[{"name": "audit_logs"}, {"name": "missing_table"}],
                       defaults={"batch_size": 20}, monitoring={"enabled": True, "health_port": None, "metrics_port": None,
                                                                "textfile_path": str(textfile)},
                       notifications={"slack": {"webhook_url": f"http://127.0.0.1:{free_port()}/hook", "timeout": 2}})
    killed = subprocess.run([sys.executable, "-m", "archiver.main", "--config", str(path)], cwd=REPO, timeout=120,
                            env={**os.environ, "ARCHIVER_TEST_KILL_AT": "after_upload:2"}, capture_output=True)
    assert killed.returncode == -9, killed.stderr
    assert run_archiver_app(ArchiverOptions(config_path=path)) == ExitCode.FAILURE
    return tmp_path / "archiver.log", textfile


def test_runbook_log_greps_find_real_lines(real_log: tuple[Path, Path]) -> None:
    log, textfile = real_log
    replace = {LOG_PATH: str(log), "journalctl -u archiver --since today": f"cat {log}",
               "curl http://localhost:8000/metrics": f"cat {textfile}"}
    checked = 0
    for grep in GREPS:
        if grep.feed in ("log", "metrics"):
            assert_finds(grep, run_pipeline(grep.pipeline, replace=replace))
            checked += 1
    assert checked >= 7


# -- 6. a real archive: validate output, DuckDB queries --------------------------------------------
@dataclass
class Archive:
    dsn: str
    root: Path
    truth: dict[str, list[tuple[Any, ...]]]


#: The runbook's DuckDB queries, by their comment line, and the same question asked of PostgreSQL
#: before archiving. A new query in the runbook needs its twin here.
TWINS = {
    "rows per day and action in January 2026":
        "SELECT extract(year FROM created_at AT TIME ZONE 'UTC')::int, extract(month FROM created_at AT TIME ZONE 'UTC')::int,"
        " extract(day FROM created_at AT TIME ZONE 'UTC')::int, action, count(*) FROM audit_logs"
        " WHERE created_at >= '2026-01-01 00:00+00' AND created_at < '2026-02-01 00:00+00' GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4",
    "one user's archived actions in a time range":
        "SELECT id, created_at, action, email FROM audit_logs WHERE user_id = 42"
        " AND created_at >= '2026-01-10 00:00+00' AND created_at < '2026-01-20 00:00+00' ORDER BY created_at",
}


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    """audit_logs with rows every 97 minutes from 2025-12-20 to mid-February 2026 (all expired) and
    a few recent ones, archived to a local directory: ~60 daily Parquet objects."""
    name = f"archiver_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = make_conninfo(ADMIN_DSN, dbname=name)
    tmp = tmp_path_factory.mktemp("docs_archive")
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(AUDIT_DDL)
            conn.execute("""INSERT INTO audit_logs (created_at, user_id, email, action, payload, ok, amount)
                SELECT CASE WHEN g <= 900 THEN timestamptz '2025-12-20 00:00+00' + g * interval '97 minutes'
                            ELSE now() - (g - 900) * interval '1 hour' END,
                       g % 50, 'user' || g % 50 || '@example.com', (ARRAY['login','logout','update'])[1 + g % 3],
                       jsonb_build_object('n', g), g % 2 = 0, (g % 10000) / 100.0
                FROM generate_series(1, 920) g""")
            truth = {k: conn.execute(q).fetchall() for k, q in TWINS.items()}
        path = make_config(tmp, dsn=dsn)
        _results, code = run_archive(load_config(path))
        assert code == ExitCode.OK
        yield Archive(dsn, tmp / "archive", truth)
    finally:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def duckdb_queries() -> dict[str, str]:
    """The runbook's DuckDB queries by their comment, without the S3 set-up statements (they need
    the network); INSTALL/LOAD/CREATE SECRET are DuckDB's documented syntax."""
    out: dict[str, str] = {}
    for _n, body in fenced_blocks(section(RUNBOOK.read_text(), "DuckDB"), "sql"):
        for statement in (s.strip() for s in body.split(";") if s.strip()):
            comment = re.findall(r"^-- (.*)$", statement, re.M)
            query = "\n".join(ln for ln in statement.splitlines() if not ln.startswith("--")).strip()
            if re.match(r"(INSTALL|LOAD|CREATE SECRET)\b", query):
                continue
            out[comment[-1]] = query
    return out


def test_runbook_duckdb_queries_answer_over_a_real_archive(archive: Archive) -> None:
    queries = duckdb_queries()
    assert set(queries) == set(TWINS)
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        for comment, query in queries.items():
            assert "s3://audit-archives/production_db/public.audit_logs/year=*/month=*/day=*/*.parquet" in query
            rows = con.execute(query.replace("s3://audit-archives/", f"{archive.root}/")).fetchall()
            expected = [tuple(v.astimezone(timezone.utc) if isinstance(v, datetime) else v for v in r) for r in archive.truth[comment]]
            got = [tuple(v.astimezone(timezone.utc) if isinstance(v, datetime) else v for v in r) for r in rows]
            assert got == expected and len(got) >= 3, comment


@pytest.fixture()
def damaged(archive: Archive, tmp_path: Path) -> Path:
    """A copy of the archive with a corrupted object, an object whose manifest is gone and a manifest
    set that is not JSON; returns its config."""
    root = tmp_path / "archive"
    shutil.copytree(archive.root, root)
    data = sorted(p for p in root.rglob("*.parquet"))
    body = bytearray(data[0].read_bytes())
    body[len(body) // 2] ^= 0xFF
    data[0].write_bytes(bytes(body))
    store = LocalStorage(root)
    drop_manifest(store, data[1].relative_to(root).as_posix())
    sets = root / "_control" / "production_db" / "public.audit_logs" / "manifests"
    (sets / "29991231T000000000000Z-000000000000.json").write_text("not json")
    return make_config(tmp_path, dsn=archive.dsn)


def test_runbook_validate_commands_find_real_damage(damaged: Path) -> None:
    runs = 0
    for command in (c for c in COMMANDS if c.tool == "validate" and c.where.startswith("docs/")):
        args = list(command.args)
        args[args.index("--config") + 1] = str(damaged)
        result = CliRunner().invoke(validate.main.cli, args)
        assert result.exit_code == 1, f"{command.where}: {result.output}"
        runs += 1
        if command.rest.startswith(">") and "--output-format" in args:
            assert json.loads(result.stdout)["ok"] is False
        if command.rest.startswith("| grep"):
            grep = next(g for g in GREPS if g.feed == "validate" and g.pattern in command.rest)
            assert_finds(grep, run_pipeline(command.rest.lstrip("| "), stdin=result.stdout, replace={}))
    assert runs >= 6


# -- 7. health, metrics, exit codes, sections --------------------------------------------------------
def shape(doc: Any) -> Any:
    return {k: shape(v) for k, v in doc.items()} if isinstance(doc, dict) else type(doc).__name__ if doc is not None else None


def paths(doc: dict[str, Any], prefix: str = "", *, leaves: bool = False) -> Iterator[str]:
    for k, v in doc.items():
        path = f"{prefix}{k}"
        if not (leaves and isinstance(v, dict)):
            yield path
        if isinstance(v, dict):
            yield from paths(v, path + ".", leaves=leaves)


@pytest.fixture()
def health_reports(pg: psycopg.Connection[Any], pg_dsn: str, tmp_path: Path, moto_server: str, s3_client: Any,
                   bucket: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A real /health document after a real run, and one with the database and S3 down."""
    seed_audit(pg, rows=100, days=100)
    cfg = load_config(make_config(tmp_path, dsn=pg_dsn, bucket=bucket, endpoint=moto_server))
    state = RunState()
    assert run_archive(cfg, observer=state, s3_client=s3_client)[1] == ExitCode.OK
    checker = HealthChecker(cfg, state=state)
    checker.identity = identity(config_path=str(tmp_path / "config.yaml"), mode="one-shot")  # as OpsSurface sets it
    code, healthy = checker.report()
    assert code == 200 and healthy["status"] == "healthy"
    down_db = DatabaseConfig(name="production_db", dsn=f"host=127.0.0.1 port={free_port()} user=x dbname=x")
    down = cfg.model_copy(update={"databases": [down_db],
                                  "s3": cfg.s3.model_copy(update={"endpoint_url": f"http://127.0.0.1:{free_port()}"})})
    code, unhealthy = HealthChecker(down, state=RunState()).report()
    assert code == 503
    return healthy, unhealthy


def test_health_reference_matches_real_health_documents(health_reports: tuple[dict[str, Any], dict[str, Any]]) -> None:
    healthy, down = health_reports
    text = RUNBOOK.read_text()
    (_n, example), = fenced_blocks(section(text, "Health Endpoint"), "json")
    assert shape(json.loads(example)) == shape(healthy)
    (_n, deploy_example), = fenced_blocks(DEPLOY.read_text(), "json")
    assert set(paths(json.loads(deploy_example))) == set(paths(healthy))
    for key, values in (("status", {"healthy", "degraded", "unhealthy"}),
                        ("result", set(RESULTS.values()) | {"running"})):
        m = re.search(rf'"{key}": "([a-z_|]+)"', DEPLOY.read_text())
        assert m and set(m.group(1).split("|")) == values, f"deploy/README.md: {key} values"
    documented = {backticked(r[0])[0].replace("<name>", "production_db") for r in table_rows(section(text, "Health Endpoint"))}
    real = set(paths(healthy)) | set(paths(down))
    assert documented <= real, f"not in a real /health document: {sorted(documented - real)}"
    undocumented = set(paths(healthy, leaves=True)) - documented
    assert not undocumented, f"undocumented /health fields: {sorted(undocumented)}"
    assert down["status"] == "unhealthy" and "error" in down["checks"]["s3"]


def test_metrics_reference_matches_the_real_registry(real_log: tuple[Path, Path]) -> None:
    exported = dict(re.findall(r"^# TYPE (\S+) (\S+)$", ArchiverMetrics(pending_fallback=lambda: (0, 0)).render().decode(), re.M))
    rows = table_rows(section(RUNBOOK.read_text(), "Metrics"))
    documented = {backticked(r[0])[0]: {x.strip() for x in r[1].split(",") if x.strip()} for r in rows}
    assert set(documented) == set(exported)
    seen = set()
    for family in text_string_to_metric_families(real_log[1].read_text()):  # a real run's metrics
        for sample in family.samples:
            name = max((n for n in documented if sample.name.startswith(n)), key=len)
            assert set(sample.labels) - {"le"} == documented[name], f"{name}: labels {sorted(sample.labels)}"
            seen.add(name)
    assert len(seen) >= 10
    validate_metrics = dict(re.findall(r"^# TYPE (\S+) (\S+)$", render_validate_textfile(Report(), quick=False).decode(), re.M))
    documented_validate = {backticked(r[0])[0] for r in table_rows(section(RUNBOOK.read_text(), "Validate Metrics"))}
    assert documented_validate == set(validate_metrics)
    expire_metrics = dict(re.findall(r"^# TYPE (\S+) (\S+)$", render_expire_textfile([]).decode(), re.M))
    documented_expire = {backticked(r[0])[0] for r in table_rows(section(RUNBOOK.read_text(), "Expire Metrics"))}
    assert documented_expire == set(expire_metrics)
    for doc in (RUNBOOK, DEPLOY):
        for metric in set(re.findall(r"\barchiver_[a-z0-9_]+", doc.read_text())):
            assert metric in exported or metric in validate_metrics or metric in expire_metrics, \
                f"{rel(doc)}: {metric} is not a metric the tools export"


@pytest.mark.parametrize("doc,heading", [(RUNBOOK, "Exit Codes"), (README, "Exit codes (every tool)")])
def test_exit_code_tables_match_the_code(doc: Path, heading: str) -> None:
    codes = {int(r[0]) for r in table_rows(section(doc.read_text(), heading))}
    assert codes == {int(c) for c in ExitCode}


def test_notifications_point_to_runbook_sections_that_exist() -> None:
    names = set(headings(RUNBOOK.read_text()))
    for section_name, _step in NEXT_STEPS.values():
        assert section_name in names


def test_links_resolve() -> None:
    text = RUNBOOK.read_text()
    anchors = {slug(h) for h in headings(text)}
    for target in re.findall(r"\]\(#([^)]+)\)", text):
        assert target in anchors, f"docs/runbooks.md: broken link #{target}"
    for target in re.findall(r"\]\(([^)#:]+)\)", README.read_text()):
        assert (REPO / target).exists(), f"README.md: broken link {target}"
