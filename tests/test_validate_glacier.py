"""Objects in GLACIER / DEEP_ARCHIVE cannot be downloaded without an S3 restore request: a full
validate checks what it can and says so, instead of calling S3 unreachable."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from archiver.runner import run_archive
from common.config import load_config
from conftest import make_config
from validate.main import cli


def test_glacier_objects_are_checked_without_download_and_noted(tmp_path: Path, pg_dsn: str, bucket: str,
                                                                moto_server: str, small_audit: Any) -> None:
    path = make_config(tmp_path, dsn=pg_dsn, bucket=bucket, endpoint=moto_server, s3={"storage_class": "GLACIER"})
    _results, code = run_archive(load_config(path))
    assert code == 0
    result = CliRunner().invoke(cli, ["--config", str(path), "--output-format", "json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["ok"] and doc["problems"] == [] and doc["summary"]["objects"] > 0
    assert "GLACIER/DEEP_ARCHIVE" in result.stderr
