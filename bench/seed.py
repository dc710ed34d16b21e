"""Throwaway databases for the benchmark: one seeded template database holding the issue's
`audit_logs` table, and cheap physically identical copies of it (CREATE DATABASE ... TEMPLATE)
so the baseline and the archiver start from exactly the same table."""
from __future__ import annotations

import time
import uuid
from datetime import datetime, timedelta, timezone
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

RETENTION_DAYS = 90
SPAN_DAYS = 400
#: No row lies in [cutoff_at_seed, cutoff_at_seed + GAP): every run that starts within GAP of the
#: seed (baseline, archiver, restore...) selects exactly the same eligible rows.
GAP_HOURS = 3

COLUMNS = """
    id bigserial,
    created_at timestamptz NOT NULL,
    user_id bigint,
    actor_email text,
    action text,
    request_id uuid,
    client_ip inet,
    user_agent text,
    payload jsonb,
    success boolean,
    amount numeric(12,2)
"""
# autovacuum off: nothing resets n_dead_tup during a phase (bench/pgstats.py), and no autovacuum
# of one phase's dead rows lands in the timing of the next.
DDL = f"""
CREATE TABLE audit_logs ({COLUMNS}, PRIMARY KEY (id)) WITH (autovacuum_enabled = off);
CREATE INDEX audit_logs_created_at ON audit_logs (created_at);
"""
#: The same table partitioned by month on created_at, as production has it (issue 15): PostgreSQL
#: wants the partition column in the primary key.
PARTITIONED_DDL = f"""
ALTER TABLE audit_logs RENAME TO audit_logs_plain;
ALTER TABLE audit_logs_plain RENAME CONSTRAINT audit_logs_pkey TO audit_logs_plain_pkey;
ALTER INDEX audit_logs_created_at RENAME TO audit_logs_plain_created_at;
ALTER TABLE audit_logs_plain ALTER COLUMN id DROP DEFAULT;
ALTER SEQUENCE audit_logs_id_seq OWNED BY NONE;
CREATE TABLE audit_logs ({COLUMNS.replace("bigserial", "bigint NOT NULL DEFAULT nextval('audit_logs_id_seq')")},
    PRIMARY KEY (id, created_at)) PARTITION BY RANGE (created_at);
ALTER SEQUENCE audit_logs_id_seq OWNED BY audit_logs.id;
CREATE INDEX audit_logs_created_at ON audit_logs (created_at);
"""
MONTHS_SQL = ("SELECT m, m + interval '1 month' FROM generate_series((SELECT date_trunc('month', min(created_at))"
              " FROM audit_logs_plain), (SELECT max(created_at) FROM audit_logs_plain), interval '1 month') m")

# Rows 1..old are spread over the 310 days before the cutoff, the rest over the 90 days after it
# (minus the gap). ids grow with created_at, as in a real append-only log.
SEED = """
INSERT INTO audit_logs (created_at, user_id, actor_email, action, request_id, client_ip, user_agent,
                        payload, success, amount)
SELECT CASE WHEN g <= %(old)s
            THEN %(cutoff)s::timestamptz - (%(old)s - g + 1) * %(old_step)s * interval '1 second'
            ELSE %(cutoff)s::timestamptz + make_interval(hours => %(gap)s)
                 + (g - %(old)s - 1) * %(young_step)s * interval '1 second' END,
       g %% 100000,
       'user' || (g %% 50000) || '@example.com',
       (ARRAY['login', 'logout', 'update_profile', 'delete_item', 'export_report'])[1 + g %% 5],
       md5(g::text)::uuid,
       '10.0.0.0'::inet + (g %% 16777216),
       (ARRAY['Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36',
              'Mozilla/5.0 (Macintosh; Intel Mac OS X 14_2) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.2',
              'curl/8.5.0', 'python-requests/2.31.0'])[1 + g %% 4],
       jsonb_build_object('path', '/api/v2/items/' || (g %% 9973), 'method', 'POST', 'status', 200 + g %% 5,
                          'ms', g %% 1500, 'trace', md5((g * 7)::text), 'tags', jsonb_build_array('web', 'eu-1')),
       g %% 10 <> 0,
       (g %% 1000000) / 100.0
FROM generate_series(1, %(rows)s) g
"""


def db_dsn(admin_dsn: str, dbname: str) -> str:
    params = conninfo_to_dict(admin_dsn)
    params["dbname"] = dbname
    return make_conninfo("", **params)


@dataclass
class Seeded:
    """The template database and what it holds."""

    template: str
    rows: int
    eligible: int
    cutoff_sql: str  # an ISO timestamp inside the gap: `created_at < cutoff_sql` is the eligible set
    seconds: float


@dataclass
class Databases:
    """Creates, copies and finally drops every database of one benchmark run."""

    admin_dsn: str
    prefix: str = field(default_factory=lambda: f"bench_{uuid.uuid4().hex[:8]}")
    created: list[str] = field(default_factory=list)

    def _admin(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.admin_dsn, autocommit=True)

    def create(self, suffix: str, *, template: str | None = None) -> str:
        name = f"{self.prefix}_{suffix}"
        query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            # FILE_COPY copies the files as they are: same heap layout, visibility map and stats.
            query = sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY").format(
                sql.Identifier(name), sql.Identifier(template))
        with self._admin() as conn:
            conn.execute(query)
        self.created.append(name)
        return name

    def dsn(self, name: str) -> str:
        return db_dsn(self.admin_dsn, name)

    def seed(self, *, rows: int, suffix: str = "seed") -> Seeded:
        started = time.monotonic()
        name = self.create(suffix)
        old = round(rows * (SPAN_DAYS - RETENTION_DAYS) / SPAN_DAYS)
        # The archiver's cutoff is now(UTC) - retention_days * 86400 s, computed the same way here.
        cutoff = (datetime.now(timezone.utc) - timedelta(days=RETENTION_DAYS)).replace(microsecond=0)
        with psycopg.connect(self.dsn(name), autocommit=True) as conn:
            young_seconds = RETENTION_DAYS * 86400 - (GAP_HOURS + 1) * 3600  # youngest rows an hour in the past
            conn.execute(DDL)
            conn.execute(SEED, {"old": old, "rows": rows, "cutoff": cutoff, "gap": GAP_HOURS,
                                "old_step": (SPAN_DAYS - RETENTION_DAYS) * 86400 / max(old, 1),
                                "young_step": young_seconds / max(rows - old, 1)})
            conn.execute("VACUUM (FREEZE, ANALYZE) audit_logs")
        # Any cutoff between this one and the end of the gap selects the same rows.
        return Seeded(name, rows, old, cutoff.isoformat(), time.monotonic() - started)

    def partitioned(self, seeded: Seeded, *, suffix: str = "seed_part") -> Seeded:
        """A second template holding the very same rows in a monthly-partitioned audit_logs, with a
        default partition (empty: every row has its month)."""
        started = time.monotonic()
        name = self.copy(seeded, suffix)
        with psycopg.connect(self.dsn(name), autocommit=True) as conn:
            conn.execute(PARTITIONED_DDL)
            for low, high in conn.execute(MONTHS_SQL).fetchall():
                leaf = sql.Identifier(f"audit_logs_{low:%Y_%m}")
                conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF audit_logs FOR VALUES FROM ({}) TO ({})"
                                     " WITH (autovacuum_enabled = off)").format(leaf, sql.Literal(low), sql.Literal(high)))
            conn.execute("CREATE TABLE audit_logs_default PARTITION OF audit_logs DEFAULT WITH (autovacuum_enabled = off)")
            conn.execute("INSERT INTO audit_logs SELECT * FROM audit_logs_plain")
            conn.execute("DROP TABLE audit_logs_plain")
            conn.execute("VACUUM (FREEZE, ANALYZE)")
        return Seeded(name, seeded.rows, seeded.eligible, seeded.cutoff_sql, time.monotonic() - started)

    def copy(self, seeded: Seeded, suffix: str) -> str:
        return self.create(suffix, template=seeded.template)

    def drop(self, dsn: str) -> None:
        """Drop the database a DSN of this run points at (frees its disk and its autovacuum work)."""
        name = str(conninfo_to_dict(dsn)["dbname"])
        with self._admin() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        if name in self.created:
            self.created.remove(name)

    def drop_all(self) -> None:
        with self._admin() as conn:
            for name in reversed(self.created):
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        self.created.clear()


@contextmanager
def databases(admin_dsn: str, *, keep: bool = False) -> Iterator[Databases]:
    dbs = Databases(admin_dsn)
    try:
        yield dbs
    finally:
        if not keep:
            dbs.drop_all()


def count(dsn: str, where: str = "true", params: dict[str, Any] | None = None, table: str = "audit_logs") -> int:
    """Row count of a bench table (`where` is bench-written SQL, never user input)."""
    query = sql.SQL("SELECT count(*) FROM {} WHERE ").format(sql.Identifier(table)) + sql.SQL(where)  # type: ignore[arg-type]
    with psycopg.connect(dsn) as conn:
        row = conn.execute(query, params or {}).fetchone()
    return int(row[0]) if row else 0
