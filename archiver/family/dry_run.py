"""The dry run of a table with `children: archive` (issue 28): the table's line, then its family,
each child with its foreign key and how many of its rows would move with the table's expired rows;
or the refusal a run would meet (a cycle, a child referencing two archived tables)."""
from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from archiver import partitions
from archiver.delete_guard import DeletesRefused, check_deletes
from archiver.family.members import RefusedFamily, discover, family_lines
from archiver.family.queries import moving_query
from archiver.references import kept_message
from archiver.selection import Selection
from common.config import Config, TableConfig
from common.expiry import cutoff_for
from common.pgtypes import TableSchema


def family_dry_run(conn: Any, cfg: Config, t: TableConfig, oid: int, schema: TableSchema, keys: tuple[str, ...],
                   db_now: datetime, *, table_line: Callable[[Any, Selection, Any], str],
                   key_words: Callable[[tuple[str, ...]], str]) -> tuple[list[str], bool]:
    """The dry run's lines for the table, True when a run would refuse it. `table_line` and
    `key_words` are the dry run's own (archiver/dry_run.py): the table's line is as for any table."""
    name = f"{t.schema_}.{t.name}"
    opts = cfg.options(t)
    try:
        if not opts.delete_after_archive:
            raise RefusedFamily(f"{name} refused: children: archive needs delete_after_archive: true")
        family = discover(conn, oid, t.schema_, t.name, archived=[(x.schema_, x.name) for d in cfg.databases
                                                                   if t in d.tables for x in d.tables])
        for child in family.children:
            check_deletes(conn, child.oid, child.name, retire=False)
    except (RefusedFamily, DeletesRefused) as exc:
        conn.rollback()
        return [f"  {name}: key {key_words(keys)}, {exc}"], True
    sel = Selection(t, schema, cutoff_for(opts.retention_days, db_now), keys, family.own)
    lines = [table_line(conn, sel, opts)]
    if opts.expired_partitions != "keep" and family.children:
        lines.append(f"    expired_partitions {opts.expired_partitions} is not used with children: archive: rows move row by row")
    else:
        lines += partitions.describe(conn, sel, oid, mode=opts.expired_partitions)
    pred, _ = sel.predicate(literal=True)
    counts = [int(conn.execute(moving_query(family, c, sel.relation, pred)).fetchone()[0]) for c in family.children]
    lines.append(f"    children: archive: {len(family.children)} tables move with it" if family.children
                 else "    children: archive: no table references it")
    lines += family_lines(family, counts)
    if family.own and (kept := int(conn.execute(sel.kept_query()).fetchone()[0])):
        lines.append(f"    {kept_message(kept, (r.name for r in family.own))}")
    conn.rollback()
    return lines, False
