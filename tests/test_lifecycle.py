"""Archive lifecycle (issue 29) on a bucket without Object Lock: `expire` deletes the objects past the
table's archive retention by the database's clock and records it in the digest chain (validate
stays clean and tells an expired object from a lost one); legal holds by days, rows or the whole
table keep objects from expiry and erasure until released; a kill -9 during expiry is finished by
the next run. Against moto over HTTP, with the real PostgreSQL."""
from __future__ import annotations

import io
import json
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from archiver.runner import run_archive
from common.archive import layout, manifest_sets
from common.archive.storage import S3Storage
from common.cli import Environment
from common.pg.db import table_oid, try_table_lock
from common.exit_codes import ExitCode
from common.lifecycle.table_session import TableBusy
from cost.app import CostOptions, run as cost
from erase.app import EraseOptions, run as erase
from expire.app import ExpireOptions, run as expire
from hold.main import cli as hold_cli
from lifecycle_support import (RETENTION, Archive, assert_valid, chain_kinds, cli, make_archive, run_expire, run_hold,
                               write_config)
from validate.checks import validate
from common.config import load_config


@pytest.fixture()
def arch(tmp_path: Path, pg_dsn: str, bucket: str, moto_server: str, s3_client: Any) -> Archive:
    return make_archive(tmp_path, pg_dsn, bucket, moto_server, s3_client)


def test_expire_deletes_the_objects_past_retention_and_the_chain_records_it(arch: Archive, s3_client: Any) -> None:
    before, due = arch.keys(), arch.due()
    assert 0 < len(due) < len(before)
    code, dry = run_expire(arch, s3_client, dry_run=True)
    assert code == 0 and {e["key"] for e in dry["tables"][0]["expired"]} == due and arch.keys() == before
    text = io.StringIO()
    expire(ExpireOptions(config_path=arch.config, dry_run=True), env=Environment(stdout=text), s3_client=s3_client)
    lines = text.getvalue().splitlines()
    assert sum(line.startswith("would expire ") for line in lines) == len(due)
    assert lines[-1].startswith("summary: production_db/public.audit_logs:") and lines[-1].endswith("dry run: nothing was changed")
    code, doc = run_expire(arch, s3_client)
    table = doc["tables"][0]
    assert code == 0 and table["deleted"] == len(due) and table["rows_expired"] == sum(before[k].rows for k in due)
    assert set(arch.keys()) == set(before) - due
    assert not {o.key for o in arch.store.list("")} & due  # the bytes are gone, not only uncounted
    assert chain_kinds(arch)[-1] == "expire"
    report = validate(load_config(arch.config), s3_client=s3_client)
    assert report.ok, report.text_lines()
    assert any(n.startswith("expiry at") and f"{len(due)} objects" in n for n in report.notes), report.notes
    code, again = run_expire(arch, s3_client)  # idempotent: nothing more is due, no digest written
    assert code == 0 and again["tables"][0]["expired"] == [] and again["tables"][0]["digest"] is None
    assert chain_kinds(arch).count("expire") == 1


def test_validate_tells_an_expired_object_from_a_lost_one(arch: Archive, s3_client: Any) -> None:
    run_expire(arch, s3_client)
    lost = sorted(arch.keys())[-1]
    arch.store.delete(lost)
    report = validate(load_config(arch.config), s3_client=s3_client)
    assert not report.ok and {p.key for p in report.problems} == {lost}, report.text_lines()


@pytest.mark.parametrize("scope", ["dates", "where", "table"])
def test_a_hold_keeps_due_objects_until_it_is_released(arch: Archive, s3_client: Any, scope: str) -> None:
    manifests = arch.keys()
    due = sorted(arch.due(), key=lambda k: manifests[k].max_ts)
    oldest = manifests[due[0]]
    args: dict[str, Any] = {"dates": {"start_date": oldest.min_ts[:10], "end_date": oldest.min_ts[:10]},
                            "where": {"where": f"id = {oldest.min_pk}"}, "table": {}}[scope]
    placed = run_hold(arch, s3_client, **args)
    hold_id = placed["holds"][0]["hold_id"]
    assert placed["objects"] == ([due[0]] if scope != "table" else sorted(manifests))
    code, doc = run_expire(arch, s3_client)
    kept = {k["key"]: k for k in doc["tables"][0]["kept"]}
    held = {due[0]} if scope != "table" else set(due)
    assert code == 0 and set(kept) == held and all(k["hold_id"] == hold_id for k in kept.values())
    assert held <= set(arch.keys()) and not (set(due) - held) & set(arch.keys())
    assert_valid(arch, s3_client)
    run_hold(arch, s3_client, release=hold_id, reason="case closed")
    assert_valid(arch, s3_client)
    run_expire(arch, s3_client)
    assert not set(due) & set(arch.keys())
    assert_valid(arch, s3_client)
    assert chain_kinds(arch).count("hold") == 2


def test_erase_refuses_rows_in_held_objects_naming_the_hold(arch: Archive, s3_client: Any) -> None:
    keys = arch.keys()
    target = max(keys.values(), key=lambda m: m.max_ts)  # not even due: a hold is not only about expiry
    placed = run_hold(arch, s3_client, where=f"id = {target.max_pk}", reason="subpoena 42")
    before = set(arch.store.list(""))  # keys, sizes and times: nothing written, nothing removed
    out = io.StringIO()
    code = erase(EraseOptions(config_path=arch.config, database="production_db", table="audit_logs",
                              where=f"id = {target.max_pk}"), env=Environment(stdout=out), s3_client=s3_client)
    assert code == ExitCode.FAILURE
    assert placed["holds"][0]["hold_id"] in out.getvalue() and "subpoena 42" in out.getvalue()
    assert set(arch.store.list("")) == before


def test_hold_cli_places_lists_and_releases(arch: Archive) -> None:
    base = ["--config", str(arch.config), "--database", "production_db", "--table", "audit_logs"]
    assert CliRunner().invoke(hold_cli, base).exit_code == ExitCode.USAGE  # --reason is required
    placed = cli("hold.main", *base, "--start-date", "2000-01-01", "--reason", "audit", "--by", "counsel",
                 "--output-format", "json")
    assert placed.returncode == 0, placed.stderr
    hold_id = json.loads(placed.stdout)["holds"][0]["hold_id"]
    runner = CliRunner()  # the rest in-process: one interpreter start shows the entry point works
    listed = runner.invoke(hold_cli, [*base, "--list"])
    assert f"{hold_id} ACTIVE" in listed.stdout and "by counsel: audit" in listed.stdout
    released = runner.invoke(hold_cli, [*base, "--release", hold_id, "--reason", "done"])
    assert released.exit_code == 0, released.output
    doc = json.loads(runner.invoke(hold_cli, [*base, "--list", "--output-format", "json"]).stdout)
    assert doc["holds"][0]["active"] is False and doc["holds"][0]["released"]["reason"] == "done"


@pytest.mark.parametrize("point", ["after_expiry_record:1", "after_expiry_digest:1", "after_expiry_delete:2"])
def test_kill_during_expiry_then_a_rerun_finishes_it(arch: Archive, s3_client: Any, point: str) -> None:
    before, due = arch.keys(), arch.due()
    killed = cli("expire.main", "--config", str(arch.config), env={"ARCHIVER_TEST_KILL_AT": point})
    assert killed.returncode == -9, killed.stderr
    assert set(arch.keys()) == set(before) - due  # from the record on, no reader counts them
    code, _doc = run_expire(arch, s3_client)
    assert code == 0
    assert not {o.key for o in arch.store.list("")} & due
    assert chain_kinds(arch).count("expire") == 1
    assert_valid(arch, s3_client)


def sets_of_only(store: S3Storage, keys: set[str]) -> list[str]:
    """The manifest sets every manifest of which is one of `keys`."""
    sets = [o.key for o in store.list("") if layout.is_manifest_set(o.key)]
    return [k for k in sets if not {r.key for r in manifest_sets.read(store.get(k), key=k)} - keys]


def test_a_kill_before_the_sets_cleanup_leaves_no_set_of_expired_objects(tmp_path: Path, pg_dsn: str, bucket: str,
                                                                         moto_server: str, s3_client: Any) -> None:
    arch = make_archive(tmp_path, pg_dsn, bucket, moto_server, s3_client, retention_days=106)  # a set of its own
    first = set(arch.keys())
    _results, code = run_archive(load_config(write_config(tmp_path, pg_dsn, bucket, moto_server)), s3_client=s3_client)
    due = arch.due()
    assert code == 0 and first < due and sets_of_only(arch.store, first)
    killed = cli("expire.main", "--config", str(arch.config), env={"ARCHIVER_TEST_KILL_AT": "before_expiry_sets:1"})
    assert killed.returncode == -9, killed.stderr
    code, _doc = run_expire(arch, s3_client)
    assert code == 0 and not sets_of_only(arch.store, due)
    assert_valid(arch, s3_client)


def test_cost_shows_what_expiry_saves_with_the_tables_setting(arch: Archive, s3_client: Any) -> None:
    out = io.StringIO()
    assert cost(CostOptions(config_path=arch.config, output_format="json"), s3_client=s3_client,
                env=Environment(stdout=out)) == 0
    [found] = json.loads(out.getvalue())["expiry"]
    last = datetime.now(timezone.utc).date() - timedelta(days=RETENTION + 1)  # the newest day wholly past it
    past = {k: m for k, m in arch.keys().items() if _day(k) <= last}
    assert past and set(past) <= arch.due()
    assert (found["table"], found["archive_retention_days"]) == ("public.audit_logs", RETENTION)
    assert (found["objects_past_retention"], found["bytes_past_retention"]) == (len(past), sum(m.size for m in past.values()))
    text = io.StringIO()
    cost(CostOptions(config_path=arch.config), s3_client=s3_client, env=Environment(stdout=text))
    assert f"public.audit_logs: {RETENTION} days:" in text.getvalue() and f"{len(past)} objects past it now" in text.getvalue()


def _day(key: str) -> date:
    parsed = layout.parse_key("", key)
    assert parsed is not None
    return parsed.day


def test_a_hold_after_a_run_killed_before_its_digest_leaves_its_objects_uncovered_not_orphaned(
        tmp_path: Path, pg_dsn: str, bucket: str, moto_server: str, s3_client: Any) -> None:
    arch = make_archive(tmp_path, pg_dsn, bucket, moto_server, s3_client, retention_days=104)
    (tmp_path / "rest").mkdir()
    rest = write_config(tmp_path / "rest", pg_dsn, bucket, moto_server, retention_days=90)
    killed = cli("archiver.main", "--config", str(rest), env={"ARCHIVER_TEST_KILL_AT": "before_digest:1"})
    assert killed.returncode == -9, killed.stderr
    run_hold(arch, s3_client)  # its digest records no objects: the killed run's stay the next run's to record
    report = validate(load_config(arch.config), s3_client=s3_client)
    assert report.ok and any("not yet covered" in n for n in report.notes), report.text_lines()


def test_expire_and_hold_refuse_a_table_another_tool_is_working_on(arch: Archive, s3_client: Any) -> None:
    before = set(arch.store.list(""))
    with psycopg.connect(arch.dsn) as other:  # the archiver (or erase) holds the table's advisory lock
        assert try_table_lock(other, table_oid(other, "public", "audit_logs"))
        with pytest.raises(TableBusy, match="busy"):
            run_expire(arch, s3_client)
        with pytest.raises(TableBusy, match="busy"):
            run_hold(arch, s3_client)
    assert set(arch.store.list("")) == before
