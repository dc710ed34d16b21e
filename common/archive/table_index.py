"""What one table's archive holds in one store (S3, a local archive, the fallback directory): its
data objects, and the manifests that make them count as archived, read from the table's control
folder (manifest sets, common/archive/manifest_sets.py) and from the legacy layout inside the table's folder
(per-object sidecars), less the batches a withdrawal record takes back (common/archive/withdrawals.py).

Two listings (the table's folder and its control folder) and one GET per manifest set: the
archiver's recovery, restore, query, erase, validate and the migration all read a table this way."""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import unquote

from common import batch_writer
from common.archive import expirations
from common.archive import layout
from common.errors import DataIntegrityError
from common.archive.manifest_sets import Recorded, read as read_set, read_sidecar
from common.archive.storage import ObjectInfo, Storage
from common.archive.withdrawals import Withdrawn, read as read_record

log = logging.getLogger("catalog")
#: (database, schema, table)
TableId = tuple[str, str, str]
READERS = 8
T = TypeVar("T")


@dataclass
class TableListing:
    """A table's keys in one store, sorted into what they are."""

    prefix: str  # the archive's (s3.prefix)
    data: dict[str, ObjectInfo] = field(default_factory=dict)  # archive objects (by extension, in a day folder)
    sidecars: dict[str, ObjectInfo] = field(default_factory=dict)  # data key -> legacy manifest (hidden name first)
    sets: list[ObjectInfo] = field(default_factory=list)  # manifest sets, oldest first
    records: list[ObjectInfo] = field(default_factory=list)  # withdrawal records, both layouts
    digests: list[ObjectInfo] = field(default_factory=list)  # run digests, both layouts, oldest first
    strays: list[ObjectInfo] = field(default_factory=list)  # anything else under the table's folder
    legacy: list[ObjectInfo] = field(default_factory=list)  # every key of the legacy layout
    others: list[ObjectInfo] = field(default_factory=list)  # other control records (holds, ...)
    expiries: list[ObjectInfo] = field(default_factory=list)  # expiry records (common/archive/expirations.py)

    def add(self, info: ObjectInfo) -> None:
        key = info.key
        if layout.in_control(key):
            self._control(info)
        elif layout.is_manifest(key):
            self.legacy.append(info)
            dkey = layout.data_key(key)
            if dkey not in self.sidecars or not layout.is_legacy_manifest(key):
                self.sidecars[dkey] = info
        elif layout.is_legacy_record(key):
            self.legacy.append(info)
            self.records.append(info)
        elif layout.is_legacy_digest(key):
            self.legacy.append(info)
            self.digests.append(info)
        elif layout.parse_key(self.prefix, key) is not None and is_archive_name(key):
            self.data[key] = info
        else:
            self.strays.append(info)

    def _control(self, info: ObjectInfo) -> None:
        key = info.key
        if layout.is_manifest_set(key):
            self.sets.append(info)
        elif f"/{layout.WITHDRAWN}" in key and key.endswith(".json"):
            self.records.append(info)
        elif f"/{layout.DIGESTS}" in key and key.endswith(".json"):
            self.digests.append(info)
        elif expirations.is_record(key):
            self.expiries.append(info)
        else:
            self.others.append(info)

    def finish(self) -> TableListing:
        """Oldest first where names sort by time; a digest kept in both layouts (a migration that
        could not delete a locked original) counts once."""
        self.sets.sort(key=lambda i: i.key)
        by_name: dict[str, ObjectInfo] = {}
        for info in sorted(self.digests, key=lambda i: (not layout.in_control(i.key), i.key)):
            by_name.setdefault(info.key.rpartition("/")[2], info)
        self.digests = sorted(by_name.values(), key=lambda i: i.key.rpartition("/")[2])
        return self


def is_archive_name(key: str) -> bool:
    try:
        batch_writer.format_of(key)
    except ValueError:
        return False
    return True


def by_table(infos: Iterable[ObjectInfo], prefix: str) -> Iterator[tuple[TableId | None, list[ObjectInfo]]]:
    """A listing cut into its tables' folders, in order (the keys of one table's folder are
    contiguous in a listing: every one starts with `<database>/<schema>.<table>/`); keys in no
    table's folder come with None."""
    base = layout.join(prefix, "")
    current: TableId | None = None
    group: list[ObjectInfo] = []
    for info in infos:
        table = _table_of(info.key[len(base):] if info.key.startswith(base) else None)
        if table != current and group:
            yield current, group
            group = []
        current = table
        group.append(info)
    if group:
        yield current, group


def _table_of(rest: str | None) -> TableId | None:
    """The table whose folder holds a key (given without the prefix), or None."""
    if rest is None:
        return None
    parts = rest.split("/", 2)
    if len(parts) < 3 or "." not in parts[1]:
        return None
    schema, _, table = parts[1].partition(".")
    return unquote(parts[0]), unquote(schema), unquote(table)


def list_table(store: Storage, prefix: str, database: str, schema: str, table: str) -> TableListing:
    """The table's folder and its control folder, in one store (two listings)."""
    listing = TableListing(prefix)
    for p in (layout.table_prefix(prefix, database, schema, table), layout.control_prefix(prefix, database, schema, table)):
        for info in store.list(p):
            listing.add(info)
    return listing.finish()


class TableIndex:
    """The manifests of a table in one store: per data key, the one that counts (the newest not
    withdrawn), whether or not its data object is there."""

    def __init__(self, recorded: Iterable[Recorded], withdrawn: Withdrawn,
                 expired: expirations.ExpiredSet | None = None) -> None:
        self.withdrawn = withdrawn
        #: Manifests expiry deleted the objects of (issue 29): gone on purpose, not archived.
        self.expired = expired if expired is not None else expirations.ExpiredSet()
        self._all: dict[str, list[Recorded]] = {}
        for r in recorded:  # oldest first: legacy sidecars, then sets in the order written
            # One manifest recorded twice (a sidecar and its copy in a set, during --migrate-layout)
            # counts once, as the later record of it.
            same = [o for o in self._all.get(r.key, []) if o.sha256 != r.sha256]
            self._all[r.key] = [*same, r]
        self.objects: dict[str, Recorded] = {}
        self.taken_back = 0
        self.expired_count = 0
        for key, versions in self._all.items():
            live = [r for r in versions if not self.expired.covers(key, r.sha256)]
            self.expired_count += len(versions) - len(live)
            counted = [r for r in live if not withdrawn.covers(key, r.sha256)]
            self.taken_back += len(live) - len(counted)
            if counted:
                self.objects[key] = counted[-1]

    def current(self, key: str) -> Recorded | None:
        return self.objects.get(key)

    def has(self, key: str, manifest_sha256: str) -> bool:
        """Whether exactly this manifest of the key is recorded (withdrawn or not)."""
        return any(r.sha256 == manifest_sha256 for r in self._all.get(key, []))

    def recorded(self, key: str) -> list[Recorded]:
        return list(self._all.get(key, []))


def load_index(store: Storage, listing: TableListing, *, sets_from: str | None = None,
               unreadable: list[tuple[str, str]] | None = None) -> TableIndex:
    """Read the listing's manifest sets, legacy sidecars and withdrawal records. `sets_from`: only
    the sets whose name (their UTC time) sorts at or after it (the archiver's recovery looks
    only at what its interrupted run could have written). `unreadable`: where to put (key, why)
    of one that cannot be read, which is then skipped (validate reports them); without it, the
    DataIntegrityError propagates."""
    sets = [i.key for i in listing.sets if sets_from is None or i.key.rpartition("/")[2] >= sets_from]
    sidecars = [i.key for i in listing.sidecars.values()]

    def tolerant(read: Callable[[str], T]) -> Callable[[str], T | None]:
        def run(key: str) -> T | None:
            try:
                return read(key)
            except DataIntegrityError as exc:
                if unreadable is None:
                    raise
                unreadable.append((key, str(exc)))
                return None
        return run

    with ThreadPoolExecutor(max_workers=READERS, thread_name_prefix="manifest") as ex:
        from_sets = list(ex.map(tolerant(lambda k: read_set(bytes(store.get(k)), key=k)), sets))
        from_sidecars = list(ex.map(tolerant(lambda k: read_sidecar(bytes(store.get(k)), key=k)), sidecars))
        records = list(ex.map(tolerant(lambda k: read_record(store, k)), [i.key for i in listing.records]))
        expiries = list(ex.map(tolerant(lambda k: expirations.read(store, k)), [i.key for i in listing.expiries]))
    recorded = [*(r for r in from_sidecars if r is not None), *(r for group in from_sets if group for r in group)]
    return TableIndex(recorded, Withdrawn(r for r in records if r is not None),
                      expirations.ExpiredSet(e for e in expiries if e is not None))


def load_table(store: Storage, prefix: str, database: str, schema: str, table: str) -> tuple[TableListing, TableIndex]:
    listing = list_table(store, prefix, database, schema, table)
    return listing, load_index(store, listing)
