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
        """The manifest's own key (of whichever layout), or where a missing one belongs."""
        return self.manifest.key if self.manifest is not None else layout.manifest_key(self.key)

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


class _Pairing:
    """The state of pair_listing: keys waiting for their partner, each with the listing position past
    which the partner would have been listed (a heap), so that only a handful of keys wait."""

    def __init__(self, head: Head) -> None:
        self.head = head
        self.data: dict[str, ObjectInfo] = {}  # data keys waiting for a legacy manifest listed after them
        self.manifests: dict[str, ObjectInfo] = {}  # data key -> hidden manifest waiting for its data
        self.due: list[tuple[str, str, str]] = []  # heap of (position, what, data key)
        self.seen_early: set[str] = set()  # keys already paired through head(); skipped when listed
        self.paired: set[str] = set()  # data keys paired with a hidden manifest: a legacy copy is a leftover

    def wait(self, position: str, what: str, dkey: str) -> None:
        heapq.heappush(self.due, (position, what, dkey))

    def take(self, info: ObjectInfo) -> Iterator[Entry]:
        key = info.key
        if key in self.seen_early:
            self.seen_early.discard(key)
        elif not layout.is_manifest(key):
            yield from self._data(info)
        elif layout.is_legacy_manifest(key):
            yield from self._legacy(info)
        else:
            yield from self._hidden(info)

    def _data(self, info: ObjectInfo) -> Iterator[Entry]:
        manifest = self.manifests.pop(info.key, None)
        if manifest is not None:  # its hidden manifest sorts before it
            yield self._pair(info.key, info, manifest)
        else:
            self.data[info.key] = info
            self.wait(layout.legacy_manifest_key(info.key), "data", info.key)

    def _legacy(self, info: ObjectInfo) -> Iterator[Entry]:
        dkey = layout.data_key(info.key)
        if dkey in self.paired:
            return  # the old copy of a manifest migrated beside it: the hidden one counts
        data = self.data.pop(dkey, None)
        if data is None:
            data = self.head(dkey)
            if data is not None:
                self.seen_early.add(dkey)
        yield Entry(dkey, data, info)

    def _hidden(self, info: ObjectInfo) -> Iterator[Entry]:
        dkey = layout.data_key(info.key)
        data = self.data.pop(dkey, None)
        if data is not None:  # an unexpected order: the data came first
            yield self._pair(dkey, data, info)
        else:
            self.manifests[dkey] = info
            self.wait(dkey, "manifest", dkey)

    def _pair(self, dkey: str, data: ObjectInfo | None, manifest: ObjectInfo) -> Entry:
        self.paired.add(dkey)
        self.wait(layout.legacy_manifest_key(dkey), "paired", dkey)
        return Entry(dkey, data, manifest)

    def flush(self, *, upto: str | None) -> Iterator[Entry]:
        """Emit waiting keys whose partner would have been listed before `upto` (None: all), after a
        head() confirms the partner is really missing."""
        while self.due and (upto is None or self.due[0][0] < upto):
            _pos, what, dkey = heapq.heappop(self.due)
            if what == "paired":
                self.paired.discard(dkey)
            elif what == "data" and (data := self.data.pop(dkey, None)) is not None:
                manifest = self.head(layout.legacy_manifest_key(dkey)) or self.head(layout.manifest_key(dkey))
                if manifest is not None and upto is not None:
                    self.seen_early.add(manifest.key)
                yield Entry(dkey, data, manifest)
            elif what == "manifest" and (hidden := self.manifests.pop(dkey, None)) is not None:
                found = self.head(dkey)
                if found is not None and upto is not None:
                    self.seen_early.add(dkey)
                yield (self._pair(dkey, found, hidden) if found is not None else Entry(dkey, None, hidden))


def pair_listing(listing: Iterable[ObjectInfo], *, head: Head) -> Iterator[Entry]:
    """Yield Entries as soon as each pair is complete. A listing in key order (S3's, and LocalStorage's
    per directory) puts a hidden `_<name>.manifest.json` before the folder's data objects and a legacy
    `<key>.manifest.json` right after `<key>`, so only the keys of one folder wait at any time.
    `head` confirms a missing partner before it is reported, so an unexpected order costs a
    request, never a false finding. A legacy manifest left beside its hidden copy is not counted twice."""
    state = _Pairing(head)
    for info in listing:
        yield from state.flush(upto=info.key)
        yield from state.take(info)
    yield from state.flush(upto=None)