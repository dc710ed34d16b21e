"""`restore --with-children` (issue 28): a table archived with `children: archive` comes back with
its children's rows: the table's selected objects first, then each generation of children, for
the same objects (--s3-key: the children's objects of that batch) or the same UTC days (their
objects lie in their parent rows' day folders). The family is read from the archive itself: each
child's manifests name the foreign key they follow (Manifest.parent), so it is found even when the
schema has changed since. Every table takes the same conflict strategy; each is restored in its
own transaction(s), parents before children, so a child's rows never wait for a parent."""
from __future__ import annotations

import logging
from datetime import date
from typing import Any

from common.archive.catalog import ArchiveObject, Catalog, TableRef, parse_range, resolve_table
from common.config import Config
from common.errors import ArchiverError, UsageError
from common.archive import manifest_sets
from common.archive.layout import control_database_prefix, is_manifest_set, table_of_control
from restore.engine import RestoreReport, restore_objects, select_objects

log = logging.getLogger("restore")


def restore_family(cfg: Config, *, database: str, table: str, schema: str | None = None, restore_all: bool = False,
                   start_date: date | str | None = None, end_date: date | str | None = None, s3_key: str | None = None,
                   conflict_strategy: str = "fail", target_table: str | None = None, dry_run: bool = False,
                   allow_drop_columns: bool = False, s3_client: Any | None = None) -> list[RestoreReport]:
    """One report per table, parents first. An error names what was restored before it."""
    if target_table:
        raise UsageError("--with-children restores each table into itself; --target-table names one table only")
    first, last = parse_range(start_date, end_date)
    ref = resolve_table(cfg, database, table, schema)
    catalog = Catalog(cfg, s3_client=s3_client)
    objects = select_objects(catalog, ref, restore_all=restore_all, s3_key=s3_key, start=first, end=last)
    reports: list[RestoreReport] = []
    options = {"conflict_strategy": conflict_strategy, "dry_run": dry_run, "allow_drop_columns": allow_drop_columns}
    reports.append(restore_objects(cfg, catalog, ref, objects, **options))  # type: ignore[arg-type]
    batches = {o.key for o in objects}
    for generation in family(cfg, catalog, ref):
        for child in generation:
            chosen = _children_objects(catalog, child, batches if s3_key else None, first, last)
            try:
                # A dry run restores no parent, so their rows are not there to check yet.
                reports.append(restore_objects(cfg, catalog, child, chosen, check_parents_first=not dry_run,
                                               **options))  # type: ignore[arg-type]
            except ArchiverError as exc:
                raise type(exc)(f"{exc}; {_before(reports)}") from exc
            batches |= {o.key for o in chosen}
    return reports


def family(cfg: Config, catalog: Catalog, ref: TableRef) -> list[list[TableRef]]:
    """The archived children of the table, generation by generation: each table of the database
    whose newest manifest set names a parent (one listing of the database's control folders, one
    read per table; a child's manifests all name the same foreign key)."""
    edges: dict[tuple[str, str], tuple[str, str]] = {}  # child -> parent
    for store in catalog.stores():
        newest: dict[tuple[str, str], str] = {}
        for info in store.list(control_database_prefix(catalog.prefix, ref.database)):
            ident = table_of_control(catalog.prefix, info.key)
            if ident is not None and is_manifest_set(info.key) and info.key > newest.get(ident[1:], ""):
                newest[ident[1:]] = info.key
        for (schema, table), key in sorted(newest.items()):
            if (schema, table) in edges or (schema, table) == (ref.schema, ref.table):
                continue
            recorded = manifest_sets.read(store.get(key), key=key)
            parent = next((r.manifest.parent for r in recorded if r.manifest.parent), None)
            if parent:
                edges[(schema, table)] = (parent["schema"], parent["table"])
    out: list[list[TableRef]] = []
    level = [(ref.schema, ref.table)]
    while level:
        nxt = sorted(c for c, p in edges.items() if p in level)
        if nxt:
            out.append([_ref(cfg, ref.database, s, t) for s, t in nxt])
        level = nxt
    return out


def _ref(cfg: Config, database: str, schema: str, table: str) -> TableRef:
    """A child as restore names a table: configured or (usually) only in the archive."""
    return resolve_table(cfg, database, table, schema)


def _children_objects(catalog: Catalog, child: TableRef, batches: set[str] | None, first: date | None,
                      last: date | None) -> list[ArchiveObject]:
    """--s3-key: the child's objects of the selected batches (theirs or their parents'); otherwise
    the child's objects of the same days."""
    objects = catalog.list_objects(child, start=first, end=last)
    if batches is None:
        return objects
    return [o for o in objects if o.manifest and o.manifest.parent and o.manifest.parent.get("batch") in batches]


def _before(reports: list[RestoreReport]) -> str:
    done = [f"{r.target} ({r.rows} rows)" for r in reports if not r.dry_run and r.objects]
    return f"restored before it, and staying: {', '.join(done)}" if done else "nothing was restored before it"
