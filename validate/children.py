"""orphaned_child (issue 28): a child's archived rows whose parent row is neither in the archive nor in
the parent table. Such rows were archived with their parents (`children: archive`); a parent gone
from both places (erased from the archive, deleted from the table after a restore) leaves them
pointing at nothing, and `restore --table <child>` would refuse them."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pyarrow as pa
from psycopg import sql

from common import batch_writer
from common.key_range import natural_column
from common.archive.manifest import Manifest
from common.pgtypes import TableSchema
from common.archive.storage import Storage
from common.archive.table_index import load_table

#: Missing parent keys named per object.
SAMPLE = 3
Parent = tuple[str, str, str, tuple[str, ...]]  # database, schema, table, referenced columns


def parent_references(table: pa.Table, m: Manifest) -> set[tuple[Any, ...]]:
    """The distinct values of the foreign key an object's rows follow (a NULL references nothing)."""
    assert m.parent is not None
    schema = TableSchema.from_json(m.columns)
    cols = [natural_column(table, c, schema).to_pylist() for c in m.parent["columns"]]
    return {tuple(_plain(v) for v in r) for r in zip(*cols) if None not in r}


def _plain(value: Any) -> Any:
    """A value as both sides of the comparison hold it: text for anything but int and str."""
    return value if isinstance(value, (int, str)) else str(value)


def orphaned(checked: Iterable[Any], store: Storage, root: str, pools: dict[str, Any]) -> list[tuple[Any, str]]:
    """(checked object, what) for each child object with rows whose parent is nowhere. `pools`: the
    database pools of the live cross-check (validate/dbcheck.py), by database."""
    groups: dict[Parent, list[Any]] = {}
    for c in checked:
        m = c.manifest
        if c.references and m is not None and m.parent:
            groups.setdefault((m.database, m.parent["schema"], m.parent["table"], tuple(m.parent["referenced"])), []).append(c)
    out: list[tuple[Any, str]] = []
    for parent, objects in groups.items():
        wanted = set().union(*(c.references for c in objects))
        missing = wanted - _archived(store, root, parent)
        if missing:
            missing -= _in_table(pools.get(parent[0]), parent, missing)
        for c in objects:
            orphans = sorted(c.references & missing, key=repr)
            if orphans:
                shown = ", ".join(str(o[0] if len(o) == 1 else o) for o in orphans[:SAMPLE])
                out.append((c, f"its rows reference {len(orphans)} rows of {parent[1]}.{parent[2]}"
                               f" ({', '.join(parent[3])} = {shown}{', …' if len(orphans) > SAMPLE else ''}) that are"
                               " neither archived nor in the table"))
    return out


def _archived(store: Storage, root: str, parent: Parent) -> set[tuple[Any, ...]]:
    """The referenced columns' values of the parent's archived rows."""
    database, schema, table, referenced = parent
    listing, index = load_table(store, root, database, schema, table)
    found: set[tuple[Any, ...]] = set()
    for key, r in index.objects.items():
        if key not in listing.data:
            continue
        rows, tschema, _enc, _doc = batch_writer.decode(store.get(key), fmt=batch_writer.format_of(key),
                                                        columns=list(referenced))
        cols = [natural_column(rows, c, tschema).to_pylist() for c in referenced]
        found |= {tuple(_plain(v) for v in row) for row in zip(*cols)}
    return found


def _in_table(pool: Any, parent: Parent, values: set[tuple[Any, ...]]) -> set[tuple[Any, ...]]:
    """Which of the values the parent table holds (none when its database is not in scope)."""
    if pool is None or not values:
        return set()
    _db, schema, table, referenced = parent
    cols = sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in referenced)
    texts = [[str(v[i]) for v in values] for i in range(len(referenced))]
    match = sql.SQL("({}) IN (SELECT * FROM unnest({}))").format(
        sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in referenced),
        sql.SQL(", ").join(sql.SQL("%s::text[]") for _ in referenced))
    query = sql.SQL("SELECT {} FROM {}.{} WHERE {}").format(cols, sql.Identifier(schema), sql.Identifier(table), match)
    with pool.connection() as conn:
        try:
            rows = conn.execute(query, texts).fetchall()
        except Exception:  # noqa: BLE001 - a parent table gone: nothing of it is in the table
            return set()
    present = {tuple(r) for r in rows}
    return {v for v in values if tuple(str(x) for x in v) in present}
