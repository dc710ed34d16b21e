"""What to check: the key prefixes in scope (--database / --table), and a streaming pass over a listing
that pairs each data object with its `.manifest.json` sidecar without holding the bucket in memory."""
from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone

from common import layout
from common.config import Config, DatabaseConfig, TableConfig
from common.cli import check_configured_tables, table_matches
from common.storage import ObjectInfo


@dataclass(frozen=True)
class Scope:
    """The part of the archive a run looks at."""

    prefixes: tuple[str, ...]
    #: Configured tables in scope: the ones the database cross-check can look at.
    tables: tuple[tuple[DatabaseConfig, TableConfig], ...]
    #: Archive prefix (s3.prefix), to parse keys back into database/table.
    root: str

    def includes(self, key: str) -> bool:
        return any(key.startswith(p) for p in self.prefixes)


def build_scope(cfg: Config, *, database: str | None = None, table: str | None = None) -> Scope:
    """Prefixes and configured tables for the filters; an unknown database or table is a usage error."""
    root = cfg.s3.prefix
    dbs = [cfg.database(database)] if database else list(cfg.databases)
    if table is None:
        tables = tuple((db, t) for db in dbs for t in db.tables)
        if database:
            return Scope((layout.database_prefix(root, database),), tables, root)
        return Scope((layout.join(root, ""),), tables, root)
    check_configured_tables(cfg, [table], databases=[database] if database else [])
    chosen = tuple((db, t) for db in dbs for t in db.tables if table_matches(table, t.schema_, t.name))
    prefixes = tuple(layout.table_prefix(root, db.name, t.schema_, t.name) for db, t in chosen)
    return Scope(prefixes, chosen, root)


@dataclass(frozen=True)
class Entry:
    """One data object and/or its manifest; either side may be missing, which is itself a finding."""

    key: str
    data: ObjectInfo | None
    manifest: ObjectInfo | None

    @property
    def manifest_key(self) -> str:
        return layout.manifest_key(self.key)

    @property
    def last_modified(self) -> datetime | None:
        stamps = [o.last_modified for o in (self.data, self.manifest) if o is not None and o.last_modified]
        return max(stamps) if stamps else None

    def since(self, when: datetime | None) -> bool:
        """Archived at or after `when` (objects with no timestamp are always included)."""
        stamp = self.last_modified
        if when is None or stamp is None:
            return True
        aware = stamp if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc)
        return aware >= when


Head = Callable[[str], "ObjectInfo | None"]


def pair_listing(listing: Iterable[ObjectInfo], *, head: Head) -> Iterator[Entry]:
    """Yield Entries as soon as each pair is complete. A listing in key order (S3's, and LocalStorage's
    per directory) puts `<key>.manifest.json` after `<key>` with only longer names of the same key
    between them, so only a handful of keys wait at any time. `head` confirms a missing partner
    before it is reported, so an unexpected order costs a request, never a false finding."""
    waiting: dict[str, ObjectInfo] = {}
    due: list[tuple[str, str]] = []  # heap of (manifest key, data key) for keys still waiting
    seen_early: set[str] = set()  # keys already paired through head(); skipped when listed
    for info in listing:
        yield from _flush(waiting, due, seen_early, upto=info.key, head=head)
        if info.key in seen_early:
            seen_early.discard(info.key)
        elif layout.is_manifest(info.key):
            dkey = layout.data_key(info.key)
            data = waiting.pop(dkey, None)
            if data is None:
                data = head(dkey)
                if data is not None:
                    seen_early.add(dkey)
            yield Entry(dkey, data, info)
        else:
            waiting[info.key] = info
            heapq.heappush(due, (layout.manifest_key(info.key), info.key))
    yield from _flush(waiting, due, seen_early, upto=None, head=head)


def _flush(waiting: dict[str, ObjectInfo], due: list[tuple[str, str]], seen_early: set[str], *,
           upto: str | None, head: Head) -> Iterator[Entry]:
    """Emit waiting data keys whose manifest would have been listed before `upto` (None: all)."""
    while due and (upto is None or due[0][0] < upto):
        mkey, dkey = heapq.heappop(due)
        data = waiting.pop(dkey, None)
        if data is None:
            continue  # paired already
        manifest = head(mkey)
        if manifest is not None and upto is not None:
            seen_early.add(mkey)
        yield Entry(dkey, data, manifest)
