"""A table range-partitioned on Unix time (issue 28): PARTITION BY RANGE (created_epoch), monthly
leaves bounded in seconds, `expired_partitions: drop`. The leaves whose bounds lie wholly before the
cutoff are archived whole and dropped, every row ends in exactly one place, the dry run says which
leaves go, and a restore by date brings a dropped leaf back with its integer bounds."""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from archive_checks import archived_ids, assert_invariant, manifests, table_ids
from archiver.dry_run import plan
from archiver.runner import run_archive
from common.config import Config, load_config
from common.exit_codes import ExitCode
from common.archive.storage import LocalStorage, S3Storage
from conftest import make_config
from restore.engine import restore
from restore_support import dump
from schema_support import month_start, partitions_of

TABLE = "metrics_log"
TABLES = [{"name": TABLE, "timestamp_column": "created_epoch", "timestamp_unit": "s"}]
CUTOFF = "extract(epoch FROM now() - interval '90 days')::bigint"


def seed(pg: psycopg.Connection[Any], *, months: int = 5, default: bool = True) -> dict[str, tuple[int, int]]:
    """metrics_log by month in Unix seconds, `months` months back to next month, two rows a day up
    to now (and with `default` a default partition with a few older rows). Returns each leaf's
    bounds in seconds (the default's: (0, 0))."""
    pg.execute(f"CREATE TABLE {TABLE} (id bigint GENERATED ALWAYS AS IDENTITY, created_epoch bigint NOT NULL,"
               " source text, reading double precision, PRIMARY KEY (id, created_epoch)) PARTITION BY RANGE (created_epoch)")
    bounds: dict[str, tuple[int, int]] = {}
    for ago in range(months, -2, -1):
        row = pg.execute(f"SELECT extract(epoch FROM {month_start(ago)})::bigint,"
                         f" extract(epoch FROM {month_start(ago - 1)})::bigint").fetchone()
        assert row is not None
        name = f"{TABLE}_m{months - ago:02d}"
        pg.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
            sql.Identifier(name), sql.Identifier(TABLE), sql.Literal(row[0]), sql.Literal(row[1])))
        bounds[name] = (row[0], row[1])
    pg.execute(f"""INSERT INTO {TABLE} (created_epoch, source, reading)
                   SELECT extract(epoch FROM t)::bigint + 7, 'sensor-' || (extract(doy FROM t)::int % 5), random()
                   FROM generate_series({month_start(months)} + interval '3 hours', now(), interval '12 hours') t""")
    if default:
        pg.execute(f"CREATE TABLE {TABLE}_default PARTITION OF {TABLE} DEFAULT")
        pg.execute(f"INSERT INTO {TABLE} (created_epoch, source) SELECT extract(epoch FROM {month_start(months)})::bigint"
                   " - g * 86400, 'old' FROM generate_series(1, 5) g")
        bounds[f"{TABLE}_default"] = (0, 0)
    return bounds


def wholly_expired(pg: psycopg.Connection[Any], bounds: dict[str, tuple[int, int]]) -> set[str]:
    row = pg.execute(f"SELECT {CUTOFF}").fetchone()
    assert row is not None
    return {name for name, (_lo, hi) in bounds.items() if 0 < hi <= row[0]}


def utc_date(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).date().isoformat()


def config(tmp_path: Path, dsn: str, **storage: Any) -> Config:
    return load_config(make_config(tmp_path, dsn=dsn, tables=TABLES, **storage,
                                   defaults={"retention_days": 90, "batch_size": 100, "expired_partitions": "drop"}))


def test_leaves_wholly_before_the_cutoff_are_archived_whole_and_dropped(tmp_path: Path, pg_dsn: str,
                                                                         pg: psycopg.Connection[Any]) -> None:
    bounds = seed(pg)
    whole = wholly_expired(pg, bounds)
    assert len(whole) >= 2
    original = table_ids(pg, TABLE)
    cfg = config(tmp_path, pg_dsn)
    lines, code = plan(cfg, now=datetime.now(timezone.utc))
    dropping = [line for line in lines if "would be archived whole, detached and dropped" in line]
    assert code == ExitCode.OK and len(dropping) == len(whole), lines
    assert all("FOR VALUES FROM ('" in line for line in dropping), dropping
    cutoff = pg.execute(f"SELECT {CUTOFF}").fetchone()  # at most the run's
    (result,), code = run_archive(cfg)
    assert code == ExitCode.OK and result.status == "completed", result
    store = LocalStorage(tmp_path / "archive")
    archived = archived_ids(store)
    assert_invariant(original, table_ids(pg, TABLE), archived)
    assert set(bounds) - partitions_of(pg, TABLE) == whole
    retired = {m.partition["name"] for m in manifests(store) if m.partition}
    assert retired == whole
    left = pg.execute(f"SELECT min(created_epoch) FROM {TABLE}").fetchone()
    assert cutoff is not None and left is not None and left[0] >= cutoff[0]  # the straddling leaf went row by row
    assert pg.execute(f"SELECT count(*) FROM {TABLE}_default").fetchone() == (0,)  # its old rows: row by row


def test_a_restore_by_date_brings_a_dropped_leaf_back_with_its_integer_bounds(
        tmp_path: Path, pg_dsn: str, pg: psycopg.Connection[Any], bucket: str, moto_server: str, s3_client: Any) -> None:
    bounds = seed(pg, months=4, default=False)
    oldest = min(wholly_expired(pg, bounds))
    lo, hi = bounds[oldest]
    before, rest = dump(pg, oldest), table_ids(pg, TABLE) - table_ids(pg, oldest)
    cfg = config(tmp_path, pg_dsn, bucket=bucket, endpoint=moto_server)
    (result,), code = run_archive(cfg)
    assert code == ExitCode.OK and result.status == "completed", result
    assert pg.execute("SELECT to_regclass(%s)", (oldest,)).fetchone() == (None,)
    in_table = table_ids(pg, TABLE)
    report = restore(cfg, database="production_db", table=TABLE, restore_all=True, start_date=utc_date(lo),
                     end_date=utc_date(hi - 1))
    assert report.recreated_partitions == [f"public.{oldest} FOR VALUES FROM ('{lo}') TO ('{hi}')"]
    assert dump(pg, oldest) == before  # its rows, byte for byte, in the leaf they came from
    assert table_ids(pg, TABLE) == in_table | table_ids(pg, oldest) and not in_table & table_ids(pg, oldest)
    assert archived_ids(S3Storage(s3_client, bucket)).keys() >= rest - in_table
