"""What an operator installs beside the service (issue 18): deploy/prometheus/alerts.yml passes
`promtool check rules` and its unit tests, deploy/grafana/archiver-dashboard.json queries only
metrics the tools export, and /metrics, the archiver's textfile and validate's textfile pass
`promtool check metrics`. promtool is Debian's `prometheus` package (.ci/run installs it)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import free_port, http_get, make_config, seed_audit
from prometheus_client.parser import text_string_to_metric_families

from archiver.ops.metrics import ArchiverMetrics
from archiver.ops.surface import OpsSurface
from archiver.runner import run_archive
from common.config import load_config
from expire.metrics import render as expire_render
from validate.app import ValidateOptions
from validate.app import run as validate_run
from validate.metrics import PROBLEMS, render as validate_render
from validate.report import PROBLEM_TYPES, Report

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERT_TESTS = ROOT / "deploy" / "prometheus" / "alerts.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "archiver-dashboard.json"
METRIC = re.compile(r"\b(archiver_[a-z0-9_]+)")
#: PromQL words and Grafana's variables that are not metric names
GRAFANA_VARS = {"$__rate_interval": "5m", "$database": ".*"}


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool not found: install Debian's `prometheus` package (apt-get install prometheus), as .ci/run does")
    return path


def promtool_run(promtool: str, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], input=stdin.decode() if stdin is not None else None,
                          capture_output=True, text=True, timeout=60, cwd=ROOT)


def exported() -> set[str]:
    """Every sample name the archiver's registry and validate's textfile can carry."""
    names: set[str] = set()
    for fam in ArchiverMetrics(pending_fallback=lambda: (0, 0)).registry.collect():
        if fam.type == "counter":
            names.add(fam.name + "_total")
        elif fam.type == "histogram":
            names |= {fam.name + s for s in ("_bucket", "_sum", "_count")}
        else:
            names.add(fam.name)
    names |= {s.name for fam in text_string_to_metric_families(validate_render(Report(), quick=False).decode())
              for s in fam.samples}
    names |= {fam.name for fam in text_string_to_metric_families(expire_render([]).decode())}  # gauges: name = sample
    return names


def dashboard_queries() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]
    queries += [v["query"]["query"] for v in doc["templating"]["list"] if isinstance(v.get("query"), dict)]
    return queries


def alert_exprs() -> list[str]:
    return [r["expr"] for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]


# -- alert rules --------------------------------------------------------------------------------
def test_the_alert_rules_pass_promtool_check_rules(promtool: str) -> None:
    result = promtool_run(promtool, "check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 8 rules found" in result.stdout


def test_the_alert_rules_unit_tests_pass(promtool: str) -> None:
    result = promtool_run(promtool, "test", "rules", str(ALERT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_names_only_metrics_the_tools_export() -> None:
    names = exported()
    for expr in alert_exprs():
        used = set(METRIC.findall(expr))
        assert used and used <= names, (expr, used - names)


# -- dashboard ----------------------------------------------------------------------------------
def test_every_dashboard_query_names_a_metric_the_archiver_exports() -> None:
    names = exported()
    queries = dashboard_queries()
    assert len(queries) >= 15
    for q in queries:
        used = set(METRIC.findall(q))
        assert used and used <= names, (q, used - names)


def test_the_dashboard_covers_rows_bytes_duration_backlog_errors_and_fallback() -> None:
    used = {m for q in dashboard_queries() for m in METRIC.findall(q)}
    assert {"archiver_rows_archived_total", "archiver_bytes_uploaded_total", "archiver_batch_duration_seconds_bucket",
            "archiver_backlog_rows", "archiver_errors_total", "archiver_fallback_pending_files"} <= used


def test_every_dashboard_query_is_valid_promql(promtool: str, tmp_path: Path) -> None:
    exprs = []
    for q in dashboard_queries():
        if q.startswith("label_values("):  # Grafana's own function, not PromQL
            continue
        for var, value in GRAFANA_VARS.items():
            q = q.replace(var, value)
        exprs.append(q)
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"dashboard:query_{i}", "expr": e}
                                                        for i, e in enumerate(exprs)]}]}
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(rules))
    result = promtool_run(promtool, "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


# -- exposition ---------------------------------------------------------------------------------
@pytest.fixture()
def kept_backlog(pg: Any) -> Any:
    """Expired rows, two of them kept because a foreign key references them: every gauge has a value."""
    seed_audit(pg, rows=200, days=100)
    pg.execute("CREATE TABLE sessions (id int PRIMARY KEY, audit_id bigint REFERENCES audit_logs (id))")
    pg.execute("INSERT INTO sessions SELECT 1, max(id) FROM audit_logs")  # the oldest row
    return pg


def test_metrics_endpoint_and_textfile_pass_promtool_check_metrics(promtool: str, pg_dsn: str, kept_backlog: Any,
                                                                  tmp_path: Path) -> None:
    textfile = tmp_path / "textfile" / "archiver.prom"
    path = make_config(tmp_path, dsn=pg_dsn, monitoring={"enabled": True, "health_port": free_port(),
                                                         "metrics_port": free_port(), "textfile_path": str(textfile)})
    cfg = load_config(path)
    with OpsSurface(cfg, config_path=str(path)) as ops:
        (result,), code = run_archive(cfg, observer=ops.observer())
        status, body = http_get(f"http://127.0.0.1:{cfg.monitoring.metrics_port}/metrics")
        ops.after_run()
    assert code == 0 and status == 200 and result.backlog_rows == 1
    for text in (body.encode(), textfile.read_bytes()):
        assert b'archiver_backlog_rows{database="production_db",table="public.audit_logs"} 1.0' in text
        check = promtool_run(promtool, "check", "metrics", stdin=text)
        assert check.returncode == 0, check.stdout + check.stderr


def test_validate_textfile_counts_problems_and_passes_promtool_check_metrics(promtool: str, pg_dsn: str, pg: Any,
                                                                             tmp_path: Path) -> None:
    seed_audit(pg, rows=200, days=100)
    path = make_config(tmp_path, dsn=pg_dsn)
    run_archive(load_config(path))
    (tmp_path / "archive" / "stray.parquet").write_bytes(b"not an archive")  # an orphaned file
    textfile = tmp_path / "textfile" / "validate.prom"
    textfile.parent.mkdir()
    assert validate_run(ValidateOptions(config_path=path, textfile=textfile)) == 1
    samples = {(s.name, tuple(s.labels.items())): s.value
               for fam in text_string_to_metric_families(textfile.read_text()) for s in fam.samples}
    assert samples[(PROBLEMS, (("type", "orphaned_file"),))] == 1
    assert all(samples[(PROBLEMS, (("type", t),))] == 0 for t in PROBLEM_TYPES if t != "orphaned_file")
    assert samples[("archiver_validate_objects_checked", ())] > 0
    check = promtool_run(promtool, "check", "metrics", stdin=textfile.read_bytes())
    assert check.returncode == 0, check.stdout + check.stderr
