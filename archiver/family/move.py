"""A batch of a family (issue 28, `children: archive`): the rows of every child that reference the
batch's rows, exported in the reader thread right after the batch (same ADBC session), encoded
with it, stored with it, and deleted with it in the batch's one transaction.

The delete, in one transaction: the exported rows are locked top-down (the parent rows first: a
row of the next generation can no longer come to reference a locked row, its foreign key check
waits for the lock), then deleted bottom-up, the deepest generation first, each table's rows only
where they are exactly the exported row versions and no row of the next generation still
references them. Every count must equal the exported count; otherwise the whole family's move is
rolled back and taken back (rows changed since export), and a later run archives them. So no ON
DELETE action ever fires on a row that was not archived: every row of the family is in the table
or in the archive, never both after recovery, never neither."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Any

import psycopg
import pyarrow as pa
from psycopg import sql

import archiver
from archiver.delete_guard import refused_by_database
from archiver.encoding import Encoded, key_lists, manifest_key
from archiver.family.members import Child, Family
from archiver.family.queries import ChildRelation, match, present_values, referencing_query, unchanged_query
from archiver.reader import Source
from archiver.selection import Selection
from common import batch_writer
from common.archive import layout
from common.arrow_types import Exceptions, split_exceptions
from common.config import ResolvedOptions
from common.pg.db import qualified
from common.errors import ArchiverError
from common.key_range import key_range, natural_column
from common.archive.manifest import Manifest, sha256_hex
from common.pgtypes import TableSchema, arrow_schema, column_docs, from_arrow_read, xids

log = logging.getLogger("archiver")


@dataclass
class ChildRows:
    """A child's rows exported for one batch (reader thread)."""

    child: Child
    rows: pa.Table
    xmins: pa.Array
    encodings: dict[str, str]
    exceptions: dict[str, Exceptions] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return self.rows.num_rows


@dataclass
class ChildPart:
    """A child's rows of one batch, encoded: its own object in its own table folder."""

    child: Child
    manifest: Manifest
    data: bytes
    keys: pa.Table
    xmins: pa.Array
    location: str = ""  # where it was stored: s3, local, fallback

    @property
    def rows(self) -> int:
        return self.manifest.rows


def export_children(source: Source, family: Family, root_rows: pa.Table, root_schema: TableSchema, *,
                    all_text: bool) -> list[ChildRows]:
    """Every child's rows referencing the batch's rows, generation by generation (top-down)."""
    rows_of: dict[tuple[str, str], tuple[pa.Table, TableSchema]] = {(family.schema, family.table): (root_rows, root_schema)}
    out: list[ChildRows] = []
    for child in family.children:
        parent_rows, parent_schema = rows_of[child.parent]
        values = present_values([natural_column(parent_rows, c, parent_schema).to_pylist() for c in child.ref.referenced])
        if values and values[0]:
            query, native = ChildRelation(child, parent_schema).export_query(values, all_text=all_text)
            table = source.read(query.as_string(None))
            table = table.set_column(0, "__xmin", xids(table.column(0)))
            table, encodings = from_arrow_read(table, child.columns, native=native, extra=["__xmin"], all_text=all_text)
            rows, exceptions = split_exceptions(table.drop_columns(["__xmin"]))
            xmins = table.column("__xmin").combine_chunks()
        else:
            rows, exceptions, encodings = _empty(child), {}, {}
            xmins = pa.array([], pa.uint32())
        out.append(ChildRows(child, rows, xmins, encodings, exceptions))
        rows_of[(child.schema, child.table)] = (rows, child.columns)
    return out


def _empty(child: Child) -> pa.Table:
    return arrow_schema(child.columns).empty_table()


def encode_children(exported: list[ChildRows], *, root: Manifest, day: date, prefix: str, database: str,
                    opts: ResolvedOptions, family: Family) -> list[ChildPart]:
    """One object per child with rows, in the child's own table folder, in the day folder of the
    batch (its parent rows' day)."""
    return [encode_child(e, root=root, day=day, prefix=prefix, database=database, opts=opts, family=family)
            for e in exported if e.count]


def encode_child(e: ChildRows, *, root: Manifest, day: date, prefix: str, database: str, opts: ResolvedOptions,
                 family: Family) -> ChildPart:
    c = e.child
    parent = {"schema": c.parent[0], "table": c.parent[1], "constraint": c.ref.constraint,
              "columns": list(c.ref.columns), "referenced": list(c.ref.referenced),
              "root": {"schema": family.schema, "table": family.table}, "batch": root.key}
    meta = {"archiver_version": archiver.__version__, "database": database, "schema": c.schema, "table": c.table,
            "timestamp_column": "", "primary_key": ",".join(c.keys), "parent_table": c.parent_name}
    data = batch_writer.encode(e.rows, fmt=opts.format, level=opts.compression_level, schema=c.columns,
                               encodings=e.encodings, extra_meta=meta, exceptions=e.exceptions)
    digest = sha256_hex(data)
    keys = pa.table({k: natural_column(e.rows, k, c.columns).combine_chunks() for k in c.keys})
    min_pk, max_pk = key_range(keys)
    name = f"part-{day:%Y%m%d}-{digest[:20]}{batch_writer.EXTENSIONS[opts.format]}"
    manifest = Manifest(
        key=layout.object_key(prefix, database, c.schema, c.table, day, name), sha256=digest, size=len(data),
        rows=e.count, database=database, schema=c.schema, table=c.table, primary_key=manifest_key(c.keys),
        timestamp_column="", min_pk=min_pk, max_pk=max_pk, min_ts=root.min_ts, max_ts=root.max_ts,
        schema_fingerprint=c.columns.fingerprint(), format=opts.format, format_version=1,
        archiver_version=archiver.__version__, created_at=datetime.now(timezone.utc).isoformat(),
        source_bytes=e.rows.nbytes, columns=column_docs(c.columns, e.encodings), parent=parent)
    return ChildPart(c, manifest, data, keys, e.xmins)


# -- the delete, in the batch's transaction -------------------------------------------------------
class LockTimeout(ArchiverError):
    """A lock or statement timeout in the family's move (rolled back): tried again, as the table's
    own delete is (archiver/mover.py), then the table fails with the batch pending."""


def lock_root(conn: psycopg.Connection[Any], sel: Selection, enc: Encoded) -> None:
    query = sql.SQL("SELECT 1 FROM {} WHERE {} FOR UPDATE").format(sel.relation, sel._key_match(key_lists(enc.keys)))
    _run(conn, query, sel.table.name, enc.manifest.key)


def delete_children(conn: psycopg.Connection[Any], family: Family, parts: list[ChildPart],
                    parent_schemas: dict[tuple[str, str], TableSchema], what: str) -> str | None:
    """Lock the parts' rows top-down, delete them bottom-up (the transaction stays open). None when
    every count agrees, else why not (the caller rolls back and takes the family's move back)."""
    for part in parts:  # top-down: the family's order
        rel = ChildRelation(part.child, parent_schemas[part.child.parent])
        _run(conn, rel.lock_query(key_lists(part.keys)), part.child.name, what)
    for part in sorted(parts, key=lambda p: -p.child.generation):
        rel = ChildRelation(part.child, parent_schemas[part.child.parent])
        guards = tuple(gc.ref for gc in family.of((part.child.schema, part.child.table)))
        deleted = _run(conn, rel.delete_query(key_lists(part.keys), part.xmins, guards), part.child.name, what)
        if deleted != part.rows:
            return f"{part.child.name}: {max(deleted, 0)} of its {part.rows} exported rows deleted"
    return None


def _run(conn: psycopg.Connection[Any], query: sql.Composable, table: str, what: str) -> int:
    """One statement of the family's move; a failure that will recur is DeletesRefused, a lock
    timeout fails the table (the batch stays pending: the next run takes it back)."""
    try:
        return conn.execute(query.as_bytes(conn), prepare=False).rowcount
    except psycopg.errors.ForeignKeyViolation:
        conn.rollback()
        return -1
    except (psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled) as exc:
        conn.rollback()
        raise LockTimeout(f"{table}: the family's move of {what} timed out on locks ({exc.diag.message_primary});"
                          " the next run takes it back and archives its rows again") from None
    except psycopg.Error as exc:
        refused = refused_by_database(exc, table, what)
        if refused is None:
            raise
        conn.rollback()
        raise refused from exc


def count_present(conn: psycopg.Connection[Any], child: Child, parent_schema: TableSchema, keys: pa.Table) -> int:
    """How many of a stored child object's keys are in the child table (recovery)."""
    lists = [natural_column(keys, k, child.columns).to_pylist() for k in child.keys]
    if not lists[0]:
        return 0
    row = conn.execute(ChildRelation(child, parent_schema).present_query(lists).as_bytes(conn), prepare=False).fetchone()
    conn.commit()
    return int(row[0]) if row else 0



def kept_by_database(conn: psycopg.Connection[Any], family: Family, sel: Selection, enc: Encoded,
                     parts: list[ChildPart], parent_schemas: dict[tuple[str, str], TableSchema]) -> bool:
    """After a rolled-back move: whether every exported row is still as exported and no row that
    was not exported references them. Then nothing changed since the export, and the delete came
    short because something keeps rows (a BEFORE DELETE trigger returning NULL, a row-level security
    policy): every run would take the batch back again (archiver/delete_guard.py suppressed)."""
    try:
        if sel_unchanged(conn, sel, enc) != enc.rows:
            return False
        by_table = {(p.child.schema, p.child.table): p for p in parts}
        for child in family.children:
            part = by_table.get((child.schema, child.table))
            parent_part = by_table.get(child.parent)
            if child.parent == (family.schema, family.table):
                # bare column names: inside `FROM <table> AS p` they are p's (the innermost scope)
                parent_keys = sel._key_match(key_lists(enc.keys))
                parent_rel: sql.Composable = sel.relation
            elif parent_part is None:
                continue  # no parent row of it moves: nothing of it could
            else:
                parent_keys = match(parent_part.child.keys, parent_part.child.columns, key_lists(parent_part.keys),
                                    alias=sql.Identifier("p"))
                parent_rel = qualified(parent_part.child.schema, parent_part.child.table)
            now = _count(conn, referencing_query(child, parent_rel, parent_keys))
            if now != (part.rows if part else 0):
                return False
            if part is not None:
                rel = ChildRelation(child, parent_schemas[child.parent])
                if _count(conn, unchanged_query(rel, key_lists(part.keys), part.xmins)) != part.rows:
                    return False
        return True
    finally:
        conn.rollback()


def sel_unchanged(conn: psycopg.Connection[Any], sel: Selection, enc: Encoded) -> int:
    return _count(conn, sel.unchanged_query(key_lists(enc.keys), enc.xmins))


def _count(conn: psycopg.Connection[Any], query: sql.Composable) -> int:
    row = conn.execute(query.as_bytes(conn), prepare=False).fetchone()
    return int(row[0]) if row else 0

