"""Leaf partitions a restore brings back (issue 15): the archiver retires a wholly expired leaf with
`expired_partitions: drop`, and each manifest of its rows names the leaf, its parent and its bound
(`pg_get_expr` text). Restoring those rows into a parent without a default partition would fail
with "no partition of relation ... found for row", so before loading, a leaf that is gone is
created again from its bound: `CREATE TABLE <schema>.<name> PARTITION OF <parent> <bound>`.

Not recreated (and said so): the target is not partitioned (a --target-table created by restore),
the leaf's parent is not the target or one of its partitioned descendants, the parent has a default
partition (the rows go there), a table of the leaf's name exists but is not attached (detached and
kept), or PostgreSQL refuses the bound because an existing partition overlaps it: then the rows go
wherever PostgreSQL routes them."""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from common.archive.catalog import ArchiveObject
from common.pg.db import qualified
from common.errors import ArchiverError, DataIntegrityError, session_lost

log = logging.getLogger("restore")

# The bound is catalog text the archiver recorded, but a manifest is only as trustworthy as the
# bucket that holds it and the text is spliced into DDL, so only the shape pg_get_expr prints is
# accepted: the keywords of a bound, single-quoted literals, numbers, parentheses and commas. No
# semicolon, comment, identifier, cast, dollar or E'' quote can pass: the worst a forged bound can
# do is give the recreated partition a wrong range. A backslash inside a literal is a character
# like any other, as pg_get_expr printed it: recreate() sets standard_conforming_strings for its
# statement, so it cannot end a literal early ('ACME\Corp' of a LIST leaf was refused, and with
# it every restore of the table).
_TOKEN = re.compile(r"'(?:[^']|'')*'|-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?|[(),]|[A-Za-z]+|\s+")
_WORDS = frozenset({"FOR", "VALUES", "FROM", "TO", "IN", "WITH", "MODULUS", "REMAINDER", "MINVALUE", "MAXVALUE",
                    "NULL", "TRUE", "FALSE"})
#: What PostgreSQL raises when the bound collides with the table as it is now: an existing
#: partition overlaps it (42P17), or the default partition holds rows of its range (23514).
_REFUSED = (psycopg.errors.InvalidObjectDefinition, psycopg.errors.CheckViolation)

_TREE_SQL = """
SELECT n.nspname, c.relname, pt.partdefid <> 0
FROM pg_partition_tree(%s) t JOIN pg_class c ON c.oid = t.relid JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_partitioned_table pt ON pt.partrelid = c.oid
"""
_ATTACHED_SQL = """
SELECT EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhrelid = c.oid)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s
"""


@dataclass(frozen=True)
class Leaf:
    """A leaf partition as a manifest records it."""

    schema: str
    name: str
    parent: tuple[str, str]
    bound: str

    @property
    def qualified_name(self) -> str:
        return f"{self.schema}.{self.name}"

    def describe(self) -> str:
        return f"{self.qualified_name} {self.bound}"


@dataclass
class PartitionPlan:
    create: list[Leaf]
    notes: list[str]


def check_bound(bound: str, *, key: str) -> str:
    """The bound, if it has the shape pg_get_expr prints for a partition bound; raises otherwise."""
    pos, ok = 0, bound.startswith("FOR VALUES ")
    while ok and pos < len(bound):
        m = _TOKEN.match(bound, pos)
        ok = m is not None and (not m.group()[0].isalpha() or m.group().upper() in _WORDS)
        pos = m.end() if m else pos
    if not ok:
        raise DataIntegrityError(f"{key}: its manifest's partition bound {bound!r} is not a partition bound; "
                                 "refusing to create a partition from it")
    return bound


def leaves_of(objects: list[ArchiveObject]) -> list[Leaf]:
    """The distinct leaves the objects' manifests name, in the objects' order."""
    found: dict[tuple[str, str], Leaf] = {}
    for obj in objects:
        doc = obj.manifest.partition if obj.manifest else None
        if not doc or (doc["schema"], doc["name"]) in found:
            continue
        parent = doc.get("parent")
        if not isinstance(parent, list) or len(parent) != 2:
            raise DataIntegrityError(f"{obj.key}: its manifest's partition names no parent table")
        found[(doc["schema"], doc["name"])] = Leaf(str(doc["schema"]), str(doc["name"]), (str(parent[0]), str(parent[1])),
                                                   check_bound(str(doc["bound"]), key=obj.key))
    return list(found.values())


def plan(conn: psycopg.Connection[Any], target_oid: int, target: str, leaves: list[Leaf]) -> PartitionPlan:
    """Which of the leaves to create under the target's partition tree, and why the others are not."""
    out = PartitionPlan([], [])
    if not leaves:
        return out
    tree = {(r[0], r[1]): bool(r[2]) for r in conn.execute(_TREE_SQL, (target_oid,)).fetchall()}
    if not tree:
        return out  # the target is not partitioned: the rows all go into it
    for leaf in leaves:
        row = conn.execute(_ATTACHED_SQL, (leaf.schema, leaf.name)).fetchone()
        parent = f"{leaf.parent[0]}.{leaf.parent[1]}"
        if row is not None and row[0]:
            continue  # still a partition: nothing to do
        if row is not None:
            out.notes.append(_detached_note(conn, leaf, target))
        elif leaf.parent not in tree:
            out.notes.append(f"partition {leaf.qualified_name} not recreated: its parent {parent} is not part of {target}")
        elif tree[leaf.parent]:
            out.notes.append(f"partition {leaf.qualified_name} not recreated: {parent} has a default partition, "
                             "which takes its rows")
        else:
            out.create.append(leaf)
    return out


def _detached_note(conn: psycopg.Connection[Any], leaf: Leaf, target: str) -> str:
    """A leaf retired with expired_partitions: detach is still a table of its own, most likely
    holding the very rows archived from it: attaching it again is the restore (a partition of the
    same name cannot be created beside it)."""
    attach = sql.SQL("ALTER TABLE {} ATTACH PARTITION {} {}").format(
        qualified(*leaf.parent), qualified(leaf.schema, leaf.name), sql.SQL(leaf.bound))  # type: ignore[arg-type]
    return (f"partition {leaf.qualified_name} exists as a table of its own (detached and kept, as expired_partitions:"
            f" detach leaves it): not recreated; its rows go where PostgreSQL routes them in {target}. It may still hold"
            f" them: attach it again ({attach.as_string(conn)}), or restore into a new table with --target-table")


def recreate(conn: psycopg.Connection[Any], leaf: Leaf) -> str | None:
    """Create the leaf in the caller's transaction; None when done, else why PostgreSQL refused
    (an overlapping partition): then nothing changed and the rows go where PostgreSQL routes them."""
    statement = sql.SQL("CREATE TABLE {} PARTITION OF {} {}").format(
        qualified(leaf.schema, leaf.name), qualified(*leaf.parent), sql.SQL(leaf.bound))  # type: ignore[arg-type]
    conn.execute("SAVEPOINT pg_archiver_partition")
    try:
        # check_bound's guarantee rests on it (a backslash in a literal stays a character)
        conn.execute("SET LOCAL standard_conforming_strings = on")
        conn.execute(statement)
    except _REFUSED as exc:
        conn.execute("ROLLBACK TO SAVEPOINT pg_archiver_partition")
        return exc.diag.message_primary or str(exc)
    except psycopg.Error as exc:
        if session_lost(exc):
            raise  # connection trouble: mapped to exit 3 by the caller
        raise ArchiverError(f"cannot recreate partition {leaf.describe()}: {exc.diag.message_primary or exc}") from None
    conn.execute("RELEASE SAVEPOINT pg_archiver_partition")
    return None
