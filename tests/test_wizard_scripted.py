"""The wizard in scripted mode (`--non-interactive` and flags) against a real PostgreSQL and a moto S3
server: the file it writes is what the archiver accepts, and it never holds a password (issue 8)."""
from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from click.testing import CliRunner, Result
from psycopg.conninfo import conninfo_to_dict, make_conninfo

import validate.main
from archiver.runner import dry_run, run_archive
from common.config import load_config
from conftest import free_port, seed_audit, throwaway_database
from wizard.main import cli
from wizard.prompts import Prompter
from wizard.storage import show_costs

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shop_dsn() -> Iterator[str]:
    """One database for the module (the wizard only reads): audit_logs (3,000 rows over 300 days,
    indexed created_at), events (unindexed logged_at), and a table without a primary key."""
    with throwaway_database("wizard_test") as dsn:
        with psycopg.connect(dsn, autocommit=True) as pg:
            seed_audit(pg, rows=3000, days=300)
            pg.execute("CREATE TABLE events (event_id bigint PRIMARY KEY, logged_at timestamptz NOT NULL, kind text)")
            pg.execute("INSERT INTO events SELECT g, now() - g * interval '1 day', 'k' FROM generate_series(1, 100) g")
            pg.execute("CREATE TABLE heap_only (created_at timestamptz, note text)")
            pg.execute("ANALYZE")
        yield dsn


@pytest.fixture(autouse=True)
def _no_password_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ARCHIVER_DB_PASSWORD", raising=False)


def args(tmp_path: Path, dsn: str | None, *, endpoint: str | None, bucket: str | None, table: str | None = "audit_logs",
         out: Path | None = None) -> list[str]:
    a = ["--output", str(out or tmp_path / "config.yaml"), "--non-interactive",
         "--fallback-dir", str(tmp_path / "fallback"), "--checkpoint-dir", str(tmp_path / "checkpoints"),
         "--log-file", str(tmp_path / "archiver.log")]
    if dsn:
        a += ["--dsn", dsn]
    if table:
        a += ["--table", table]
    if bucket:
        a += ["--bucket", bucket]
    if endpoint:
        a += ["--endpoint-url", endpoint]
    return a


def run(argv: list[str]) -> Result:
    return CliRunner().invoke(cli, argv, catch_exceptions=False)


def test_scripted_config_is_accepted_by_the_archiver_dry_run(shop_dsn: str, moto_server: str, bucket: str,
                                                             tmp_path: Path) -> None:
    result = run(args(tmp_path, shop_dsn, endpoint=moto_server, bucket=bucket) + ["--retention-days", "120"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "config.yaml"
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    t = load_config(out).table(load_config(out).databases[0].name, "audit_logs", "public")
    assert (t.timestamp_column, t.primary_key, t.retention_days) == ("created_at", "id", 120)
    assert "--dry-run" in result.stdout and "ARCHIVER_DB_PASSWORD" in result.stdout
    proc = subprocess.run([sys.executable, "-m", "archiver.main", "--config", str(out), "--dry-run"], cwd=REPO,
                          capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"s3://{bucket}/ (reachable)" in proc.stdout
    assert re.search(r"public\.audit_logs: cutoff .* \(retention 120 days\), eligible rows \d+", proc.stdout)


@pytest.mark.parametrize("bucket, where", [("audit-archives", {"s3"}), (None, {"local_dir"})], ids=["s3", "local"])
def test_every_section_has_a_comment_above_it(shop_dsn: str, tmp_path: Path, bucket: str | None, where: set[str]) -> None:
    assert run(args(tmp_path, shop_dsn, endpoint=None, bucket=bucket) + ["--skip-bucket-check"]).exit_code == 0
    lines = (tmp_path / "config.yaml").read_text().splitlines()
    tops = [i for i, line in enumerate(lines) if re.match(r"^[a-z_0-9]+:", line)]
    assert {lines[i].split(":")[0] for i in tops} == where | {"storage", "defaults", "databases", "logging",
                                                              "checkpoint_dir", "monitoring", "schedule"}
    assert all(lines[i - 1].startswith("# ") for i in tops), lines


@pytest.mark.parametrize("where", ["dsn", "url", "env"])
def test_the_password_is_never_written(shop_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       where: str) -> None:
    secret = "hunter2-Zq9"
    dsn = shop_dsn
    d = conninfo_to_dict(shop_dsn)
    if where == "dsn":  # trust auth accepts any password: the wizard still has to keep it out of the file
        dsn = make_conninfo(shop_dsn, password=secret)
    elif where == "url":
        dsn = f"postgresql://{d['user']}:{secret}@{d['host']}:{d.get('port') or 5432}/{d['dbname']}?application_name=x"
    else:
        monkeypatch.setenv("APP_DB_PASS", secret)
    result = run(args(tmp_path, dsn, endpoint=None, bucket=None) + ["--skip-bucket-check", "--password-env", "APP_DB_PASS"])
    assert result.exit_code == 0, result.output
    text = (tmp_path / "config.yaml").read_text()
    assert secret not in text and secret not in result.output
    db = yaml.safe_load(text)["databases"][0]
    assert db["password_env"] == "APP_DB_PASS" and "password" not in conninfo_to_dict(db["dsn"])
    assert "export APP_DB_PASS=" in result.stdout


def test_host_port_dbname_user_instead_of_a_dsn(shop_dsn: str, tmp_path: Path) -> None:
    d = conninfo_to_dict(shop_dsn)
    argv = args(tmp_path, None, endpoint=None, bucket=None) + [
        "--skip-bucket-check", "--host", str(d["host"]), "--port", str(d.get("port") or 5432),
        "--dbname", str(d["dbname"]), "--user", str(d["user"]), "--database-name", "production_db"]
    assert run(argv).exit_code == 0
    cfg = load_config(tmp_path / "config.yaml")
    db = cfg.database("production_db")
    assert (db.dsn, db.host, db.dbname, db.password_env) == (None, d["host"], d["dbname"], "ARCHIVER_DB_PASSWORD")
    lines, code = dry_run(cfg)
    assert code == 0, lines


@pytest.mark.parametrize("drop, flag", [("dsn", "--dsn"), ("table", "--table")])
def test_a_missing_required_answer_is_a_usage_error(shop_dsn: str, tmp_path: Path, drop: str, flag: str) -> None:
    argv = args(tmp_path, None if drop == "dsn" else shop_dsn, endpoint=None, bucket=None,
                table=None if drop == "table" else "audit_logs")
    result = run(argv + ["--skip-bucket-check"])
    assert result.exit_code == 2
    assert f"wizard: error: {flag} is required with --non-interactive" in result.stderr
    assert not (tmp_path / "config.yaml").exists()


def test_a_malformed_dsn_is_a_usage_error_that_does_not_repeat_it(tmp_path: Path) -> None:
    result = run(args(tmp_path, "host=db password=hunter2-Zq9 port", endpoint=None, bucket=None))
    assert result.exit_code == 2
    assert "wizard: error: --dsn: not a valid PostgreSQL DSN" in result.stderr
    assert "hunter2" not in result.output


def test_a_table_without_primary_key_is_refused(shop_dsn: str, tmp_path: Path) -> None:
    result = run(args(tmp_path, shop_dsn, endpoint=None, bucket=None, table="heap_only") + ["--skip-bucket-check"])
    assert result.exit_code == 2
    assert "refused: public.heap_only has no primary key; archiving needs one" in result.stderr
    assert not (tmp_path / "config.yaml").exists()


@pytest.mark.parametrize("extra, message", [
    (["--primary-key", "user_id"], "the primary key of public.audit_logs is id"),
    (["--timestamp-column", "email"], "not a timestamp, timestamptz or date column of public.audit_logs"),
    (["--retention-days", "events=30"], "events is not one of the chosen tables"),
    (["--retention-days", "soon"], "--retention-days soon: 'soon' is not a valid value"),
    (["--table", "nope"], "table nope not found"),
    (["--bucket", "audit-archives", "--storage-class", "COLD"], "--storage-class COLD: one of STANDARD"),
    (["--storage-class", "GLACIER", "--region", "eu-west-1"],
     "--region, --storage-class: S3 answers without a bucket; give --bucket too"),
    (["--bucket", "audit-archives", "--local-dir", "archive"], "--bucket and --local-dir: archives go to S3 or"),
])
def test_wrong_answers_are_usage_errors(shop_dsn: str, tmp_path: Path, extra: list[str], message: str) -> None:
    result = run(args(tmp_path, shop_dsn, endpoint=None, bucket=None) + ["--skip-bucket-check"] + extra)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert not (tmp_path / "config.yaml").exists()


def test_per_table_answers_and_detected_defaults(shop_dsn: str, tmp_path: Path) -> None:
    argv = args(tmp_path, shop_dsn, endpoint=None, bucket=None) + [
        "--skip-bucket-check", "--table", "public.events", "--retention-days", "60", "--retention-days", "events=30"]
    result = run(argv)
    assert result.exit_code == 0, result.output
    tables = {t.name: t for t in load_config(tmp_path / "config.yaml").databases[0].tables}
    assert (tables["audit_logs"].timestamp_column, tables["audit_logs"].retention_days) == ("created_at", 60)
    assert (tables["events"].timestamp_column, tables["events"].primary_key, tables["events"].retention_days) == \
        ("logged_at", "event_id", 30)
    assert re.search(r"eligible now: 71 of 100 rows \(71\.0%\) are older than 30 days", result.stdout)
    # events.logged_at has no index: said once, with the statement that would fix it
    assert 'CREATE INDEX CONCURRENTLY ON "public"."events" ("logged_at")' in result.stderr


def test_an_existing_file_is_kept_without_force(shop_dsn: str, tmp_path: Path) -> None:
    out = tmp_path / "config.yaml"
    out.write_text("# mine\n")
    out.chmod(0o644)
    argv = args(tmp_path, shop_dsn, endpoint=None, bucket=None) + ["--skip-bucket-check"]
    result = run(argv)
    assert result.exit_code == 2 and "exists; pass --force" in result.stderr
    assert out.read_text() == "# mine\n"
    assert run(argv + ["--force"]).exit_code == 0
    assert load_config(out).databases and stat.S_IMODE(out.stat().st_mode) == 0o600


def test_unreachable_database_is_exit_3(tmp_path: Path) -> None:
    dsn = f"host=127.0.0.1 port={free_port()} user=root dbname=nothing"
    result = run(args(tmp_path, dsn, endpoint=None, bucket=None) + ["--skip-bucket-check"])
    assert result.exit_code == 3
    assert "cannot connect to database 127.0.0.1" in result.stderr
    assert not (tmp_path / "config.yaml").exists()


def test_without_a_bucket_the_archives_go_to_a_local_directory_that_moves_to_s3_as_it_is(
        moto_server: str, s3_client: Any, bucket: str, tmp_path: Path) -> None:
    """A first try on a laptop: everything beside the config, writable by this user; later the
    archive moves to a bucket as the wizard says (`aws s3 sync`: each file to the key of its path)."""
    out, archive = tmp_path / "config.yaml", tmp_path / "archive"
    with throwaway_database("wizard_local") as dsn:
        with psycopg.connect(dsn, autocommit=True) as pg:
            seed_audit(pg, rows=12, days=3, end_days_ago=100)
        result = run(["--output", str(out), "--non-interactive", "--dsn", dsn, "--table", "audit_logs"])
        assert result.exit_code == 0, result.output
        cfg = load_config(out)
        assert (cfg.storage, cfg.local_dir, cfg.checkpoint_dir, cfg.logging.file) == \
            ("local", str(archive), str(tmp_path / "checkpoints"), str(tmp_path / "archiver.log"))
        assert "s3" not in yaml.safe_load(out.read_text())
        assert f"aws s3 sync {archive} s3://BUCKET/" in result.stdout
        assert run_archive(cfg)[1] == 0

        for path in (p for p in archive.rglob("*") if p.is_file()):
            s3_client.put_object(Bucket=bucket, Key=path.relative_to(archive).as_posix(), Body=path.read_bytes())
        doc = yaml.safe_load(out.read_text())  # then storage: s3 and the bucket, as the wizard says
        doc.update(storage="s3", s3={"bucket": bucket, "endpoint_url": moto_server})
        out.write_text(yaml.safe_dump(doc))
        checked = CliRunner().invoke(validate.main.cli, ["--config", str(out)], catch_exceptions=False)
    objects = len(list(archive.rglob("*.parquet")))
    assert checked.exit_code == 0, checked.output
    assert f"{objects} objects, 12 rows" in checked.stdout and "OK, no problems found" in checked.stdout


def test_unwritable_bucket_stops_a_scripted_run(shop_dsn: str, moto_server: str, tmp_path: Path) -> None:
    result = run(args(tmp_path, shop_dsn, endpoint=moto_server, bucket="missing-bucket"))
    assert result.exit_code == 3
    assert "cannot write s3://missing-bucket/" in result.stderr and "--skip-bucket-check" in result.stderr
    assert not (tmp_path / "config.yaml").exists()


def test_notifications_from_flags(shop_dsn: str, tmp_path: Path) -> None:
    argv = args(tmp_path, shop_dsn, endpoint=None, bucket=None) + [
        "--skip-bucket-check", "--notify-on", "failure,fallback", "--slack-webhook-env", "SLACK_HOOK",
        "--smtp-host", "smtp.example.com", "--email-from", "archiver@example.com", "--email-to", "ops@example.com",
        "--smtp-user", "archiver"]
    result = run(argv)
    assert result.exit_code == 0, result.output
    n = load_config(tmp_path / "config.yaml").notifications
    assert n.on == ["failure", "fallback"] and n.slack is not None and n.slack.webhook_url_env == "SLACK_HOOK"
    assert n.email is not None and n.email.to == ["ops@example.com"] and n.email.password_env == "ARCHIVER_SMTP_PASSWORD"
    assert "export SLACK_HOOK=" in result.stdout and "export ARCHIVER_SMTP_PASSWORD=" in result.stdout


def test_storage_classes_are_priced_by_the_cost_tool(shop_dsn: str, tmp_path: Path) -> None:
    pytest.importorskip("cost.estimate")
    result = run(args(tmp_path, shop_dsn, endpoint=None, bucket="audit-archives") + ["--skip-bucket-check", "--region", "us-east-2"])
    assert result.exit_code == 0, result.output
    shown = dict(re.findall(r"^  ([A-Z_]+) +\$([\d,.]+)/month", result.stdout, re.M))
    assert set(shown) == {"STANDARD", "INTELLIGENT_TIERING", "STANDARD_IA", "ONEZONE_IA", "GLACIER_IR", "GLACIER",
                          "DEEP_ARCHIVE"}
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["s3"]["region"] == "us-east-2"


def test_cost_column_shows_the_cost_tools_figures(capsys: pytest.CaptureFixture[str]) -> None:
    estimate = pytest.importorskip("cost.estimate")
    size = 5 * 1024**4  # 5 TiB: large enough that every class costs something
    show_costs(Prompter(interactive=True), size, "us-east-1")
    shown = dict(re.findall(r"^  ([A-Z_]+) +\$([\d,.]+)/month", capsys.readouterr().out, re.M))
    expected = estimate.monthly_cost_by_class(Decimal(5 * 1024), "us-east-1")
    assert shown == {k: f"{v:,.2f}" for k, v in expected.items()}
    assert all(Decimal(v.replace(",", "")) > 0 for v in shown.values())


def test_without_the_cost_tool_the_cost_column_is_skipped(shop_dsn: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cost.estimate", None)  # as if the cost tool were not installed
    result = run(args(tmp_path, shop_dsn, endpoint=None, bucket="audit-archives") + ["--skip-bucket-check"])
    assert result.exit_code == 0, result.output
    assert "(no cost column: the cost tool's estimator (cost.estimate) is not available)" in result.stdout
    assert "$" not in result.stdout.split("Storage classes")[1].split("Wrote")[0]
