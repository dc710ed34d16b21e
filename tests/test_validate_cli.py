"""validate's command line (runbook contract): flags, exit codes 0/1/2/3, text lines the runbook greps,
and a JSON report that is the only thing on stdout."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from archive_checks import drop_manifest
from common.archive import layout
from common.archive.storage import S3Storage
from conftest import free_port, make_config
from test_validate import Pristine, pristine, pristines  # noqa: F401 - the module-scoped archive fixtures
from validate.main import cli

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def archived(tmp_path: Path, pristine: Pristine, moto_server: str, s3_client: Any, bucket: str) -> tuple[Path, Any, str]:
    """A config and its real archive (6 objects), as the runbook's operator would have them."""
    for o in s3_client.list_objects_v2(Bucket=pristine.bucket)["Contents"]:
        s3_client.copy_object(Bucket=bucket, Key=o["Key"], CopySource={"Bucket": pristine.bucket, "Key": o["Key"]})
    return make_config(tmp_path, dsn=pristine.dsn, bucket=bucket, endpoint=moto_server), s3_client, bucket


def data_keys(s3: Any, bucket: str) -> list[str]:
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]
                  if not layout.is_manifest(o["Key"]) and not layout.is_control_key(o["Key"]))  # digests: no rows


def damage(s3: Any, bucket: str) -> dict[str, str]:
    """A corrupted object, an orphan and a stray file: {problem type: key}."""
    keys = data_keys(s3, bucket)
    body = s3.get_object(Bucket=bucket, Key=keys[0])["Body"].read()
    s3.put_object(Bucket=bucket, Key=keys[0], Body=body[:50] + bytes([body[50] ^ 1]) + body[51:])
    drop_manifest(S3Storage(s3, bucket), keys[1])
    s3.put_object(Bucket=bucket, Key="production_db/stray.txt", Body=b"x")
    return {"checksum_mismatch": keys[0], "orphaned_file": keys[1]}


def invoke(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_clean_archive_exits_0_with_a_summary(archived: tuple[Path, Any, str]) -> None:
    result = invoke("--config", str(archived[0]))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [result.stdout.strip()]
    assert re.match(r"summary: 6 objects, 300 rows, [\d.]+ KB checked in [\d.]+s: OK, no problems found", result.stdout)


def test_problems_exit_1_with_one_greppable_line_each(archived: tuple[Path, Any, str]) -> None:
    expected = damage(archived[1], archived[2])
    result = invoke("--config", str(archived[0]))
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    # The runbook: `validate | grep -i "checksum\|invalid"` and `validate | grep -i orphaned`.
    assert [ln for ln in lines if re.search("checksum|invalid", ln, re.I)] == \
        [ln for ln in lines if ln.startswith(f"checksum_mismatch: {expected['checksum_mismatch']} ")]
    orphaned = [ln for ln in lines if "orphaned" in ln.lower() and not ln.startswith("summary")]
    assert sorted(ln.split(" ")[1] for ln in orphaned) == sorted(["production_db/stray.txt:", expected["orphaned_file"]])
    assert re.match(r"summary: 7 objects, \d+ rows, .*: 3 problems found$", lines[-1])


def test_json_report_has_the_documented_shape(archived: tuple[Path, Any, str]) -> None:
    expected = damage(archived[1], archived[2])
    result = invoke("--config", str(archived[0]), "--output-format", "json")
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert set(doc) == {"ok", "summary", "problems"}
    assert doc["ok"] is False
    assert set(doc["summary"]) == {"objects", "rows", "bytes", "seconds"}
    assert doc["summary"]["objects"] == 7  # 6 archive objects and the stray file
    assert 0 < doc["summary"]["rows"] < 300  # rows of the damaged objects cannot be counted
    for p in doc["problems"]:
        assert set(p) == {"type", "key", "database", "table", "message"}
    assert {(p["type"], p["key"]) for p in doc["problems"]} >= {(t, k) for t, k in expected.items()}


def test_verbose_lists_every_object_checked(archived: tuple[Path, Any, str]) -> None:
    result = invoke("--config", str(archived[0]), "--verbose")
    assert result.exit_code == 0
    listed = [ln.split(" ")[1].rstrip(":") for ln in result.stdout.splitlines() if ln.startswith("checked ")]
    assert sorted(listed) == data_keys(archived[1], archived[2])


def test_quick_since_and_filters_are_accepted(archived: tuple[Path, Any, str]) -> None:
    result = invoke("--config", str(archived[0]), "--quick", "--since", "2000-01-01", "--parallel", "2",
                    "--database", "production_db", "--table", "audit_logs", "--output-format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["summary"]["objects"] == 6


@pytest.mark.parametrize("args, message", [
    (["--table", "nope"], "--table nope"),
    (["--database", "nope"], "no database named 'nope'"),
    (["--since", "yesterday"], "yesterday"),
    (["--output-format", "xml"], "xml"),
])
def test_bad_arguments_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    # Arguments are checked before anything is contacted: this database and directory need not exist.
    path = make_config(tmp_path, dsn=f"host=127.0.0.1 port={free_port()} user=root")
    result = invoke("--config", str(path), *args)
    assert result.exit_code == 2
    assert message in result.stderr


def test_broken_config_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"storage": "local", "local_dir": str(tmp_path), "colour": "blue"}))
    result = invoke("--config", str(path))
    assert result.exit_code == 2
    assert "colour: unknown key" in result.stderr
    assert invoke("--config", str(tmp_path / "missing.yaml")).exit_code == 2


@pytest.mark.parametrize("down", ["s3", "database"])
def test_unreachable_service_exits_3(tmp_path: Path, archived: tuple[Path, Any, str], down: str) -> None:
    doc = yaml.safe_load(archived[0].read_text())
    dead = f"127.0.0.1:{free_port()}"
    if down == "s3":
        doc["s3"]["endpoint_url"] = f"http://{dead}"
    else:
        doc["databases"][0]["dsn"] = f"host=127.0.0.1 port={dead.split(':')[1]} user=root dbname=postgres"
    path = tmp_path / "down.yaml"
    path.write_text(yaml.safe_dump(doc))
    result = invoke("--config", str(path), "--output-format", "json")
    assert result.exit_code == 3
    assert result.stdout == ""
    assert ("S3" if down == "s3" else "database") in result.stderr


def test_real_process_prints_only_json_on_stdout(archived: tuple[Path, Any, str]) -> None:
    damage(archived[1], archived[2])
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "validate.main", "--config", str(archived[0]), "--output-format", "json"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["ok"] is False and len(doc["problems"]) == 3
    assert "validate finished" in proc.stderr
