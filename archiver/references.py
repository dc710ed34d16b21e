"""Foreign keys that reference an archived table, read from the catalog before anything is exported.

Deleting an archived row fires the referencing table's ON DELETE action. CASCADE, SET NULL and SET
DEFAULT would delete or change rows of the referencing table that were never archived, so such a
table is refused. NO ACTION and RESTRICT make the delete fail while a reference exists, so a row
still referenced is left out of the selection (archiver/selection.py) and stays in the table until
nothing references it."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from common.pg.db import qualified
from common.errors import ArchiverError, ErrorKind

#: pg_constraint.confdeltype
ACTIONS = {"a": "NO ACTION", "r": "RESTRICT", "c": "CASCADE", "n": "SET NULL", "d": "SET DEFAULT"}
#: Actions under which deleting a referenced row changes the referencing rows instead of failing.
CHANGING = frozenset("cnd")

# Top-level constraints only (conparentid = 0): PostgreSQL clones a partitioned referencing table's
# constraint onto each partition, and the parent's covers them all. The table itself, when it is a
# partition any of its ancestors (pg_partition_ancestors), and when it is partitioned any partition
# below it (pg_partition_tree: a foreign key may name one leaf; deleting through the parent fires
# it all the same) may be the one referenced; both list the table itself too, and nothing for a
# table that is not partitioned. Column names come from the referenced relation's attributes, which
# a partition shares by name, not necessarily by number.
REFERENCES_SQL = """
SELECT c.conname, n.nspname, r.relname, c.confdeltype, c.condeferrable,
       array(SELECT a.attname FROM unnest(c.conkey) WITH ORDINALITY k(num, i)
             JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.num ORDER BY k.i),
       array(SELECT a.attname FROM unnest(c.confkey) WITH ORDINALITY k(num, i)
             JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.num ORDER BY k.i)
FROM pg_constraint c
JOIN pg_class r ON r.oid = c.conrelid
JOIN pg_namespace n ON n.oid = r.relnamespace
WHERE c.contype = 'f' AND c.conparentid = 0
  AND (c.confrelid = %(oid)s OR c.confrelid IN (SELECT relid FROM pg_partition_ancestors(%(oid)s))
       OR c.confrelid IN (SELECT relid FROM pg_partition_tree(%(oid)s)))
ORDER BY n.nspname, r.relname, c.conname
"""

#: The alias of the referencing table inside the sub-select: a self-reference needs one, and the
#: archived table's own columns are qualified with its full name there.
ALIAS = sql.Identifier("referencing")


@dataclass(frozen=True)
class Reference:
    """One foreign key of another (or the same) table that references the archived table."""

    constraint: str
    schema: str
    table: str
    action: str  # pg_constraint.confdeltype: a, r, c, n or d
    deferrable: bool
    columns: tuple[str, ...]  # of the referencing table
    referenced: tuple[str, ...]  # of the archived table, pairwise with `columns`

    @property
    def name(self) -> str:
        return f"{self.schema}.{self.table}"

    @property
    def action_name(self) -> str:
        return ACTIONS.get(self.action, self.action)

    @property
    def changes_rows(self) -> bool:
        return self.action in CHANGING

    def describe(self) -> str:
        return f"foreign key {self.constraint} of {self.name} (ON DELETE {self.action_name})"

    def exists(self, outer: sql.Composable, *, other_rows: bool = False) -> sql.Composed:
        """EXISTS a row of the referencing table that points at the row of `outer` (the archived
        table's qualified name). A NULL in a referencing column matches nothing, as for the
        constraint itself (MATCH SIMPLE: such a row references nothing). With `other_rows` (a
        reference from the table to itself) the row itself does not count: PostgreSQL deletes a
        row that references itself, even under RESTRICT, and such a row was kept forever."""
        cond = sql.SQL(" AND ").join(
            sql.SQL("{a}.{col} = {outer}.{ref}").format(a=ALIAS, col=sql.Identifier(col), outer=outer, ref=sql.Identifier(ref))
            for col, ref in zip(self.columns, self.referenced))
        if other_rows:  # tableoid too: two partitions' rows may share a ctid
            cond = sql.SQL("{cond} AND ({a}.tableoid, {a}.ctid) <> ({outer}.tableoid, {outer}.ctid)").format(
                cond=cond, a=ALIAS, outer=outer)
        return sql.SQL("EXISTS (SELECT 1 FROM {rel} AS {a} WHERE {cond})").format(
            rel=qualified(self.schema, self.table), a=ALIAS, cond=cond)


class RefusedReferences(ArchiverError):
    """The table is referenced by a foreign key whose ON DELETE action would change rows that are
    not archived: the table is not archived at all (exit 1 for the run, other tables still run).
    Kind config: what must change is the schema or the config (runbook: Recover from Configuration
    Error, and the foreign-key section)."""

    kind = ErrorKind.CONFIG


def read_references(conn: psycopg.Connection[Any], oid: int) -> list[Reference]:
    rows = conn.execute(REFERENCES_SQL, {"oid": oid}).fetchall()
    return [Reference(constraint=name, schema=schema, table=table, action=action, deferrable=bool(deferrable),
                      columns=tuple(cols), referenced=tuple(refs))
            for name, schema, table, action, deferrable, cols, refs in rows]


def refusal(refs: Sequence[Reference]) -> str:
    """Why a table is refused: each constraint whose action would change unarchived rows."""
    changing = [r for r in refs if r.changes_rows]
    return (f"{'; '.join(r.describe() for r in changing)}: deleting archived rows would change rows of "
            f"{', '.join(sorted({r.name for r in changing}))} that are not archived. Set `children: archive` on the table to"
            " archive the referencing rows with it, archive the referencing table first, or change the constraint to"
            " ON DELETE NO ACTION")


def blocking_references(conn: psycopg.Connection[Any], oid: int, table: str, *, deletes: bool) -> tuple[Reference, ...]:
    """The references whose referenced rows must stay in the table (NO ACTION, RESTRICT); raises
    RefusedReferences for any CASCADE, SET NULL or SET DEFAULT. A run that deletes nothing
    (delete_after_archive: false) fires no ON DELETE action: no reference matters to it."""
    if not deletes:
        return ()
    refs = read_references(conn, oid)
    if any(r.changes_rows for r in refs):
        raise RefusedReferences(f"{table} refused: {refusal(refs)}; nothing was exported or deleted")
    return tuple(refs)


def kept_message(count: int, tables: Iterable[str]) -> str:
    """'12 expired rows kept: still referenced by public.audit_refs' (every referencing table)."""
    return f"{count} expired rows kept: still referenced by {', '.join(sorted(set(tables)))}"
