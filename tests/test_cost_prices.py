"""The price table is data: dated, exact, replaceable with --prices, and a bad file is refused
with the file and the key named (exit 2)."""
from __future__ import annotations

import json
from datetime import date
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from common.errors import ConfigError, UsageError
from cost.main import cli
from cost.prices import load_prices


def test_builtin_table_is_dated_and_names_its_source() -> None:
    table = load_prices()
    assert isinstance(table.price_date, date)
    assert table.currency == "USD"
    assert "aws.amazon.com/s3/pricing" in table.source


@pytest.mark.parametrize(("storage_class", "first_tier"), [
    ("STANDARD", "0.023"), ("STANDARD_IA", "0.0125"), ("ONEZONE_IA", "0.01"), ("INTELLIGENT_TIERING", "0.023"),
    ("GLACIER_IR", "0.004"), ("GLACIER", "0.0036"), ("DEEP_ARCHIVE", "0.00099"),
])
def test_builtin_us_east_1_storage_rates_are_the_published_ones(storage_class: str, first_tier: str) -> None:
    assert load_prices().class_prices("us-east-1", storage_class).storage[0].usd_per_gb_month == D(first_tier)


@pytest.mark.parametrize(("storage_class", "put"), [
    ("STANDARD", "0.005"), ("STANDARD_IA", "0.01"), ("ONEZONE_IA", "0.01"), ("GLACIER_IR", "0.02"),
    ("GLACIER", "0.03"), ("DEEP_ARCHIVE", "0.05"),
])
def test_builtin_put_prices_are_the_published_ones(storage_class: str, put: str) -> None:
    assert load_prices().class_prices("us-east-1", storage_class).put_per_1000 == D(put)


def test_builtin_standard_tiers_and_intelligent_tiering_figures() -> None:
    table = load_prices()
    standard = table.class_prices("us-east-1", "STANDARD")
    assert [(t.up_to_gb, t.usd_per_gb_month) for t in standard.storage] == [
        (D(51200), D("0.023")), (D(512000), D("0.022")), (None, D("0.021"))]
    it = table.class_prices("us-east-1", "INTELLIGENT_TIERING")
    assert [(t.after_days, t.usd_per_gb_month) for t in it.access_tiers] == [(30, D("0.0125")), (90, D("0.004"))]
    assert it.monitoring_per_1000 == D("0.0025") and it.monitoring_min_kb == 128


def test_unknown_region_lists_the_known_ones() -> None:
    with pytest.raises(UsageError, match=r"known regions: us-east-1, us-east-2, us-west-2"):
        load_prices().region("eu-west-9")


def minimal_table(**standard: Any) -> dict[str, Any]:
    cls = {"label": "Test Standard", "storage": [{"usd_per_gb_month": "0.10"}], "put_per_1000": "1",
           "get_per_1000": "0.5", "retrieval_time": "instant", **standard}
    return {"price_date": "2030-01-31", "currency": "EUR", "source": "a test table",
            "regions": {"eu-test-1": {"name": "Test Region", "classes": {"STANDARD": cls}}}}


def write(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "prices.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_prices_file_replaces_the_builtin_table(tmp_path: Path) -> None:
    path = write(tmp_path, minimal_table())
    result = CliRunner().invoke(cli, ["--size-gb", "10", "--prices", str(path), "--region", "eu-test-1",
                                      "--objects", "1000", "--output-format", "json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout, parse_float=D)
    assert doc["price_date"] == "2030-01-31" and doc["region"] == "eu-test-1"
    (est,) = doc["estimates"]
    # 10 GB + 1,000 manifests of 2.5 KB (0.00238418579 GB) = 10.0023841858 * 0.10 = 1.00023... -> 1.00
    assert est["monthly_storage_usd"] == D("1.00")
    assert doc["inputs"]["currency"] == "EUR"


def test_prices_file_currency_is_shown_in_text(tmp_path: Path) -> None:
    path = write(tmp_path, minimal_table())
    result = CliRunner().invoke(cli, ["--size-gb", "10", "--prices", str(path), "--region", "eu-test-1"])
    assert result.exit_code == 0, result.output
    assert "prices of 2030-01-31 in EUR" in result.stdout and "1.00 EUR" in result.stdout


def test_region_missing_from_a_prices_file_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, minimal_table())
    result = CliRunner().invoke(cli, ["--size-gb", "10", "--prices", str(path)])
    assert result.exit_code == 2
    assert f"no prices for region 'us-east-1' in {path} (known regions: eu-test-1)" in result.stderr


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda d: d.pop("price_date"), "price_date: Field required"),
    (lambda d: d.update(price_date="last week"), "price_date:"),
    (lambda d: d.update(colour="blue"), "colour: unknown key"),
    (lambda d: d["regions"]["eu-test-1"]["classes"]["STANDARD"].update(put_per_1000="cheap"), "put_per_1000"),
    (lambda d: d["regions"]["eu-test-1"]["classes"]["STANDARD"].update(put_per_1000="-1"), "put_per_1000"),
    (lambda d: d["regions"]["eu-test-1"]["classes"]["STANDARD"].update(
        storage=[{"usd_per_gb_month": "0.02"}, {"up_to_gb": 100, "usd_per_gb_month": "0.01"}]),
     "only the last storage tier may (and must) omit up_to_gb"),
    (lambda d: d["regions"]["eu-test-1"]["classes"]["STANDARD"].update(
        storage=[{"up_to_gb": 500, "usd_per_gb_month": "0.02"}, {"up_to_gb": 100, "usd_per_gb_month": "0.01"},
                 {"usd_per_gb_month": "0.01"}]), "ascending"),
    (lambda d: d["regions"]["eu-test-1"]["classes"].update(
        COLD=d["regions"]["eu-test-1"]["classes"].pop("STANDARD")), "every region needs a STANDARD class"),
])
def test_bad_prices_file_is_refused_naming_the_key(tmp_path: Path, mutate: Any, message: str) -> None:
    data = minimal_table()
    mutate(data)
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as err:
        load_prices(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)
    result = CliRunner().invoke(cli, ["--size-gb", "1", "--prices", str(path)])
    assert result.exit_code == 2 and message in result.stderr


@pytest.mark.parametrize("text", ["regions: [unclosed", "just a string", ""])
def test_unreadable_prices_file_is_a_config_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "prices.yaml"
    path.write_text(text)
    result = CliRunner().invoke(cli, ["--size-gb", "1", "--prices", str(path)])
    assert result.exit_code == 2 and str(path) in result.stderr


def test_missing_prices_file_is_a_config_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["--size-gb", "1", "--prices", str(tmp_path / "absent.yaml")])
    assert result.exit_code == 2 and "price table not found" in result.stderr
