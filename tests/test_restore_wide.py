"""Restore of wide rows (restore/loader.py): an object's rows are rendered in slices of about
_SLICE_BYTES, and only objects small in bytes as well as rows are rendered whole ahead of the
load, so a table of large documents does not hold several whole objects of COPY input at once
(~190 kB rows: 940 MB of peak RSS before, ~300 MB after). The rows come back exactly."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest

from archiver.runner import run_archive
from common.config import load_config
from common.exit_codes import ExitCode
from conftest import make_config
from restore import loader
from restore.engine import restore

DUMP = "SELECT id, created_at, md5(doc) FROM audit_logs ORDER BY id"


def test_wide_rows_are_rendered_in_byte_bounded_slices_and_come_back_exactly(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, pg_dsn: str, pg: psycopg.Connection[Any]) -> None:
    pg.execute("CREATE TABLE audit_logs (id bigserial PRIMARY KEY, created_at timestamptz NOT NULL, doc text)")
    # 4,000-byte documents, 24 a day from a midnight: days of 24, 24 and 12 rows (from any other
    # hour, the first or last day could hold two rows, small enough to be rendered ahead).
    pg.execute("INSERT INTO audit_logs (created_at, doc) SELECT timestamptz '2024-01-01 00:00+00' + g * interval '1 hour',"
               " repeat(md5(g::text), 125) FROM generate_series(0, 59) g")
    before = pg.execute(DUMP).fetchall()
    cfg = load_config(make_config(tmp_path, dsn=pg_dsn))
    _results, code = run_archive(cfg)
    assert code == ExitCode.OK and pg.execute("SELECT count(*) FROM audit_logs").fetchone() == (0,)

    monkeypatch.setattr(loader, "_SLICE_BYTES", 10_000)  # two or three of these rows
    monkeypatch.setattr(loader, "_RENDER_AHEAD_BYTES", 10_000)
    slices: list[int] = []
    rendered_ahead: list[bool] = []
    batches, ahead = loader.Prepared.batches, loader._rendered_ahead

    def counted(self: loader.Prepared) -> Any:
        for table in batches(self):
            slices.append(table.num_rows)
            yield table

    def watched(make: Any, obj: Any) -> loader.Prepared:
        item = ahead(make, obj)
        rendered_ahead.append(item.rendered is not None)
        return item

    monkeypatch.setattr(loader.Prepared, "batches", counted)
    monkeypatch.setattr(loader, "_rendered_ahead", watched)
    report = restore(cfg, database="production_db", table="audit_logs", restore_all=True)
    assert report.total("inserted") == 60
    assert pg.execute(DUMP).fetchall() == before
    assert sum(slices) == 60 and max(slices) <= 3 and len(slices) >= 20
    assert rendered_ahead and not any(rendered_ahead)  # each object (12 or 24 rows, 48-96 kB) too large to render ahead
