"""`cost --config`: measure the real bucket/prefix and fallback directory (a moto S3 server over
HTTP and a real directory), read the manifests for rows and the compression ratio, and price the
exact objects found. Also against archives the archiver itself wrote."""
from __future__ import annotations

from datetime import date
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from archive_checks import archived
from common.archive import layout
from common.config import load_config
from common.archive.manifest import Manifest, sha256_hex
from common.archive.storage import LocalStorage, S3Storage
from conftest import free_port, make_config, seed_audit
from cost.main import cli
from test_cost_cli import as_json

GB = 1024**3
PREFIX = "arch"


def manifest_for(key: str, data: bytes, *, table: str, rows: int, source_bytes: int) -> bytes:
    return Manifest(key=key, sha256=sha256_hex(data), size=len(data), rows=rows, database="production_db",
                    schema="public", table=table, primary_key="id", timestamp_column="created_at", min_pk=1,
                    max_pk=rows, min_ts="2026-01-01T00:00:00+00:00", max_ts="2026-01-01T23:59:59+00:00",
                    schema_fingerprint="f" * 16, format="parquet", format_version=1, archiver_version="test",
                    created_at="2026-03-01T00:00:00+00:00", source_bytes=source_bytes).to_bytes()


class Archive:
    """Known archive objects written straight to S3 or a directory, remembering every size."""

    def __init__(self, s3_client: Any, bucket: str, fallback: Path) -> None:
        self.s3, self.bucket, self.fallback = s3_client, bucket, LocalStorage(fallback, location="fallback")
        self.sizes: list[int] = []

    def add(self, table: str, day: date, size: int, *, rows: int, source_bytes: int,
            storage_class: str = "STANDARD", local: bool = False) -> None:
        key = layout.object_key(PREFIX, "production_db", "public", table, day, f"part-{day:%Y%m%d}.parquet")
        data = bytes(size)
        meta = manifest_for(key, data, table=table, rows=rows, source_bytes=source_bytes)
        for k, body in ((key, data), (layout.manifest_key(key), meta)):
            if local:
                self.fallback.put(k, body, sha256=sha256_hex(body))
            else:
                self.s3.put_object(Bucket=self.bucket, Key=k, Body=body, StorageClass=storage_class)
            self.sizes.append(len(body))

    def stray(self, key: str, size: int, *, counted: bool = True) -> None:
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=bytes(size))
        if counted:
            self.sizes.append(size)


@pytest.fixture()
def known(s3_client: Any, bucket: str, moto_server: str, tmp_path: Path) -> tuple[Path, Archive]:
    cfg = make_config(tmp_path, dsn="host=127.0.0.1 dbname=unused", bucket=bucket, endpoint=moto_server,
                      s3={"prefix": PREFIX, "storage_class": "STANDARD"})
    archive = Archive(s3_client, bucket, tmp_path / "fallback")
    archive.add("audit_logs", date(2026, 1, 1), 200_000, rows=100, source_bytes=1_000_000)
    archive.add("audit_logs", date(2026, 1, 15), 300_000, rows=150, source_bytes=1_500_000,
                storage_class="STANDARD_IA")
    archive.add("audit_logs", date(2026, 2, 14), 50_000, rows=25, source_bytes=500_000)
    archive.add("audit_logs", date(2026, 2, 10), 150_000, rows=75, source_bytes=450_000, local=True)
    # In GLACIER the manifest cannot be read without a restore: counted, not fatal.
    archive.add("events", date(2026, 2, 1), 100_000, rows=10, source_bytes=900_000, storage_class="GLACIER")
    archive.stray(f"{PREFIX}/README.txt", 1_000)
    archive.stray("elsewhere/not-ours.bin", 5_000, counted=False)  # outside the prefix
    return cfg, archive


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def test_config_measures_objects_bytes_rows_and_classes_per_table(known: tuple[Path, Archive]) -> None:
    cfg, _ = known
    m = as_json(run("--config", str(cfg), "--output-format", "json"))["inputs"]["measurement"]
    tables = {t["table"]: t for t in m["tables"]}
    audit = tables["audit_logs"]
    assert (audit["objects"], audit["bytes"], audit["manifests"], audit["rows"]) == (4, 700_000, 4, 350)
    assert audit["storage_classes"] == {"STANDARD": 2, "STANDARD_IA": 1, "LOCAL": 1}
    assert (audit["first_day"], audit["last_day"]) == ("2026-01-01", "2026-02-14")
    events = tables["events"]
    assert (events["objects"], events["bytes"], events["rows"]) == (1, 100_000, 0)
    assert events["storage_classes"] == {"GLACIER": 1} and events["compression_ratio"] is None
    assert (m["objects"], m["bytes"], m["manifests"]) == (5, 800_000, 5)
    assert (m["stray_objects"], m["stray_bytes"], m["unreadable_manifests"]) == (1, 1_000, 1)
    assert m["span_days"] == 45  # 2026-01-01 .. 2026-02-14


def test_compression_ratio_is_manifest_row_bytes_over_stored_bytes(known: tuple[Path, Archive]) -> None:
    cfg, _ = known
    m = as_json(run("--config", str(cfg), "--output-format", "json"))["inputs"]["measurement"]
    audit = next(t for t in m["tables"] if t["table"] == "audit_logs")
    # (1,000,000 + 1,500,000 + 500,000 + 450,000) / (200,000 + 300,000 + 50,000 + 150,000) = 4.9285...
    assert audit["compression_ratio"] == D("4.93")
    assert m["compression_ratio"] == D("4.93")  # the GLACIER table's manifest was unreadable


def test_measured_figures_are_used_and_said_to_be_measured(known: tuple[Path, Archive]) -> None:
    cfg, archive = known
    inputs = as_json(run("--config", str(cfg), "--output-format", "json"))["inputs"]
    assert inputs["size_gb"] == D(800_000) / GB
    assert inputs["objects"] == 5
    assert inputs["stored_objects"] == len(archive.sizes) == 11  # 5 archives, 5 manifests, 1 stray
    # 800,000 bytes over 45 days of data: 800,000 / 2^30 * 30 / 45 GB a month
    assert inputs["growth_gb_per_month"] == (D(800_000) / GB * 30 / 45).quantize(inputs["growth_gb_per_month"])
    manifest_bytes = sum(archive.sizes) - 800_000 - 1_000
    assert inputs["manifest_kb"] == (D(manifest_bytes) / 5 / 1024).quantize(inputs["manifest_kb"])
    sources = inputs["sources"]
    assert {k: sources[k] for k in ("size_gb", "objects", "avg_object_mb", "manifest_kb", "growth_gb_per_month")} \
        == dict.fromkeys(("size_gb", "objects", "avg_object_mb", "manifest_kb", "growth_gb_per_month"), "measured")
    assert sources["retrieval_gb_per_month"] == "default"


def test_exact_measured_sizes_are_priced_with_the_minimum_size(known: tuple[Path, Archive], tmp_path: Path) -> None:
    cfg, archive = known
    prices = tmp_path / "prices.yaml"
    prices.write_text(yaml.safe_dump({
        "price_date": "2030-01-01", "currency": "USD", "source": "test: 1,000 per GB-month, 128 KB minimum",
        "regions": {"us-east-1": {"name": "test", "classes": {"STANDARD": {
            "label": "t", "storage": [{"usd_per_gb_month": "1000"}], "put_per_1000": "0", "get_per_1000": "0",
            "min_object_kb": 128, "retrieval_time": "now"}}}}}))
    doc = as_json(run("--config", str(cfg), "--prices", str(prices), "--growth-gb-per-month", "0",
                      "--months", "1", "--output-format", "json"))
    # Over 128 KB (131,072 bytes), billed as they are: 200,000 + 300,000 + 150,000 = 650,000.
    # Under it, billed as 131,072 each: the 50,000 and 100,000 objects, 5 manifests, the stray = 8.
    assert sorted(s for s in archive.sizes if s >= 131_072) == [150_000, 200_000, 300_000]
    # (650,000 + 8 * 131,072) / 2^30 * 1,000 = 1,698,576 / 1,073,741,824 * 1,000 = 1.5819... -> 1.58
    assert doc["estimates"][0]["monthly_storage_usd"] == D("1.58")


def test_given_size_overrides_the_measured_one_but_object_size_stays_measured(known: tuple[Path, Archive]) -> None:
    cfg, _ = known
    inputs = as_json(run("--config", str(cfg), "--size-gb", "500", "--output-format", "json"))["inputs"]
    assert inputs["size_gb"] == 500 and inputs["sources"]["size_gb"] == "given"
    assert inputs["sources"]["avg_object_mb"] == "measured" and inputs["sources"]["objects"] == "derived"
    # 160,000 bytes per object on average: 500 * 2^30 / 160,000 = 3,355,443.2 -> 3,355,444 objects
    assert inputs["objects"] == 3_355_444


def test_text_report_says_what_was_measured_and_where(known: tuple[Path, Archive], bucket: str) -> None:
    cfg, _ = known
    result = run("--config", str(cfg), "--compare")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert f"Measured in s3://{bucket}/{PREFIX}/ and fallback directory" in out
    line = next(l for l in out.splitlines() if "public.audit_logs" in l)
    assert "350" in line and "4.9x" in line and "STANDARD 2" in line
    assert "unreadable manifests 1" in out and "[measured]" in out
    # 5 archives and the stray move; their 5 manifests stay in STANDARD, where the archiver keeps them
    assert "moving the 6 objects now in STANDARD here by a lifecycle rule" in out


def test_archives_written_by_the_archiver_are_measured(pg: Any, pg_dsn: str, bucket: str,
                                                       moto_server: str, s3_client: Any, tmp_path: Path) -> None:
    from archiver.runner import run_archive

    seed_audit(pg, rows=5000, days=100)  # 50 rows a day; the 10 days past the 90-day retention get archived
    cfg_path = make_config(tmp_path, dsn=pg_dsn, bucket=bucket, endpoint=moto_server)
    results, code = run_archive(load_config(cfg_path), s3_client=s3_client)
    assert int(code) == 0 and results[0].rows > 0
    listed = [o for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
              for o in page.get("Contents", [])]
    manifests = list(archived(S3Storage(s3_client, bucket)).values())  # in the table's manifest sets
    m = as_json(run("--config", str(cfg_path), "--output-format", "json"))["inputs"]["measurement"]
    (table,) = m["tables"]
    assert table["rows"] == results[0].rows == sum(x.rows for x in manifests)
    assert table["objects"] == len(manifests) == results[0].objects
    assert table["manifests"] == sum(layout.is_manifest_set(o["Key"]) for o in listed) < len(manifests)
    assert table["bytes"] == sum(o["Size"] for o in listed if not layout.is_manifest(o["Key"]) and not layout.is_control_key(o["Key"]))
    ratio = D(sum(x.source_bytes for x in manifests)) / D(sum(x.size for x in manifests))
    assert table["compression_ratio"] == ratio.quantize(D("0.01"))


def test_local_storage_is_measured_from_local_dir(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, dsn="host=127.0.0.1 dbname=unused")  # storage: local
    store = LocalStorage(tmp_path / "archive")
    key = layout.object_key("", "production_db", "public", "audit_logs", date(2026, 5, 1), "part-1.parquet")
    data = bytes(4096)
    store.put(key, data, sha256=sha256_hex(data))
    meta = manifest_for(key, data, table="audit_logs", rows=7, source_bytes=40_960)
    store.put(layout.manifest_key(key), meta, sha256=sha256_hex(meta))
    doc = as_json(run("--config", str(cfg), "--output-format", "json"))
    m = doc["inputs"]["measurement"]
    assert m["locations"][0] == f"local_dir {tmp_path / 'archive'}"
    assert (m["objects"], m["bytes"], m["rows"], m["compression_ratio"]) == (1, 4096, 7, D("10.00"))
    assert doc["inputs"]["sources"]["growth_gb_per_month"] == "default"  # one day of data says nothing


def test_empty_bucket_is_measured_as_nothing(bucket: str, moto_server: str, tmp_path: Path) -> None:
    cfg = make_config(tmp_path, dsn="host=127.0.0.1 dbname=unused", bucket=bucket, endpoint=moto_server)
    doc = as_json(run("--config", str(cfg), "--output-format", "json"))
    assert doc["inputs"]["size_gb"] == 0 and doc["inputs"]["sources"]["size_gb"] == "measured"
    assert doc["estimates"][0]["monthly_total_usd"] == D("0.00")


def test_missing_bucket_is_a_config_error(moto_server: str, tmp_path: Path) -> None:
    cfg = make_config(tmp_path, dsn="host=127.0.0.1 dbname=unused", bucket="no-such-bucket-here",
                      endpoint=moto_server)
    result = run("--config", str(cfg))
    assert result.exit_code == 2
    assert "s3.bucket 'no-such-bucket-here' does not exist" in result.stderr


def test_unreachable_s3_is_exit_3(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, dsn="host=127.0.0.1 dbname=unused", bucket="b",
                      endpoint=f"http://127.0.0.1:{free_port()}")
    result = run("--config", str(cfg))
    assert result.exit_code == 3
    assert result.stderr.startswith("cost: error: S3 unreachable")
