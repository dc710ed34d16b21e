"""A restore target whose triggers or rules would change or drop the restored rows
(restore/writers.py), against a real PostgreSQL and moto S3: such a target is refused before
anything is written; triggers that cannot touch the rows on their way in are no obstacle."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from restore.engine import restore
from restore.writers import TargetRewrites
from restore_support import Archived, shared  # noqa: F401 - the module's archive fixture

STAMP = "CREATE FUNCTION probe_fn() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.created_at := now(); RETURN NEW; END $$"
DROP_ROW = "CREATE FUNCTION probe_fn() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$"
PASS = "CREATE FUNCTION probe_fn() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$"
TRIGGER = "CREATE TRIGGER probe_trigger {} ON audit_logs FOR EACH ROW EXECUTE FUNCTION probe_fn()"


@pytest.fixture()
def arch(shared: Archived) -> Iterator[Archived]:
    yield shared
    shared.conn.execute("DROP TRIGGER IF EXISTS probe_trigger ON audit_logs; DROP FUNCTION IF EXISTS probe_fn()")
    shared.conn.execute("DROP RULE IF EXISTS probe_rule ON audit_logs")
    shared.reset()


def restore_all(arch: Archived, s3_client: Any, **kwargs: Any) -> Any:
    return restore(arch.cfg, database="production_db", table="audit_logs", restore_all=True, s3_client=s3_client, **kwargs)


@pytest.mark.parametrize(("function", "when", "strategy"), [
    (STAMP, "BEFORE INSERT", "skip"),  # a forgery guard: every restored row would get a new timestamp
    (DROP_ROW, "BEFORE INSERT", "skip"),  # every row kept out, and reported as "skipped" (already there)
    (PASS, "BEFORE INSERT OR UPDATE", "fail"),
    (STAMP, "BEFORE UPDATE", "overwrite"),  # an overwrite updates the rows that exist
], ids=["stamps the timestamp", "returns NULL", "insert or update", "update, overwrite"])
def test_a_target_whose_trigger_could_change_restored_rows_is_refused_before_any_write(
        arch: Archived, s3_client: Any, function: str, when: str, strategy: str) -> None:
    arch.conn.execute(function)
    arch.conn.execute(TRIGGER.format(when))
    with pytest.raises(TargetRewrites, match=r"^public\.audit_logs: trigger probe_trigger on audit_logs would see every"
                                             r" restored row.*--target-table.*nothing was restored$"):
        restore_all(arch, s3_client, conflict_strategy=strategy)
    assert arch.ids() == []


@pytest.mark.parametrize(("rule", "strategy"), [
    ("ON INSERT TO audit_logs DO INSTEAD NOTHING", "skip"),
    # INSERT ... ON CONFLICT (skip, overwrite) refuses a table with any INSERT or UPDATE rule
    ("ON UPDATE TO audit_logs DO ALSO NOTHING", "skip"),
    ("ON UPDATE TO audit_logs DO ALSO NOTHING", "overwrite"),
])
def test_a_rule_the_restore_would_meet_is_refused(arch: Archived, s3_client: Any, rule: str, strategy: str) -> None:
    arch.conn.execute(f"CREATE RULE probe_rule AS {rule}")
    with pytest.raises(TargetRewrites, match="rule probe_rule"):
        restore_all(arch, s3_client, conflict_strategy=strategy)
    assert arch.ids() == []


def test_the_dry_run_says_so_too(arch: Archived, s3_client: Any) -> None:
    arch.conn.execute(STAMP)
    arch.conn.execute(TRIGGER.format("BEFORE INSERT"))
    with pytest.raises(TargetRewrites):
        restore_all(arch, s3_client, dry_run=True)


@pytest.mark.parametrize(("when", "strategy", "disabled"), [
    ("AFTER INSERT", "fail", False),  # sees the row once it is stored
    ("BEFORE UPDATE", "skip", False),  # skip never updates
    ("BEFORE INSERT", "fail", True),  # disabled for the restore
], ids=["after insert", "before update, skip", "disabled"])
def test_triggers_that_cannot_touch_the_restored_rows_are_no_obstacle(
        arch: Archived, s3_client: Any, when: str, strategy: str, disabled: bool) -> None:
    arch.conn.execute(STAMP)
    arch.conn.execute(TRIGGER.format(when))
    if disabled:
        arch.conn.execute("ALTER TABLE audit_logs DISABLE TRIGGER probe_trigger")
    restore_all(arch, s3_client, conflict_strategy=strategy)
    assert arch.dump() == arch.before


def test_a_new_target_table_restores_past_the_live_tables_trigger(arch: Archived, s3_client: Any) -> None:
    arch.conn.execute(STAMP)
    arch.conn.execute(TRIGGER.format("BEFORE INSERT"))
    restore_all(arch, s3_client, target_table="audit_logs_restored")
    assert arch.dump("audit_logs_restored") == arch.before
