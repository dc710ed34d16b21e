"""A newcomer's first hour (issue 30): `make demo` on a fresh clone leaves an archive in
demo-data/archive/ that outlives it, a summary that names each kind of object, and next steps that
each run exactly as printed, afterwards, from a shell; so do the README's commands to explore it.
One small demo (ARCHIVER_DEMO_ROWS) is run once for the module, in a copy of exactly the files a
clone has (tracked and new, never ignored ones such as .venv or an earlier demo-data/)."""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

import boto3
import duckdb
import psycopg
import pytest
from botocore.config import Config as BotoConfig
from botocore.exceptions import EndpointConnectionError
from psycopg import sql
from psycopg.conninfo import make_conninfo

from common.archive import digest, layout, manifest_sets, withdrawals
from common.config import parse_config
from common.archive.manifest import sha256_hex
from common.archive.storage import LocalStorage
from conftest import ADMIN_DSN
from demo_support import REPO, demo_steps, demo_summary
from demo_support import demo as demo_script
from docs_support import README, fenced_blocks, section
from test_cost_measure import manifest_for

ROWS = 6000  # 15 a day over 400 days: every day and month the demo picks holds rows
PYTHON = ".venv/bin/python"


@dataclass(frozen=True)
class Demo:
    clone: Path
    dsn: str
    output: str
    printed: list[str]  # the commands of its closing block, in order

    def run(self, command: str) -> subprocess.CompletedProcess[str]:
        """A printed command, as someone pastes it into a shell at the repository root."""
        return subprocess.run(["bash", "-c", command], cwd=self.clone, capture_output=True, text=True, timeout=120)

    def archive(self) -> str:
        return str(self.clone / "demo-data" / "archive" / "demo_db" / "public.audit_logs")


def clone_files(target: Path) -> None:
    """What `git clone` would give (tracked and new files, as they are now), and this checkout's
    virtualenv as the clone's .venv: `make demo` in a clone would build the same one."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():  # a tracked file deleted in the work tree is not in the clone
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    (target / ".venv").symlink_to(Path(sys.prefix))


def closing_block(output: str) -> list[str]:
    block = output.split("=== explore the archive", 1)[1].split("\n", 1)[1]
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    clone = tmp_path_factory.mktemp("clone")
    clone_files(clone)
    name = f"archiver_demo_test_{uuid.uuid4().hex[:10]}"
    env = {"ARCHIVER_DEMO_DSN": ADMIN_DSN, "ARCHIVER_DEMO_ROWS": str(ROWS), "ARCHIVER_DEMO_DATABASE": name}
    try:
        proc = subprocess.run([PYTHON, "scripts/demo.py"], cwd=clone, capture_output=True, text=True, timeout=240,
                              env={**os.environ, **env})
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        yield Demo(clone, make_conninfo(ADMIN_DSN, dbname=name), proc.stdout, closing_block(proc.stdout))
    finally:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def summary_value(output: str, label: str) -> str:
    m = re.search(rf"^{re.escape(label)}:\s+(.+)$", output, re.M)
    assert m, f"no {label!r} line in the summary"
    return m.group(1)


def number(text: str) -> int:
    return int(text.replace(",", ""))


def archived_rows(demo: Demo, where: str, days: str) -> int:
    """Rows of the demo's Parquet files (those under `days`) matching `where`, read without the tools."""
    files = f"{demo.archive()}/{days}/*.parquet"
    with duckdb.connect() as con:
        result = con.execute(f"SELECT count(*) FROM read_parquet(?) WHERE {where}", [files]).fetchone()
    assert result is not None
    return int(result[0])


def test_the_summary_names_each_kind_of_object_and_counts_it_right(demo: Demo) -> None:
    archived = number(summary_value(demo.output, "rows archived and deleted").split()[0])
    assert number(summary_value(demo.output, "rows seeded")) == ROWS
    objects = re.fullmatch(r"([\d,]+) holding ([\d,]+) rows, [\d.]+ [KM]B", summary_value(demo.output, "  data objects (Parquet)"))
    assert objects, demo.output
    parquet_files = len(list(Path(demo.archive()).rglob("*.parquet")))
    assert (number(objects.group(1)), number(objects.group(2))) == (parquet_files, archived)
    assert archived == archived_rows(demo, "true", "year=*/month=*/day=*")
    assert number(summary_value(demo.output, "  manifests").split(" in ")[0]) == parquet_files  # one each, in sets
    assert summary_value(demo.output, "  run digests") == "1"  # one run; nothing else, no strays
    assert summary_value(demo.output, "archive") == "demo-data/archive/"
    left = summary_value(demo.output, "rows left in the table")
    assert left.endswith("when the run began: 0)")
    with psycopg.connect(demo.dsn) as conn:
        assert conn.execute("SELECT count(*) FROM audit_logs").fetchone() == (ROWS - archived,) == (number(left.split()[0]),)


def test_the_config_left_behind_points_at_the_archive_not_a_server(demo: Demo) -> None:
    text = (demo.clone / "demo-data" / "config.yaml").read_text()
    assert "storage: local" in text and "endpoint_url" not in text


def printed(demo: Demo, tool: str) -> list[str]:
    """The printed commands of `tool`, in the order printed."""
    return [c for c in demo.printed if shlex.split(c)[2] == f"{tool}.main"]


def option(command: str, flag: str) -> str:
    words = shlex.split(command)
    return words[words.index(flag) + 1]


def test_the_demo_prints_six_commands_to_copy(demo: Demo) -> None:
    assert len(demo.printed) == 6 and all(c.startswith(f"{PYTHON} -m ") and "--config demo-data/config.yaml" in c
                                          for c in demo.printed)


def test_printed_validate_finds_the_archive_whole(demo: Demo) -> None:
    [command] = printed(demo, "validate")
    proc = demo.run(command)
    assert proc.returncode == 0 and "OK, no problems found" in proc.stdout, proc.stderr


@pytest.mark.parametrize("output_format", ["table", "csv"])
def test_printed_query_shows_the_users_month(demo: Demo, output_format: str) -> None:
    table, csv = printed(demo, "query")
    assert csv == f"{table} --output-format csv"
    command = csv if output_format == "csv" else table
    user = option(command, "--where").removeprefix("user_id = ")
    start = date.fromisoformat(option(command, "--start-date"))
    proc = demo.run(command)
    assert proc.returncode == 0, proc.stderr
    expected = archived_rows(demo, f"user_id = {user}", f"year={start.year:04d}/month={start.month:02d}/day=*")
    assert expected >= 1 and proc.stdout.count(f"user{user}@example.com") == expected, proc.stdout
    if output_format == "csv":
        assert proc.stdout.splitlines()[0] == demo_steps.QUERY_COLUMNS


def test_printed_restore_fills_the_new_table_with_that_day_once(demo: Demo) -> None:
    [command] = printed(demo, "restore")
    day = date.fromisoformat(option(command, "--start-date"))
    proc = demo.run(command)  # the demo ran it already: a rerun skips every row
    assert proc.returncode == 0 and "restore completed" in proc.stdout, proc.stderr
    with psycopg.connect(demo.dsn) as conn:
        restored = conn.execute(sql.SQL("SELECT count(*), count(DISTINCT id), min(created_at)::date, max(created_at)::date FROM {}")
                                .format(sql.Identifier(option(command, "--target-table")))).fetchone()
    expected = archived_rows(demo, "true", f"year={day.year:04d}/month={day.month:02d}/day={day.day:02d}")
    assert restored == (expected, expected, day, day) and f"0 inserted, {expected} skipped" in proc.stdout


def test_printed_erase_dry_run_finds_the_users_month_and_changes_nothing(demo: Demo) -> None:
    [command] = printed(demo, "erase")
    assert "--dry-run" in shlex.split(command)
    where = option(command, "--where")
    before = sorted((p, p.stat().st_mtime_ns) for p in Path(demo.archive()).rglob("*"))
    proc = demo.run(command)
    assert proc.returncode == 0 and "nothing was changed" in proc.stdout, proc.stderr
    expected = archived_rows(demo, where, "year=*/month=*/day=*")
    assert expected >= 1 and f" {expected} matching rows in " in proc.stdout and proc.stdout.count("would erase") >= 1
    assert sorted((p, p.stat().st_mtime_ns) for p in Path(demo.archive()).rglob("*")) == before


def test_printed_cost_measures_the_local_archive(demo: Demo) -> None:
    [command] = printed(demo, "cost")
    proc = demo.run(command)
    assert proc.returncode == 0 and "Measured in local_dir" in proc.stdout and "[measured]" in proc.stdout, proc.stderr


def readme_commands() -> list[str]:
    """The README's commands to explore the demo's archive, but those the demo prints itself."""
    _, block = fenced_blocks(section(README.read_text(), "What you just got"), "bash")[0]
    examples = demo_steps.Examples(first_day=date(2000, 1, 1), last_day=date(2000, 1, 31), user_id=1, day=date(2000, 1, 1))
    own = {s.command for s in demo_steps.next_steps("demo-data/config.yaml", examples, python=PYTHON)}
    commands = [line for line in block.splitlines() if line.strip()]
    return [c for c in commands if c.split("  #")[0].strip() not in own]


@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_runs_after_the_demo(demo: Demo, command: str) -> None:
    proc = demo.run(command)
    assert proc.returncode == 0 and proc.stdout.strip(), proc.stderr


def test_the_s3_flag_archives_to_a_live_endpoint_that_stops_with_the_demo(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        monkeypatch.setenv(name, "testing")  # the demo sets its own; these come back afterwards
    assert demo_script.parse_args(["--s3"]).s3 and not demo_script.parse_args([]).s3
    with demo_script.storage(s3=True) as keys:
        cfg = parse_config(demo_script.config_document("host=127.0.0.1 dbname=x", keys))
        client = boto3.client("s3", endpoint_url=cfg.s3.endpoint_url, region_name="us-east-1")
        assert (cfg.storage, client.list_objects_v2(Bucket=cfg.s3.bucket)["KeyCount"]) == ("s3", 0)
    with pytest.raises(EndpointConnectionError):
        boto3.client("s3", endpoint_url=cfg.s3.endpoint_url, region_name="us-east-1",
                     config=BotoConfig(retries={"max_attempts": 1})).list_objects_v2(Bucket=cfg.s3.bucket)


def test_count_archive_tells_each_kind_by_the_layouts_predicates(tmp_path: Path) -> None:
    """Manifests in a set, and in both legacy sidecars; digests and withdrawal records in the
    control folder and in the legacy layout; a stray."""
    store = LocalStorage(tmp_path)
    day = date(2026, 1, 15)
    keys = [layout.object_key("", "db", "public", "t", day, f"part-{n}.parquet") for n in (1, 2, 3, 4)]
    docs = []
    for key, rows in zip(keys, (3, 4, 5, 6)):
        data = bytes(10 * rows)
        store.put(key, data, sha256=sha256_hex(data))
        docs.append(manifest_for(key, data, table="t", rows=rows, source_bytes=0))
    manifest_sets.write(store, prefix="", manifests=docs[:2])
    for key, doc, manifest_at in [(keys[2], docs[2], layout.manifest_key), (keys[3], docs[3], layout.legacy_manifest_key)]:
        store.put(manifest_at(key), doc, sha256=sha256_hex(doc))
    control = layout.control_prefix("", "db", "public", "t")
    others = [digest.digest_key(control, datetime(2026, 2, 1), b"{}"), f"db/public.t/{layout.LEGACY_DIGESTS_DIR}x.json",
              withdrawals.record_key("", keys[0], "ab" * 32), "db/notes.txt"]
    for key in others:
        store.put(key, b"{}", sha256=sha256_hex(b"{}"))
    assert demo_summary.count_archive(store, "") == demo_summary.ArchiveCounts(
        data_objects=4, rows=18, bytes=180, manifests=4, manifest_sets=1, digests=2, withdrawal_records=1, other=1)
