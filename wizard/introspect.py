"""Catalog queries behind the wizard's proposals: the tables with their estimated size, the
timestamp columns worth archiving by, the primary key, and how many rows a retention makes
eligible now. Read-only; counts use the archiver's own predicate so the numbers match --dry-run."""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql

from common.config import TableConfig
from common.pg.db import primary_key_columns, qualified, table_oid, table_schema, unique_keys
from common.cli import select_table
from common.expiry import ExpiredRows, cutoff_for, database_now

log = logging.getLogger("wizard")

#: The column types the archiver accepts as timestamp_column (archiver/table_check.py SUPPORTED_TIMESTAMPS).
TIMESTAMP_TYPES = ("timestamptz", "timestamp", "date")
#: Above this estimate the share of eligible rows is taken against the estimate, not count(*),
#: so the wizard never scans a huge table twice.
EXACT_TOTAL_LIMIT = 1_000_000

_LIST_SQL = r"""
SELECT n.nspname, c.relname,
       CASE WHEN c.relkind = 'p' THEN
            (SELECT CASE WHEN bool_or(l.reltuples >= 0) THEN sum(greatest(l.reltuples, 0)) END
               FROM pg_partition_tree(c.oid) t JOIN pg_class l ON l.oid = t.relid WHERE t.isleaf)
            WHEN c.reltuples >= 0 THEN c.reltuples END AS est_rows,
       CASE WHEN c.relkind = 'p' THEN
            (SELECT coalesce(sum(pg_total_relation_size(t.relid)), 0) FROM pg_partition_tree(c.oid) t)
            ELSE pg_total_relation_size(c.oid) END AS size_bytes
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\_toast%' AND n.nspname NOT LIKE 'pg\_temp%'
ORDER BY size_bytes DESC, n.nspname, c.relname
"""

# An index helps the archiver only if the column leads it, it is valid, and it is not partial.
_TS_SQL = """
SELECT a.attname, t.typname, a.attnotnull,
       EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = a.attrelid AND i.indkey[0] = a.attnum
                                          AND i.indisvalid AND i.indpred IS NULL) AS indexed
FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped AND t.typname = ANY(%s)
ORDER BY a.attnum
"""

_CREATED_LIKE = re.compile(r"^(created|creation|inserted|logged|occurred|recorded|event|happened)(_|$)|^(timestamp|ts|time)$")
# Columns that change after insert make a poor archiving key: a row could move back into the live range.
_MUTABLE_LIKE = re.compile(r"^(updated|modified|changed|deleted|last_|expires|expiry|valid_)")


@dataclass(frozen=True)
class TableInfo:
    schema: str
    name: str
    est_rows: int | None  # None: never analyzed
    size_bytes: int

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass(frozen=True)
class TimestampCandidate:
    name: str
    typname: str
    indexed: bool
    not_null: bool


@dataclass(frozen=True)
class TableDetails:
    info: TableInfo
    candidates: tuple[TimestampCandidate, ...]  # best first
    primary_key: tuple[str, ...]
    can_select_delete: bool
    #: Unique indexes whose columns are all NOT NULL: a table without a primary key may use one.
    unique_keys: tuple[tuple[str, ...], ...] = ()

    @property
    def key(self) -> tuple[str, ...]:
        """The key offered: the primary key (any width), else the first usable unique index."""
        return self.primary_key or (self.unique_keys[0] if self.unique_keys else ())

    def key_problem(self, columns: tuple[str, ...]) -> str | None:
        """Why these columns cannot be the archiver's key, or None (archiver/table_check.py's rule)."""
        if any(set(columns) == set(k) for k in (self.primary_key, *self.unique_keys) if k):
            return None
        q = self.info.qualified
        pk = f"the primary key of {q} is {', '.join(self.primary_key)}" if self.primary_key else f"{q} has no primary key"
        others = "; ".join(f"({', '.join(k)})" for k in self.unique_keys)
        unique = f"; unique indexes whose columns are all NOT NULL: {others}" if others else ""
        return f"neither the primary key nor a usable unique index: {pk}{unique} (read from the catalog)"

    def candidate(self, name: str) -> TimestampCandidate | None:
        return next((c for c in self.candidates if c.name == name), None)

    def refusal(self) -> str | None:
        """Why the archiver cannot take this table, or None."""
        if not self.key:
            return (f"{self.info.qualified} has no primary key; archiving needs one (rows are deleted by"
                    " primary key after their archive is verified), or a unique index whose columns are all"
                    " NOT NULL: add one or pick another table")
        if not self.candidates:
            return f"{self.info.qualified} has no timestamp, timestamptz or date column to archive by"
        return None


@dataclass(frozen=True)
class Eligibility:
    cutoff: datetime
    eligible: int | None  # None: the count did not finish within the statement timeout
    total: int | None
    total_is_estimate: bool

    @property
    def share(self) -> float | None:
        if self.eligible is None or not self.total:
            return None
        return min(self.eligible / self.total, 1.0)


def list_tables(conn: psycopg.Connection[Any]) -> list[TableInfo]:
    rows = conn.execute(_LIST_SQL).fetchall()
    conn.rollback()
    return [TableInfo(r[0], r[1], None if r[2] is None else int(r[2]), int(r[3] or 0)) for r in rows]


def resolve_table(tables: list[TableInfo], spec: str) -> TableInfo:
    """`schema.table` or a bare name, by common.cli's rule: a bare name in several schemas is a
    usage error naming them."""
    schema, name = select_table(spec, ((t.schema, t.name) for t in tables), flag="",
                                where="the database (the wizard lists ordinary and partitioned tables)")
    return next(t for t in tables if (t.schema, t.name) == (schema, name))


def rank(c: TimestampCandidate) -> tuple[int, int, int, int]:
    """Sort key: stable names first, then indexed, then created_at-like names, then tz-aware types."""
    name = c.name.lower()
    mutable = 1 if _MUTABLE_LIKE.match(name) else 0
    likeness = 0 if name == "created_at" else (1 if _CREATED_LIKE.match(name) else 2)
    return (mutable, 0 if c.indexed else 1, likeness, TIMESTAMP_TYPES.index(c.typname))


def timestamp_candidates(conn: psycopg.Connection[Any], oid: int) -> list[TimestampCandidate]:
    rows = conn.execute(_TS_SQL, (oid, list(TIMESTAMP_TYPES))).fetchall()
    found = [TimestampCandidate(name=r[0], typname=r[1], not_null=bool(r[2]), indexed=bool(r[3])) for r in rows]
    return sorted(found, key=rank)  # sorted() is stable: ties keep column order


def inspect(conn: psycopg.Connection[Any], info: TableInfo) -> TableDetails:
    oid = table_oid(conn, info.schema, info.name)
    priv = conn.execute("SELECT has_table_privilege(%s, 'SELECT') AND has_table_privilege(%s, 'DELETE')",
                        (oid, oid)).fetchone()
    details = TableDetails(info=info, candidates=tuple(timestamp_candidates(conn, oid)),
                           primary_key=tuple(primary_key_columns(conn, oid)),
                           can_select_delete=bool(priv and priv[0]),
                           unique_keys=tuple(tuple(cols) for cols, primary, notnull in unique_keys(conn, oid)
                                             if notnull and not primary))
    conn.rollback()
    return details


def eligibility(conn: psycopg.Connection[Any], details: TableDetails, *, timestamp_column: str,
                retention_days: int, now: datetime) -> Eligibility:
    """Rows the archiver would take now, counted with its own predicate (so --dry-run agrees), and
    with its clock: the database's (`now` is this host's; a skew is logged)."""
    info = details.info
    table = TableConfig(name=info.name, schema=info.schema, timestamp_column=timestamp_column,
                        primary_key=list(details.key))
    schema = table_schema(conn, table_oid(conn, info.schema, info.name))
    db_now, _skew = database_now(conn, host_now=now, log=log)
    sel = ExpiredRows(table, schema, cutoff_for(retention_days, db_now))
    query, params = sel.count_query()
    eligible = _count(conn, query, params)
    if info.est_rows is not None and info.est_rows > EXACT_TOTAL_LIMIT:
        return Eligibility(sel.cutoff, eligible, info.est_rows, True)
    total = _count(conn, sql.SQL("SELECT count(*) FROM {}").format(sel.relation), {})
    if total is None:
        return Eligibility(sel.cutoff, eligible, info.est_rows, info.est_rows is not None)
    return Eligibility(sel.cutoff, eligible, total, False)


def _count(conn: psycopg.Connection[Any], query: Any, params: dict[str, Any]) -> int | None:
    try:
        row = conn.execute(query, params).fetchone()
    except (pg_errors.QueryCanceled, pg_errors.LockNotAvailable):
        # The wizard's statement or lock timeout (a giant unindexed table, a migration holding a
        # lock): report "not counted" and go on; the dry run counts them later.
        conn.rollback()
        return None
    conn.rollback()
    return int(row[0]) if row else 0


def eligible_bytes(details: TableDetails, elig: Eligibility) -> int:
    """The eligible rows' share of the table's on-disk size (the compressed archive is smaller)."""
    share = elig.share
    return int(details.info.size_bytes * share) if share is not None else details.info.size_bytes


def create_index_hint(conn: psycopg.Connection[Any], schema: str, table: str, column: str) -> str:
    stmt = sql.SQL("CREATE INDEX CONCURRENTLY ON {} ({})").format(qualified(schema, table), sql.Identifier(column))
    return stmt.as_string(conn)
