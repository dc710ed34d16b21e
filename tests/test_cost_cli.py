"""The cost command line: the runbook invocations, the JSON document's shape, defaults from the
config, and every bad input refused with one line and exit 2."""
from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from cost.estimate import monthly_cost_by_class
from cost.main import cli
from cost.prices import load_prices

ROOT = Path(__file__).resolve().parent.parent
ESTIMATE_KEYS = {"storage_class", "monthly_storage_usd", "monthly_requests_usd", "monthly_total_usd",
                 "period_total_usd", "notes"}


def cost(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def as_json(result: Result) -> dict[str, Any]:
    assert result.exit_code == 0, result.output
    doc: dict[str, Any] = json.loads(result.stdout, parse_float=D)
    return doc


def test_runbook_compare_without_config_lists_every_class_cheapest_first() -> None:
    result = cost("--size-gb", "500", "--compare")
    assert result.exit_code == 0, result.output
    price_date = load_prices().price_date.isoformat()
    assert f"us-east-1 (US East (N. Virginia)), prices of {price_date} in USD" in result.stdout
    rows = [line.split()[0] for line in result.stdout.splitlines()
            if line.split() and line.split()[0] in load_prices().classes("us-east-1")]
    assert rows[0] == "DEEP_ARCHIVE" and rows[-1] == "STANDARD" and len(rows) == 7
    assert "vs STANDARD" in result.stdout and "retrieval" in result.stdout


def test_runbook_compare_runs_as_a_module_in_its_own_process() -> None:
    proc = subprocess.run([sys.executable, "-m", "cost.main", "--size-gb", "500", "--compare"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "STANDARD" in proc.stdout and "DEEP_ARCHIVE" in proc.stdout


def test_size_only_path_does_not_import_psycopg_or_boto3() -> None:
    code = ("import runpy, sys\n"
            "sys.argv = ['cost', '--size-gb', '500', '--compare', '--output-format', 'json']\n"
            "try:\n    runpy.run_module('cost.main', run_name='__main__')\n"
            "except SystemExit as e:\n    assert e.code == 0, e.code\n"
            "print('LOADED', 'psycopg' in sys.modules, 'boto3' in sys.modules, file=sys.stderr)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "LOADED False False" in proc.stderr


def test_json_has_exactly_the_documented_shape() -> None:
    doc = as_json(cost("--size-gb", "500", "--compare", "--output-format", "json"))
    assert set(doc) == {"region", "price_date", "inputs", "estimates"}
    assert doc["region"] == "us-east-1"
    assert doc["price_date"] == load_prices().price_date.isoformat()
    assert len(doc["estimates"]) == 7
    for e in doc["estimates"]:
        assert set(e) == ESTIMATE_KEYS
        assert e["monthly_total_usd"] == e["monthly_storage_usd"] + e["monthly_requests_usd"]
        assert all(isinstance(n, str) for n in e["notes"])
        assert e["notes"][0].startswith("retrieval time: ")
    assert doc["inputs"]["size_gb"] == 500 and doc["inputs"]["sources"]["size_gb"] == "given"
    assert doc["inputs"]["sources"]["objects"] == "assumed"


def test_json_money_is_a_number_to_the_cent() -> None:
    result = cost("--size-gb", "500", "--output-format", "json")
    # STANDARD: 500 GB + 128,000 manifests of 2.5 KB (0.30517578125 GB) = 500.30517578125 * 0.023 = 11.507...
    assert '"monthly_storage_usd": 11.51,' in result.stdout
    assert '"monthly_requests_usd": 0.00,' in result.stdout
    assert '"period_total_usd": 138.12,' in result.stdout  # 12 * 11.51


def test_compare_agrees_with_the_wizard_function() -> None:
    doc = as_json(cost("--size-gb", "750", "--compare", "--output-format", "json"))
    shown = {e["storage_class"]: e["monthly_total_usd"] for e in doc["estimates"]}
    assert shown == monthly_cost_by_class(D(750), "us-east-1")


def test_objects_flag_drives_the_per_object_charges() -> None:
    doc = as_json(cost("--size-gb", "10", "--objects", "200000", "--storage-class", "STANDARD_IA",
                       "--output-format", "json"))
    # 200,000 objects of 52.4288 KB, all under 128 KB: billed 200,000 * 128 KB = 24.4140625 GB
    # * 0.0125 = 0.30517578125 (10 GB alone would be 0.125); their 200,000 manifests of 2.5 KB stay in
    # STANDARD: 0.476837158203125 GB * 0.023 = 0.0109672546...; 0.3161430358... -> 0.32
    assert doc["estimates"][0]["monthly_storage_usd"] == D("0.32")
    assert doc["inputs"]["objects"] == 200000 and doc["inputs"]["sources"]["objects"] == "given"


def test_growth_retrieval_and_months_reach_the_totals() -> None:
    doc = as_json(cost("--size-gb", "100", "--avg-object-mb", "1024", "--growth-gb-per-month", "10",
                       "--retrieval-gb-per-month", "5", "--months", "3", "--storage-class", "STANDARD_IA",
                       "--output-format", "json"))
    (est,) = doc["estimates"]
    # 1 GB objects + 2.5 KB manifests (in STANDARD); growth 10 objects + 10 manifests a month.
    # Requests: PUT 10 * 0.01 / 1000 + 10 * 0.005 / 1000 = 0.00015; retrieval 5 GB * 0.01 = 0.05
    # + 5 GETs * 0.001 / 1000 + 5 manifest GETs * 0.0004 / 1000 -> 0.05
    assert est["monthly_requests_usd"] == D("0.05")
    # Storage: month 1: 100 GB * 0.0125 = 1.25 + 100 manifests (0.0002384185791015625 GB) * 0.023
    # = 1.2500054... -> 1.25; month 2: 110 GB = 1.375 + 110 manifests -> 1.38 (1.3750060...);
    # month 3: 120 GB = 1.50 + 120 manifests -> 1.50
    assert est["monthly_storage_usd"] == D("1.25")
    assert est["period_total_usd"] == D("1.25") + D("1.38") + D("1.50") + 3 * D("0.05")


def test_text_names_region_price_date_and_where_inputs_came_from() -> None:
    result = cost("--size-gb", "500", "--storage-class", "glacier", "--region", "us-west-2")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "us-west-2 (US West (Oregon))" in out and load_prices().price_date.isoformat() in out
    assert "500 GB  [given]" in out and "128,000 of 4 MB on average  [assumed]" in out
    assert "GLACIER" in out and "objects must be restored" in out


@pytest.mark.parametrize(("args", "message"), [
    (["--size-gb", "abc"], "--size-gb: 'abc' is not a number"),
    (["--size-gb", "-5"], "--size-gb: must not be negative"),
    (["--size-gb", "nan"], "--size-gb: 'nan' is not a finite number"),
    (["--size-gb", "Infinity"], "is not a finite number"),
    (["--size-gb", ""], "--size-gb: '' is not a number"),
    (["--size-gb", "1", "--growth-gb-per-month", "-1"], "--growth-gb-per-month: must not be negative"),
    (["--size-gb", "1", "--retrieval-gb-per-month", "x"], "--retrieval-gb-per-month: 'x' is not a number"),
    (["--size-gb", "1", "--months", "0"], "--months: must be between 1 and 1200"),
    (["--size-gb", "1", "--months", "2.5"], "--months: '2.5' is not a whole number"),
    (["--size-gb", "1", "--objects", "-3"], "--objects: must not be negative"),
    (["--size-gb", "1", "--objects", "0"], "--objects 0 cannot hold 1 GB"),
    (["--size-gb", "1", "--avg-object-mb", "0"], "--avg-object-mb: must be above 0"),
    (["--size-gb", "1", "--objects", "5", "--avg-object-mb", "2"], "give --objects or --avg-object-mb, not both"),
    (["--size-gb", "1", "--storage-class", "TAPE"], "unknown storage class 'TAPE' for us-east-1 (known classes: "
                                                    "STANDARD, INTELLIGENT_TIERING"),
    (["--size-gb", "1", "--region", "mars-1"], "no prices for region 'mars-1' in the built-in price table "
                                               "(known regions: us-east-1, us-east-2, us-west-2)"),
    ([], "give --size-gb"),
])
def test_bad_input_is_a_one_line_usage_error(args: list[str], message: str) -> None:
    result = cost(*args)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("cost: error: ")
    assert message in result.stderr


def test_unknown_output_format_is_a_usage_error() -> None:
    assert cost("--size-gb", "1", "--output-format", "xml").exit_code == 2


def test_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    result = cost("--config", str(tmp_path / "nope.yaml"), "--size-gb", "5")
    assert result.exit_code == 2 and "config file not found" in result.stderr


def _config(tmp_path: Path, **s3: Any) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"storage": "local", "local_dir": str(tmp_path / "archive"), "s3": s3}))
    return path


def test_region_and_class_default_to_the_configs(tmp_path: Path) -> None:
    cfg = _config(tmp_path, region="us-east-2", storage_class="STANDARD_IA")
    doc = as_json(cost("--config", str(cfg), "--size-gb", "500", "--output-format", "json"))
    assert doc["region"] == "us-east-2"
    assert [e["storage_class"] for e in doc["estimates"]] == ["STANDARD_IA"]
    assert doc["inputs"]["sources"]["storage_class"] == "config"
    assert doc["inputs"]["sources"]["region"] == "config"


def test_command_line_beats_the_config(tmp_path: Path) -> None:
    cfg = _config(tmp_path, region="us-east-2", storage_class="STANDARD_IA")
    doc = as_json(cost("--config", str(cfg), "--size-gb", "5", "--region", "us-west-2",
                       "--storage-class", "GLACIER_IR", "--output-format", "json"))
    assert doc["region"] == "us-west-2" and doc["estimates"][0]["storage_class"] == "GLACIER_IR"


def test_configured_region_without_prices_lists_the_known_ones(tmp_path: Path) -> None:
    cfg = _config(tmp_path, region="ap-south-2")
    result = cost("--config", str(cfg), "--size-gb", "5")
    assert result.exit_code == 2
    assert "no prices for region 'ap-south-2'" in result.stderr and "us-east-1, us-east-2, us-west-2" in result.stderr


def test_compare_marks_the_configured_class(tmp_path: Path) -> None:
    cfg = _config(tmp_path, storage_class="GLACIER_IR")
    result = cost("--config", str(cfg), "--size-gb", "5", "--compare")
    assert result.exit_code == 0, result.output
    assert any(line.startswith("GLACIER_IR *") for line in result.stdout.splitlines())
