"""What to check: the key prefixes in scope (--database / --table), and the archive read one table at
a time: each table's folder (its data objects, and the legacy layout's keys) and its control folder
(manifest sets, digests, withdrawal records: common/archive/table_index.py), so memory holds one table's
listing, never the bucket's."""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone

from common.archive import layout
from common.cli import check_configured_tables, table_matches
from common.config import Config, DatabaseConfig, TableConfig
from common.archive.manifest_sets import Recorded
from common.archive.storage import ObjectInfo, Storage
from common.archive.table_index import TableId, TableListing, by_table

@dataclass(frozen=True)
class Scope:
    """The part of the archive a run looks at."""

    prefixes: tuple[str, ...]
    #: Configured tables in scope: the ones the database cross-check can look at.
    tables: tuple[tuple[DatabaseConfig, TableConfig], ...]
    #: Archive prefix (s3.prefix), to parse keys back into database/table.
    root: str
    #: Only these tables (--table); None: every table under the prefixes.
    only: tuple[TableId, ...] | None = None
    database: str | None = None

    def includes(self, key: str) -> bool:
        return any(key.startswith(p) for p in self.prefixes)

    def includes_control(self, key: str) -> bool:
        return any(key.startswith(p) for p in self.control_prefixes())

    def control_prefixes(self) -> tuple[str, ...]:
        if self.only is not None:
            return tuple(layout.control_prefix(self.root, *t) for t in self.only)
        if self.database is not None:
            return (layout.control_database_prefix(self.root, self.database),)
        return (layout.control_root(self.root),)


def build_scope(cfg: Config, *, database: str | None = None, table: str | None = None) -> Scope:
    """Prefixes and configured tables for the filters; an unknown database or table is a usage error."""
    root = cfg.s3.prefix
    dbs = [cfg.database(database)] if database else list(cfg.databases)
    if table is None:
        tables = tuple((db, t) for db in dbs for t in db.tables)
        if database:
            return Scope((layout.database_prefix(root, database),), tables, root, database=database)
        return Scope((layout.join(root, ""),), tables, root)
    check_configured_tables(cfg, [table], databases=[database] if database else [])
    chosen = tuple((db, t) for db in dbs for t in db.tables if table_matches(table, t.schema_, t.name))
    prefixes = tuple(layout.table_prefix(root, db.name, t.schema_, t.name) for db, t in chosen)
    only = tuple((db.name, t.schema_, t.name) for db, t in chosen)
    return Scope(prefixes, chosen, root, only=only, database=database)


@dataclass(frozen=True)
class Entry:
    """One data object and/or its manifest; either side may be missing, which is itself a finding."""

    key: str
    data: ObjectInfo | None
    manifest: Recorded | None

    @property
    def last_modified(self) -> datetime | None:
        return self.data.last_modified if self.data is not None else None

    def since(self, when: datetime | None) -> bool:
        """Archived at or after `when` (objects with no timestamp are always included)."""
        stamp = self.last_modified
        if when is None or stamp is None:
            return True
        aware = stamp if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc)
        return aware >= when


def tables(store: Storage, scope: Scope) -> Iterator[tuple[TableId | None, TableListing]]:
    """Each table's listing in the store, one table at a time (the keys of a table's folder are
    contiguous in a listing: every one starts with `<database>/<schema>.<table>/`). Keys in no
    table's folder come as strays, with None for the table. The control folders are listed first
    (they are small); a table with a control folder and no data is listed too."""
    controls: dict[TableId, list[ObjectInfo]] = {}
    for prefix in scope.control_prefixes():
        for info in store.list(prefix):
            t = layout.table_of_control(scope.root, info.key)
            if t is not None:
                controls.setdefault(t, []).append(info)
    strays = TableListing(scope.root)
    for prefix in scope.prefixes:
        for table, infos in by_table(_data_keys(store.list(prefix)), scope.root):
            if table is None:
                for info in infos:
                    strays.strays.append(info)
                continue
            if scope.only is not None and table not in scope.only:
                continue
            yield table, _listing(scope.root, infos, controls.pop(table, []))
    for table in sorted(controls):
        if scope.only is None or table in scope.only:
            yield table, _listing(scope.root, [], controls[table])
    if strays.strays:
        yield None, strays


def _data_keys(infos: Iterable[ObjectInfo]) -> Iterator[ObjectInfo]:
    """The listing without control folders (listed on their own)."""
    return (i for i in infos if not layout.in_control(i.key))


def _listing(root: str, data: list[ObjectInfo], control: list[ObjectInfo]) -> TableListing:
    listing = TableListing(root)
    for info in [*data, *control]:
        listing.add(info)
    return listing.finish()
