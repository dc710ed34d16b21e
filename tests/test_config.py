"""Config errors are exit 2 with one line naming the key and the file (issue 2)."""
from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from archiver.main import cli
from common.config import load_config, parse_config
from common.errors import ConfigError

VALID = """
s3: {bucket: b, local_fallback_dir: /tmp/fb}
databases:
  - name: production_db
    host: db.example.com
    user: archiver
    password_env: ARCHIVER_DB_PASSWORD
    tables: [{name: audit_logs, retention_days: 365}]
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "config.yaml"
    p.write_text(text)
    return p


def test_valid_config_merges_table_overrides_over_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, VALID))
    opts = cfg.options(cfg.table("production_db", "audit_logs"))
    assert (opts.retention_days, opts.batch_size, opts.format) == (365, 50000, "parquet")


@pytest.mark.parametrize(
    ("text", "key", "what"),
    [
        ("defaults: {retention_dayz: 3}", "defaults.retention_dayz", "unknown key"),
        ("defaults: {batch_size: 0}", "defaults.batch_size", "greater than 0"),
        ("defaults: {retention_days: -1}", "defaults.retention_days", "greater than or equal to 0"),
        ("defaults: {batch_size: lots}", "defaults.batch_size", "integer"),
        ("s3: {sse: 'aws:kms'}", "s3", "kms_key_id"),
        ("storage: local", "(top level)", "local_dir"),
        ("storage: glacier", "storage", "'s3' or 'local'"),
        ("databases: [{name: a, tables: [{name: t, schema: public, colour: red}]}]", "databases[0].tables[0].colour", "unknown key"),
    ],
)
def test_bad_config_is_one_line_naming_key_and_file(tmp_path: Path, text: str, key: str, what: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    message = str(exc.value)
    assert message.startswith(f"{path}: {key}: ")
    assert what in message
    assert "\n" not in message


def test_missing_env_var_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOPE_NOT_SET", raising=False)
    with pytest.raises(ConfigError, match=r"s3\.bucket: environment variable NOPE_NOT_SET is not set"):
        load_config(write(tmp_path, "s3: {bucket: '${NOPE_NOT_SET}'}"))


def test_env_vars_are_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARCHIVE_BUCKET", "from-env")
    assert load_config(write(tmp_path, "s3: {bucket: 'x-${ARCHIVE_BUCKET}'}")).s3.bucket == "x-from-env"


@pytest.mark.parametrize("text", ["s3: [unclosed", "- just\n- a list\n"])
def test_unparseable_yaml_is_a_config_error(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError):
        load_config(write(tmp_path, text))


@pytest.mark.parametrize("args", [["--dry-run"], []])
def test_cli_exits_2_without_traceback_on_bad_config(tmp_path: Path, args: list[str]) -> None:
    path = write(tmp_path, "defaults: {batch_size: 0}")
    result = CliRunner().invoke(cli, ["--config", str(path), *args])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert f"{path}: defaults.batch_size" in result.output


def test_cli_exits_2_for_missing_config_file(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["--config", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert "config file not found" in result.output


def test_unknown_database_is_named() -> None:
    cfg = parse_config({"databases": [{"name": "a"}]}, source="c.yaml")
    with pytest.raises(ConfigError, match="no database named 'b'"):
        cfg.database("b")


def test_bare_on_key_of_notifications_is_read_as_on(tmp_path: Path) -> None:
    # YAML 1.1 turns a bare `on:` into true; the documented key must still work.
    cfg = load_config(write(tmp_path, "notifications:\n  on: [failure, fallback]\n"))
    assert cfg.notifications.on == ["failure", "fallback"]


def test_example_config_loads() -> None:
    cfg = load_config(Path(__file__).resolve().parent.parent / "config.example.yaml")
    assert cfg.databases[0].tables[0].name == "audit_logs"
