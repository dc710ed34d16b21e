"""Keys whose text form sorts differently from their type (numeric "100" < "11" < "2", intervals,
enums in declared order, inet, bytea): a day larger than a batch is cut by key, and every cut
must fall where the table's own order puts it, or the range delete removes rows the object does
not hold. The archiver reads such keys as `::text`; an ORDER BY on the bare column name picked
that text output column (PostgreSQL resolves ORDER BY names to output columns first), so batches
were cut in text order while their deletes used the column's order."""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
import pytest

from archiver.controls import RunControls
from archiver.runner import run_archive
from common.config import load_config
from common.archive.storage import LocalStorage
from archive_checks import archived_ids, assert_invariant
from conftest import make_config

# (column type, four keys as SQL literals). In text order the first three are the first batch of
# three; its first and last key bound a range of the column's own order that also holds exactly
# three rows, but not the same three: the range delete's count agreed and it removed a row never
# archived ("2" of numeric: the batch held 1, 100, 11; the range [1, 11] holds 1, 2, 11).
KEYS = {
    "numeric": ("numeric", ["1", "100", "11", "2"]),
    "interval": ("interval", ["'1 day'", "'100 days'", "'11 days'", "'2 days'"]),
    "enum": ("lvl", ["'a'", "'b'", "'c'", "'d'"]),
    "inet": ("inet", ["'1.0.0.1'", "'100.0.0.1'", "'11.0.0.1'", "'2.0.0.1'"]),
    "bytea": ("bytea", ["'\\x61'", "'\\x62'", "'\\x63'", "'\\x6d'"]),  # a b c m: str(b'c') was "b'c'"
}
ENUM = "CREATE TYPE lvl AS ENUM ('a', 'd', 'c', 'b')"


def _table(pg: psycopg.Connection[Any], kind: str) -> list[str]:
    """k(id <type> PRIMARY KEY) with every key on one expired day; returns the keys as PostgreSQL text."""
    typ, keys = KEYS[kind]
    if kind == "enum":
        pg.execute(ENUM)
    pg.execute(f"CREATE TABLE k (id {typ} PRIMARY KEY, created_at timestamptz NOT NULL, note text)")
    values = ", ".join(f"({key}::{typ}, '2024-01-01 12:00+00', 'row ' || {n})" for n, key in enumerate(keys))
    pg.execute(f"INSERT INTO k VALUES {values}")
    return [r[0] for r in pg.execute("SELECT id::text FROM k").fetchall()]


def _as_text(pg: psycopg.Connection[Any], kind: str, archived: Counter[Any]) -> Counter[str]:
    """The archived keys in PostgreSQL's text form (Parquet holds decimals and bytes natively)."""
    typ = KEYS[kind][0]
    out: Counter[str] = Counter()
    for value, n in archived.items():
        literal = "\\x" + value.hex() if isinstance(value, bytes) else str(value)
        out[pg.execute(f"SELECT %s::{typ}::text", (literal,)).fetchone()[0]] += n
    return out


def _config(tmp_path: Path, pg_dsn: str, **table: Any) -> Any:
    return load_config(make_config(tmp_path, dsn=pg_dsn, tables=[{"name": "k", "timestamp_column": "created_at", **table}],
                                   defaults={"retention_days": 1, "batch_size": 3}))


@pytest.mark.parametrize("kind", sorted(KEYS))
def test_runs_cut_short_move_each_row_exactly_once(kind: str, tmp_path: Path, pg_dsn: str,
                                                   pg: psycopg.Connection[Any]) -> None:
    original = set(_table(pg, kind))
    cfg = _config(tmp_path, pg_dsn)
    store = LocalStorage(tmp_path / "archive")
    for _ in range(3):  # each run stops after its first batch: three rows of the one four-row day
        _results, code = run_archive(cfg, controls=RunControls(max_rows=3))
        assert code == 0
        in_table = {r[0] for r in pg.execute("SELECT id::text FROM k").fetchall()}
        assert_invariant(original, in_table, _as_text(pg, kind, archived_ids(store)))
    assert pg.execute("SELECT count(*) FROM k").fetchone()[0] == 0


@pytest.mark.parametrize("kind", sorted(KEYS))
def test_resumed_copies_without_delete_archive_each_row_once(kind: str, tmp_path: Path, pg_dsn: str,
                                                             pg: psycopg.Connection[Any]) -> None:
    original = _table(pg, kind)
    cfg = _config(tmp_path, pg_dsn, delete_after_archive=False)
    store = LocalStorage(tmp_path / "archive")
    for _ in range(3):  # delete_after_archive: false continues after the checkpoint's last key
        _results, code = run_archive(cfg, controls=RunControls(max_rows=3))
        assert code == 0
    archived = _as_text(pg, kind, archived_ids(store))
    assert archived == Counter(original)
