"""Manifests are priced where the archiver keeps them (issue 16): in STANDARD whatever class the
archives are in, so no IA minimum size, Glacier index overhead or early deletion for them, and
STANDARD's PUT/GET prices. Every figure is worked out here from cost/prices.yaml (us-east-1).

The common workload: --size-gb 1000 in the default 4 MB objects = 1000 * 1024 / 4 = 256,000 archive
objects, each with a 2.5 KB manifest: 640,000 KB = 0.6103515625 GB of manifests, which cost
0.6103515625 * 0.023 = 0.0140380859375 a month in STANDARD."""
from __future__ import annotations

from datetime import date
from decimal import ROUND_HALF_UP
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from common.archive import layout
from common.archive.manifest import sha256_hex
from common.archive.storage import S3Storage
from conftest import make_config
from cost.estimate import monthly_cost_by_class
from cost.main import cli
from test_cost_cli import as_json
from test_cost_measure import manifest_for

MANIFEST_NOTE = "manifests (256,000 objects, 625.00 MB) priced as STANDARD, where the archiver keeps them"

#: First-month storage of 1000 GB per class, and (in the comment) what pricing the manifests in the
#: class itself gave before.
STORAGE_1000_GB = {
    # (1000 + 0.6103515625) * 0.023 = 23.0140380859375
    "STANDARD": D("23.01"),
    # 1000 * 0.0125 = 12.50 + 0.0140380859375 = 12.5140380859375. Before: each manifest billed as
    # 128 KB, 256,000 * 128 KB = 31.25 GB, (1000 + 31.25) * 0.0125 = 12.890625 -> 12.89
    "STANDARD_IA": D("12.51"),
    # 1000 * 0.01 = 10.00 + 0.0140380859375 (before: 1031.25 * 0.01 = 10.3125 -> 10.31)
    "ONEZONE_IA": D("10.01"),
    # 1000 * 0.004 = 4.00 + 0.0140380859375 (before: 1031.25 * 0.004 = 4.125 -> 4.13)
    "GLACIER_IR": D("4.01"),
    # Overhead of the 256,000 archives only: 32 KB each = 7.8125 GB at 0.0036, 8 KB each = 1.953125 GB
    # at STANDARD's rate, with the manifests: (1000 + 7.8125) * 0.0036 = 3.628125,
    # (1.953125 + 0.6103515625) * 0.023 = 0.0589599609375; 3.6870849609375. Before (512,000 objects
    # with overhead, manifests at 0.0036): 1016.2353515625 * 0.0036 + 3.90625 * 0.023 = 3.748... -> 3.75
    "GLACIER": D("3.69"),
    # 1007.8125 * 0.00099 = 0.997734375 + 0.0589599609375 = 1.0566943359375 (before: 1.0959... -> 1.10)
    "DEEP_ARCHIVE": D("1.06"),
    # First month in Frequent Access: 1000 * 0.023 = 23.00 + monitoring 256 thousand * 0.0025 = 0.64,
    # + 0.0140380859375 = 23.6540380859375 (the manifests were never monitored: the same as before)
    "INTELLIGENT_TIERING": D("23.65"),
}


def cost(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def test_issue_example_standard_ia_for_1000_gb_is_12_51_a_month() -> None:
    result = cost("--size-gb", "1000", "--storage-class", "STANDARD_IA")
    assert result.exit_code == 0, result.output
    row = next(line for line in result.stdout.splitlines() if line.startswith("STANDARD_IA "))
    assert row.split()[1:4] == ["$12.51", "$0.00", "$12.51"]  # storage, requests, total a month
    assert "$12.89" not in result.stdout
    assert f"  - {MANIFEST_NOTE}" in result.stdout


@pytest.mark.parametrize(("storage_class", "upload"), [
    ("STANDARD", D("2.56")),      # 256 thousand PUTs * 0.005 + 256 thousand manifest PUTs * 0.005
    ("STANDARD_IA", D("3.84")),   # 256 * 0.01 = 2.56 + 256 * 0.005 = 1.28 (before: 512 * 0.01 = 5.12)
    ("GLACIER_IR", D("6.40")),    # 256 * 0.02 = 5.12 + 1.28 (before: 10.24)
    ("GLACIER", D("8.96")),       # 256 * 0.03 = 7.68 + 1.28 (before: 15.36)
    ("DEEP_ARCHIVE", D("14.08")),  # 256 * 0.05 = 12.80 + 1.28 (before: 25.60)
])
def test_each_class_family_prices_the_manifests_as_standard(storage_class: str, upload: D) -> None:
    doc = as_json(cost("--size-gb", "1000", "--storage-class", storage_class, "--output-format", "json"))
    (est,) = doc["estimates"]
    assert est["monthly_storage_usd"] == STORAGE_1000_GB[storage_class]
    notes = est["notes"]
    assert MANIFEST_NOTE in notes
    assert not any("minimum billable size" in n for n in notes)  # the archives are 4 MB, the manifests not here
    assert f"uploading the 512,000 objects stored at the start (256,000 of them manifests, to STANDARD) " \
           f"costs ${upload} in PUT requests once (not in the totals)" in notes
    if storage_class in ("GLACIER", "DEEP_ARCHIVE"):  # 256,000 * 40 KB = 9.765625 GB, the archives only
        assert any("40 KB of index overhead" in n and "+9.77 GB for the 256,000 objects stored now" in n
                   for n in notes)


def test_compare_prices_the_manifests_as_standard_in_every_class() -> None:
    doc = as_json(cost("--size-gb", "1000", "--compare", "--output-format", "json"))
    assert {e["storage_class"]: e["monthly_total_usd"] for e in doc["estimates"]} == STORAGE_1000_GB
    assert all(MANIFEST_NOTE in e["notes"] for e in doc["estimates"])


def test_the_wizard_gets_the_same_figures() -> None:
    assert monthly_cost_by_class(D(1000), "us-east-1") == STORAGE_1000_GB


@pytest.mark.parametrize(("storage_class", "expected"), [
    ("STANDARD", D("2.56")),      # 256 thousand archive + 256 thousand manifest PUTs, both * 0.005
    ("STANDARD_IA", D("3.84")),   # 256 * 0.01 + 256 * 0.005
    ("GLACIER_IR", D("6.40")),    # 256 * 0.02 + 256 * 0.005
    ("GLACIER", D("8.96")),       # 256 * 0.03 + 256 * 0.005
    ("DEEP_ARCHIVE", D("14.08")),  # 256 * 0.05 + 256 * 0.005
])
def test_manifests_written_each_month_pay_standard_puts(storage_class: str, expected: D) -> None:
    doc = as_json(cost("--size-gb", "0", "--growth-gb-per-month", "1000", "--storage-class", storage_class,
                       "--months", "1", "--output-format", "json"))
    assert doc["estimates"][0]["monthly_requests_usd"] == expected


@pytest.mark.parametrize(("storage_class", "expected"), [
    # 100 GB a month read back = 25,600 objects and their 25,600 manifests (GET 0.0004 in STANDARD:
    # 25.6 * 0.0004 = 0.01024 for the manifests in every class)
    ("STANDARD", D("0.02")),      # 25.6 * 0.0004 + 0.01024 = 0.02048
    ("STANDARD_IA", D("1.04")),   # 100 * 0.01 + 25.6 * 0.001 + 0.01024 = 1.03584 (before: 1.0512 -> 1.05)
    ("GLACIER_IR", D("3.27")),    # 100 * 0.03 + 25.6 * 0.01 + 0.01024 = 3.26624 (before: 3.512 -> 3.51)
    # 100 * 0.01 + 25.6 * (0.0004 GET + 0.05 restore) + 0.01024 = 2.30048 (before: 51.2 * 0.0504 + 1 = 3.58)
    ("GLACIER", D("2.30")),
    ("DEEP_ARCHIVE", D("4.58")),  # 100 * 0.02 + 25.6 * (0.0004 + 0.10) + 0.01024 = 4.58048 (before: 7.14)
])
def test_manifests_read_back_pay_standard_gets_and_no_restore(storage_class: str, expected: D) -> None:
    doc = as_json(cost("--size-gb", "1000", "--retrieval-gb-per-month", "100", "--storage-class", storage_class,
                       "--months", "1", "--output-format", "json"))
    assert doc["estimates"][0]["monthly_requests_usd"] == expected


@pytest.mark.parametrize(("storage_class", "kept", "note"), [
    # 10 GB a month = 2,560 archives of 4 MB; their manifests are not in the class and not counted.
    # 10 * 0.0125 * (30 - 10) / 30 = 0.0833... (before: 10.3125 GB with the manifests at 128 KB -> $0.09)
    ("STANDARD_IA", 10, "the 10.00 GB written each month are billed 20 days more, about $0.08 a month"),
    # 10 GB + 2,560 * 32 KB overhead = 10.078125 GB; * 0.0036 * 60 / 30 = 0.0725625 (before: 10.16 GB)
    ("GLACIER", 30, "the 10.08 GB written each month are billed 60 days more, about $0.07 a month"),
])
def test_early_deletion_counts_the_archives_not_their_manifests(storage_class: str, kept: int, note: str) -> None:
    doc = as_json(cost("--size-gb", "100", "--growth-gb-per-month", "10", "--archive-retention-days", str(kept),
                       "--storage-class", storage_class, "--output-format", "json"))
    assert any(note in n for n in doc["estimates"][0]["notes"])


# Measured mode. Real objects are a few hundred KB, so a made-up price table with rates that make
# every byte count: STANDARD $0.001 and STANDARD_IA $0.0005 per byte-month (2^30 bytes = 1 GB), the
# IA class with its 128 KB (131,072 byte) minimum, no request charges.
BYTE_PRICES = {
    "price_date": "2030-01-01", "currency": "USD", "source": "test: per-byte rates",
    "regions": {"us-east-1": {"name": "test", "classes": {
        "STANDARD": {"label": "s", "storage": [{"usd_per_gb_month": "1073741.824"}], "put_per_1000": "0",
                     "get_per_1000": "0", "retrieval_time": "now"},
        "STANDARD_IA": {"label": "ia", "storage": [{"usd_per_gb_month": "536870.912"}], "put_per_1000": "0",
                        "get_per_1000": "0", "min_object_kb": 128, "retrieval_time": "now"}}}}}
ARCHIVE_SIZES = (200_000, 300_000, 150_000)  # all above 131,072 bytes: billed as they are


def to_the_cent(amount: D) -> D:
    """Rounded as a bill is (half up; Decimal.quantize alone rounds half to even)."""
    return amount.quantize(D("0.01"), rounding=ROUND_HALF_UP)


def write_archives(s3_client: Any, bucket: str) -> list[int]:
    """Three archives put the way the archiver puts them (S3Storage with s3.storage_class
    STANDARD_IA: the objects in STANDARD_IA, their manifests in STANDARD); the manifest sizes."""
    store = S3Storage(s3_client, bucket, storage_class="STANDARD_IA")
    sizes = []
    for i, size in enumerate(ARCHIVE_SIZES):
        key = layout.object_key("arch", "production_db", "public", "audit_logs", date(2026, 1, 1 + i),
                                f"part-{i}.parquet")
        data = bytes(size)
        meta = manifest_for(key, data, table="audit_logs", rows=10, source_bytes=size * 4)
        store.put(key, data, sha256=sha256_hex(data))
        store.put(layout.manifest_key(key), meta, sha256=sha256_hex(meta))
        sizes.append(len(meta))
    return sizes


@pytest.fixture()
def measured(s3_client: Any, bucket: str, moto_server: str, tmp_path: Path) -> tuple[list[str], list[int]]:
    cfg = make_config(tmp_path, dsn="host=127.0.0.1 dbname=unused", bucket=bucket, endpoint=moto_server,
                      s3={"prefix": "arch", "storage_class": "STANDARD_IA"})
    prices = tmp_path / "prices.yaml"
    prices.write_text(yaml.safe_dump(BYTE_PRICES))
    args = ["--config", str(cfg), "--prices", str(prices), "--growth-gb-per-month", "0", "--months", "1",
            "--output-format", "json"]
    return args, write_archives(s3_client, bucket)


def test_measured_manifests_listed_as_standard_are_priced_as_standard(
        measured: tuple[list[str], list[int]]) -> None:
    args, manifest_sizes = measured
    doc = as_json(cost(*args))
    m = doc["inputs"]["measurement"]
    assert m["storage_classes"] == {"STANDARD_IA": 3} and m["manifest_storage_classes"] == {"STANDARD": 3}
    (est,) = doc["estimates"]
    assert est["storage_class"] == "STANDARD_IA"
    # Archives: 650,000 bytes * 0.0005 = 325.00; manifests at their own size * 0.001 (a few hundred
    # bytes each: under a dollar). Priced in STANDARD_IA they would be 3 * 131,072 * 0.0005 = 196.61.
    expected = D(650_000) * D("0.0005") + D(sum(manifest_sizes)) * D("0.001")
    assert est["monthly_storage_usd"] == to_the_cent(expected)
    note = " priced as STANDARD, where the archiver keeps them"
    assert any(n.startswith("manifests (3 objects, ") and n.endswith(note) for n in est["notes"])


def test_measured_manifest_listed_in_standard_ia_is_priced_there(
        measured: tuple[list[str], list[int]], s3_client: Any, bucket: str) -> None:
    args, manifest_sizes = measured
    # One manifest moved to STANDARD_IA (a lifecycle rule, an older archiver): priced as it is listed.
    listed = s3_client.list_objects_v2(Bucket=bucket)["Contents"]
    moved = next(o["Key"] for o in listed if layout.is_manifest(o["Key"]))
    s3_client.copy_object(Bucket=bucket, Key=moved, CopySource={"Bucket": bucket, "Key": moved},
                          StorageClass="STANDARD_IA")
    moved_size = s3_client.head_object(Bucket=bucket, Key=moved)["ContentLength"]
    doc = as_json(cost(*args))
    assert doc["inputs"]["measurement"]["manifest_storage_classes"] == {"STANDARD": 2, "STANDARD_IA": 1}
    (est,) = doc["estimates"]
    # 325.00 for the archives + the moved manifest at the 131,072-byte minimum * 0.0005 = 65.536
    # + the other two at their size * 0.001
    standard_bytes = sum(manifest_sizes) - moved_size
    expected = D("325") + D("65.536") + D(standard_bytes) * D("0.001")
    assert est["monthly_storage_usd"] == to_the_cent(expected)
    assert any(n.startswith("manifests (3 objects) priced in the class each is listed in: STANDARD 2 (")
               and "STANDARD_IA 1 (" in n for n in est["notes"])
