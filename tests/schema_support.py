"""Tables as production has them (issue 15): a composite primary key, and monthly partitions. The
invariant helpers read every key column, so a composite key is checked as the tuple it is."""
from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from archive_checks import archived
from common import batch_writer
from common.archive.storage import Storage

ROOT = Path(__file__).resolve().parent.parent
KEY = ("tenant_id", "id")


def seed_composite(conn: psycopg.Connection[Any], *, ids: int = 400, primary_key: bool = True) -> None:
    """audit_logs keyed (tenant_id, id): three tenants share every id and every timestamp, one
    timestamp every 8 hours over ~133 days (~390 rows older than 90 days, 9 to a day)."""
    key = ", PRIMARY KEY (tenant_id, id)" if primary_key else ""
    conn.execute(f"CREATE TABLE audit_logs (tenant_id text NOT NULL, id bigint NOT NULL, created_at timestamptz NOT NULL,"
                 f" email text{key})")
    conn.execute("""INSERT INTO audit_logs SELECT 't' || (g %% 3), g / 3, now() - (g / 3) * interval '8 hours',
                    'user' || g || '@example.com' FROM generate_series(0, %s) g""", (ids * 3 - 1,))


def table_keys(conn: psycopg.Connection[Any], columns: Sequence[str] = KEY, table: str = "audit_logs") -> set[tuple[Any, ...]]:
    q = sql.SQL("SELECT {} FROM {}").format(sql.SQL(", ").join(map(sql.Identifier, columns)), sql.Identifier(table))
    return {tuple(r) for r in conn.execute(q).fetchall()}


def archived_keys(*stores: Storage | None, columns: Sequence[str] = KEY) -> Counter[tuple[Any, ...]]:
    """Key tuples in every data object that counts as archived, across the stores."""
    keys: Counter[tuple[Any, ...]] = Counter()
    for store in stores:
        if store is None:
            continue
        for key in archived(store):
            t = batch_writer.decode(store.get(key), fmt=batch_writer.format_of(key), columns=list(columns))[0]
            keys.update(zip(*(t.column(c).to_pylist() for c in columns)))
    return keys


def archiver(config: Path, *extra: str, env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "archiver.main", "--config", str(config), *extra], cwd=ROOT,
                          env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout)


#: PostgreSQL's longest names (63 bytes), non-ASCII: percent-quoted, 189 bytes each.
LONG_SCHEMA = "Ü \"q\" " + "ü" * 28
LONG_TABLE = "Täble \"x\" " + "é" * 26


def month_start(months_ago: int) -> str:
    """The first day of the month `months_ago` months before this one, as SQL text."""
    return f"date_trunc('month', now()) - interval '{months_ago} months'"


def seed_partitioned(conn: psycopg.Connection[Any], *, months: int = 6, per_day: int = 4, default: bool = True,
                     multi_level: bool = False) -> list[str]:
    """audit_logs partitioned by month on created_at (primary key (id, created_at), as PostgreSQL
    requires), `months` months back to next month, `per_day` rows a day up to now, and with
    `default` a default partition holding a few old rows. `multi_level`: quarters, each
    sub-partitioned by month. Returns the leaf partitions' names, oldest first."""
    conn.execute("CREATE TABLE audit_logs (id bigint GENERATED ALWAYS AS IDENTITY, created_at timestamptz NOT NULL,"
                 " email text, PRIMARY KEY (id, created_at)) PARTITION BY RANGE (created_at)")
    leaves: list[str] = []
    for ago in range(months, -2, -1):
        name = f"audit_logs_m{months - ago:02d}"
        lo, hi = month_start(ago), month_start(ago - 1)
        bounds = conn.execute(f"SELECT {lo}, {hi}").fetchone()
        assert bounds is not None
        if multi_level:
            conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF audit_logs FOR VALUES FROM ({}) TO ({})"
                                 " PARTITION BY RANGE (created_at)").format(
                sql.Identifier(f"{name}_q"), sql.Literal(bounds[0]), sql.Literal(bounds[1])))
            half = conn.execute("SELECT %s::timestamptz + (%s::timestamptz - %s::timestamptz) / 2",
                                (bounds[0], bounds[1], bounds[0])).fetchone()
            assert half is not None
            for part, (a, b) in (("a", (bounds[0], half[0])), ("b", (half[0], bounds[1]))):
                conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
                    sql.Identifier(f"{name}{part}"), sql.Identifier(f"{name}_q"), sql.Literal(a), sql.Literal(b)))
                leaves.append(f"{name}{part}")
        else:
            conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF audit_logs FOR VALUES FROM ({}) TO ({})").format(
                sql.Identifier(name), sql.Literal(bounds[0]), sql.Literal(bounds[1])))
            leaves.append(name)
    first = conn.execute(f"SELECT {month_start(months)}").fetchone()
    assert first is not None
    conn.execute("""INSERT INTO audit_logs (created_at, email)
                    SELECT t, 'user' || row_number() over () || '@example.com'
                    FROM generate_series(%s::timestamptz + interval '3 hours', now(), interval '1 day' / %s) t""",
                 (first[0], per_day))
    if default:
        conn.execute("CREATE TABLE audit_logs_default PARTITION OF audit_logs DEFAULT")
        conn.execute("INSERT INTO audit_logs (created_at, email) SELECT %s::timestamptz - g * interval '1 day',"
                     " 'old' || g || '@example.com' FROM generate_series(1, 20) g", (first[0],))
        leaves.append("audit_logs_default")
    return leaves


def partitions_of(conn: psycopg.Connection[Any], parent: str = "audit_logs") -> set[str]:
    rows = conn.execute("SELECT relid::regclass::text FROM pg_partition_tree(%s::regclass) WHERE isleaf",
                        (parent,)).fetchall()
    return {r[0] for r in rows}
