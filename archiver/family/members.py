"""`children: archive` (issue 28): the family of an archived table, read from the catalog before
anything is exported. Every table that references the archived table through a foreign key,
directly or through other children, at any depth and with any ON DELETE action, is a child: the
rows that reference a batch's rows are archived and deleted with it (archiver/family/job.py).

Refused, before anything is exported: a child that references two archived tables (two members of
the family, or a member and another configured table), a cycle (a member referencing one of its
ancestors, or a child referencing itself), and a child with no key to delete its rows by. A
self-reference of the archived table itself works as without children: a row another row still
references stays (archiver/references.py)."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg

from archiver.references import Reference, RefusedReferences, read_references
from common.pg.db import table_oid, table_schema, unique_keys
from common.pgtypes import TableSchema

#: Foreign keys a table holds (it is the referencing side), top-level constraints only, with the
#: table they reference: a child referencing a second archived table is refused.
OUTGOING_SQL = """
SELECT c.conname, n.nspname, r.relname
FROM pg_constraint c
JOIN pg_class r ON r.oid = c.confrelid
JOIN pg_namespace n ON n.oid = r.relnamespace
WHERE c.contype = 'f' AND c.conparentid = 0 AND c.conrelid = %(oid)s
ORDER BY c.conname
"""

#: Whether a relation is partitioned (its rows are in its leaves; DELETE through it reaches them).
PARTITIONED_SQL = "SELECT relkind = 'p' FROM pg_class WHERE oid = %(oid)s"


class RefusedFamily(RefusedReferences):
    """The family cannot be archived as it is: the table is not archived at all (kind config)."""


@dataclass(frozen=True)
class Child:
    """A table whose rows move with their parent's rows."""

    oid: int
    schema: str
    table: str
    #: Its foreign key to its parent (`ref.columns` are this table's, `ref.referenced` the parent's).
    ref: Reference
    parent: tuple[str, str]
    generation: int  # 1: references the archived table; 2: references a child of it; ...
    columns: TableSchema
    keys: tuple[str, ...]
    partitioned: bool = False

    @property
    def name(self) -> str:
        return f"{self.schema}.{self.table}"

    @property
    def parent_name(self) -> str:
        return f"{self.parent[0]}.{self.parent[1]}"

    def describe(self) -> str:
        cols = ", ".join(self.ref.columns)
        refs = ", ".join(self.ref.referenced)
        return (f"{self.name} (generation {self.generation}): foreign key {self.ref.constraint} ({cols}) references"
                f" {self.parent_name} ({refs}), ON DELETE {self.ref.action_name}")


@dataclass(frozen=True)
class Family:
    """The archived table and its children, top-down (every child after its parent)."""

    schema: str
    table: str
    children: tuple[Child, ...] = ()
    #: The archived table's references to itself: handled as without children.
    own: tuple[Reference, ...] = field(default=())

    @property
    def name(self) -> str:
        return f"{self.schema}.{self.table}"

    def of(self, parent: tuple[str, str]) -> list[Child]:
        """The children whose parent is that table."""
        return [c for c in self.children if c.parent == parent]

    @property
    def first(self) -> list[Child]:
        return self.of((self.schema, self.table))

    def deepest_first(self) -> list[Child]:
        return sorted(self.children, key=lambda c: -c.generation)


def discover(conn: psycopg.Connection[Any], oid: int, schema: str, table: str, *,
             archived: Iterable[tuple[str, str]] = ()) -> Family:
    """The family of the table, or RefusedFamily saying why it cannot be archived. `archived`:
    the other tables configured in the database (a child may not reference one of them)."""
    name = f"{schema}.{table}"
    root = (schema, table)
    others = {t for t in archived if t != root}
    own = [r for r in read_references(conn, oid) if (r.schema, r.table) == root]
    changing = [r for r in own if r.changes_rows]
    if changing:  # as without children: deleting a row would change unarchived rows of the table itself
        raise RefusedFamily(f"{name} refused: {'; '.join(r.describe() for r in changing)}: a table that references"
                            " itself is archived as without children: archive, and deleting an archived row would change"
                            " rows of the table that are not archived; change the constraint to ON DELETE NO ACTION;"
                            " nothing was exported or deleted")
    children: dict[tuple[str, str], Child] = {}
    queue: list[tuple[int, tuple[str, str], int]] = [(oid, root, 0)]
    while queue:
        node_oid, node, gen = queue.pop(0)
        for ref in read_references(conn, node_oid):
            member = (ref.schema, ref.table)
            if member == node:
                if node == root:
                    continue  # the archived table's own reference: as without children
                raise RefusedFamily(f"{name} refused: {ref.describe()} makes a cycle (the child references itself);"
                                    " children: archive cannot order its deletes; nothing was exported or deleted")
            if member == root or member in _ancestors(children, node, root):
                raise RefusedFamily(f"{name} refused: {ref.describe()} makes a cycle ({_ref_path(member, node)});"
                                    " nothing was exported or deleted")
            if member in children:
                first = children[member]
                raise RefusedFamily(f"{name} refused: {ref.name} references two archived tables ({first.parent_name}"
                                    f" through {first.ref.constraint}, {'.'.join(node)} through {ref.constraint});"
                                    " its rows cannot follow two parents; nothing was exported or deleted")
            child = _child(conn, ref, node, gen + 1, name)
            _check_outgoing(conn, child, others | {root} | set(children), name)
            children[member] = child
            queue.append((child.oid, member, gen + 1))
    return Family(schema, table, tuple(children.values()), tuple(own))


def _child(conn: psycopg.Connection[Any], ref: Reference, parent: tuple[str, str], generation: int, root: str) -> Child:
    oid = table_oid(conn, ref.schema, ref.table)
    candidates = unique_keys(conn, oid)
    key = next((cols for cols, primary, _ in candidates if primary), None) or next(
        (cols for cols, _, notnull in candidates if notnull), None)
    if key is None:
        raise RefusedFamily(f"{root} refused: its child {ref.name} has no primary key nor a unique index whose columns"
                            " are all NOT NULL, so its rows cannot be deleted exactly; nothing was exported or deleted")
    row = conn.execute(PARTITIONED_SQL, {"oid": oid}).fetchone()
    return Child(oid=oid, schema=ref.schema, table=ref.table, ref=ref, parent=parent, generation=generation,
                 columns=table_schema(conn, oid), keys=tuple(key), partitioned=bool(row and row[0]))


def _check_outgoing(conn: psycopg.Connection[Any], child: Child, archived: set[tuple[str, str]], root: str) -> None:
    """A child's other foreign keys may not point at another archived table (or at a second one of
    the family): its rows would have to move with two parents."""
    for conname, schema, table in conn.execute(OUTGOING_SQL, {"oid": child.oid}).fetchall():
        target = (schema, table)
        if conname == child.ref.constraint or target == (child.schema, child.table):
            continue  # its parent's key; a self-reference is found (and refused) when it is walked
        if target in archived:
            raise RefusedFamily(f"{root} refused: {child.name} references two archived tables ({child.parent_name}"
                                f" through {child.ref.constraint}, {schema}.{table} through {conname}); its rows cannot"
                                " follow two parents; nothing was exported or deleted")


def _ancestors(children: dict[tuple[str, str], Child], node: tuple[str, str], root: tuple[str, str]) -> set[tuple[str, str]]:
    out: set[tuple[str, str]] = set()
    while node != root and node in children:
        out.add(node)
        node = children[node].parent
    return out


def _ref_path(member: tuple[str, str], node: tuple[str, str]) -> str:
    return f"{'.'.join(member)} is an ancestor of {'.'.join(node)} and references it"


def family_lines(family: Family, counts: Sequence[int] | None = None) -> list[str]:
    """The dry run's lines: each child, its foreign key, and how many rows would move."""
    lines = []
    for i, c in enumerate(family.children):
        moving = f": {counts[i]} rows would move with their parents" if counts is not None else ""
        lines.append(f"    child {c.describe()}{moving}")
    return lines
