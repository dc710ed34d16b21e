"""kill -9 during a restore (restore/commits.py CommitBatch): several objects share a commit, so a
kill loses the objects loaded since the last commit, and never part of an object. A rerun with
--conflict-strategy skip restores exactly what is missing. So does a cut connection, which exits 3
and says which objects stay restored."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from archive_checks import OnceAt
from common.errors import classify
from common.exit_codes import ExitCode
from restore import commits, engine
from restore.engine import restore
from restore_support import Archived, shared_archive

ROOT = Path(__file__).resolve().parents[1]
#: The restore's CLI in a child process, its commit batches made small (a commit every 5 rows, so
#: several commits in this archive's 16 rows): the rest is the real tool.
CHILD = ("import sys; import restore.commits as c; c.CommitBatch.ROWS = 5; from restore.main import main; "
         "sys.argv[0] = 'restore'; main()")


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory, moto_server: str) -> Iterator[Archived]:
    # batch_size 2: 8+ objects of at most 2 rows
    yield from shared_archive(tmp_path_factory, moto_server, batch_size=2)


@pytest.fixture()
def arch(small: Archived) -> Iterator[Archived]:
    yield small
    small.reset()


def run_restore(arch: Archived, kill_at: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ARCHIVER_TEST_KILL_AT": kill_at, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing"}
    return subprocess.run([sys.executable, "-c", CHILD, "--config", str(arch.cfg_path), "--restore-all",
                           "--database", "production_db", "--table", arch.table, "--conflict-strategy", "skip"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("kill_at", ["restore_loaded:1", "restore_loaded:4", "restore_committed:1",
                                     "restore_committed:2"])
def test_kill_during_restore_leaves_whole_objects_and_the_rerun_completes(arch: Archived, kill_at: str) -> None:
    killed = run_restore(arch, kill_at)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    present = set(arch.ids())
    objects = [arch.manifest(k) for k in arch.keys()]
    assert len(objects) >= 8
    for m in objects:  # an object is in whole or not at all
        ids = set(range(m.min_pk, m.max_pk + 1))
        assert ids <= present or not ids & present, (m.key, sorted(ids & present))
    if kill_at.startswith("restore_committed"):
        assert present, "a commit came before the kill"
    assert len(present) < 16, "the kill came before the end"
    report = restore(arch.cfg, database="production_db", table=arch.table, restore_all=True,
                     conflict_strategy="skip", s3_client=arch.s3)
    assert report.total("inserted") == 16 - len(present) and report.total("skipped") == len(present)
    assert arch.dump() == arch.before


def cut_after_first_commit(arch: Archived) -> OnceAt:
    """Terminates the restore's session the first time an object is loaded after a commit: the
    connection goes with objects committed before it and one loaded, not committed, after it."""
    def cut() -> None:
        arch.conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name"
                          " = 'pg-archiver restore' AND datname = current_database()")
    return OnceAt("restore_loaded", cut, when=lambda: bool(arch.ids()))


def test_connection_cut_mid_restore_exits_3_keeps_committed_objects_and_the_rerun_completes(
        arch: Archived, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(commits.CommitBatch, "ROWS", 5)
    cut = cut_after_first_commit(arch)
    monkeypatch.setattr(engine, "env_hook", lambda: cut)
    with pytest.raises(Exception) as raised:
        restore(arch.cfg, database="production_db", table=arch.table, restore_all=True, conflict_strategy="skip",
                s3_client=arch.s3)
    code, kind, message = classify(raised.value)
    present = set(arch.ids())
    assert cut.done and (code, kind) == (ExitCode.UNAVAILABLE, "database"), message
    assert "stay restored" in message and f"({len(present)} rows)" in message, message
    assert 0 < len(present) < 16
    monkeypatch.undo()
    report = restore(arch.cfg, database="production_db", table=arch.table, restore_all=True,
                     conflict_strategy="skip", s3_client=arch.s3)
    assert report.total("inserted") == 16 - len(present) and report.total("skipped") == len(present)
    assert arch.dump() == arch.before
