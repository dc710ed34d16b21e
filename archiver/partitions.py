"""Retiring whole expired partitions (issue 15, `expired_partitions: detach | drop`): a leaf
partition whose whole range lies before the cutoff is archived in full (the same objects and
manifests as row by row, each manifest naming the leaf and its bound), verified, re-counted, then
detached (CONCURRENTLY where PostgreSQL allows it) and with `drop` dropped: no row DELETE, no dead
tuples, almost no WAL. The leaf that straddles the cutoff and a default partition stay with the
row-by-row path.

Crash safety rides on the ledger's rule (archiver/ledger.py): the leaf's batches stay pending in
the checkpoint until the leaf is detached, and the checkpoint's `retiring` names the leaf, its
bound, the rows archived and the step. After a kill -9 the rerun settles the leaf first: a
half-finished DETACH CONCURRENTLY is finalized; a detached leaf is re-counted (and attached again
if a row it holds was not archived); then the ledger judges the pending batches as always: rows
still in the table (the leaf attached) -> taken back and archived again, rows gone (the leaf
detached) -> finished. A detached leaf is dropped (drop) or reported and kept (detach), never read
again: it is no longer part of the table."""
from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import psycopg
from psycopg import sql

from archiver.checkpoint import Checkpoint
from archiver.delete_guard import delete_triggers
from archiver.selection import Selection
from common.pg.db import qualified
from common.errors import DatabaseError, first_line

log = logging.getLogger("archiver")
_UPPER = re.compile(r"\bTO \((.+)\)\s*$")

_COLUMNS = """
SELECT c.oid, n.nspname, c.relname, i.inhparent, pn.nspname, p.relname,
       coalesce(pg_get_expr(c.relpartbound, c.oid), ''), c.relkind <> 'p' AS isleaf,
       pt.partstrat = 'r' AND pt.partnatts = 1 AND a.attname = %(ts)s AS by_ts
"""
_JOINS = """
JOIN pg_class c ON c.oid = t.relid JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_inherits i ON i.inhrelid = c.oid
JOIN pg_class p ON p.oid = i.inhparent JOIN pg_namespace pn ON pn.oid = p.relnamespace
JOIN pg_partitioned_table pt ON pt.partrelid = i.inhparent
LEFT JOIN pg_attribute a ON a.attrelid = pt.partrelid AND a.attnum = pt.partattrs[0]
"""
#: Every partition below the table.
_TREE_SQL = _COLUMNS + "FROM pg_partition_tree(%(oid)s) t" + _JOINS + "WHERE t.level > 0"
#: One leaf and its ancestors below the table (pg_partition_ancestors lists the leaf first, then
#: each parent upwards); no row when the leaf is not under the table.
_LEAF_SQL = ("WITH up AS (SELECT relid, n FROM pg_partition_ancestors(%(leaf)s) WITH ORDINALITY AS a(relid, n)), "
             "top AS (SELECT n FROM up WHERE relid = %(oid)s)\n" + _COLUMNS
             + "FROM up t JOIN top ON t.n < top.n" + _JOINS)


@dataclass(frozen=True)
class Leaf:
    oid: int
    schema: str
    name: str
    parent: tuple[str, str]  # the partitioned table it is a partition of (an intermediate level or the table)
    bound: str  # pg_get_expr(relpartbound): FOR VALUES FROM (...) TO (...), or DEFAULT
    uppers: tuple[str, ...]  # upper bounds on the timestamp, of the leaf and its partitioned ancestors

    @property
    def qualified_name(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def relation(self) -> sql.Composed:
        return qualified(self.schema, self.name)

    @property
    def parent_relation(self) -> sql.Composed:
        return qualified(*self.parent)

    @property
    def default(self) -> bool:
        return self.bound == "DEFAULT"

    def doc(self) -> dict[str, Any]:
        """What manifests and the checkpoint record of the leaf (restore recreates it from this)."""
        return {"schema": self.schema, "name": self.name, "parent": list(self.parent), "bound": self.bound}


def leaves(conn: psycopg.Connection[Any], oid: int, ts_column: str, *, only: int | None = None) -> list[Leaf]:
    """The leaf partitions under a partitioned table, each with the upper bounds that limit its
    timestamps (levels range-partitioned on the timestamp column alone); [] for a plain table.
    only: the leaf with this oid alone, if it is still under the table, read from the catalog rows
    of it and its ancestors (re-reading the whole tree for each leaf retired took ~17 ms a leaf
    with 1,000 daily leaves, ~17 s of a first run retiring them; this takes ~1.5 ms)."""
    if only is None:
        rows = conn.execute(_TREE_SQL, {"oid": oid, "ts": ts_column}).fetchall()
    else:
        rows = conn.execute(_LEAF_SQL, {"oid": oid, "ts": ts_column, "leaf": only}).fetchall()
    by_oid = {r[0]: r for r in rows}
    out = []
    for r in rows:
        if not r[7]:
            continue
        uppers, node = [], r
        while node is not None:  # the leaf, then its ancestors below the named table
            m = _UPPER.search(node[6])
            if node[8] and m and "MAXVALUE" not in m.group(1):
                uppers.append(m.group(1))
            node = by_oid.get(node[3])
        out.append(Leaf(r[0], r[1], r[2], (r[4], r[5]), r[6], tuple(uppers)))
    return sorted(out, key=lambda leaf: (leaf.default, leaf.bound, leaf.name))


def whole_before(conn: psycopg.Connection[Any], sel: Selection, leaf: Leaf) -> bool:
    """Whether the partition bounds alone keep every row of the leaf before the cutoff."""
    if leaf.default or not leaf.uppers:
        return False
    cutoff = sql.Literal(sel._bound(sel.cutoff))
    # The bounds are pg_get_expr() output from the catalog (constants), not user input.
    checks = sql.SQL(" OR ").join(sql.SQL("({})::{} <= {}").format(sql.SQL(u), sql.SQL(sel.ts_type), cutoff)  # type: ignore[arg-type]
                                  for u in leaf.uppers)
    row = conn.execute(sql.SQL("SELECT {}").format(checks)).fetchone()
    return bool(row and row[0])


def retirable(conn: psycopg.Connection[Any], sel: Selection, among: Iterable[Leaf],
              triggered: Mapping[int, str]) -> list[Leaf]:
    """The leaves (of `among`, the table's: leaves()) a detach/drop run retires whole: every row
    before the cutoff by the bounds, and no DELETE trigger to pass over (`triggered`:
    delete_guard.delete_triggers). None when the table's `where` or a foreign key keeps some
    expired rows in the table (a whole partition would take them along)."""
    if sel.table.where is not None or sel.references:
        return []
    return [leaf for leaf in among if leaf.oid not in triggered and whole_before(conn, sel, leaf)]


def leaf_selection(sel: Selection, leaf: Leaf) -> Selection:
    """The table's selection reading the leaf only (objects keep the table's name and layout)."""
    return replace(sel, source=(leaf.schema, leaf.name))


@dataclass(frozen=True)
class LeafCount:
    rows: int
    not_expired: int  # rows the expiry predicate leaves out: newer than the cutoff, or before year 1
    written_since: int = 0  # rows the export's snapshot did not see (inserted or updated since)

    def holds(self, rows: int) -> bool:
        """Exactly the `rows` exported: as many, all expired, and none written since the export.
        The count alone let through an update, or a delete and an insert in one transaction:
        the leaf was dropped holding a row, or a row's new value, that no object held."""
        return self.rows == rows and self.not_expired == 0 and self.written_since == 0


def count_leaf(conn: psycopg.Connection[Any], sel: Selection, relation: sql.Composable, *,
               commit: bool = True, snapshot: str | None = None) -> LeafCount:
    """All of a relation's rows, those the predicate would not archive, and (given a snapshot
    taken before the leaf's first read: ArrowSource.snapshot) those that snapshot does not see.
    A row it sees was committed before every read of the leaf began, so the read of its range
    exported it; any row written since, by an update, an insert, or a delete undone by an insert,
    is unseen. So when none is unseen and the count is equal, the leaf holds exactly the rows
    exported. A row committed between the snapshot and the read of its range is unseen too,
    though exported: the leaf then goes row by row, which is safe.

    Rows older than the snapshot's xmin (the oldest transaction running then) are seen: age()
    tells those first, cheaply and across wraparound, and only younger rows take the exact test
    (txid_visible_in_snapshot on xmin's 64-bit form: ~140 ms per 1.2M rows, against ~40 for age()).
    The age test alone would refuse every leaf written after some long transaction began, in any
    database of the cluster."""
    pred, _ = sel.predicate(literal=True)
    since: sql.Composable = sql.SQL("0")
    if snapshot is not None:
        oldest = int(snapshot.split(":")[0]) & 0xFFFFFFFF  # txid_snapshot text: xmin:xmax:xip,...
        since = sql.SQL("count(*) FILTER (WHERE age(xmin) <= age({}::xid)"
                        " AND NOT txid_visible_in_snapshot({}, {}::txid_snapshot))").format(
            sql.Literal(str(oldest)), _xmin_txid(conn), sql.Literal(snapshot))
    row = conn.execute(sql.SQL("SELECT count(*), count(*) FILTER (WHERE NOT ({})), {} FROM {}").format(
        pred, since, relation)).fetchone()
    if commit:
        conn.commit()
    assert row is not None
    return LeafCount(int(row[0]), int(row[1]), int(row[2]))


def holds_unarchivable(conn: psycopg.Connection[Any], sel: Selection, relation: sql.Composable) -> bool:
    """Whether a leaf holds a row the predicate leaves out (before year 1, say): such a leaf goes
    row by row. EXISTS, not a count: PostgreSQL turns NOT (ts < cutoff AND ts >= floor) into two
    ranges of the timestamp's index where there is one (EXPLAIN: a BitmapOr of two index scans), so
    a leaf without such rows costs two index probes, not a scan."""
    pred, _ = sel.predicate(literal=True)
    row = conn.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE NOT ({}))").format(relation, pred)).fetchone()
    conn.commit()
    return bool(row and row[0])


def _xmin_txid(conn: psycopg.Connection[Any]) -> sql.Composed:
    """A row's xmin as a 64-bit txid (xmin is 32 bits; txid_visible_in_snapshot takes the epoch
    too): the current epoch's, or the one before for an xmin above the next xid's low 32 bits.
    Every live row's xmin lies within 2^31 transactions of the next one (wraparound protection)."""
    row = conn.execute("SELECT txid_snapshot_xmax(txid_current_snapshot())").fetchone()
    assert row is not None
    nxt = int(row[0])
    return sql.SQL("({} + xmin::text::bigint - CASE WHEN xmin::text::bigint > {} THEN 4294967296 ELSE 0 END)").format(
        sql.Literal(nxt >> 32 << 32), sql.Literal(nxt & 0xFFFFFFFF))


@dataclass
class Verified:
    ok: bool
    rows: int
    written_since: int = 0


@contextmanager
def drop_verified(conn: psycopg.Connection[Any], sel: Selection, leaf_doc: dict[str, Any], *, rows: int,
                  drop: bool, snapshot: str | None) -> Iterator[Verified]:
    """A detached leaf locked (ACCESS EXCLUSIVE: nothing can write into it any more) and counted
    in one transaction; the caller's block runs under the lock (it finishes the leaf's batches when
    the count is right), then with `drop` the leaf is dropped, and the transaction commits. One
    count where a count after the detach and another before the drop left a window between them.
    A block that raises is rolled back here; one that finds the count wrong rolls back itself."""
    rel = qualified(leaf_doc["schema"], leaf_doc["name"])
    conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(rel))
    n = count_leaf(conn, sel, rel, commit=False, snapshot=snapshot)
    verified = Verified(n.holds(rows), n.rows, n.written_since)
    try:
        yield verified
    except BaseException:
        conn.rollback()
        raise
    if verified.ok:
        if drop:
            conn.execute(sql.SQL("DROP TABLE {}").format(rel))
        conn.commit()


def has_default(conn: psycopg.Connection[Any], parent: tuple[str, str]) -> bool:
    return default_partition(conn, parent) is not None


def leaf_state(conn: psycopg.Connection[Any], doc: dict[str, Any]) -> str:
    """'attached', 'pending' (a DETACH CONCURRENTLY that did not finish), 'detached' (a table of
    its own) or 'gone'."""
    row = conn.execute(
        "SELECT c.oid, (SELECT i.inhdetachpending FROM pg_inherits i WHERE i.inhrelid = c.oid)"
        " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s",
        (doc["schema"], doc["name"])).fetchone()
    conn.commit()
    if row is None:
        return "gone"
    return "detached" if row[1] is None else ("pending" if row[1] else "attached")


def run_ddl(conn: psycopg.Connection[Any], statement: sql.Composed) -> None:
    """DDL in autocommit: DETACH ... CONCURRENTLY refuses a transaction block. The advisory lock
    is the session's, so it stays."""
    conn.commit()
    conn.autocommit = True
    try:
        conn.execute(statement)
    finally:
        conn.autocommit = False


def detach(conn: psycopg.Connection[Any], leaf_doc: dict[str, Any]) -> None:
    parent, rel = qualified(*leaf_doc["parent"]), qualified(leaf_doc["schema"], leaf_doc["name"])
    # CONCURRENTLY (PostgreSQL 14+) takes no ACCESS EXCLUSIVE lock on the table, but is refused
    # next to a default partition.
    concurrently = conn.info.server_version >= 140000 and not has_default(conn, tuple(leaf_doc["parent"]))  # type: ignore[arg-type]
    try:
        run_ddl(conn, sql.SQL("ALTER TABLE {} DETACH PARTITION {}{}").format(
            parent, rel, sql.SQL(" CONCURRENTLY") if concurrently else sql.SQL("")))
    except _WAITED as exc:
        left = ("it is left detach-pending, its rows archived and counted once, and the next run finishes the "
                "detach" if concurrently else "it stays attached, and the next run takes its batches back and "
                "retires it again")
        raise DatabaseError(waited(conn, f"DETACH PARTITION {_name(leaf_doc)}{' CONCURRENTLY' if concurrently else ''}",
                                   exc, left)) from exc


#: A DETACH waits for older transactions (CONCURRENTLY) or for the table's lock (plain), and
#: statement_timeout or lock_timeout may end the wait: the database is fine, a transaction is old.
_WAITED = (psycopg.errors.QueryCanceled, psycopg.errors.LockNotAvailable)


def waited(conn: psycopg.Connection[Any], what: str, exc: Exception, left: str) -> str:
    """What to tell the operator when a DETACH gave up waiting: the statement, why, the oldest
    transaction it may have waited for (the usual culprit: a long report or an idle session), and
    the state it leaves."""
    conn.rollback()
    row = conn.execute("SELECT pid, extract(epoch FROM now() - xact_start)::bigint, state FROM pg_stat_activity"
                       " WHERE datname = current_database() AND xact_start IS NOT NULL"
                       # not the archiver's own sessions (one may be reading the next leaf): they end soon
                       " AND application_name IS DISTINCT FROM current_setting('application_name')"
                       " ORDER BY xact_start LIMIT 1").fetchone()
    conn.rollback()
    oldest = f"; the oldest open transaction is pid {row[0]}, open {row[1]} s ({row[2]})" if row else ""
    return f"{what} gave up waiting ({first_line(exc)}){oldest}: {left}; nothing is lost"


def _name(doc: dict[str, Any]) -> str:
    return f"{doc['schema']}.{doc['name']}"


def attach(conn: psycopg.Connection[Any], sel: Selection, leaf_doc: dict[str, Any], *, constraint: str | None = None,
           ctx: dict[str, str] | None = None) -> None:
    """Put a detached leaf back (its bound from the catalog, recorded in the checkpoint). Rows
    written to its range through the table while it was detached went to the parent's default
    partition, and the ATTACH refuses a default holding rows of the range: with the leaf's
    partition constraint (recorded before its detach), they are moved into the leaf and the leaf
    attached in one transaction. Without that, the leaf stayed detached, holding rows that had
    not been archived, and every later run failed the same way."""
    parent, rel = qualified(*leaf_doc["parent"]), qualified(leaf_doc["schema"], leaf_doc["name"])
    statement = sql.SQL("ALTER TABLE {} ATTACH PARTITION {} {}").format(parent, rel, sql.SQL(leaf_doc["bound"]))
    try:
        run_ddl(conn, statement)
        return
    except psycopg.errors.CheckViolation:
        default = default_partition(conn, tuple(leaf_doc["parent"]))  # type: ignore[arg-type]
        if constraint is None or default is None:
            raise
    # The table's columns an INSERT may write (a partition has the same, by name): not generated ones.
    cols = sql.SQL(", ").join(sql.Identifier(c.name) for c in sel.schema.columns if not c.generated)
    with conn.transaction():
        # From the catalog (pg_get_partition_constraintdef), not user input.
        moved = conn.execute(sql.SQL(
            "WITH moved AS (DELETE FROM {d} WHERE {c} RETURNING {cols})"
            " INSERT INTO {rel} ({cols}) OVERRIDING SYSTEM VALUE SELECT {cols} FROM moved").format(
            d=default, c=sql.SQL(constraint), cols=cols, rel=rel)).rowcount  # type: ignore[arg-type]
        conn.execute(statement)
    log.warning("%d rows written to the range of partition %s while it was detached went to the default partition;"
                " moved into it, and it is attached again", moved, _name(leaf_doc), extra=ctx or {})


def default_partition(conn: psycopg.Connection[Any], parent: tuple[str, str]) -> sql.Composed | None:
    row = conn.execute("SELECT n.nspname, c.relname FROM pg_partitioned_table pt JOIN pg_class c ON c.oid = pt.partdefid"
                       " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE pt.partrelid = %s::regclass",
                       (qualified(*parent).as_string(conn),)).fetchone()
    conn.commit()
    return qualified(row[0], row[1]) if row else None


def partition_constraint(conn: psycopg.Connection[Any], oid: int) -> str | None:
    """The leaf's partition constraint as SQL (with its ancestors'), while it is attached."""
    row = conn.execute("SELECT pg_get_partition_constraintdef(%s)", (oid,)).fetchone()
    conn.commit()
    return row[0] if row else None


def settle(conn: psycopg.Connection[Any], sel: Selection, cp: Checkpoint, *, ctx: dict[str, str]) -> dict[str, Any] | None:
    """Bring an interrupted retirement to a state the ledger's rule judges right (see the module's
    docstring). Returns the leaf's record when it is detached and verified (the caller finishes
    it once the ledger has run: drop, or report), None otherwise; clears cp.retiring."""
    r = cp.retiring
    assert r is not None
    doc = r["leaf"]
    name = _name(doc)
    state = leaf_state(conn, doc)
    if state == "pending":
        try:
            run_ddl(conn, sql.SQL("ALTER TABLE {} DETACH PARTITION {} FINALIZE").format(
                qualified(*doc["parent"]), qualified(doc["schema"], doc["name"])))
        except _WAITED as exc:
            raise DatabaseError(waited(conn, f"DETACH PARTITION {name} FINALIZE (an interrupted detach)", exc,
                                       "it stays detach-pending, and the next run tries again")) from exc
        log.info("finished the interrupted detach of partition %s", name, extra=ctx)
        state = "detached"
    cp.retiring = None
    if state == "attached":
        log.info("interrupted retirement of partition %s: still attached; its batches are taken back and it is retired again",
                 name, extra=ctx)
        return None
    if state == "gone":
        log.info("interrupted retirement of partition %s: already dropped", name, extra=ctx)
        return None
    if r.get("rows") is None or not _verified(conn, sel, r):
        attach(conn, sel, doc, constraint=r.get("constraint"), ctx=ctx)
        log.warning("partition %s was detached holding rows that were not archived; attached again, its batches"
                    " are taken back and its rows archived again", name, extra=ctx)
        return None
    return r


def _verified(conn: psycopg.Connection[Any], sel: Selection, r: dict[str, Any]) -> bool:
    """The detached leaf of a retiring record holds exactly the rows archived from it (LeafCount.holds;
    a checkpoint written before the snapshot was recorded is judged by the count)."""
    doc = r["leaf"]
    n = count_leaf(conn, sel, qualified(doc["schema"], doc["name"]), snapshot=r.get("snapshot"))
    return n.holds(int(r["rows"]))


def finish_detached(conn: psycopg.Connection[Any], sel: Selection, r: dict[str, Any], *, mode: str,
                    ctx: dict[str, str], hook: Callable[[str], None]) -> bool:
    """After the leaf's batches are finished: drop it (re-checked first) or report it kept.
    Returns whether it was dropped."""
    doc = r["leaf"]
    name = _name(doc)
    if mode != "drop":
        log.info("partition %s retired: detached and kept as a table of its own (%s); the archiver no longer reads it",
                 name, doc["bound"], extra=ctx)
        return False
    hook("before_drop")
    if not _verified(conn, sel, r):  # a row written into the detached table since
        log.warning("detached partition %s no longer holds exactly the %s rows archived from it; kept, not dropped",
                    name, r["rows"], extra=ctx)
        return False
    run_ddl(conn, sql.SQL("DROP TABLE {}").format(qualified(doc["schema"], doc["name"])))
    log.info("partition %s retired: archived, detached and dropped (%s)", name, doc["bound"], extra=ctx)
    return True


def describe(conn: psycopg.Connection[Any], sel: Selection, oid: int, *, mode: str) -> Iterable[str]:
    """Dry-run lines: which partitions a run would retire whole, and which go row by row."""
    all_leaves = leaves(conn, oid, sel.table.timestamp_column)
    if not all_leaves:
        if mode != "keep":
            yield f"    {ignored(sel, mode)}"
        return
    triggered = delete_triggers(conn, [leaf.oid for leaf in all_leaves]) if mode != "keep" else {}
    whole = {leaf.oid for leaf in retirable(conn, sel, all_leaves, triggered)} if mode != "keep" else set()
    for leaf in all_leaves:
        if leaf.oid in whole:
            action = "would be archived whole, detached" + (" and dropped" if mode == "drop" else " and kept as a table")
        elif mode == "keep":
            action = "expired rows archived and deleted row by row (expired_partitions: keep)"
        elif leaf.default:
            action = "default partition: expired rows archived and deleted row by row"
        elif leaf.oid in triggered:
            action = (f"its DELETE trigger {triggered[leaf.oid]} would not fire for a partition retired whole:"
                      " expired rows archived and deleted row by row")
        elif whole_before(conn, sel, leaf):  # retirable() refused the table: a `where` or a foreign key
            action = (f"wholly before the cutoff, but {held_back(sel)} keeps it: expired rows archived and deleted "
                      "row by row")
        elif not leaf.uppers:  # no level above it is a range on the timestamp column alone
            action = (f"its bounds are not a range of {sel.table.timestamp_column} alone, so they cannot show it wholly"
                      " before the cutoff: expired rows archived and deleted row by row")
        else:
            action = "not wholly before the cutoff: expired rows archived and deleted row by row"
        yield f"    partition {leaf.qualified_name} ({leaf.bound}): {action}"


def held_back(sel: Selection) -> str:
    """What keeps a table's wholly expired leaves from being retired (retirable)."""
    return "the table's `where`" if sel.table.where is not None else "a foreign key that references the table"


def ignored(sel: Selection, mode: str) -> str:
    """Said when expired_partitions asks for retirement on a table that is not partitioned."""
    return (f"expired_partitions: {mode} has no effect: {sel.table.schema_}.{sel.table.name} is not partitioned, "
            "so its expired rows are archived and deleted row by row")
