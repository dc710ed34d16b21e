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

from common import batch_writer, layout
from common.storage import Storage

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
    """Key tuples in every data object that has a manifest, across the stores."""
    keys: Counter[tuple[Any, ...]] = Counter()
    for store in stores:
        if store is None:
            continue
        for info in store.list(""):
            if layout.is_manifest(info.key) or info.key.startswith(".quarantine/"):
                continue
            if all(store.head(k) is None for k in layout.manifest_keys(info.key)):
                continue
            t = batch_writer.decode(store.get(info.key), fmt=batch_writer.format_of(info.key), columns=list(columns))[0]
            keys.update(zip(*(t.column(c).to_pylist() for c in columns)))
    return keys


def archiver(config: Path, *extra: str, env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "archiver.main", "--config", str(config), *extra], cwd=ROOT,
                          env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout)
